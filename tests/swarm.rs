//! The task swarm against a real redis-server, with real worker processes
//! where it matters (SIGKILL, SIGSTOP, the end-to-end run).
//!
//! With `REDSWARM_TEST_BACKEND=cluster` the tests outside `mod
//! single_server` run on a 3-primary Redis Cluster shared by the whole
//! file instead, with `REDSWARM_TEST_BACKEND=sentinel` on one shared
//! Sentinel set-up (`tests/support/backend.rs`).

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{
    Config, EventKind, FinishedHow, Monitor, Queue, Redswarm, SwarmWorker, TaskOptions,
    TaskOutcome, TaskSet, TaskState, WorkerOptions,
};
use serde_json::{json, Value};
use support::{RedisServer, Target, TestRedis};

const SEC: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_millis(600);

fn config(url: &str, ns: &str) -> Config {
    builder(url, ns).build().unwrap()
}

fn builder(url: &str, ns: &str) -> redswarm::ConfigBuilder {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(SEC)
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .pool_size(24)
}

/// A handle that answers peer pings, so that its peers can tell a Redis
/// outage from being cut off.
fn mesh_node(url: &str, ns: &str) -> Redswarm {
    Redswarm::connect(
        builder(url, ns)
            .peer_listen("127.0.0.1:0".parse().unwrap())
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn connect(server: &impl Target, ns: &str) -> Redswarm {
    Redswarm::connect(config(&server.url(), ns)).unwrap()
}

fn opts(threads: usize) -> WorkerOptions {
    WorkerOptions::new()
        .threads(threads)
        .lease(LEASE)
        .grace(SEC)
        .reap_every(Duration::from_millis(300))
}

/// Waits (up to 10 s) until task `id` shows as running in Redis.
fn wait_running(q: &Queue, id: &str) {
    assert!(
        support::wait_until(10 * SEC, || q
            .get(id)
            .unwrap()
            .is_some_and(|t| t.state == TaskState::Running)),
        "task {id} never ran"
    );
}

fn wait_ended(q: &Queue, id: &str, within: Duration) -> redswarm::TaskInfo {
    let mut last = None;
    let ok = support::wait_until(within, || {
        // Calls may fail while Redis is away; keep looking.
        last = q.get(id).ok().flatten().or(last.take());
        last.as_ref().is_some_and(|t| t.state.is_end())
    });
    assert!(ok, "task {id} did not end: {last:?}");
    last.unwrap()
}

#[test]
fn tasks_run_and_end_ok_with_their_results() {
    let server = TestRedis::start();
    let s = connect(&server, "happy");
    let q = s.queue("jobs").unwrap();
    let ids = q
        .push_many(&(0..20).map(|i| json!({ "n": i })).collect::<Vec<_>>())
        .unwrap();
    let w = SwarmWorker::start(&q, opts(4), |ctx| {
        Ok(json!({ "double": ctx.data()["n"].as_u64().unwrap_or(0) * 2 }))
    })
    .unwrap();
    for (i, id) in ids.iter().enumerate() {
        let t = wait_ended(&q, id, 10 * SEC);
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok));
        assert_eq!(t.result, Some(json!({ "double": i * 2 })));
        assert_eq!(t.attempts, 1);
        assert!(t.fencing_token > 0);
        assert_eq!(t.worker.as_deref(), Some(s.node_id()));
    }
    let c = q.counts().unwrap();
    assert_eq!((c.ended, c.pending(), c.failed), (20, 0, 0));
    let done: Vec<_> = w.finished().try_iter().collect();
    assert_eq!(done.len(), 20);
    assert!(done.iter().all(|f| f.how == FinishedHow::Completed));
    for f in &done {
        assert_eq!(
            q.get(&f.id).unwrap().unwrap().fencing_token,
            f.fencing_token
        );
    }
}

#[test]
fn failing_tasks_retry_with_backoff_then_land_in_the_failed_set() {
    let server = TestRedis::start();
    let s = connect(&server, "retry");
    let q = s.queue("jobs").unwrap();
    let id = q
        .push_with(
            &"x",
            &TaskOptions::new()
                .max_attempts(3)
                .backoff(Duration::from_millis(50)),
        )
        .unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let w = SwarmWorker::start(&q, opts(2), move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        Err("always broken".into())
    })
    .unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Failed));
    assert_eq!(t.attempts, 3);
    assert_eq!(t.error.as_deref(), Some("always broken"));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(q.list(TaskSet::Failed, 10).unwrap(), vec![id.clone()]);
    let hows: Vec<FinishedHow> = w.finished().try_iter().map(|f| f.how).collect();
    assert!(
        matches!(
            hows.as_slice(),
            [
                FinishedHow::Retrying(_),
                FinishedHow::Retrying(_),
                FinishedHow::Failed(_)
            ]
        ),
        "{hows:?}"
    );
    // Re-queued failed tasks get a fresh set of attempts.
    assert_eq!(q.requeue_failed(10).unwrap(), 1);
    assert!(support::wait_until(10 * SEC, || runs
        .load(Ordering::SeqCst)
        == 6));
}

#[test]
fn priority_and_delay_decide_the_order() {
    let server = TestRedis::start();
    let s = connect(&server, "order");
    let q = s.queue("jobs").unwrap();
    let pushed = Instant::now();
    let later = q
        .push_with(
            &"later",
            &TaskOptions::new().delay(Duration::from_millis(700)),
        )
        .unwrap();
    q.push(&"low-1").unwrap();
    q.push(&"low-2").unwrap();
    q.push_with(&"high", &TaskOptions::new().priority(9))
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let _w = SwarmWorker::start(&q, opts(1), move |ctx| {
        o.lock().push((
            ctx.data().as_str().unwrap_or("").to_string(),
            Instant::now(),
        ));
        Ok(Value::Null)
    })
    .unwrap();
    wait_ended(&q, &later, 10 * SEC);
    let order = order.lock();
    let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["high", "low-1", "low-2", "later"]);
    assert!(
        order[3].1 - pushed >= Duration::from_millis(650),
        "delayed task ran early"
    );
}

#[test]
fn cancel_stops_a_running_task_and_removes_a_queued_one() {
    let server = TestRedis::start();
    let s = connect(&server, "cancel");
    let q = s.queue("jobs").unwrap();
    let long = q.push(&"long").unwrap();
    let _w = SwarmWorker::start(&q, opts(1), |ctx| {
        if ctx.sleep(30 * SEC) {
            Ok(Value::Null)
        } else {
            Err(format!("stopped: {:?}", ctx.stop_reason()))
        }
    })
    .unwrap();
    wait_running(&q, &long);
    let queued = q.push(&"queued").unwrap();
    assert_eq!(q.cancel(&queued).unwrap(), "cancelled");
    let said = q.cancel(&long).unwrap();
    // On a cluster too: PUBLISH counts one node's subscribers, so `cancel`
    // counts every node's (the worker's pub/sub connection may be to any).
    assert_eq!(said, "signalled");
    let t = wait_ended(&q, &long, 5 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Cancelled));
    assert_eq!(
        q.get(&queued).unwrap().unwrap().state,
        TaskState::End(TaskOutcome::Cancelled)
    );
    assert_eq!(q.cancel(&long).unwrap(), "ended");
    assert_eq!(q.cancel("nope").unwrap(), "missing");
}

