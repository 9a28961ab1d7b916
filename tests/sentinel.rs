//! Redis Sentinel: the primary is found through the sentinels, and a
//! failover (`SENTINEL FAILOVER`) while a worker runs tasks and locks are
//! taken loses no task and never moves a fencing token backwards.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{Config, Error, Redswarm, SwarmWorker, TaskOutcome, TaskState, WorkerOptions};
use serde_json::json;
use support::SentinelSet;

const SEC: Duration = Duration::from_secs(1);

fn connect(url: &str) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(url)
            .namespace("sent")
            .heartbeat_interval(Duration::from_millis(200))
            .command_timeout(Duration::from_millis(200))
            .node_ttl(2 * SEC)
            .peer_timeout(Duration::from_millis(50))
            .reconnect_min(Duration::from_millis(20))
            .reconnect_max(Duration::from_millis(200))
            .pool_size(24)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn a_failover_loses_no_task_and_fencing_tokens_only_grow() {
    support::init_logging();
    let set = SentinelSet::start();
    let swarm = connect(&set.url());
    assert_eq!(set.primary_port(), Some(set.primary.port()));

    // Locks taken in a loop all along; every token granted is recorded.
    let tokens: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let locker = {
        let (swarm, tokens, stop) = (swarm.clone(), tokens.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(Some(g)) = swarm.try_lock("fenced", 5 * SEC) {
                    tokens.lock().push((Instant::now(), g.fencing_token()));
                    let _ = g.release();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // A pub/sub subscription made before the failover.
    let sub = swarm.subscribe("{sent:probe}:news").unwrap();

    let q = swarm.queue("jobs").unwrap();
    let mut ids = q
        .push_many(&(0..200).map(|i| json!(i)).collect::<Vec<_>>())
        .unwrap();
    // Acknowledged by the replica, so the failover cannot lose the pushes.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut set.primary.conn())
        .unwrap();
    assert_eq!(acked, 1);
    let worker = SwarmWorker::start(
        &q,
        WorkerOptions::new()
            .threads(2)
            .lease(2 * SEC)
            .reap_every(Duration::from_millis(300)),
        |ctx| {
            std::thread::sleep(Duration::from_millis(100));
            Ok(json!(ctx.data().as_u64().unwrap_or(0) * 2))
        },
    )
    .unwrap();
    assert!(
        support::wait_until(20 * SEC, || q.counts().is_ok_and(|c| c.ended >= 10)),
        "the worker runs tasks before the failover"
    );

    set.failover();
    let failed_over = Instant::now();
    let before = q.counts().map(|c| c.ended).unwrap_or(0);
    assert!(
        before < 200,
        "the worker had finished everything before the failover"
    );
    assert_eq!(set.primary_port(), Some(set.replica.port()));

    // New work after the failover goes to the new primary.
    let more = (200..220).map(|i| json!(i)).collect::<Vec<_>>();
    let mut pushed = None;
    assert!(
        support::wait_until(20 * SEC, || {
            pushed = q.push_many(&more).ok();
            pushed.is_some()
        }),
        "pushing after the failover keeps failing"
    );
    ids.extend(pushed.unwrap());

    for (i, id) in ids.iter().enumerate() {
        let mut last = None;
        let ended = support::wait_until(60 * SEC, || {
            last = q.get(id).ok().flatten().or(last.take());
            last.as_ref().is_some_and(|t| t.state.is_end())
        });
        assert!(
            ended,
            "task {i} ({id}) did not end after the failover: {last:?}"
        );
        let t = last.unwrap();
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "task {i}");
        assert_eq!(t.result, Some(json!(i * 2)), "task {i}");
    }
    worker.shutdown();
    // Once more, strictly from the new primary: an end seen on the old
    // primary in the moment before its demotion could have been lost.
    for (i, id) in ids.iter().enumerate() {
        let t = q
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("task {i} ({id}) is gone"));
        assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "task {i}: {t:?}");
    }

    // The subscription was renewed on the new primary.
    let mut new_primary = set.replica.conn();
    let mut heard = false;
    assert!(
        support::wait_until(20 * SEC, || {
            let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg("{sent:probe}:news")
                .arg("after")
                .query(&mut new_primary);
            heard |= sub.recv_timeout(Duration::from_millis(100)).is_ok();
            heard
        }),
        "the subscription never came back after the failover"
    );

    // Locks kept being granted after the failover, with growing tokens.
    assert!(
        support::wait_until(20 * SEC, || tokens
            .lock()
            .iter()
            .any(|(at, _)| *at > failed_over)),
        "no lock granted after the failover"
    );
    stop.store(true, Ordering::SeqCst);
    locker.join().unwrap();
    let tokens = tokens.lock();
    for pair in tokens.windows(2) {
        assert!(
            pair[1].1 > pair[0].1,
            "fencing token went from {} back to {} (failover at {:?})",
            pair[0].1,
            pair[1].1,
            failed_over
        );
    }
}

#[test]
fn an_unknown_master_name_is_a_clear_connect_error() {
    let set = SentinelSet::start();
    let url = format!("redis+sentinel://{}/nosuchmaster", set.sentinel_addrs());
    let config = Config::builder()
        .url(url)
        .namespace("sent")
        .build()
        .unwrap();
    let err = Redswarm::connect(config).expect_err("no such master");
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        text.contains("nosuchmaster") && text.contains("does not monitor"),
        "{text}"
    );
}
