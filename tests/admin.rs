//! The admin read layer (`redswarm::admin`) against a real Redis: each
//! listing matches what the features wrote, corrupt keys show up in their
//! row instead of failing the listing, and the admin writes (retry one
//! failed task, purge) touch only tasks that are over.

mod support;

use std::time::Duration;

use crossbeam_channel::bounded;
use redswarm::admin::{self, NodeState, PurgeSet, RetryOutcome};
use redswarm::{
    ClusterWorker, ClusterWorkerOptions, Config, Master, Queue, Redswarm, SwarmWorker, TaskOptions,
    TaskOutcome, TaskState, WorkerOptions,
};
use support::RedisServer;

const SEC: Duration = Duration::from_secs(1);

fn connect(server: &RedisServer, ns: &str) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(server.url())
            .namespace(ns)
            .heartbeat_interval(Duration::from_millis(100))
            .node_ttl(SEC)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn cmd(server: &RedisServer, args: &[&str]) {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    let _: redis::Value = c.query(&mut server.conn()).unwrap();
}

fn wait_state(q: &Queue, id: &str, want: TaskState) {
    assert!(
        support::wait_until(10 * SEC, || q
            .get(id)
            .unwrap()
            .is_some_and(|t| t.state == want)),
        "task {id} never reached {want:?}: {:?}",
        q.get(id)
    );
}

fn opts() -> WorkerOptions {
    WorkerOptions::new().threads(2).lease(2 * SEC).grace(SEC)
}

/// Pushes to `jobs`: two tasks that complete, one that fails, one held
/// running until the returned sender is dropped, one delayed, and then
/// one left ready once the worker stops claiming. Returns the ids of
/// (failed, running).
struct Scenario {
    failed: String,
    running: String,
    release: crossbeam_channel::Sender<()>,
    _worker: SwarmWorker,
}

fn scenario(swarm: &Redswarm) -> Scenario {
    let q = swarm.queue("jobs").unwrap();
    let once = TaskOptions::new().max_attempts(1);
    let ok1 = q.push_with(&"ok", &once).unwrap();
    let ok2 = q.push_with(&"ok", &once).unwrap();
    let failed = q.push_with(&"fail", &once).unwrap();
    let (release, hold) = bounded::<()>(0);
    let worker = SwarmWorker::start(&q, opts().threads(1), move |ctx| {
        match ctx.data().as_str().unwrap_or("") {
            "fail" => Err("disk full".into()),
            "hold" => {
                let _ = hold.recv();
                Ok(serde_json::Value::Null)
            }
            _ => Ok(serde_json::Value::Null),
        }
    })
    .unwrap();
    for id in [&ok1, &ok2] {
        wait_state(&q, id, TaskState::End(TaskOutcome::Ok));
    }
    wait_state(&q, &failed, TaskState::End(TaskOutcome::Failed));
    let running = q.push_with(&"hold", &once).unwrap();
    wait_state(&q, &running, TaskState::Running);
    // The worker's one thread is busy: these stay queued.
    q.push_with(&"later", &TaskOptions::new().delay(3600 * SEC))
        .unwrap();
    q.push(&"ready").unwrap();
    Scenario {
        failed,
        running,
        release,
        _worker: worker,
    }
}

#[test]
fn queue_listing_matches_the_sets_and_counts_the_last_minute() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-q");
    let s = scenario(&swarm);
    swarm.queue("other").unwrap().push(&1).unwrap();

    let rows = admin::queues(&swarm).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["jobs", "other"]);
    let jobs = &rows[0];
    assert_eq!(jobs.problem, None);
    assert_eq!(jobs.counts, swarm.queue("jobs").unwrap().counts().unwrap());
    assert_eq!(
        (
            jobs.counts.ready,
            jobs.counts.delayed,
            jobs.counts.running,
            jobs.counts.ended,
            jobs.counts.failed
        ),
        (1, 1, 1, 2, 1)
    );
    assert_eq!(jobs.ended_last_minute, 2);
    assert_eq!(jobs.failed_last_minute, 1);
    assert_eq!(rows[1].counts.ready, 1);

    // A queue nobody wrote to reads as empty.
    let none = admin::queue_status(&swarm.queue("nothing").unwrap()).unwrap();
    assert_eq!(none.counts.pending() + none.counts.failed, 0);

    let q = swarm.queue("jobs").unwrap();
    let failed = admin::failed_tasks(&q, 10).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, s.failed);
    let t = failed[0].task.as_ref().unwrap();
    assert_eq!(
        (t.state, t.error.as_deref(), t.attempts, t.failed_by),
        ("failed", Some("disk full"), 1, Some("handler"))
    );

    let running = admin::running_tasks(&q, 10).unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, s.running);
    let t = running[0].task.as_ref().unwrap();
    assert_eq!(t.worker.as_deref(), Some(swarm.node_id()));
    assert!(t.fencing_token > 0);
    assert!(
        running[0].at_ms > swarm.redis_time_ms().unwrap(),
        "lease deadline ahead"
    );

    // JSON carries the same figures.
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(json[0]["counts"]["failed"], 1);
    assert_eq!(json[0]["failed_last_minute"], 1);
    drop(s.release);
}

