//! Chunk tracker against a real redis-server: chunks locked and unlocked,
//! tasks closed and released to exactly one consumer, retries and failure
//! after the attempts, automatic lock and processing timeouts (also when
//! the holder process is SIGKILLed), stale reports rejected by fencing
//! token, stats at each step, and a 1,000-task run over two handles.
//!
//! With `REDSWARM_TEST_BACKEND=cluster` they run on a 3-primary Redis
//! Cluster shared by the whole file instead, with
//! `REDSWARM_TEST_BACKEND=sentinel` on one shared Sentinel set-up
//! (`tests/support/backend.rs`).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redswarm::{
    CloseOptions, Closed, Config, DoneOutcome, Error, Redswarm, Released, Tracker, TrackerOptions,
    TrackerStats, TrackerTaskState, Unlocked,
};
use serde::{Deserialize, Serialize};
use support::{Target, TestRedis};

const SEC: Duration = Duration::from_secs(1);

fn connect_url(url: &str, ns: &str) -> Redswarm {
    let cfg = Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500))
        .node_ttl(Duration::from_millis(600))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .pool_size(16)
        // Far above every timeout below: a consumer or sweeper that reacts
        // sooner was woken or slept until a deadline, not polling.
        .wait_recheck(30 * SEC)
        .build()
        .unwrap();
    Redswarm::connect(cfg).unwrap()
}

fn connect(server: &impl Target, ns: &str) -> Redswarm {
    connect_url(&server.url(), ns)
}