#[test]
fn a_task_cancelled_while_its_worker_dies_is_not_run_again() {
    let server = TestRedis::start();
    let s = connect(&server, "cancel-dead");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let mut child = spawn_worker(&server, "cancel-dead", "forever");
    wait_running(&q, &id);
    let worker = q.get(&id).unwrap().unwrap().worker.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // On a cluster `cancel` counts a live worker node as hearing it (see
    // `Queue::cancel`): wait until the dead one's membership lapses.
    assert!(support::wait_until(10 * SEC, || s
        .live_nodes()
        .is_ok_and(|n| n.iter().all(|n| n.id != worker))));
    assert_eq!(q.cancel(&id).unwrap(), "unheard"); // nobody hears it
    let m = Monitor::start(&q, Duration::from_millis(100)).unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Cancelled));
    assert_eq!(t.attempts, 1);
    m.stop();
}

#[test]
fn other_control_messages_reach_the_running_handler() {
    let server = TestRedis::start();
    let s = connect(&server, "control");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let _w = SwarmWorker::start(&q, opts(1), |ctx| {
        match ctx.control_receiver().recv_timeout(10 * SEC) {
            Ok(msg) => Ok(json!(msg)),
            Err(_) => Err("no control message".into()),
        }
    })
    .unwrap();
    wait_running(&q, &id);
    assert_eq!(q.control(&id, "pause").unwrap(), 1);
    let t = wait_ended(&q, &id, 5 * SEC);
    assert_eq!(t.result, Some(json!("pause")));
}

#[test]
fn another_handle_receives_progress_and_lifecycle_events() {
    let server = TestRedis::start();
    let worker_side = connect(&server, "events");
    let watcher = connect(&server, "events");
    let events = watcher.queue("jobs").unwrap().events().unwrap();
    let q = worker_side.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let _w = SwarmWorker::start(&q, opts(1), |ctx| {
        ctx.progress(json!({ "pct": 50 }));
        Ok(Value::Null)
    })
    .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + 10 * SEC;
    while Instant::now() < deadline && !seen.contains(&EventKind::Completed) {
        if let Some(e) = events.next_event(Duration::from_millis(100)) {
            assert_eq!(e.task, id);
            if e.kind == EventKind::Progress {
                assert_eq!(e.data, Some(json!({ "pct": 50 })));
            }
            seen.push(e.kind);
        }
    }
    assert_eq!(
        seen,
        vec![
            EventKind::Queued,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Completed
        ]
    );
}

#[test]
fn graceful_shutdown_hands_unfinished_tasks_back_at_once() {
    let server = TestRedis::start();
    let s = connect(&server, "handback");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"long").unwrap();
    let w = SwarmWorker::start(
        &q,
        opts(1).grace(Duration::from_millis(200)).lease(10 * SEC),
        |ctx| {
            ctx.sleep(60 * SEC);
            Err("stopped".into())
        },
    )
    .unwrap();
    wait_running(&q, &id);
    let first_fence = q.get(&id).unwrap().unwrap().fencing_token;
    assert_eq!(w.shutdown(), 1);
    let t = q.get(&id).unwrap().unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.attempts, 0, "a hand-back is not the task's fault");
    assert_eq!(q.counts().unwrap().running, 0);
    // Another worker takes it right away — long before the 10 s lease.
    let started = Instant::now();
    let _w2 = SwarmWorker::start(&q, opts(1), |_| Ok(json!("done"))).unwrap();
    let t = wait_ended(&q, &id, 5 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok));
    assert!(started.elapsed() < 5 * SEC);
    assert!(t.fencing_token > first_fence);
}

/// Child role: a worker process. Env: CHILD_URL, CHILD_NS, CHILD_MODE
/// (`forever`: handlers block; `stubborn`: handlers sleep 1.5 s ignoring
/// stop requests; `quick`: 20 ms). Prints `finished <id> <attempt> <fence> <how>`.
#[test]
fn child_worker_process() {
    let (Ok(url), Ok(ns), Ok(mode)) = (
        std::env::var("CHILD_URL"),
        std::env::var("CHILD_NS"),
        std::env::var("CHILD_MODE"),
    ) else {
        return;
    };
    // "defaults": the library's default heartbeat and worker options.
    let swarm = if mode == "defaults" {
        Redswarm::connect(Config::builder().url(&url).namespace(&ns).build().unwrap()).unwrap()
    } else {
        Redswarm::connect(config(&url, &ns)).unwrap()
    };
    let q = swarm.queue("jobs").unwrap();
    let threads = if mode == "forever" { 30 } else { 4 };
    let options = if mode == "defaults" {
        WorkerOptions::new()
    } else {
        opts(threads)
    };
    let w = SwarmWorker::start(&q, options, move |ctx| {
        match mode.as_str() {
            "forever" | "defaults" => std::thread::sleep(600 * SEC),
            "stubborn" => std::thread::sleep(Duration::from_millis(1500)),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
        Ok(json!({ "by": std::process::id(), "fence": ctx.fencing_token() }))
    })
    .unwrap();
    use std::io::Write;
    for f in w.finished().iter() {
        println!(
            "finished {} {} {} {:?}",
            f.id, f.attempt, f.fencing_token, f.how
        );
        let _ = std::io::stdout().flush();
    }
}

fn spawn_worker(server: &impl Target, ns: &str, mode: &str) -> Child {
    support::child_role("child_worker_process")
        .env("CHILD_URL", server.url())
        .env("CHILD_NS", ns)
        .env("CHILD_MODE", mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Collects the child's `finished` lines in the background.
fn collect_lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // libtest may print "test name ... " on the same line first.
            if let Some(at) = line.find("finished ") {
                l.lock().push(line[at..].to_string());
            }
        }
    });
    lines
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

#[test]
fn a_task_of_a_worker_killed_with_sigkill_completes_elsewhere_after_its_lease() {
    let server = TestRedis::start();
    let s = connect(&server, "sigkill");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let mut child = spawn_worker(&server, "sigkill", "forever");
    wait_running(&q, &id);
    let first = q.get(&id).unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _w = SwarmWorker::start(&q, opts(1), |ctx| Ok(json!(ctx.fencing_token()))).unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok));
    assert_eq!(t.attempts, 2);
    assert_eq!(
        (t.failures, t.lost_runs),
        (0, 1),
        "a lost run is not a failure"
    );
    assert!(t.fencing_token > first.fencing_token);
    assert_ne!(t.worker, first.worker);
}