#[test]
fn retry_requeues_one_failed_task_and_nothing_else() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-retry");
    let s = scenario(&swarm);
    let q = swarm.queue("jobs").unwrap();
    let events = q.events().unwrap();

    // A running task is not failed: untouched, its claim intact.
    let before = q.get(&s.running).unwrap().unwrap();
    assert_eq!(
        admin::retry_task(&q, &s.running).unwrap(),
        RetryOutcome::NotFailed
    );
    assert_eq!(q.get(&s.running).unwrap().unwrap(), before);
    assert_eq!(
        admin::retry_task(&q, "no-such-task").unwrap(),
        RetryOutcome::Missing
    );

    assert_eq!(
        admin::retry_task(&q, &s.failed).unwrap(),
        RetryOutcome::Requeued
    );
    let t = q.get(&s.failed).unwrap().unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!((t.attempts, t.failures), (0, 0));
    assert_eq!(q.counts().unwrap().failed, 0);
    let e = events.next_event(5 * SEC).expect("a requeued event");
    assert_eq!(
        (e.task.as_str(), e.kind),
        (s.failed.as_str(), redswarm::EventKind::Requeued)
    );
    // Once queued it is no longer failed.
    assert_eq!(
        admin::retry_task(&q, &s.failed).unwrap(),
        RetryOutcome::NotFailed
    );
    assert!(admin::retry_task(&q, "bad{id}").is_err());
    drop(s.release);
}

#[test]
fn purge_deletes_ended_tasks_only() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-purge");
    let s = scenario(&swarm);
    let q = swarm.queue("jobs").unwrap();
    let ended = q.list(redswarm::TaskSet::Ended, 10).unwrap();
    assert_eq!(ended.len(), 2);

    assert_eq!(admin::purge(&q, PurgeSet::Ended).unwrap(), 2);
    for id in &ended {
        assert_eq!(q.get(id).unwrap(), None, "record of {id} deleted");
    }
    let c = q.counts().unwrap();
    assert_eq!(
        (c.ended, c.failed, c.running, c.ready, c.delayed),
        (0, 1, 1, 1, 1)
    );
    assert!(q.get(&s.running).unwrap().is_some());

    // A stale id of a live task in the failed set loses only its id.
    cmd(
        &server,
        &["ZADD", "{adm-purge:queue:jobs}:failed", "1", &s.running],
    );
    assert_eq!(admin::purge(&q, PurgeSet::Failed).unwrap(), 1);
    assert_eq!(q.get(&s.failed).unwrap(), None);
    assert_eq!(
        q.get(&s.running).unwrap().unwrap().state,
        TaskState::Running
    );
    assert_eq!(q.counts().unwrap().failed, 0);
    // The held task still finishes normally: its claim was never touched.
    drop(s.release);
    wait_state(&q, &s.running, TaskState::End(TaskOutcome::Ok));
}

#[test]
fn purge_works_through_more_than_one_batch() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-big");
    let q = swarm.queue("big").unwrap();
    let ids = q.push_many(&vec![0; 1200]).unwrap();
    for id in &ids {
        q.cancel(id).unwrap();
    }
    assert_eq!(q.counts().unwrap().ended, 1200);
    assert_eq!(admin::purge(&q, PurgeSet::Ended).unwrap(), 1200);
    assert_eq!(q.counts().unwrap().ended, 0);
}

