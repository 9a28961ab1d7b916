//! The task swarm against a real redis-server, with real worker processes
//! where it matters (SIGKILL, SIGSTOP, the end-to-end run).

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
use support::RedisServer;

const SEC: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_millis(600);

fn config(url: &str, ns: &str) -> Config {
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
        .build()
        .unwrap()
}

fn connect(server: &RedisServer, ns: &str) -> Redswarm {
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
    let server = RedisServer::start();
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
        assert_eq!(q.get(&f.id).unwrap().unwrap().fencing_token, f.fencing_token);
    }
}

#[test]
fn failing_tasks_retry_with_backoff_then_land_in_the_failed_set() {
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
    assert_eq!(q.cancel(&long).unwrap(), "signalled");
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
    let server = RedisServer::start();
    let s = connect(&server, "cancel-dead");
    let q = s.queue("jobs").unwrap();
    let id = q.push(&"x").unwrap();
    let mut child = spawn_worker(&server, "cancel-dead", "forever");
    wait_running(&q, &id);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(q.cancel(&id).unwrap(), "signalled"); // nobody hears it
    let m = Monitor::start(&q, Duration::from_millis(100)).unwrap();
    let t = wait_ended(&q, &id, 10 * SEC);
    assert_eq!(t.state, TaskState::End(TaskOutcome::Cancelled));
    assert_eq!(t.attempts, 1);
    m.stop();
}

#[test]
fn other_control_messages_reach_the_running_handler() {
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
    let swarm = Redswarm::connect(config(&url, &ns)).unwrap();
    let q = swarm.queue("jobs").unwrap();
    let threads = if mode == "forever" { 30 } else { 4 };
    let w = SwarmWorker::start(&q, opts(threads), move |ctx| {
        match mode.as_str() {
            "forever" => std::thread::sleep(600 * SEC),
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

fn spawn_worker(server: &RedisServer, ns: &str, mode: &str) -> Child {
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
    let server = RedisServer::start();
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
    assert_eq!((t.failures, t.lost_runs), (0, 1), "a lost run is not a failure");
    assert!(t.fencing_token > first.fencing_token);
    assert_ne!(t.worker, first.worker);
}

#[test]
fn a_worker_paused_past_its_lease_loses_the_task_and_its_late_completion_is_rejected() {
    let server = RedisServer::start();
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
fn two_monitors_racing_never_requeue_a_task_twice() {
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