#[test]
fn a_worker_paused_past_its_lease_loses_the_task_and_its_late_completion_is_rejected() {
    let server = TestRedis::start();
    let s = connect(&server, "sigstop");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let mut child = spawn_worker(&server, "sigstop", "stubborn");
    let lines = collect_lines(&mut child);
    wait_running(&q, &id);
    signal(&child, "STOP");
    // Past the lease, a healthy worker re-runs the task.
    let _w = SwarmWorker::start(&q, opts(1), |ctx| Ok(json!(ctx.fencing_token()))).unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok));
    assert_eq!(t.attempts, 2);
    signal(&child, "CONT");
    assert!(
        support::wait_until(10 * SEC, || !lines.lock().is_empty()),
        "the stale worker never reported"
    );
    let line = lines.lock()[0].clone();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts[1], id);
    let stale_fence: u64 = parts[3].parse().unwrap();
    assert!(stale_fence < t.fencing_token);
    assert_eq!(parts[4], "Rejected", "{line}");
    // The stale run changed nothing.
    assert_eq!(
        q.get(&id).unwrap().unwrap().result,
        Some(json!(t.fencing_token))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn two_monitors_racing_never_requeue_a_task_twice() {
    let server = TestRedis::start();
    let s = connect(&server, "race");
    let q = s.queue("jobs").unwrap();
    let ids = q.push_many(&(0..30).collect::<Vec<u32>>()).unwrap();
    let mut child = spawn_worker(&server, "race", "forever");
    assert!(support::wait_until(10 * SEC, || q
        .counts()
        .unwrap()
        .running
        == 30));
    child.kill().unwrap();
    child.wait().unwrap();
    let events = q.events().unwrap();
    let (a, b) = (connect(&server, "race"), connect(&server, "race"));
    let m1 = Monitor::start(&a.queue("jobs").unwrap(), Duration::from_millis(20)).unwrap();
    let m2 = Monitor::start(&b.queue("jobs").unwrap(), Duration::from_millis(20)).unwrap();
    assert!(support::wait_until(10 * SEC, || m1.stats().requeued
        + m2.stats().requeued
        == 30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(m1.stats().requeued + m2.stats().requeued, 30);
    let mut requeued: HashMap<String, u32> = HashMap::new();
    while let Some(e) = events.next_event(Duration::from_millis(200)) {
        if e.kind == EventKind::Requeued {
            *requeued.entry(e.task).or_default() += 1;
        }
    }
    assert_eq!(requeued.len(), 30);
    assert!(requeued.values().all(|n| *n == 1), "{requeued:?}");
    for id in &ids {
        let t = q.get(id).unwrap().unwrap();
        assert_eq!((t.state, t.attempts), (TaskState::Queued, 1));
    }
}

#[test]
fn end_to_end_2000_tasks_on_4_worker_processes_with_random_kills() {
    let server = TestRedis::start();
    let s = connect(&server, "e2e");
    let q = s.queue("jobs").unwrap();
    let ids = q.push_many(&(0..2000).collect::<Vec<u32>>()).unwrap();
    let _monitor = Monitor::start(&q, Duration::from_millis(200)).unwrap();
    let mut workers: Vec<Child> = (0..4)
        .map(|_| spawn_worker(&server, "e2e", "quick"))
        .collect();
    let mut kills = 0;
    let started = Instant::now();
    let mut seed = std::process::id() as usize;
    while q.counts().unwrap().pending() > 0 && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(400));
        if kills < 4 && q.counts().unwrap().pending() > 200 {
            seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
            let victim = seed % workers.len();
            workers[victim].kill().unwrap();
            workers[victim].wait().unwrap();
            workers[victim] = spawn_worker(&server, "e2e", "quick");
            kills += 1;
        }
    }
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let c = q.counts().unwrap();
    assert_eq!(c.pending(), 0, "tasks left behind: {c:?}");
    assert_eq!(c.failed, 0);
    let mut ended: HashSet<String> = HashSet::new();
    for id in &ids {
        let t = q.get(id).unwrap().unwrap();
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
        ended.insert(t.id);
    }
    assert_eq!(ended.len(), 2000);
    assert!(kills >= 1, "the run ended before any worker was killed");
}

// ---- outages, lost replies and corrupt data ----

fn redis_cmd<T: redis::FromRedisValue>(server: &impl Target, args: &[&str]) -> T {
    let mut c = server.conn();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c).unwrap()
}