#[test]
fn locks_and_semaphores_show_holder_node_ttl_and_fencing_token() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-locks");
    let other = connect(&server, "adm-locks");
    let guard = swarm.try_lock("orders", 30 * SEC).unwrap().unwrap();
    let sem = other.semaphore("pool", 3).unwrap();
    let p1 = sem.try_acquire().unwrap().unwrap();
    let p2 = sem.try_acquire().unwrap().unwrap();

    let locks = admin::locks(&swarm).unwrap();
    assert_eq!(locks.len(), 1);
    let l = &locks[0];
    assert_eq!(l.name, "orders");
    assert_eq!(l.holder_node.as_deref(), Some(swarm.node_id()));
    assert_eq!(l.fencing_token, Some(guard.fencing_token()));
    let ttl = l.ttl_left_ms.unwrap();
    assert!(ttl > 20_000 && ttl <= 30_000, "{ttl}");
    assert_eq!((l.waiters, l.problem.as_ref()), (0, None));

    let sems = admin::semaphores(&swarm).unwrap();
    assert_eq!(sems.len(), 1);
    assert_eq!(sems[0].name, "pool");
    let mut tokens: Vec<u64> = sems[0]
        .permits
        .iter()
        .filter_map(|p| p.fencing_token)
        .collect();
    tokens.sort_unstable();
    let mut want = vec![p1.fencing_token(), p2.fencing_token()];
    want.sort_unstable();
    assert_eq!(tokens, want);
    assert!(sems[0]
        .permits
        .iter()
        .all(|p| p.node.as_deref() == Some(other.node_id()) && p.ttl_left_ms > 0));

    // Nodes list what each holds.
    let nodes = admin::nodes(&swarm).unwrap();
    let me = nodes.iter().find(|n| n.id == swarm.node_id()).unwrap();
    assert!(me.is_self);
    assert_eq!(me.state, NodeState::Live);
    assert_eq!(me.holds.locks, ["orders"]);
    assert_eq!(me.pid, std::process::id());
    let them = nodes.iter().find(|n| n.id == other.node_id()).unwrap();
    assert!(!them.is_self);
    assert_eq!(them.holds.permits, ["pool", "pool"]);
    assert!(them.lease_left_ms > 0);

    guard.release().unwrap();
    assert!(admin::locks(&swarm).unwrap().is_empty());
    drop((p1, p2));
    // A node that stops beating shows as lapsed.
    let gone = other.node_id().to_string();
    other.shutdown();
    let listed = admin::nodes(&swarm).unwrap();
    assert!(
        listed
            .iter()
            .all(|n| n.id != gone || n.state == NodeState::Lapsed),
        "{listed:?}"
    );
}

#[test]
fn nodes_count_running_tasks_and_cluster_jobs() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-nodes");
    let s = scenario(&swarm);
    let master = Master::new(&swarm, "streams").unwrap();
    let worker = ClusterWorker::join(&swarm, "streams", ClusterWorkerOptions::new()).unwrap();
    for i in 0..3 {
        master.add_job(&i).unwrap();
    }
    assert!(support::wait_until(10 * SEC, || {
        let c = admin::clusters(&swarm).unwrap();
        c.len() == 1 && c[0].workers.len() == 1 && c[0].workers[0].jobs == 3
    }));
    let c = &admin::clusters(&swarm).unwrap()[0];
    assert_eq!((c.name.as_str(), c.jobs, c.pending), ("streams", 3, 0));
    assert_eq!(c.workers[0].id, worker.id());
    assert_eq!(c.workers[0].node.as_deref(), Some(swarm.node_id()));
    assert!(c.master_lease_left_ms.is_some_and(|t| t > 0));

    let me = admin::nodes(&swarm)
        .unwrap()
        .into_iter()
        .find(|n| n.is_self)
        .unwrap();
    assert_eq!((me.holds.running_tasks, me.holds.cluster_jobs), (1, 3));
    drop(s.release);
}