fn tracker(swarm: &Redswarm) -> Tracker {
    swarm
        .tracker_with(
            "ogg",
            TrackerOptions {
                lock_timeout: Duration::from_millis(600),
                ..Default::default()
            },
        )
        .unwrap()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Info {
    some_data: u32,
}

fn stats(completed: u64, released: u64, locked: u64, failed: u64, processing: u64) -> TrackerStats {
    TrackerStats {
        completed,
        released,
        locked,
        failed,
        processing,
    }
}

fn opts(attempts: u32, timeout: Duration) -> CloseOptions {
    CloseOptions { attempts, timeout }
}

fn raw(server: &impl Target) -> support::TestConn {
    server.conn()
}

#[test]
fn the_seeds_scenario_releases_a_closed_task_to_one_consumer_with_stats_at_each_step() {
    support::init_logging();
    let server = TestRedis::start();
    let a = connect(&server, "seed");
    let b = connect(&server, "seed");
    let (ta, tb) = (tracker(&a), tracker(&b));
    assert_eq!(ta.stats().unwrap(), TrackerStats::default());

    // Two servers encode chunks of the same stream.
    let c1 = ta.lock("the-task", "0.1").unwrap();
    let c2 = tb.lock("the-task", "0.2").unwrap();
    assert_eq!(ta.stats().unwrap(), stats(0, 0, 2, 0, 0));
    assert_eq!(c1.unlock().unwrap(), Unlocked::Unlocked);
    assert_eq!(ta.stats().unwrap(), stats(0, 0, 1, 0, 0));

    // End of stream while chunk 2 is still encoding.
    let info = Info { some_data: 10 };
    assert_eq!(
        ta.close("the-task", &info, CloseOptions::default())
            .unwrap(),
        Closed::Waiting { chunks: 1 }
    );
    let got = ta.get("the-task").unwrap().unwrap();
    assert_eq!(got.state, TrackerTaskState::Closed);
    assert_eq!(got.chunks_locked, 1);
    assert_eq!(got.attempts, 1);

    // Two consumers wait; the last unlock wakes one of them.
    let consumers: Vec<_> = [ta.clone(), tb.clone()]
        .into_iter()
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = t.released::<Info>().unwrap();
                c.next_timeout(3 * SEC)
                    .unwrap()
                    .map(|r| (r, Instant::now()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let unlocked_at = Instant::now();
    assert_eq!(c2.unlock().unwrap(), Unlocked::Released);
    let mut got: Vec<(Released<Info>, Instant)> = consumers
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(got.len(), 1, "exactly one consumer gets the task");
    let (task, at) = got.pop().unwrap();
    assert!(
        at - unlocked_at < 2 * SEC,
        "the consumer was woken, it did not wait for the re-check"
    );
    assert_eq!(task.task(), "the-task");
    assert_eq!(task.info(), &info);
    assert_eq!(task.attempt(), 1);
    assert!(task.fencing_token() > 0);
    assert_eq!(ta.stats().unwrap(), stats(0, 0, 0, 0, 1));
    assert_eq!(
        ta.get("the-task").unwrap().unwrap().state,
        TrackerTaskState::Processing
    );

    assert_eq!(task.done(Ok(())).unwrap(), DoneOutcome::Completed);
    assert_eq!(ta.stats().unwrap(), stats(1, 0, 0, 0, 0));
    let done = ta.get("the-task").unwrap().unwrap();
    assert_eq!(done.state, TrackerTaskState::Completed);
    assert!(done.finished_ms.is_some());
}

#[test]
fn closing_after_the_last_unlock_releases_at_once_and_closing_twice_changes_nothing() {
    let server = TestRedis::start();
    let swarm = connect(&server, "order");
    let t = tracker(&swarm);

    // Close after the last unlock: released by close itself.
    drop(t.lock("after", "c").unwrap());
    assert_eq!(
        t.get("after").unwrap().unwrap().state,
        TrackerTaskState::Open
    );
    assert_eq!(
        t.close("after", &1, CloseOptions::default()).unwrap(),
        Closed::Released
    );
    assert_eq!(t.stats().unwrap().released, 1);
    // Closing twice: defined, nothing changes (first info stays).
    assert_eq!(
        t.close("after", &2, CloseOptions::default()).unwrap(),
        Closed::AlreadyClosed {
            state: TrackerTaskState::Released
        }
    );
    assert_eq!(t.stats().unwrap().released, 1);

    // A task closed with no chunk ever locked is released at once.
    assert_eq!(
        t.close("empty", &3, CloseOptions::default()).unwrap(),
        Closed::Released
    );
    // Unlocking an unknown chunk: NotLocked, nothing changes.
    assert_eq!(t.unlock("empty", "nope").unwrap(), Unlocked::NotLocked);
    assert_eq!(
        t.unlock("unknown-task", "nope").unwrap(),
        Unlocked::NotLocked
    );

    let mut c = t.released::<u32>().unwrap();
    let first = c.next_timeout(SEC).unwrap().unwrap();
    assert_eq!((first.task(), *first.info()), ("after", 1));
    let second = c.next_timeout(SEC).unwrap().unwrap();
    assert_eq!((second.task(), *second.info()), ("empty", 3));
    assert!(c
        .next_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
}

#[test]
fn a_chunk_locked_after_close_delays_the_release_and_a_lock_after_release_is_refused() {
    let server = TestRedis::start();
    let swarm = connect(&server, "late");
    let t = tracker(&swarm);
    let first = t.lock("s", "1").unwrap();
    assert_eq!(
        t.close("s", &0, CloseOptions::default()).unwrap(),
        Closed::Waiting { chunks: 1 }
    );
    // A late chunk after close is still waited for.
    let late = t.lock("s", "2").unwrap();
    assert_eq!(first.unlock().unwrap(), Unlocked::Unlocked);
    assert_eq!(t.stats().unwrap().released, 0);
    assert_eq!(late.unlock().unwrap(), Unlocked::Released);
    // Released: no more chunks.
    match t.lock("s", "3") {
        Err(Error::Conflict { reason, .. }) => assert!(reason.contains("released"), "{reason}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Another owner's chunk cannot be locked.
    let held = t.lock("other", "x").unwrap();
    assert!(matches!(t.lock("other", "x"), Err(Error::Conflict { .. })));
    drop(held);
}

#[test]
fn a_failing_consumer_gets_another_attempt_until_the_attempts_run_out_then_the_task_is_failed() {
    let server = TestRedis::start();
    let swarm = connect(&server, "retry");
    let t = tracker(&swarm);
    assert_eq!(
        t.close("x", &"info", opts(3, 10 * SEC)).unwrap(),
        Closed::Released
    );
    let mut c = t.released::<String>().unwrap();
    let mut fences = Vec::new();
    for attempt in 1..=3 {
        let job = c.next_timeout(SEC).unwrap().expect("released again");
        assert_eq!(job.attempt(), attempt);
        assert_eq!(job.attempts(), 3);
        fences.push(job.fencing_token());
        assert_eq!(t.stats().unwrap(), stats(0, 0, 0, 0, 1));
        let outcome = job.done(Err(format!("merge {attempt} failed"))).unwrap();
        if attempt < 3 {
            assert_eq!(outcome, DoneOutcome::Retrying);
            assert_eq!(t.stats().unwrap(), stats(0, 1, 0, 0, 0));
        } else {
            assert_eq!(outcome, DoneOutcome::Failed);
        }
    }
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    assert_eq!(t.stats().unwrap(), stats(0, 0, 0, 1, 0));
    let rec = t.get("x").unwrap().unwrap();
    assert_eq!(rec.state, TrackerTaskState::Failed);
    assert_eq!(rec.errors, 3);
    assert_eq!(rec.last_error.as_deref(), Some("merge 3 failed"));
    assert!(c
        .next_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
}

#[test]
fn a_stale_consumers_done_is_rejected_by_fencing_token_after_its_processing_timeout() {
    let server = TestRedis::start();
    let a = connect(&server, "stale");
    let b = connect(&server, "stale");
    let (ta, tb) = (tracker(&a), tracker(&b));
    ta.close("x", &0, opts(2, Duration::from_millis(500)))
        .unwrap();
    let slow = ta
        .released::<u32>()
        .unwrap()
        .next_timeout(SEC)
        .unwrap()
        .unwrap();
    // The sweep releases the task again at its processing deadline; the
    // other consumer, woken by that release, gets attempt 2.
    let fast = tb
        .released::<u32>()
        .unwrap()
        .next_timeout(5 * SEC)
        .unwrap()
        .expect("released again after the processing timeout");
    assert_eq!(fast.attempt(), 2);
    assert!(fast.fencing_token() > slow.fencing_token());
    assert!(slow.is_lost());
    match slow.done(Ok(())) {
        Err(Error::LeaseLost { reason, .. }) => assert!(reason.contains("stale"), "{reason}"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(fast.done(Ok(())).unwrap(), DoneOutcome::Completed);
    assert_eq!(ta.stats().unwrap(), stats(1, 0, 0, 0, 0));
    let rec = ta.get("x").unwrap().unwrap();
    assert_eq!((rec.attempt, rec.errors), (2, 1));
    assert_eq!(rec.last_error.as_deref(), Some("processing timed out"));
}

/// Child role: claims one released task of tracker `ogg` and holds it for
/// ever (the parent SIGKILLs it), or locks chunk `CHILD_CHUNK` and holds it.
#[test]
fn child_tracker_holder() {
    let (Ok(url), Ok(ns), Ok(mode)) = (
        std::env::var("CHILD_URL"),
        std::env::var("CHILD_NS"),
        std::env::var("CHILD_MODE"),
    ) else {
        return;
    };
    let swarm = connect_url(&url, &ns);
    let t = tracker(&swarm);
    let _held: Box<dyn std::any::Any> = if mode == "consume" {
        let job = t
            .released::<u32>()
            .unwrap()
            .next_timeout(20 * SEC)
            .unwrap()
            .unwrap();
        Box::new(job)
    } else {
        Box::new(t.lock("s", "child-chunk").unwrap())
    };
    std::thread::sleep(600 * SEC);
}

fn spawn_holder(server: &impl Target, ns: &str, mode: &str) -> std::process::Child {
    support::child_role("child_tracker_holder")
        .env("CHILD_URL", server.url())
        .env("CHILD_NS", ns)
        .env("CHILD_MODE", mode)
        .spawn()
        .unwrap()
}

#[test]
fn a_task_whose_consumer_is_killed_is_released_again_after_its_timeout_and_finished_by_another() {
    let server = TestRedis::start();
    let swarm = connect(&server, "killc");
    let t = tracker(&swarm);
    t.close("x", &7, opts(2, Duration::from_millis(800)))
        .unwrap();
    let mut child = spawn_holder(&server, "killc", "consume");
    assert!(
        support::wait_until(20 * SEC, || t.stats().unwrap().processing == 1),
        "the child never claimed the task"
    );
    child.kill().unwrap(); // SIGKILL: no report
    child.wait().unwrap();
    let job = t
        .released::<u32>()
        .unwrap()
        .next_timeout(5 * SEC)
        .unwrap()
        .expect("released again after the processing timeout");
    assert_eq!((job.attempt(), *job.info()), (2, 7));
    assert_eq!(job.done(Ok(())).unwrap(), DoneOutcome::Completed);
    assert_eq!(t.stats().unwrap(), stats(1, 0, 0, 0, 0));
}

#[test]
fn a_killed_servers_chunk_lock_times_out_by_itself_and_the_task_is_released() {
    let server = TestRedis::start();
    let swarm = connect(&server, "kills");
    let t = tracker(&swarm);
    let mut child = spawn_holder(&server, "kills", "lock");
    assert!(
        support::wait_until(20 * SEC, || t.stats().unwrap().locked == 1),
        "the child never locked its chunk"
    );
    assert_eq!(
        t.close("s", &1, CloseOptions::default()).unwrap(),
        Closed::Waiting { chunks: 1 }
    );
    // Alive: its heartbeat renews the lock past the 600 ms lock timeout.
    std::thread::sleep(1500 * Duration::from_millis(1));
    assert_eq!(
        t.stats().unwrap().locked,
        1,
        "a live server's lock was timed out"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let job = t
        .released::<u32>()
        .unwrap()
        .next_timeout(5 * SEC)
        .unwrap()
        .expect("released once the dead server's lock timed out");
    log::info!("released {:?} after the kill", killed.elapsed());
    assert_eq!(job.task(), "s");
    assert_eq!(t.stats().unwrap(), stats(0, 0, 0, 0, 1));
    job.done(Ok(())).unwrap();
}

#[test]
fn a_fixed_chunk_lock_times_out_even_while_its_holder_lives_and_timeout_locks_forces_old_ones() {
    let server = TestRedis::start();
    let swarm = connect(&server, "fixed");
    let t = tracker(&swarm);
    let fixed = t.lock_fixed("s", "1", Duration::from_millis(300)).unwrap();
    let lost = fixed.lost();
    assert!(lost.recv_timeout(3 * SEC).is_ok(), "the holder is told");
    assert!(support::wait_until(3 * SEC, || t.stats().unwrap().locked == 0));
    assert_eq!(fixed.unlock().unwrap(), Unlocked::NotLocked);

    // By hand: the seed's timeoutLocks(age) on a renewed lock.
    let renewed = t.lock("s", "2").unwrap();
    assert_eq!(t.timeout_locks(10 * SEC).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.timeout_locks(Duration::from_millis(100)).unwrap(), 1);
    assert_eq!(t.stats().unwrap().locked, 0);
    drop(renewed);
    assert_eq!(t.timeout_processing().unwrap(), 0);
}

#[test]
fn bad_names_oversized_info_zero_attempts_and_corrupt_records_get_clear_errors() {
    let server = TestRedis::start();
    let swarm = connect(&server, "bad");
    assert!(matches!(swarm.tracker(""), Err(Error::InvalidInput { .. })));
    assert!(matches!(
        swarm.tracker("a{b}"),
        Err(Error::InvalidInput { .. })
    ));
    let t = swarm
        .tracker_with(
            "ogg",
            TrackerOptions {
                max_info_bytes: 16,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(t.lock("", "c"), Err(Error::InvalidInput { .. })));
    assert!(matches!(
        t.lock("t", "a\nb"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(t.unlock("t", ""), Err(Error::InvalidInput { .. })));
    assert!(matches!(
        t.close("t", &"x".repeat(100), CloseOptions::default()),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        t.close("t", &1, opts(0, SEC)),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        t.close("t", &1, opts(1, redswarm::MAX_TTL + SEC)),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        swarm.tracker_with(
            "x",
            TrackerOptions {
                lock_timeout: Duration::from_millis(1),
                ..Default::default()
            }
        ),
        Err(Error::InvalidInput { .. })
    ));

    let mut conn = raw(&server);
    let _: () = redis::cmd("SET")
        .arg("{bad:tracker:ogg}:task:broken")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("{bad:tracker:ogg}:task:weird")
        .arg("state")
        .arg("dancing")
        .query(&mut conn)
        .unwrap();
    for task in ["broken", "weird"] {
        match t.lock(task, "c") {
            Err(Error::CorruptData { key, .. }) => assert!(key.ends_with(task), "{key}"),
            other => panic!("expected CorruptData, got {other:?}"),
        }
        assert!(matches!(
            t.close(task, &1, CloseOptions::default()),
            Err(Error::CorruptData { .. })
        ));
        let got = t.get(task);
        assert!(matches!(got, Err(Error::CorruptData { .. })), "{got:?}");
    }
}

#[test]
fn the_handler_form_runs_each_released_task_on_the_pool_and_reports_its_result() {
    let server = TestRedis::start();
    let swarm = connect(&server, "pool");
    let t = tracker(&swarm);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let consuming = t
        .consume(2, move |job: &Released<u32>| {
            s.lock().unwrap().push(*job.info());
            match job.info() {
                1 => Ok(()),
                2 => Err("bad chunk".into()),
                _ => panic!("handler panics"),
            }
        })
        .unwrap();
    for i in 1..=3u32 {
        t.close(&format!("t{i}"), &i, CloseOptions::default())
            .unwrap();
    }
    assert!(support::wait_until(10 * SEC, || {
        let s = t.stats().unwrap();
        s.completed == 1 && s.failed == 2
    }));
    consuming.stop();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3]);
    assert!(t
        .get("t3")
        .unwrap()
        .unwrap()
        .last_error
        .unwrap()
        .contains("panic"));
}

#[test]
fn a_thousand_tasks_of_ten_chunks_over_four_threads_and_two_handles_complete_exactly_once() {
    let server = TestRedis::start();
    let handles = [connect(&server, "bulk"), connect(&server, "bulk")];
    let trackers: Vec<Tracker> = handles.iter().map(tracker).collect();
    const TASKS: usize = 1000;
    const CHUNKS: usize = 10;
    let released: Arc<Mutex<HashMap<String, u32>>> = Arc::default();

    // Consumers on both handles.
    let consuming: Vec<_> = trackers
        .iter()
        .map(|t| {
            let released = released.clone();
            t.consume(2, move |job: &Released<usize>| {
                *released
                    .lock()
                    .unwrap()
                    .entry(job.task().to_string())
                    .or_default() += 1;
                Ok(())
            })
            .unwrap()
        })
        .collect();

    // Four producer threads, two per handle, each with a quarter of the
    // tasks: lock ten chunks, then close before the last unlock (even
    // tasks) or after it (odd tasks).
    let started = Instant::now();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let t = trackers[p % 2].clone();
            std::thread::spawn(move || {
                for task in (0..TASKS).filter(|t| t % 4 == p) {
                    let name = format!("stream-{task}");
                    let mut chunks: Vec<_> = (0..CHUNKS)
                        .map(|c| t.lock(&name, &format!("chunk-{c}")).unwrap())
                        .collect();
                    let last = chunks.pop().unwrap();
                    drop(chunks);
                    if task % 2 == 0 {
                        let c = t.close(&name, &task, CloseOptions::default()).unwrap();
                        assert_eq!(c, Closed::Waiting { chunks: 1 });
                        assert_eq!(last.unlock().unwrap(), Unlocked::Released);
                    } else {
                        assert_eq!(last.unlock().unwrap(), Unlocked::Unlocked);
                        let c = t.close(&name, &task, CloseOptions::default()).unwrap();
                        assert_eq!(c, Closed::Released);
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    assert!(
        support::wait_until(30 * SEC, || trackers[0].stats().unwrap().completed
            == TASKS as u64),
        "stats: {:?}",
        trackers[0].stats().unwrap()
    );
    log::info!("{TASKS} tasks done in {:?}", started.elapsed());
    drop(consuming);
    let released = released.lock().unwrap();
    assert_eq!(released.len(), TASKS);
    assert!(
        released.values().all(|n| *n == 1),
        "a task was handed out twice"
    );
    assert_eq!(
        trackers[1].stats().unwrap(),
        stats(TASKS as u64, 0, 0, 0, 0)
    );
}

#[test]
fn a_consumer_that_cannot_read_the_info_reports_the_attempt_failed_at_once() {
    let server = TestRedis::start();
    let swarm = connect(&server, "info");
    let t = tracker(&swarm);
    t.close("x", &"not a number", opts(1, 30 * SEC)).unwrap();
    let mut c = t.released::<u32>().unwrap();
    match c.next_timeout(SEC) {
        Err(Error::CorruptData { key, reason }) => {
            assert!(key.ends_with(":task:x"), "{key}");
            assert!(reason.contains("info"), "{reason}");
        }
        other => panic!("expected CorruptData, got {other:?}"),
    }
    // Not left to its 30 s processing timeout: failed now.
    assert_eq!(t.stats().unwrap(), stats(0, 0, 0, 1, 0));
}

#[test]
fn stopping_the_handler_form_ends_its_idle_threads_at_once() {
    let server = TestRedis::start();
    let swarm = connect(&server, "stop");
    let t = tracker(&swarm);
    let consuming = t.consume(3, |_job: &Released<u32>| Ok(())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopping = Instant::now();
    consuming.stop();
    // The threads wait on a wake-up (30 s re-check), yet stop at once.
    assert!(stopping.elapsed() < 5 * SEC, "{:?}", stopping.elapsed());
}

#[test]
fn the_sweep_is_woken_by_an_earlier_deadline_instead_of_sleeping_until_the_later_one() {
    let server = TestRedis::start();
    let swarm = connect(&server, "wake");
    let t = tracker(&swarm);
    let mut c = t.released::<u32>().unwrap();
    // The sweep now sleeps until this attempt's deadline (30 s, the
    // re-check too) ...
    t.close("long", &1, opts(1, 30 * SEC)).unwrap();
    let _long = c.next_timeout(SEC).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // ... and an attempt due much sooner must still time out on time.
    t.close("short", &2, opts(2, Duration::from_millis(300)))
        .unwrap();
    let short = c.next_timeout(SEC).unwrap().unwrap();
    assert_eq!(short.task(), "short");
    let again = c
        .next_timeout(5 * SEC)
        .unwrap()
        .expect("the short attempt timed out while the sweep slept for the long one");
    assert_eq!((again.task(), again.attempt()), ("short", 2));
}