/// Ids of the clients blocked in (or last running) `BLPOP`.
fn blpop_clients(server: &impl Target) -> Vec<String> {
    let list: String = redis_cmd(server, &["CLIENT", "LIST"]);
    list.lines()
        .filter(|l| l.contains(" cmd=blpop"))
        .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

fn blpop_calls(server: &impl Target) -> u64 {
    let info: String = redis_cmd(server, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_blpop:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Pushes a task and sets (or, with `None`, deletes) one field of its record.
fn push_tampered(server: &impl Target, q: &Queue, field: &str, value: Option<&str>) -> String {
    let id = q
        .push_with(
            &json!({ "tamper": field }),
            &TaskOptions::new().max_attempts(2),
        )
        .unwrap();
    let key = server_key(q, &id);
    match value {
        Some(v) => redis_cmd::<i64>(server, &["HSET", &key, field, v]),
        None => redis_cmd::<i64>(server, &["HDEL", &key, field]),
    };
    id
}

fn server_key(q: &Queue, id: &str) -> String {
    q.keys().task(id)
}

fn assert_failed_as_corrupt(server: &impl Target, q: &Queue, id: &str, field: &str) {
    // Read raw: the record keeps the bad field (Queue::get refuses it).
    let key = server_key(q, id);
    let mut last = Vec::new();
    let ended = support::wait_until(10 * SEC, || {
        last = redis_cmd::<Vec<Option<String>>>(
            server,
            &["HMGET", &key, "state", "outcome", "failed_by", "error"],
        );
        last.first() == Some(&Some("end".to_string()))
    });
    assert!(ended, "{field}: task did not end: {last:?}");
    assert_eq!(last[1].as_deref(), Some("failed"), "{field}: {last:?}");
    assert_eq!(last[2].as_deref(), Some("corrupt"), "{field}: {last:?}");
    let error = last[3].clone().unwrap_or_default();
    assert!(
        error.contains(&key) && error.contains(field),
        "{field}: the reason names neither the key nor the field: {error}"
    );
    assert!(q
        .list(TaskSet::Failed, 100)
        .unwrap()
        .iter()
        .any(|f| f == id));
}

#[test]
fn tampered_task_fields_fail_that_task_as_corrupt_and_the_worker_goes_on() {
    let server = TestRedis::start();
    let s = connect(&server, "tamper");
    let q = s.queue("jobs").unwrap();
    // Read by the claim.
    let at_claim: Vec<(&str, Option<&str>)> = vec![
        ("attempts", Some("x")),
        ("max_attempts", Some("-1")),
        ("max_attempts", None),
        ("fence", Some("1e999")),
        ("fence", None),
        ("timeout_ms", Some("soon")),
        ("state", Some("bogus")),
        ("data", Some("{not json")),
    ];
    let mut cases: Vec<(String, &str)> = at_claim
        .iter()
        .map(|(f, v)| (push_tampered(&server, &q, f, *v), *f))
        .collect();
    // Read when a delayed task comes due.
    let delayed = q
        .push_with(
            &"later",
            &TaskOptions::new().delay(Duration::from_millis(100)),
        )
        .unwrap();
    redis_cmd::<i64>(
        &server,
        &["HSET", &server_key(&q, &delayed), "pscore", "high"],
    );
    cases.push((delayed, "pscore"));
    // Read when a handler's failure is reported: tampered while it runs.
    let mut at_finish = Vec::new();
    for (field, value) in [
        ("backoff_ms", None),
        ("max_backoff_ms", Some("x")),
        ("failures", Some("-3")),
    ] {
        let id = q
            .push_with(
                &json!({ "fail_after_tampering": field, "value": value }),
                &TaskOptions::new(),
            )
            .unwrap();
        at_finish.push((id, field));
    }
    let good = q.push_many(&[1, 2, 3]).unwrap();
    // The handle's own pooled connection: routed by key on a cluster too.
    let raw = s.clone();
    let w = SwarmWorker::start(&q, opts(2), move |ctx| {
        if let Some(field) = ctx.data()["fail_after_tampering"].as_str() {
            let mut c = raw.connection().unwrap();
            let key = format!("{{tamper:queue:jobs}}:task:{}", ctx.id());
            let _: i64 = match ctx.data()["value"].as_str() {
                Some(v) => redis::cmd("HSET")
                    .arg(&key)
                    .arg(field)
                    .arg(v)
                    .query(&mut *c)
                    .unwrap(),
                None => redis::cmd("HDEL")
                    .arg(&key)
                    .arg(field)
                    .query(&mut *c)
                    .unwrap(),
            };
            return Err("boom".into());
        }
        Ok(Value::Null)
    })
    .unwrap();
    for (id, field) in cases
        .iter()
        .map(|(i, f)| (i.as_str(), *f))
        .chain(at_finish.iter().map(|(i, f)| (i.as_str(), *f)))
    {
        assert_failed_as_corrupt(&server, &q, id, field);
    }
    for id in &good {
        assert_eq!(
            wait_ended(&q, id, 10 * SEC).state,
            TaskState::End(TaskOutcome::Ok)
        );
    }
    drop(w);
    // Read by the reaper: a running task whose worker is gone.
    for (field, value) in [("lost", "many"), ("max_lost", "0")] {
        let id = push_tampered(&server, &q, field, Some(value));
        let key = server_key(&q, &id);
        let base = format!("{{{}:queue:jobs}}", s.config().namespace());
        redis_cmd::<i64>(&server, &["ZREM", &format!("{base}:ready"), &id]);
        redis_cmd::<i64>(&server, &["ZADD", &format!("{base}:running"), "1", &id]);
        redis_cmd::<i64>(&server, &["HSET", &key, "state", "running"]);
        assert_eq!(q.reap_expired(10).unwrap(), (0, 1), "{field}");
        assert_failed_as_corrupt(&server, &q, &id, field);
    }
    // Read by cancel: the record is refused, not guessed at.
    let id = push_tampered(&server, &q, "state", Some("bogus"));
    assert!(matches!(
        q.cancel(&id),
        Err(redswarm::Error::CorruptData { .. })
    ));
    let c = q.counts().unwrap();
    assert_eq!(
        c.pending(),
        1,
        "only the task with a bogus state is left: {c:?}"
    );
}

#[test]
fn a_queue_key_of_the_wrong_type_is_corrupt_data_and_loses_no_task() {
    let server = TestRedis::start();
    let s = connect(&server, "wrongtype");
    let q = s.queue("jobs").unwrap();
    let running = "{wrongtype:queue:jobs}:running";
    redis_cmd::<()>(&server, &["SET", running, "not a zset"]);
    let ids = q.push_many(&[1, 2, 3, 4, 5]).unwrap();
    let w = SwarmWorker::start(&q, opts(2), |_| Ok(Value::Null)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    match q.reap_expired(10) {
        Err(redswarm::Error::CorruptData { key, reason }) => {
            assert_eq!(key, running);
            assert!(reason.contains("string"), "{reason}");
        }
        other => panic!("expected CorruptData, got {other:?}"),
    }
    let ready = q.list(TaskSet::Ready, 10).unwrap();
    assert_eq!(ready.len(), 5, "tasks were lost: {ready:?}");
    // Repaired, the same worker runs them all.
    redis_cmd::<i64>(&server, &["DEL", running]);
    for id in &ids {
        assert_eq!(
            wait_ended(&q, id, 10 * SEC).state,
            TaskState::End(TaskOutcome::Ok)
        );
    }
    drop(w);
}

#[test]
fn a_run_lost_with_its_worker_does_not_use_up_max_attempts() {
    let server = TestRedis::start();
    let s = connect(&server, "lost-run");
    let q = s.queue("jobs").unwrap();
    let id = q
        .push_with(&"x", &TaskOptions::new().max_attempts(1))
        .unwrap();
    let mut child = spawn_worker(&server, "lost-run", "forever");
    wait_running(&q, &id);
    child.kill().unwrap();
    child.wait().unwrap();
    let _w = SwarmWorker::start(&q, opts(1), |_| Ok(json!("done"))).unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
    assert_eq!((t.attempts, t.failures, t.lost_runs), (2, 0, 1));
}

#[test]
fn a_task_that_keeps_killing_its_workers_ends_failed_by_lost_runs() {
    let server = TestRedis::start();
    let s = connect(&server, "poison");
    let q = s.queue("jobs").unwrap();
    let id = q
        .push_with(&"x", &TaskOptions::new().max_lost_runs(2))
        .unwrap();
    let m = Monitor::start(&q, Duration::from_millis(100)).unwrap();
    for round in 1..=2u32 {
        let mut child = spawn_worker(&server, "poison", "forever");
        assert!(
            support::wait_until(10 * SEC, || q
                .get(&id)
                .unwrap()
                .is_some_and(|t| t.state == TaskState::Running && t.attempts == round)),
            "round {round} never ran"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Failed), "{t:?}");
    assert_eq!(t.failed_by, Some(redswarm::FailedBy::LostRuns));
    assert_eq!((t.lost_runs, t.failures), (2, 0));
    assert!(t.error.unwrap_or_default().contains("lost"));
    m.stop();
}

#[test]
fn a_worker_never_claims_more_tasks_than_it_has_threads() {
    let server = TestRedis::start();
    let s = connect(&server, "slots");
    let q = s.queue("jobs").unwrap();
    let ids = q.push_many(&[1, 2, 3]).unwrap();
    let w = SwarmWorker::start(&q, opts(1), |ctx| {
        ctx.sleep(Duration::from_millis(400));
        Ok(Value::Null)
    })
    .unwrap();
    let mut most = 0;
    let mut most_local = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        most = most.max(q.counts().unwrap().running);
        most_local = most_local.max(w.running());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        (most, most_local),
        (1, 1),
        "claimed more than it has threads"
    );
    for id in &ids {
        wait_ended(&q, id, 10 * SEC);
    }
}

#[test]
fn shutdown_returns_within_grace_plus_margin_when_a_handler_ignores_its_stop() {
    let server = TestRedis::start();
    let s = connect(&server, "stubborn");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let grace = Duration::from_millis(200);
    let w = SwarmWorker::start(&q, opts(1).grace(grace), |_| {
        std::thread::sleep(20 * SEC); // ignores every stop signal
        Ok(Value::Null)
    })
    .unwrap();
    wait_running(&q, &id);
    let started = Instant::now();
    let handed_back = w.shutdown();
    let took = started.elapsed();
    assert!(
        took < grace + redswarm::swarm::SHUTDOWN_MARGIN + 2 * SEC,
        "shutdown took {took:?}"
    );
    assert_eq!(handed_back, 1);
    let t = q.get(&id).unwrap().unwrap();
    assert_eq!((t.state, t.attempts), (TaskState::Queued, 0));
    drop(w);
}

#[test]
fn finished_keeps_only_the_latest_reports_when_nobody_reads_them() {
    let server = TestRedis::start();
    let s = connect(&server, "finished");
    let q = s.queue("jobs").unwrap();
    let keep = redswarm::swarm::FINISHED_KEEP;
    let ids = q.push_many(&(0..keep + 100).collect::<Vec<_>>()).unwrap();
    let w = SwarmWorker::start(&q, opts(4), |_| Ok(Value::Null)).unwrap();
    assert!(support::wait_until(60 * SEC, || q.counts().unwrap().ended
        as usize
        == ids.len()));
    let kept: Vec<_> = w.finished().try_iter().collect();
    assert_eq!(kept.len(), keep);
}

#[test]
fn retries_back_off_with_a_cap_and_jitter() {
    let server = TestRedis::start();
    let s = connect(&server, "backoff");
    let q = s.queue("jobs").unwrap();
    let _w = SwarmWorker::start(&q, opts(2), |_| Err("broken".into())).unwrap();
    // A 10 s backoff capped at 300 ms: three runs well within 5 s.
    let capped = q
        .push_with(
            &"capped",
            &TaskOptions::new()
                .max_attempts(3)
                .backoff(10 * SEC)
                .max_backoff(Duration::from_millis(300)),
        )
        .unwrap();
    let t = wait_ended(&q, &capped, 5 * SEC);
    assert_eq!(
        (t.state, t.failures),
        (TaskState::End(TaskOutcome::Failed), 3)
    );
    assert_eq!(t.failed_by, Some(redswarm::FailedBy::Handler));
    // Durations Redis cannot hold are refused up front, naming the option
    // (never stored as a record that later reads as corrupt).
    for (opts, what) in [
        (TaskOptions::new().backoff(Duration::MAX), "task backoff"),
        (TaskOptions::new().timeout(Duration::MAX), "task timeout"),
    ] {
        match q.push_with(&"huge", &opts) {
            Err(redswarm::Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: {other:?}"),
        }
    }
    // The 30th failure with the default cap: between half an hour and an hour.
    let id = q
        .push_with(
            &"late",
            &TaskOptions::new().max_attempts(100).delay(60 * SEC),
        )
        .unwrap();
    let key = server_key(&q, &id);
    redis_cmd::<i64>(&server, &["HSET", &key, "attempts", "29", "failures", "29"]);
    // Due now; the marker wakes the idle worker.
    redis_cmd::<i64>(&server, &["ZADD", "{backoff:queue:jobs}:delayed", "0", &id]);
    redis_cmd::<i64>(&server, &["LPUSH", "{backoff:queue:jobs}:marker", "1"]);
    let mut t = None;
    let retrying = support::wait_until(10 * SEC, || {
        t = q.get(&id).unwrap();
        t.as_ref()
            .is_some_and(|t| t.attempts == 30 && t.state == TaskState::Queued)
    });
    let t = t.unwrap();
    assert!(retrying, "{t:?}");
    let wait = t.run_at_ms.expect("a run-at") - t.updated_ms;
    assert!(
        (1_800_000..=3_600_000).contains(&wait),
        "retry in {wait} ms"
    );
}

/// Records warnings (the child role below counts false lease-loss warnings).
struct WarningLog(Mutex<Vec<String>>);

impl log::Log for WarningLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// Child role: runs many short tasks and prints how many warnings said a
/// task's lease was lost. Env: CHILD_URL.
#[test]
fn child_counting_lease_warnings() {
    let Ok(url) = std::env::var("CHILD_LEASE_URL") else {
        return;
    };
    let logger: &'static WarningLog = Box::leak(Box::new(WarningLog(Mutex::new(Vec::new()))));
    log::set_logger(logger).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let swarm = Redswarm::connect(config(&url, "warnings")).unwrap();
    let q = swarm.queue("jobs").unwrap();
    let ids = q.push_many(&(0..3000).collect::<Vec<u32>>()).unwrap();
    let _w = SwarmWorker::start(&q, opts(8), |_| Ok(Value::Null)).unwrap();
    assert!(support::wait_until(60 * SEC, || q.counts().unwrap().ended
        as usize
        == ids.len()));
    let lost = logger
        .0
        .lock()
        .iter()
        .filter(|w| w.contains("lease") && w.contains("lost"))
        .count();
    println!("lease-warnings {lost}");
}

#[test]
fn no_lease_lost_warning_for_tasks_that_finished_while_being_renewed() {
    let server = TestRedis::start();
    let out = support::child_role("child_counting_lease_warnings")
        .env("CHILD_LEASE_URL", server.url())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split("lease-warnings ").nth(1))
        .unwrap_or_else(|| panic!("the child did not report: {stdout}"));
    assert_eq!(line.trim(), "0", "false lease-loss warnings");
}

#[test]
fn worker_thread_counts_above_the_limit_are_invalid_config_naming_threads() {
    let server = TestRedis::start();
    let s = connect(&server, "threads");
    let q = s.queue("jobs").unwrap();
    for n in [
        0,
        redswarm::WorkerOptions::MAX_THREADS + 1,
        100_000,
        usize::MAX,
    ] {
        match SwarmWorker::start(&q, opts(n), |_| Ok(Value::Null)) {
            Err(redswarm::Error::InvalidConfig { field, .. }) => assert_eq!(field, "threads"),
            Err(e) => panic!("{n} threads: expected InvalidConfig, got {e}"),
            Ok(_) => panic!("{n} threads: accepted"),
        }
    }
}

#[test]
fn task_and_lease_durations_above_max_ttl_are_invalid_input() {
    let server = TestRedis::start();
    let s = connect(&server, "hugettl");
    let q = s.queue("jobs").unwrap();
    let wrapping = Duration::from_millis(u64::MAX) + Duration::from_millis(5);
    for (o, what) in [
        (TaskOptions::new().delay(wrapping), "task delay"),
        (TaskOptions::new().delay(Duration::MAX), "task delay"),
        (TaskOptions::new().timeout(Duration::MAX), "task timeout"),
        (TaskOptions::new().backoff(Duration::MAX), "task backoff"),
    ] {
        match q.push_with(&"x", &o) {
            Err(redswarm::Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    // Nothing was queued (a wrapped delay used to be 5 ms).
    assert_eq!(q.counts().unwrap().pending(), 0);
    for lease in [wrapping, Duration::MAX] {
        match SwarmWorker::start(&q, opts(1).lease(lease), |_| Ok(Value::Null)) {
            Err(redswarm::Error::InvalidInput { what, .. }) => assert_eq!(what, "worker lease"),
            Err(e) => panic!("lease {lease:?}: expected InvalidInput, got {e}"),
            Ok(_) => panic!("lease {lease:?}: accepted"),
        }
    }
}

#[test]
fn next_event_with_duration_max_waits_for_the_next_event() {
    let server = TestRedis::start();
    let s = connect(&server, "events-forever");
    let q = s.queue("jobs").unwrap();
    let events = q.events().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(events.next_event(Duration::MAX));
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    let id = q.push(&"x").unwrap();
    let e = rx
        .recv_timeout(10 * SEC)
        .expect("next_event(Duration::MAX) never returned")
        .expect("an event");
    assert_eq!((e.task, e.kind), (id, EventKind::Queued));
}

#[test]
fn a_grace_of_duration_max_lets_running_tasks_finish_on_shutdown_and_drop() {
    let server = TestRedis::start();
    let s = connect(&server, "grace-forever");
    let q = s.queue("jobs").unwrap();
    // The handler says when it runs: Redis shows a task running from its
    // claim on, a moment before the handler starts (a shutdown in between
    // hands the task back instead, which is not what this test is about).
    let (started_tx, started) = crossbeam_channel::unbounded::<()>();
    let start = |q: &Queue| {
        let started_tx = started_tx.clone();
        SwarmWorker::start(
            q,
            opts(1).grace(Duration::MAX).lease(10 * SEC),
            move |ctx| {
                let _ = started_tx.send(());
                // Ignores stop requests for a moment: shutdown must wait for it.
                std::thread::sleep(Duration::from_millis(400));
                Ok(json!(ctx.attempt()))
            },
        )
        .unwrap()
    };
    let id = q.push(&"a").unwrap();
    let w = start(&q);
    wait_running(&q, &id);
    started
        .recv_timeout(10 * SEC)
        .expect("the handler never started");
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(w.shutdown());
    });
    let handed_back = rx
        .recv_timeout(10 * SEC)
        .expect("shutdown with grace Duration::MAX never returned");
    assert_eq!(handed_back, 0, "the task finished within the grace");
    assert_eq!(
        q.get(&id).unwrap().unwrap().state,
        TaskState::End(TaskOutcome::Ok)
    );
    // Drop takes the same path.
    let id = q.push(&"b").unwrap();
    let w = start(&q);
    wait_running(&q, &id);
    started
        .recv_timeout(10 * SEC)
        .expect("the handler never started");
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        drop(w);
        let _ = tx.send(());
    });
    rx.recv_timeout(10 * SEC)
        .expect("dropping a worker with grace Duration::MAX never returned");
    assert_eq!(
        q.get(&id).unwrap().unwrap().state,
        TaskState::End(TaskOutcome::Ok)
    );
}

#[test]
fn listing_with_a_limit_of_usize_max_returns_every_task() {
    let server = TestRedis::start();
    let s = connect(&server, "list-all");
    let q = s.queue("jobs").unwrap();
    let ids = q.push_many(&[1, 2, 3]).unwrap();
    // `usize::MAX as i64 - 1` used to be -2: every task but the last.
    let listed = q.list(TaskSet::Ready, usize::MAX).unwrap();
    assert_eq!(listed.len(), ids.len(), "{listed:?}");
}

#[test]
fn with_default_options_a_sigkilled_workers_task_runs_elsewhere_within_seconds() {
    // Defaults everywhere (1 s heartbeat, default lease and reaping): the
    // task must not wait for a long lease (it used to take 30 s).
    let server = TestRedis::start();
    let s = Redswarm::connect(
        Config::builder()
            .url(server.url())
            .namespace("defaults")
            .build()
            .unwrap(),
    )
    .unwrap();
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let mut child = spawn_worker(&server, "defaults", "defaults");
    wait_running(&q, &id);
    let _rescuer = SwarmWorker::start(&q, WorkerOptions::new().threads(1), |_| {
        Ok(json!("rescued"))
    })
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
    assert_eq!(t.result, Some(json!("rescued")));
    assert_eq!((t.failures, t.lost_runs), (0, 1));
}

#[test]
fn a_worker_claims_a_task_for_every_idle_thread_in_one_round_trip() {
    let server = TestRedis::start();
    let s = connect(&server, "batch");
    let q = s.queue("jobs").unwrap();
    let ids = q.push_many(&(0..8).collect::<Vec<_>>()).unwrap();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
    let w = SwarmWorker::start(&q, opts(8), move |_| {
        let _ = release_rx.recv_timeout(20 * SEC);
        Ok(Value::Null)
    })
    .unwrap();
    assert!(support::wait_until(10 * SEC, || q
        .counts()
        .unwrap()
        .running
        == 8));
    // The claim token of one round trip names every task it claimed.
    let tokens: Vec<String> = redis_cmd(&server, &["KEYS", "{batch:queue:jobs}:claim:*"]);
    let claimed: Vec<Vec<String>> = tokens
        .iter()
        .map(|k| {
            redis_cmd::<String>(&server, &["GET", k])
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .collect();
    assert!(
        claimed.iter().any(|c| c.len() == 8),
        "no round trip claimed all 8 tasks: {claimed:?}"
    );
    drop(release_tx);
    for id in &ids {
        assert_eq!(
            wait_ended(&q, id, 10 * SEC).state,
            TaskState::End(TaskOutcome::Ok)
        );
    }
    drop(w);
}

#[test]
fn events_come_one_message_per_transition_batch_and_task_events_filter_by_task() {
    let server = TestRedis::start();
    let s = connect(&server, "events");
    let q = s.queue("jobs").unwrap();
    let raw = s.subscribe(&q.keys().events).unwrap();
    let first = q.push(&"one").unwrap();
    let only_first = q.task_events(&first).unwrap();
    let all = q.events().unwrap();
    let batch = q.push_many(&[1, 2, 3, 4, 5]).unwrap();
    // The batch's five `queued` events arrive as one message.
    let mut sizes = Vec::new();
    while let Ok(redswarm::SubEvent::Message(m)) = raw.recv_timeout(2 * SEC) {
        sizes.push(redswarm::decode_events(&m.payload).unwrap().len());
        if sizes.iter().sum::<usize>() >= 6 {
            break;
        }
    }
    assert_eq!(sizes, vec![1, 5], "one message per push call");
    let _w = SwarmWorker::start(&q, opts(2), |_| Ok(Value::Null)).unwrap();
    for id in batch.iter().chain([&first]) {
        wait_ended(&q, id, 10 * SEC);
    }
    let mut mine = Vec::new();
    while let Some(e) = only_first.next_event(SEC) {
        assert_eq!(e.task, first, "task_events showed another task's event");
        // Its `queued` event may come before or after this subscription.
        if e.kind != EventKind::Queued {
            mine.push(e.kind);
        }
        if e.kind == EventKind::Completed {
            break;
        }
    }
    assert_eq!(mine, vec![EventKind::Started, EventKind::Completed]);
    let mut completed = HashSet::new();
    while let Some(e) = all.next_event(SEC) {
        if e.kind == EventKind::Completed {
            completed.insert(e.task);
        }
        if completed.len() == 6 {
            break;
        }
    }
    assert_eq!(completed.len(), 6, "queue events missed completions");
}

/// Tests that need a redis-server of their own, so they stay on
/// `RedisServer` whatever the backend: they kill, pause or restart it, put a
/// fault proxy in front of it, read server-wide state (INFO, CLIENT LIST)
/// or disturb every client of it (SCRIPT FLUSH, CLIENT KILL). The cluster
/// pass of CI skips them (`--skip single_server::`): the single-server pass
/// covers them.
mod single_server {
    use super::*;

    #[test]
    fn no_task_is_lost_when_redis_is_killed_and_restarted_with_aof() {
        let mut server = RedisServer::builder().aof(true).start();
        let s = connect(&server, "aof");
        let q = s.queue("jobs").unwrap();
        let ids = q.push_many(&(0..60).collect::<Vec<u32>>()).unwrap();
        let _w = SwarmWorker::start(&q, opts(4), |ctx| {
            ctx.sleep(Duration::from_millis(20));
            Ok(Value::Null)
        })
        .unwrap();
        let _m = Monitor::start(&q, Duration::from_millis(200)).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        server.kill();
        std::thread::sleep(Duration::from_millis(500));
        server.restart();
        for id in &ids {
            let t = wait_ended(&q, id, 30 * SEC);
            assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
        }
        assert!(support::wait_until(10 * SEC, || q
            .counts()
            .is_ok_and(|c| c.pending() == 0)));
    }

    #[test]
    fn a_claim_whose_reply_is_lost_is_recovered_and_costs_no_attempt() {
        let server = RedisServer::start();
        let proxy = support::FaultProxy::start(server.addr());
        let s = connect(&server, "lost-reply");
        let behind = Redswarm::connect(config(&proxy.url(), "lost-reply")).unwrap();
        let q = s.queue("jobs").unwrap();
        let _w = SwarmWorker::start(&behind.queue("jobs").unwrap(), opts(1), |ctx| {
            Ok(json!(ctx.fencing_token()))
        })
        .unwrap();
        assert!(support::wait_until(10 * SEC, || !blpop_clients(&server).is_empty()));
        // Every reply now comes back after the command timeout: the claim runs
        // in Redis, its reply is lost.
        proxy.set_latency(Duration::from_millis(150));
        let id = q
            .push_with(&"x", &TaskOptions::new().max_attempts(1))
            .unwrap();
        wait_running(&q, &id);
        proxy.pass();
        let t = wait_ended(&q, &id, 10 * SEC);
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
        assert_eq!(t.attempts, 1, "the lost reply cost an attempt");
        assert_eq!((t.failures, t.lost_runs), (0, 0));
        assert_eq!(t.result, Some(json!(t.fencing_token)));
    }

    #[test]
    fn a_claim_held_by_a_blackhole_is_recovered_when_it_heals_not_after_a_lease() {
        let server = RedisServer::start();
        let proxy = support::FaultProxy::start(server.addr());
        // With a peer answering, the worker behind the blackhole knows Redis is
        // out of reach but it is not cut off: it keeps claiming.
        let s = mesh_node(&server.url(), "held-claim");
        let behind = mesh_node(&proxy.url(), "held-claim");
        assert!(support::wait_until(10 * SEC, || behind.known_peers().len() == 1));
        let q = s.queue("jobs").unwrap();
        let lease = 10 * SEC;
        let _w = SwarmWorker::start(&behind.queue("jobs").unwrap(), opts(1).lease(lease), |_| {
            Ok(Value::Null)
        })
        .unwrap();
        let once = TaskOptions::new().max_attempts(1);
        // Due soon: the idle worker's wait ends then, while the network is down,
        // and it claims through the blackhole.
        let tick = q
            .push_with(&"tick", &once.clone().delay(Duration::from_millis(800)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        proxy.blackhole();
        let id = q.push_with(&"x", &once).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let healed = Instant::now();
        proxy.pass();
        for id in [&tick, &id] {
            let t = wait_ended(&q, id, 10 * SEC);
            assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
            assert_eq!(t.attempts, 1, "{t:?}");
        }
        assert!(
            healed.elapsed() < lease / 2,
            "the held claims were left to their lease"
        );
    }

    #[test]
    fn fencing_tokens_keep_rising_across_a_redis_restart_that_lost_everything() {
        let mut server = RedisServer::start(); // no persistence
        let s = connect(&server, "fence-restart");
        let q = s.queue("jobs").unwrap();
        let _w = SwarmWorker::start(&q, opts(1), |_| Ok(Value::Null)).unwrap();
        let before = wait_ended(&q, &q.push(&"a").unwrap(), 10 * SEC).fencing_token;
        server.restart();
        let mut after = None;
        assert!(support::wait_until(20 * SEC, || {
            if after.is_none() {
                after = q.push(&"b").ok();
            }
            after
                .as_ref()
                .is_some_and(|id| q.get(id).ok().flatten().is_some_and(|t| t.state.is_end()))
        }));
        let t = q.get(after.as_ref().unwrap()).unwrap().unwrap();
        assert!(
            t.fencing_token > before,
            "{} after the restart, {before} before",
            t.fencing_token
        );
    }

    #[test]
    fn a_worker_without_peers_keeps_its_task_through_redis_restarts() {
        let mut server = RedisServer::builder().aof(true).start();
        let s = connect(&server, "restarts");
        let q = s.queue("jobs").unwrap();
        let id = q
            .push_with(&"x", &TaskOptions::new().max_attempts(1))
            .unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let _w = SwarmWorker::start(&q, opts(1).lease(3 * SEC), move |ctx| {
            r.fetch_add(1, Ordering::SeqCst);
            if ctx.sleep(Duration::from_millis(2500)) {
                Ok(json!("slept"))
            } else {
                Err(format!("stopped: {:?}", ctx.stop_reason()))
            }
        })
        .unwrap();
        wait_running(&q, &id);
        for _ in 0..3 {
            server.restart();
            std::thread::sleep(Duration::from_millis(300));
        }
        let t = wait_ended(&q, &id, 20 * SEC);
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
        assert_eq!(t.attempts, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_result_finished_during_a_redis_outage_is_reported_when_redis_returns() {
        let mut server = RedisServer::builder().aof(true).start();
        let s = connect(&server, "late-report");
        let q = s.queue("jobs").unwrap();
        let id = q.push(&"x").unwrap();
        let (go_tx, go) = crossbeam_channel::bounded::<()>(1);
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let w = SwarmWorker::start(&q, opts(1).lease(3 * SEC), move |_| {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = go.recv_timeout(30 * SEC);
            }
            Ok(json!("first run"))
        })
        .unwrap();
        let finished = w.finished();
        wait_running(&q, &id);
        server.kill();
        go_tx.send(()).unwrap();
        std::thread::sleep(SEC);
        server.restart();
        let t = wait_ended(&q, &id, 20 * SEC);
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
        assert_eq!(
            t.attempts, 1,
            "the result was thrown away and the task ran again"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let f = finished.recv_timeout(10 * SEC).unwrap();
        assert_eq!(f.how, FinishedHow::Completed);
    }

    #[test]
    fn a_worker_stopped_and_continued_keeps_its_blocking_connection() {
        let server = RedisServer::start();
        let s = connect(&server, "eintr");
        let q = s.queue("jobs").unwrap();
        let mut child = spawn_worker(&server, "eintr", "quick");
        let lines = collect_lines(&mut child);
        assert!(support::wait_until(10 * SEC, || blpop_clients(&server)
            .len()
            == 1));
        let before = blpop_clients(&server);
        signal(&child, "STOP");
        std::thread::sleep(Duration::from_millis(300));
        signal(&child, "CONT");
        std::thread::sleep(Duration::from_millis(500));
        let id = q.push(&"x").unwrap();
        assert_eq!(
            wait_ended(&q, &id, 10 * SEC).state,
            TaskState::End(TaskOutcome::Ok)
        );
        assert!(support::wait_until(5 * SEC, || !lines.lock().is_empty()));
        assert!(support::wait_until(5 * SEC, || blpop_clients(&server)
            .len()
            == 1));
        assert_eq!(
            blpop_clients(&server),
            before,
            "the interrupted wait reconnected instead of retrying"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_idle_worker_blocks_until_work_comes_instead_of_polling() {
        let server = RedisServer::start();
        let s = connect(&server, "idle");
        let q = s.queue("jobs").unwrap();
        let _w = SwarmWorker::start(&q, opts(2), |_| Ok(Value::Null)).unwrap();
        assert!(support::wait_until(10 * SEC, || blpop_clients(&server)
            .len()
            == 1));
        let before = blpop_calls(&server);
        std::thread::sleep(3 * SEC);
        let woke = blpop_calls(&server) - before;
        assert!(woke <= 1, "the idle worker woke {woke} times in 3 s");
        // And a push still wakes it at once.
        let id = q.push(&"x").unwrap();
        assert_eq!(
            wait_ended(&q, &id, 5 * SEC).state,
            TaskState::End(TaskOutcome::Ok)
        );
    }

    #[test]
    fn a_cancel_whose_message_the_worker_missed_still_ends_the_task_cancelled() {
        let server = RedisServer::start();
        let s = connect(&server, "missed-cancel");
        let q = s.queue("jobs").unwrap();
        let id = q
            .push_with(&"x", &TaskOptions::new().max_attempts(3))
            .unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let _w = SwarmWorker::start(&q, opts(1), move |ctx| {
            r.fetch_add(1, Ordering::SeqCst);
            if ctx.sleep(Duration::from_millis(2500)) {
                Err("boom".into())
            } else {
                Err(format!("stopped: {:?}", ctx.stop_reason()))
            }
        })
        .unwrap();
        wait_running(&q, &id);
        // Drop every pub/sub connection, then cancel before they are back: the
        // worker never hears the `cancel` message.
        redis_cmd::<i64>(&server, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        let said = q.cancel(&id).unwrap();
        assert!(matches!(said.as_str(), "signalled" | "unheard"), "{said}");
        let t = wait_ended(&q, &id, 10 * SEC);
        assert_eq!(t.state, TaskState::End(TaskOutcome::Cancelled), "{t:?}");
        assert_eq!(t.attempts, 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "a cancelled task ran again");
    }

    #[test]
    fn outages_leave_every_task_ok_and_every_rerun_with_a_higher_fence() {
        let mut server = RedisServer::builder().aof(true).start();
        let proxy = support::FaultProxy::start(server.addr());
        let direct = connect(&server, "outage");
        let behind = Redswarm::connect(config(&proxy.url(), "outage")).unwrap();
        let q = direct.queue("jobs").unwrap();
        let runs: Arc<Mutex<Vec<(String, u64, Instant)>>> = Arc::default();
        let handler = |runs: Arc<Mutex<Vec<(String, u64, Instant)>>>| {
            move |ctx: &redswarm::TaskContext| {
                runs.lock()
                    .push((ctx.id().to_string(), ctx.fencing_token(), Instant::now()));
                ctx.sleep(Duration::from_millis(25));
                Ok(json!(ctx.fencing_token()))
            }
        };
        let ids = q.push_many(&(0..400).collect::<Vec<u32>>()).unwrap();
        let wa = SwarmWorker::start(
            &behind.queue("jobs").unwrap(),
            opts(4),
            handler(runs.clone()),
        )
        .unwrap();
        let wb = SwarmWorker::start(&q, opts(4), handler(runs.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        server.restart(); // kill -9, AOF always
        std::thread::sleep(Duration::from_millis(300));
        proxy.blackhole(); // one worker cut off for longer than its leases
        std::thread::sleep(Duration::from_millis(1500));
        proxy.pass();
        assert!(
            support::wait_until(60 * SEC, || q.counts().is_ok_and(|c| c.pending() == 0)),
            "tasks stuck: {:?}",
            q.counts()
        );
        let c = q.counts().unwrap();
        assert_eq!((c.failed, c.ended), (0, 400), "{c:?}");
        for id in &ids {
            let t = q.get(id).unwrap().unwrap();
            assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
            assert_eq!(t.result, Some(json!(t.fencing_token)), "{t:?}");
        }
        let mut by_task: HashMap<String, Vec<(Instant, u64)>> = HashMap::new();
        for (id, fence, at) in runs.lock().iter() {
            by_task.entry(id.clone()).or_default().push((*at, *fence));
        }
        let mut reruns = 0;
        for (id, mut r) in by_task {
            r.sort();
            reruns += r.len() - 1;
            assert!(
                r.windows(2).all(|w| w[1].1 > w[0].1),
                "task {id}: a rerun without a higher fence: {r:?}"
            );
        }
        log::info!("{reruns} reruns");
        drop((wa, wb));
    }

    #[test]
    fn a_round_trip_whose_reply_is_lost_settles_each_report_once_and_recovers_its_claims() {
        let server = RedisServer::start();
        let proxy = support::FaultProxy::start(server.addr());
        let s = connect(&server, "lost-step");
        let behind = Redswarm::connect(config(&proxy.url(), "lost-step")).unwrap();
        let q = s.queue("jobs").unwrap();
        let ids = q
            .push_many_with(
                &(0..8).collect::<Vec<_>>(),
                &TaskOptions::new().max_attempts(1),
            )
            .unwrap();
        let (gate_tx, gate_rx) = crossbeam_channel::unbounded::<()>();
        let fences = Arc::new(Mutex::new(HashMap::new()));
        let seen = fences.clone();
        let w = SwarmWorker::start(&behind.queue("jobs").unwrap(), opts(4), move |ctx| {
            seen.lock()
                .insert(ctx.id().to_string(), ctx.fencing_token());
            let _ = gate_rx.recv_timeout(20 * SEC);
            Ok(json!(ctx.fencing_token()))
        })
        .unwrap();
        assert!(support::wait_until(10 * SEC, || fences.lock().len() == 4));
        // Lose the reply to the round trip that reports the first task's
        // result (it carries the other reports and the next claims too).
        let (id, fence) = fences
            .lock()
            .iter()
            .map(|(i, f)| (i.clone(), *f))
            .next()
            .unwrap();
        let fence = fence.to_string();
        proxy.drop_reply_to(
            format!("{id}\r\n${}\r\n{fence}\r\n$2\r\nok\r\n", fence.len()).as_bytes(),
        );
        for _ in 0..8 {
            gate_tx.send(()).unwrap();
        }
        for id in &ids {
            let t = wait_ended(&q, id, 10 * SEC);
            assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{t:?}");
            assert_eq!(t.attempts, 1, "the lost reply cost an attempt: {t:?}");
        }
        assert_eq!(proxy.dropped_replies(), 1, "the reply was not lost");
        let mut finished = Vec::new();
        let rx = w.finished();
        while finished.len() < ids.len() {
            match rx.recv_timeout(10 * SEC) {
                Ok(f) => finished.push(f),
                Err(_) => break,
            }
        }
        for id in &ids {
            let hows: Vec<_> = finished
                .iter()
                .filter(|f| &f.id == id)
                .map(|f| &f.how)
                .collect();
            assert_eq!(hows, vec![&FinishedHow::Completed], "task {id}");
        }
    }

    #[test]
    fn a_claim_whose_reply_arrives_after_shutdown_began_is_handed_back_not_started() {
        let server = RedisServer::start();
        let proxy = support::FaultProxy::start(server.addr());
        let s = connect(&server, "late-claim");
        let behind = Redswarm::connect(config(&proxy.url(), "late-claim")).unwrap();
        let q = s.queue("jobs").unwrap();
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        let w = SwarmWorker::start(&behind.queue("jobs").unwrap(), opts(1), move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(Value::Null)
        })
        .unwrap();
        assert!(support::wait_until(10 * SEC, || !blpop_clients(&server).is_empty()));
        // 45 ms each way (a 90 ms round trip, under the 100 ms command
        // timeout): the claim runs in Redis while its reply is still on its way.
        proxy.set_latency(Duration::from_millis(45));
        let id = q.push(&"x").unwrap();
        wait_running(&q, &id);
        let handed_back = w.shutdown();
        let finished: Vec<_> = w.finished().try_iter().collect();
        assert_eq!(
            handed_back,
            1,
            "the in-flight claim was not handed back (ran {}, finished {finished:?}, task {:?})",
            ran.load(Ordering::SeqCst),
            q.get(&id)
        );
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "a task started after shutdown began"
        );
        let t = q.get(&id).unwrap().unwrap();
        assert_eq!((t.state, t.attempts), (TaskState::Queued, 0), "{t:?}");
    }
}