#[test]
fn trackers_show_their_stats() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-trk");
    let t = swarm.tracker("ogg").unwrap();
    let _a = t.lock("stream-1", "c1").unwrap();
    let _b = t.lock("stream-1", "c2").unwrap();
    let rows = admin::trackers(&swarm).unwrap();
    assert_eq!(rows.len(), 1);
    let stats = t.stats().unwrap();
    let r = &rows[0];
    assert_eq!(r.name, "ogg");
    assert_eq!(
        (r.locked, r.released, r.processing, r.completed, r.failed),
        (
            stats.locked,
            stats.released,
            stats.processing,
            stats.completed,
            stats.failed
        )
    );
    assert_eq!(r.locked, 2);
}

#[test]
fn corrupt_keys_are_reported_in_their_row() {
    let server = RedisServer::start();
    let swarm = connect(&server, "adm-bad");
    let good = swarm.queue("good").unwrap();
    good.push(&1).unwrap();
    cmd(&server, &["SET", "{adm-bad:queue:bad}:ready", "oops"]);
    let rows = admin::queues(&swarm).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].name, "bad");
    let p = rows[0].problem.as_deref().unwrap();
    assert!(
        p.contains("{adm-bad:queue:bad}:ready") && p.contains("string"),
        "{p}"
    );
    assert_eq!(
        (
            rows[1].name.as_str(),
            rows[1].counts.ready,
            rows[1].problem.as_ref()
        ),
        ("good", 1, None)
    );

    // A failed task whose record is not a hash, and one with a bad field.
    cmd(
        &server,
        &["ZADD", "{adm-bad:queue:good}:failed", "1", "t1", "2", "t2"],
    );
    cmd(&server, &["SET", "{adm-bad:queue:good}:task:t1", "x"]);
    cmd(
        &server,
        &[
            "HSET",
            "{adm-bad:queue:good}:task:t2",
            "state",
            "end",
            "outcome",
            "failed",
            "attempts",
            "many",
        ],
    );
    let failed = admin::failed_tasks(&good, 10).unwrap();
    assert_eq!(failed.len(), 2);
    for row in &failed {
        assert!(row.task.is_none());
        let p = row.problem.as_deref().unwrap();
        assert!(p.contains(&format!("task:{}", row.id)), "{p}");
    }
    // Retrying the non-hash one is refused, naming the key; nothing changes.
    let e = admin::retry_task(&good, "t1").unwrap_err();
    assert!(
        e.to_string().contains("{adm-bad:queue:good}:task:t1"),
        "{e}"
    );
    assert_eq!(good.counts().unwrap().failed, 2);

    // Locks, semaphores, clusters and trackers alike.
    cmd(&server, &["SET", "{adm-bad:lock:l}", "someone"]);
    cmd(&server, &["LPUSH", "{adm-bad:lock:l}:queue", "x"]);
    cmd(&server, &["SET", "{adm-bad:sem:s}:holders", "x"]);
    cmd(
        &server,
        &["HSET", "{adm-bad:cluster:c}:meta", "created", "1"],
    );
    cmd(&server, &["SET", "{adm-bad:cluster:c}:workers", "x"]);
    cmd(&server, &["SET", "{adm-bad:tracker:t}:stats", "x"]);
    let l = admin::locks(&swarm).unwrap();
    assert!(l[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("{adm-bad:lock:l}:queue"));
    // The lock's token names no node: shown without one; a lock that
    // never expires is a problem.
    cmd(&server, &["DEL", "{adm-bad:lock:l}:queue"]);
    let l = admin::locks(&swarm).unwrap();
    assert_eq!(l[0].holder_node, None);
    let p = l[0].problem.as_deref().unwrap();
    assert!(p.contains("has no TTL"), "{p}");
    cmd(&server, &["PEXPIRE", "{adm-bad:lock:l}", "60000"]);
    let l = admin::locks(&swarm).unwrap();
    assert_eq!(
        (l[0].holder_node.as_ref(), l[0].problem.as_ref()),
        (None, None)
    );
    assert!(l[0].ttl_left_ms.is_some_and(|t| t > 0));
    let sem = admin::semaphores(&swarm).unwrap();
    assert!(sem[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("{adm-bad:sem:s}:holders"));
    let c = admin::clusters(&swarm).unwrap();
    assert!(c[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("{adm-bad:cluster:c}:workers"));
    let t = admin::trackers(&swarm).unwrap();
    assert!(t[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("{adm-bad:tracker:t}:stats"));
    // Nodes still list (they skip what they cannot read).
    assert!(admin::nodes(&swarm).unwrap().iter().any(|n| n.is_self));
}
