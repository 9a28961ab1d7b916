//! Locks and multi-locks against a real redis-server.
//!
//! With `REDSWARM_TEST_BACKEND=cluster` the tests outside `mod
//! single_server` run on a 3-primary Redis Cluster shared by the whole
//! file instead, with `REDSWARM_TEST_BACKEND=sentinel` on one shared
//! Sentinel set-up (`tests/support/backend.rs`).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{Config, Error, Health, Redswarm};
use support::{FaultProxy, RedisServer, Target, TestRedis};

fn connect(server: &impl Target, ns: &str) -> Redswarm {
    connect_with(server, ns, |b| b)
}

fn connect_with(
    server: &impl Target,
    ns: &str,
    f: impl FnOnce(redswarm::ConfigBuilder) -> redswarm::ConfigBuilder,
) -> Redswarm {
    connect_url(&server.url(), ns, f)
}

fn connect_url(
    url: &str,
    ns: &str,
    f: impl FnOnce(redswarm::ConfigBuilder) -> redswarm::ConfigBuilder,
) -> Redswarm {
    let b = Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .pool_size(40);
    Redswarm::connect(f(b).build().unwrap()).unwrap()
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn try_lock_is_exclusive_and_tokens_increase() {
    let server = TestRedis::start();
    let a = connect(&server, "excl");
    let b = connect(&server, "excl");
    let g1 = a.try_lock("res", 5 * SEC).unwrap().expect("free lock");
    assert!(b.try_lock("res", 5 * SEC).unwrap().is_none());
    assert!(
        a.try_lock("res", 5 * SEC).unwrap().is_none(),
        "not reentrant"
    );
    let t1 = g1.fencing_token();
    g1.release().unwrap();
    let g2 = b
        .try_lock("res", 5 * SEC)
        .unwrap()
        .expect("released lock is free");
    assert!(g2.fencing_token() > t1);
    drop(g2); // releases
    assert!(a.try_lock("res", 5 * SEC).unwrap().is_some());
}

#[test]
fn bad_names_and_ttls_are_clear_errors() {
    let server = TestRedis::start();
    let s = connect(&server, "bad");
    let invalid = |r: redswarm::Result<Option<redswarm::LockGuard>>, what: &str| match r {
        Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected InvalidInput({what}), got {other:?}"),
    };
    invalid(s.try_lock("", SEC), "lock name");
    invalid(s.try_lock(&"x".repeat(600), SEC), "lock name");
    invalid(s.try_lock("a{b}", SEC), "lock name");
    invalid(s.try_lock("a", Duration::ZERO), "ttl");
    // Auto-extension needs room for renewals: 3 heartbeats (300 ms here).
    let err = s
        .lock_options("a")
        .ttl(Duration::from_millis(200))
        .auto_extend(true)
        .try_lock()
        .unwrap_err();
    assert!(err.to_string().contains("heartbeat"), "{err}");
    assert!(matches!(
        s.semaphore("s", 0),
        Err(Error::InvalidInput {
            what: "permits",
            ..
        })
    ));
    assert!(matches!(
        s.semaphore("", 1),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        s.lock_all(&[], SEC, SEC),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn a_stale_holder_cannot_release_or_extend_the_new_holders_lock() {
    let server = TestRedis::start();
    let a = connect(&server, "stale");
    let b = connect(&server, "stale");
    // A holds without renewal and "pauses" past its TTL.
    let stale = a
        .try_lock("res", Duration::from_millis(200))
        .unwrap()
        .unwrap();
    assert!(stale.is_held());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!stale.is_held(), "the holder itself knows its TTL ran out");
    let fresh = b.lock("res", 5 * SEC, 2 * SEC).unwrap();
    assert!(fresh.fencing_token() > stale.fencing_token());
    assert!(matches!(
        stale.extend(5 * SEC),
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(stale.release(), Err(Error::LeaseLost { .. })));
    // The new holder is untouched.
    assert!(fresh.is_held());
    assert!(a.try_lock("res", SEC).unwrap().is_none());
    fresh.extend(5 * SEC).unwrap();
}

#[test]
fn extend_never_recreates_an_expired_lock() {
    let server = TestRedis::start();
    let a = connect(&server, "extend");
    let g = a
        .try_lock("res", Duration::from_millis(100))
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(g.extend(5 * SEC), Err(Error::LeaseLost { .. })));
    let exists: i64 = redis::cmd("EXISTS")
        .arg("{extend:lock:res}")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(exists, 0);
    assert!(a.try_lock("res", SEC).unwrap().is_some());
}

#[test]
fn mutual_exclusion_under_16_threads_on_2_handles() {
    let server = TestRedis::start();
    let handles = [connect(&server, "mutex"), connect(&server, "mutex")];
    let counter = Arc::new(AtomicU64::new(0));
    let log: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let per_thread = 15;
    let mut threads = Vec::new();
    for t in 0..16 {
        let swarm = handles[t % 2].clone();
        let counter = counter.clone();
        let log = log.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..per_thread {
                let g = swarm.lock("counter", 10 * SEC, 60 * SEC).unwrap();
                // A non-atomic read-modify-write: only exclusion keeps it right.
                let v = counter.load(Ordering::SeqCst);
                std::thread::yield_now();
                counter.store(v + 1, Ordering::SeqCst);
                log.lock().push(g.fencing_token());
                g.release().unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 16 * per_thread);
    let tokens = log.lock();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must increase in acquisition order"
    );
}

#[test]
fn a_waiter_is_woken_by_the_release_not_the_fallback() {
    let server = TestRedis::start();
    // A long fallback re-check: only the release message can explain a fast wake-up.
    let cfg = |b: redswarm::ConfigBuilder| b.wait_recheck(Duration::from_secs(20));
    let a = connect_with(&server, "wake", cfg);
    let b = connect_with(&server, "wake", cfg);
    let g = a.try_lock("res", 60 * SEC).unwrap().unwrap();
    let waiter = std::thread::spawn(move || {
        let g = b.lock("res", 60 * SEC, 30 * SEC).unwrap();
        (Instant::now(), g.fencing_token())
    });
    std::thread::sleep(Duration::from_millis(300));
    let released = Instant::now();
    g.release().unwrap();
    let (acquired, _) = waiter.join().unwrap();
    let latency = acquired - released;
    assert!(
        latency < Duration::from_secs(5),
        "woken after {latency:?}, fallback is 20 s"
    );
}

#[test]
fn lock_times_out_with_a_typed_error() {
    let server = TestRedis::start();
    let a = connect(&server, "timeout");
    let _g = a.try_lock("res", 60 * SEC).unwrap().unwrap();
    let started = Instant::now();
    let err = a.lock("res", SEC, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn auto_extended_lock_outlives_its_ttl() {
    let server = TestRedis::start();
    let a = connect(&server, "auto");
    let b = connect(&server, "auto");
    let g = a
        .lock_options("res")
        .ttl(Duration::from_millis(400))
        .auto_extend(true)
        .try_lock()
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(g.is_held());
    assert!(b.try_lock("res", SEC).unwrap().is_none());
    assert!(g.lost().try_recv().is_err());
    g.release().unwrap();
    assert!(b.try_lock("res", SEC).unwrap().is_some());
}

#[test]
fn fair_mode_grants_in_arrival_order() {
    let server = TestRedis::start();
    let a = connect(&server, "fair");
    let holder = a
        .lock_options("res")
        .fair(true)
        .try_lock()
        .unwrap()
        .unwrap();
    let order: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let swarm = connect(&server, "fair");
        let order = order.clone();
        waiters.push(std::thread::spawn(move || {
            let g = swarm
                .lock_options("res")
                .fair(true)
                .ttl(10 * SEC)
                .lock(30 * SEC)
                .unwrap();
            order.lock().push(i);
            std::thread::sleep(Duration::from_millis(20));
            g.release().unwrap();
        }));
        // Waiter i is in the queue before waiter i+1 arrives.
        assert!(
            support::wait_until(10 * SEC, || {
                let queued: usize = redis::cmd("ZCARD")
                    .arg("{fair:lock:res}:queue")
                    .query(&mut server.conn())
                    .unwrap();
                queued == i + 1
            }),
            "waiter {i} never queued"
        );
    }
    holder.release().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
}

#[test]
fn multi_lock_is_all_or_nothing() {
    let server = TestRedis::start();
    let a = connect(&server, "multi");
    let b = connect(&server, "multi");
    let blocker = b.try_lock("b", 60 * SEC).unwrap().unwrap();
    let err = a
        .lock_all(&["c", "a", "b"], 5 * SEC, Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Nothing of the set is held after the failure.
    assert!(b.try_lock("a", SEC).unwrap().is_some());
    assert!(b.try_lock("c", SEC).unwrap().is_some());
    blocker.release().unwrap();
    let all = a.lock_all(&["c", "a", "b", "a"], 5 * SEC, 5 * SEC).unwrap();
    let names: Vec<String> = all.fencing_tokens().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert!(all.is_held());
    assert!(b.try_lock("b", SEC).unwrap().is_none());
    all.release().unwrap();
    assert!(b.try_lock("b", SEC).unwrap().is_some());
}

#[test]
fn multi_lock_extend_reports_which_lock_failed() {
    let server = TestRedis::start();
    let a = connect(&server, "multiext");
    let all = a.lock_all(&["x", "y"], 5 * SEC, SEC).unwrap();
    // Someone deletes y behind our back (an operator, a failover).
    let _: i64 = redis::cmd("DEL")
        .arg("{multiext:lock:y}")
        .query(&mut server.conn())
        .unwrap();
    match all.extend(5 * SEC) {
        Err(Error::Partial {
            what: "extend",
            failed,
        }) => {
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, "y");
        }
        other => panic!("expected Partial, got {other:?}"),
    }
    assert!(!all.is_held());
    assert!(all.lost().recv_timeout(SEC).is_ok());
}

#[test]
fn overlapping_multi_locks_in_opposite_orders_do_not_deadlock() {
    let server = TestRedis::start();
    let done = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (i, set) in [
        ["p", "q", "r"],
        ["r", "q", "p"],
        ["q", "r", "p"],
        ["r", "p", "q"],
    ]
    .into_iter()
    .enumerate()
    {
        let swarm = connect(&server, "deadlock");
        let done = done.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..10 {
                let all = swarm.lock_all(&set, 10 * SEC, 60 * SEC).unwrap();
                std::thread::sleep(Duration::from_millis(2 + i as u64));
                all.release().unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    assert!(
        support::wait_until(Duration::from_secs(60), || done.load(Ordering::SeqCst)
            == 40),
        "only {} of 40 rounds finished: deadlock or starvation",
        done.load(Ordering::SeqCst)
    );
    for t in threads {
        t.join().unwrap();
    }
}

/// A string value straight from Redis (None when absent).
fn get(server: &impl Target, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.conn())
        .unwrap()
}

fn exists(server: &impl Target, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(&mut server.conn())
        .unwrap()
        == 1
}

fn run(server: &impl Target, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut server.conn()).unwrap();
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: redswarm::Result<T>, key: &str) {
    match r {
        Err(Error::CorruptData { key: k, reason }) => assert_eq!(k, key, "{reason}"),
        other => panic!("expected CorruptData naming {key}, got {other:?}"),
    }
}

#[test]
fn corrupt_lock_data_is_an_error_naming_the_key_and_nothing_is_written() {
    let server = TestRedis::start();
    let a = connect(&server, "corrupt");
    let k = |name: &str, suffix: &str| format!("{{corrupt:lock:{name}}}{suffix}");

    // The fencing counter is not a number: no grant, the counter untouched.
    run(&server, &["SET", &k("f1", ":fence"), "seven"]);
    assert_corrupt(a.try_lock("f1", 60 * SEC), &k("f1", ":fence"));
    assert_corrupt(a.lock("f1", 60 * SEC, 5 * SEC), &k("f1", ":fence"));
    assert!(!exists(&server, &k("f1", "")), "orphaned grant");
    assert_eq!(get(&server, &k("f1", ":fence")).as_deref(), Some("seven"));

    // The fencing counter is of the wrong type.
    run(&server, &["HSET", &k("f2", ":fence"), "n", "1"]);
    assert_corrupt(a.try_lock("f2", 60 * SEC), &k("f2", ":fence"));
    assert!(!exists(&server, &k("f2", "")), "orphaned grant");

    // The owner key is a hash.
    run(&server, &["HSET", &k("o", ""), "owner", "x"]);
    assert_corrupt(a.try_lock("o", 60 * SEC), &k("o", ""));
    assert!(!exists(&server, &k("o", ":fence")));

    // Fair mode: the waiter queue is a string.
    let fair = |name: &str| a.lock_options(name).fair(true).ttl(60 * SEC).try_lock();
    run(&server, &["SET", &k("q", ":queue"), "x"]);
    assert_corrupt(fair("q"), &k("q", ":queue"));
    assert!(!exists(&server, &k("q", "")));
    assert!(!exists(&server, &k("q", ":tickets")));

    // Fair mode: the tickets are a list.
    run(&server, &["RPUSH", &k("t", ":tickets"), "x"]);
    assert_corrupt(fair("t"), &k("t", ":tickets"));
    assert!(!exists(&server, &k("t", "")));
    assert!(!exists(&server, &k("t", ":queue")));

    // Fair mode: the arrival counter is not a number.
    run(&server, &["HSET", &k("s", ":tickets"), "#seq", "many"]);
    assert_corrupt(fair("s"), &k("s", ":tickets"));
    assert!(!exists(&server, &k("s", ":queue")));

    // Fair mode: a queued waiter's ticket deadline is not a number.
    run(&server, &["ZADD", &k("d", ":queue"), "1", "w"]);
    run(&server, &["HSET", &k("d", ":tickets"), "w", "soon"]);
    assert_corrupt(fair("d"), &k("d", ":tickets"));
    assert!(!exists(&server, &k("d", "")));
    let queued: i64 = redis::cmd("ZCARD")
        .arg(k("d", ":queue"))
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(queued, 1, "the queue was changed");

    // Release with a corrupt queue leaves the lock as it was (no DEL
    // followed by a failure).
    let g = fair("r").unwrap().unwrap();
    run(&server, &["SET", &k("r", ":queue"), "x"]);
    assert_corrupt(g.release(), &k("r", ":queue"));
    assert!(exists(&server, &k("r", "")), "released halfway");

    // Extend of a lock whose owner key became a hash.
    let g = a.try_lock("e", 60 * SEC).unwrap().unwrap();
    run(&server, &["DEL", &k("e", "")]);
    run(&server, &["HSET", &k("e", ""), "owner", "x"]);
    assert_corrupt(g.extend(60 * SEC), &k("e", ""));
}

#[test]
fn extend_on_an_auto_extended_lock_keeps_room_for_renewals() {
    let server = TestRedis::start();
    let a = connect(&server, "shrink");
    let g = a
        .lock_options("res")
        .ttl(2 * SEC)
        .auto_extend(true)
        .try_lock()
        .unwrap()
        .unwrap();
    // Three heartbeats are 300 ms here: 150 ms could lapse between beats.
    let err = g.extend(Duration::from_millis(150)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { what: "ttl", .. }),
        "{err}"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg("{shrink:lock:res}")
        .query(&mut server.conn())
        .unwrap();
    assert!(pttl > 300, "the TTL was changed to {pttl} ms");
    g.extend(SEC).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(g.is_held());
}

#[test]
fn release_of_a_lock_gone_from_redis_is_lease_lost() {
    let server = TestRedis::start();
    let a = connect(&server, "gone");
    let g = a.try_lock("res", 60 * SEC).unwrap().unwrap();
    // An operator, an eviction or a Redis restart without persistence.
    run(&server, &["DEL", "{gone:lock:res}"]);
    let err = g.release().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
}

/// 2^64 ms + 5 ms: used to wrap to a 5 ms TTL.
fn wrapping_ttl() -> Duration {
    Duration::from_millis(u64::MAX) + Duration::from_millis(5)
}

/// Runs `f` on a thread; its result arrives on the returned channel (so a
/// wait that never ends fails the test instead of hanging it).
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> crossbeam_channel::Receiver<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

#[test]
fn a_lock_wait_of_duration_max_blocks_until_the_lock_is_released() {
    let server = TestRedis::start();
    let a = connect(&server, "forever");
    let b = connect(&server, "forever");
    let g = a.try_lock("res", 60 * SEC).unwrap().unwrap();
    let all = a.lock_all(&["m1", "m2"], 60 * SEC, SEC).unwrap();
    let (b1, b2) = (b.clone(), b.clone());
    let one = on_thread(move || b1.lock("res", 60 * SEC, Duration::MAX));
    let both = on_thread(move || b2.lock_all(&["m2", "m1"], 60 * SEC, Duration::MAX));
    // Still waiting (not panicked, not timed out) while the locks are held.
    assert!(one.recv_timeout(Duration::from_millis(500)).is_err());
    assert!(both.recv_timeout(Duration::from_millis(10)).is_err());
    g.release().unwrap();
    all.release().unwrap();
    let got = one
        .recv_timeout(10 * SEC)
        .expect("lock(.., Duration::MAX) never returned");
    assert!(got.unwrap().is_held());
    let got = both
        .recv_timeout(10 * SEC)
        .expect("lock_all(.., Duration::MAX) never returned");
    assert!(got.unwrap().is_held());
}

#[test]
fn lock_ttls_above_max_ttl_are_invalid_input_and_write_nothing() {
    let server = TestRedis::start();
    let s = connect(&server, "hugettl");
    let is_ttl_error = |e: &Error| matches!(e, Error::InvalidInput { what: "ttl", .. });
    for ttl in [
        wrapping_ttl(),
        Duration::MAX,
        redswarm::MAX_TTL + Duration::from_millis(1),
    ] {
        let err = s.try_lock("res", ttl).unwrap_err();
        assert!(is_ttl_error(&err), "{ttl:?}: {err}");
        let err = s.lock("res", ttl, SEC).unwrap_err();
        assert!(is_ttl_error(&err), "{ttl:?}: {err}");
        let err = s.lock_all(&["a", "b"], ttl, SEC).unwrap_err();
        assert!(is_ttl_error(&err), "{ttl:?}: {err}");
    }
    // Nothing was granted with a wrapped 5 ms TTL.
    let exists: i64 = redis::cmd("EXISTS")
        .arg(s.keys().lock("res").unwrap().owner)
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(exists, 0);
    // The limit itself is fine.
    let g = s.try_lock("res", redswarm::MAX_TTL).unwrap().unwrap();
    // extend refuses too, and the lock stays held with its TTL.
    let err = g.extend(wrapping_ttl()).unwrap_err();
    assert!(is_ttl_error(&err), "{err}");
    assert!(g.is_held());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(s.keys().lock("res").unwrap().owner)
        .query(&mut server.conn())
        .unwrap();
    assert!(pttl > 1_000_000, "pttl {pttl}");
    let all = s.lock_all(&["x", "y"], 5 * SEC, SEC).unwrap();
    assert!(matches!(
        all.extend(Duration::MAX),
        Err(Error::Partial { .. })
    ));
    assert!(all.is_held());
    // A WAIT timeout has the same bound.
    let err = s
        .lock_options("w")
        .replicas(1, Duration::MAX)
        .try_lock()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                what: "replicas timeout",
                ..
            }
        ),
        "{err}"
    );
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
    fn redis_killed_the_guard_reports_the_loss_and_locks_work_after_restart() {
        let mut server = RedisServer::start();
        let a = connect(&server, "kill");
        let g = a
            .lock_options("res")
            .ttl(Duration::from_millis(600))
            .auto_extend(true)
            .try_lock()
            .unwrap()
            .unwrap();
        let lost = g.lost();
        let killed = Instant::now();
        server.kill();
        let why = lost
            .recv_timeout(Duration::from_secs(5))
            .expect("loss reported");
        log::info!("loss reported {:?} after the kill: {why}", killed.elapsed());
        assert!(!g.is_held(), "{why}");
        server.restart();
        assert!(support::wait_until(Duration::from_secs(10), || matches!(
            a.try_lock("res2", SEC),
            Ok(Some(_))
        )));
        assert!(matches!(g.release(), Err(Error::LeaseLost { .. }) | Ok(())));
    }

    #[test]
    fn locks_survive_script_flush_and_pubsub_reconnect() {
        let server = RedisServer::start();
        let a = connect(&server, "flushlock");
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut server.conn())
            .unwrap();
        let g = a.try_lock("res", 5 * SEC).unwrap().unwrap();
        let b = connect(&server, "flushlock");
        let waiter =
            std::thread::spawn(move || b.lock("res", 5 * SEC, 20 * SEC).map(|g| g.fencing_token()));
        std::thread::sleep(Duration::from_millis(200));
        // Kill every pub/sub connection: waiters must re-check after Reconnected.
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut server.conn())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = g.fencing_token();
        g.release().unwrap();
        assert!(waiter.join().unwrap().unwrap() > t);
    }

    #[test]
    fn a_lock_can_require_replica_acknowledgement() {
        let server = RedisServer::start();
        let a = connect(&server, "wait");
        // No replica: the grant is given back and the error says why.
        let err = a
            .lock_options("res")
            .replicas(1, Duration::from_millis(100))
            .try_lock()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotReplicated {
                    wanted: 1,
                    acked: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            a.try_lock("res", SEC).unwrap().is_some(),
            "nothing left held"
        );

        // With a replica attached it is granted.
        let _replica = RedisServer::builder().replica_of(server.port()).start();
        assert!(support::wait_until(Duration::from_secs(10), || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut server.conn())
                .unwrap();
            info.contains("connected_slaves:1") && info.contains("state=online")
        }));
        let g = a
            .lock_options("res2")
            .replicas(1, Duration::from_secs(2))
            .try_lock()
            .unwrap()
            .expect("granted and replicated");
        assert!(g.is_held());
    }

    #[test]
    fn a_partitioned_node_stops_waiting_for_a_lock() {
        let server = RedisServer::start();
        // A peer mesh is configured (nobody else answers): losing Redis is a
        // partition verdict, not just an outage.
        let a = connect_with(&server, "partitioned", |b| {
            b.peer_listen("127.0.0.1:0".parse().unwrap())
        });
        let _held = a.try_lock("res", 60 * SEC).unwrap().unwrap();
        server.pause();
        let started = Instant::now();
        let r = a.lock("res", SEC, 30 * SEC);
        server.resume();
        assert!(matches!(r, Err(Error::Partitioned(_))), "{r:?}");
        assert!(
            started.elapsed() < 10 * SEC,
            "gave up after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn try_lock_whose_reply_is_lost_gets_the_same_grant_and_leaves_no_orphan() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let a = connect_url(&proxy.url(), "lostreply", |b| b);
        // Load the script first, so the watched call runs it (no NOSCRIPT round).
        drop(a.try_lock("warm-up", SEC).unwrap());
        proxy.drop_reply_to(b"{lostreply:lock:res}\r\n");
        let g = a
            .try_lock("res", 60 * SEC)
            .unwrap()
            .expect("the grant whose reply was lost");
        assert_eq!(proxy.dropped_replies(), 1);
        // One grant, one fencing token: the retry got the first call's back.
        let counter = get(&server, "{lostreply:lock:res}:fence").unwrap();
        assert_eq!(g.fencing_token().to_string(), counter);
        g.release().unwrap();
        assert!(
            a.try_lock("res", SEC).unwrap().is_some(),
            "nothing left orphaned"
        );
    }

    #[test]
    fn lock_whose_reply_is_lost_does_not_wait_on_itself() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let a = connect_url(&proxy.url(), "lostwait", |b| b);
        drop(a.try_lock("warm-up", SEC).unwrap());
        for (name, fair) in [("plain", false), ("fair", true)] {
            proxy.drop_reply_to(format!("{{lostwait:lock:{name}}}\r\n").as_bytes());
            // The TTL (60 s) is longer than the wait (20 s): waiting on our own
            // grant would time out.
            let g = a
                .lock_options(name)
                .ttl(60 * SEC)
                .fair(fair)
                .lock(20 * SEC)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(proxy.dropped_replies() >= 1, "{name}: no reply was dropped");
            let counter = get(&server, &format!("{{lostwait:lock:{name}}}:fence")).unwrap();
            assert_eq!(g.fencing_token().to_string(), counter, "{name}");
            assert!(!exists(&server, &format!("{{lostwait:lock:{name}}}:queue")));
            g.release().unwrap();
        }
        assert_eq!(proxy.dropped_replies(), 2);
    }

    #[test]
    fn a_node_without_peers_waits_out_a_redis_outage_for_a_lock() {
        let server = RedisServer::start();
        // Attempts fail fast during the outage (no long pool checkout).
        let cfg = |b: redswarm::ConfigBuilder| {
            b.wait_recheck(Duration::from_millis(200))
                .pool_timeout(Duration::from_millis(300))
                .connect_timeout(Duration::from_millis(300))
        };
        let a = connect_with(&server, "outage", cfg);
        let b = connect_with(&server, "outage", cfg);
        let held = b.try_lock("res", 60 * SEC).unwrap().unwrap();
        let waiter = {
            let a = a.clone();
            std::thread::spawn(move || a.lock("res", SEC, 30 * SEC).map(|g| g.fencing_token()))
        };
        server.pause();
        // Beats are missed, and the waiter keeps re-trying through several
        // re-checks of the outage.
        assert!(support::wait_until(10 * SEC, || matches!(
            a.health(),
            Health::LostRedis { .. }
        )));
        std::thread::sleep(Duration::from_millis(1500));
        server.resume();
        assert!(support::wait_until(10 * SEC, || a.health() == Health::Healthy));
        let t = held.fencing_token();
        held.release().unwrap();
        let got = waiter.join().unwrap();
        assert!(got.unwrap() > t);
    }

    /// Takes lock `name` as soon as the handle works again (after a restart).
    fn lock_when_back(a: &Redswarm, name: &str) -> redswarm::LockGuard {
        let mut got = None;
        assert!(
            support::wait_until(Duration::from_secs(10), || {
                got = a.try_lock(name, 5 * SEC).ok().flatten();
                got.is_some()
            }),
            "no lock after the restart"
        );
        got.unwrap()
    }

    fn fencing_tokens_rise_across_a_restart(aof: bool) {
        let mut server = RedisServer::builder().aof(aof).start();
        let a = connect(&server, "restart");
        let mut highest = 0;
        for _ in 0..3 {
            let g = a.try_lock("res", 5 * SEC).unwrap().unwrap();
            assert!(g.fencing_token() > highest);
            highest = g.fencing_token();
            g.release().unwrap();
        }
        server.restart();
        for _ in 0..3 {
            let g = lock_when_back(&a, "res");
            assert!(
                g.fencing_token() > highest,
                "token {} after the restart, {highest} before (aof: {aof})",
                g.fencing_token()
            );
            highest = g.fencing_token();
            g.release().unwrap();
        }
    }

    #[test]
    fn fencing_tokens_keep_rising_across_a_redis_restart_without_persistence() {
        fencing_tokens_rise_across_a_restart(false);
    }

    #[test]
    fn fencing_tokens_keep_rising_across_a_redis_restart_with_aof() {
        fencing_tokens_rise_across_a_restart(true);
    }
}
