//! Semaphores against a real redis-server.
//!
//! With `REDSWARM_TEST_BACKEND=cluster` the tests outside `mod
//! single_server` run on a 3-primary Redis Cluster shared by the whole
//! file instead, with `REDSWARM_TEST_BACKEND=sentinel` on one shared
//! Sentinel set-up (`tests/support/backend.rs`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{Config, Error, Redswarm};
use support::{FaultProxy, RedisServer, Target, TestRedis};

fn connect(server: &impl Target, ns: &str) -> Redswarm {
    connect_with_recheck(server, ns, Duration::from_secs(1))
}

fn connect_with_recheck(server: &impl Target, ns: &str, recheck: Duration) -> Redswarm {
    connect_url(&server.url(), ns, recheck)
}

fn connect_url(url: &str, ns: &str, recheck: Duration) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(url)
            .namespace(ns)
            .wait_recheck(recheck)
            .heartbeat_interval(Duration::from_millis(100))
            .command_timeout(Duration::from_millis(100))
            .node_ttl(Duration::from_millis(600))
            .peer_timeout(Duration::from_millis(50))
            .pool_size(40)
            .build()
            .unwrap(),
    )
    .unwrap()
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn permits_are_bounded_and_come_back_on_release() {
    let server = TestRedis::start();
    let s = connect(&server, "basic");
    let sem = s.semaphore("pool", 2).unwrap().ttl(10 * SEC);
    let p1 = sem.try_acquire().unwrap().unwrap();
    let p2 = sem.try_acquire().unwrap().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.holders().unwrap(), 2);
    assert!(p2.fencing_token() > p1.fencing_token());
    p1.release().unwrap();
    assert_eq!(sem.holders().unwrap(), 1);
    let p3 = sem.try_acquire().unwrap().unwrap();
    drop(p3);
    drop(p2);
    assert_eq!(sem.holders().unwrap(), 0);
}

#[test]
fn a_crashed_holders_permit_comes_back_after_its_ttl() {
    let server = TestRedis::start();
    let s = connect(&server, "crash");
    let sem = s
        .semaphore("one", 1)
        .unwrap()
        .ttl(Duration::from_millis(300));
    let p = sem.try_acquire().unwrap().unwrap();
    std::mem::forget(p); // the holder "crashes": no release ever comes
    assert!(sem.try_acquire().unwrap().is_none());
    let other = connect(&server, "crash");
    let started = Instant::now();
    let p = other.semaphore("one", 1).unwrap().acquire(5 * SEC).unwrap();
    assert!(started.elapsed() < 3 * SEC);
    assert!(p.is_held());
}

#[test]
fn acquire_is_woken_by_release_and_times_out_with_a_typed_error() {
    let server = TestRedis::start();
    let a = connect(&server, "wake");
    let sem = a.semaphore("one", 1).unwrap().ttl(60 * SEC);
    let held = sem.try_acquire().unwrap().unwrap();
    let err = sem.acquire(Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // A long fallback re-check: only the release message explains a fast wake-up.
    let b = connect_with_recheck(&server, "wake", Duration::from_secs(20));
    let waiter = std::thread::spawn(move || {
        let p = b
            .semaphore("one", 1)
            .unwrap()
            .ttl(60 * SEC)
            .acquire(30 * SEC)
            .unwrap();
        (Instant::now(), p.fencing_token())
    });
    std::thread::sleep(Duration::from_millis(300));
    let released = Instant::now();
    held.release().unwrap();
    let (acquired, _) = waiter.join().unwrap();
    let took = acquired - released;
    assert!(
        took < Duration::from_secs(5),
        "woken after {took:?}; the fallback is 20 s"
    );
}

#[test]
fn never_more_than_permits_holders_under_expiry_churn() {
    let server = TestRedis::start();
    let permits = 3;
    let inside = Arc::new(AtomicI64::new(0));
    let worst = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let redis_worst = Arc::new(AtomicI64::new(0));
    let mut threads = Vec::new();
    for t in 0..12u64 {
        let swarm = connect(&server, "churn");
        let (inside, worst, stop) = (inside.clone(), worst.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let sem = swarm
                .semaphore("s", permits)
                .unwrap()
                .ttl(Duration::from_millis(200));
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                let Ok(p) = sem.acquire(10 * SEC) else {
                    continue;
                };
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                worst.fetch_max(n, Ordering::SeqCst);
                // Some holders overrun their TTL; they self-fence by checking
                // is_held() and leave as soon as it turns false.
                let hold = Duration::from_millis(if (t + rounds) % 3 == 0 { 300 } else { 20 });
                let until = Instant::now() + hold;
                while Instant::now() < until && p.is_held() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(p);
                rounds += 1;
            }
        }));
    }
    let sampler = {
        let swarm = connect(&server, "churn");
        let (stop, redis_worst) = (stop.clone(), redis_worst.clone());
        std::thread::spawn(move || {
            let sem = swarm.semaphore("s", permits).unwrap();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(n) = sem.holders() {
                    redis_worst.fetch_max(n as i64, Ordering::SeqCst);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    sampler.join().unwrap();
    assert!(
        worst.load(Ordering::SeqCst) <= permits as i64,
        "{} holders at once",
        worst.load(Ordering::SeqCst)
    );
    assert!(redis_worst.load(Ordering::SeqCst) <= permits as i64);
    assert_eq!(
        worst.load(Ordering::SeqCst),
        permits as i64,
        "the test should reach the bound"
    );
}

#[test]
fn extend_never_revives_an_expired_permit() {
    let server = TestRedis::start();
    let s = connect(&server, "revive");
    let sem = s
        .semaphore("one", 1)
        .unwrap()
        .ttl(Duration::from_millis(100));
    let p = sem.try_acquire().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(p.extend(10 * SEC), Err(Error::LeaseLost { .. })));
    assert_eq!(sem.holders().unwrap(), 0);
}

#[test]
fn fair_semaphore_admits_in_arrival_order() {
    let server = TestRedis::start();
    let a = connect(&server, "fairsem");
    let sem = a.semaphore("one", 1).unwrap().fair(true).ttl(30 * SEC);
    let held = sem.try_acquire().unwrap().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..4 {
        let swarm = connect(&server, "fairsem");
        let order = order.clone();
        waiters.push(std::thread::spawn(move || {
            let sem = swarm.semaphore("one", 1).unwrap().fair(true).ttl(30 * SEC);
            let p = sem.acquire(30 * SEC).unwrap();
            order.lock().push(i);
            std::thread::sleep(Duration::from_millis(20));
            drop(p);
        }));
        // Waiter i is in the queue before waiter i+1 arrives.
        assert!(
            support::wait_until(10 * SEC, || {
                let queued: usize = redis::cmd("ZCARD")
                    .arg("{fairsem:sem:one}:queue")
                    .query(&mut server.conn())
                    .unwrap();
                queued == i + 1
            }),
            "waiter {i} never queued"
        );
    }
    held.release().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
}

fn run(server: &impl Target, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut server.conn()).unwrap();
}

fn zcard(server: &impl Target, key: &str) -> i64 {
    redis::cmd("ZCARD")
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

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: redswarm::Result<T>, key: &str) {
    match r {
        Err(Error::CorruptData { key: k, reason }) => assert_eq!(k, key, "{reason}"),
        other => panic!("expected CorruptData naming {key}, got {other:?}"),
    }
}

#[test]
fn corrupt_semaphore_data_is_an_error_naming_the_key_and_nothing_is_written() {
    let server = TestRedis::start();
    let s = connect(&server, "corrupt");
    let k = |name: &str, suffix: &str| format!("{{corrupt:sem:{name}}}:{suffix}");
    let sem = |name: &str| s.semaphore(name, 2).unwrap().ttl(60 * SEC);

    // The holders set is a string.
    run(&server, &["SET", &k("h", "holders"), "x"]);
    assert_corrupt(sem("h").try_acquire(), &k("h", "holders"));
    assert_corrupt(sem("h").holders(), &k("h", "holders"));
    assert!(!exists(&server, &k("h", "fence")));

    // The fencing counter is not a number: no permit is left behind.
    run(&server, &["SET", &k("f", "fence"), "seven"]);
    assert_corrupt(sem("f").try_acquire(), &k("f", "fence"));
    assert_corrupt(sem("f").acquire(5 * SEC), &k("f", "fence"));
    assert_eq!(zcard(&server, &k("f", "holders")), 0, "orphaned permit");

    // The fencing counter is of the wrong type.
    run(&server, &["RPUSH", &k("l", "fence"), "1"]);
    assert_corrupt(sem("l").try_acquire(), &k("l", "fence"));
    assert_eq!(zcard(&server, &k("l", "holders")), 0, "orphaned permit");

    // The grants record is a string.
    run(&server, &["SET", &k("g", "grants"), "x"]);
    assert_corrupt(sem("g").try_acquire(), &k("g", "grants"));
    assert_eq!(zcard(&server, &k("g", "holders")), 0, "orphaned permit");

    // Fair mode: the queue is a string, the tickets a list, a ticket bad.
    run(&server, &["SET", &k("q", "queue"), "x"]);
    assert_corrupt(sem("q").fair(true).try_acquire(), &k("q", "queue"));
    assert!(!exists(&server, &k("q", "tickets")));
    run(&server, &["RPUSH", &k("t", "tickets"), "x"]);
    assert_corrupt(sem("t").fair(true).try_acquire(), &k("t", "tickets"));
    assert!(!exists(&server, &k("t", "queue")));
    run(&server, &["ZADD", &k("d", "queue"), "1", "w"]);
    run(&server, &["HSET", &k("d", "tickets"), "w", "soon"]);
    assert_corrupt(sem("d").fair(true).try_acquire(), &k("d", "tickets"));
    assert_eq!(zcard(&server, &k("d", "queue")), 1, "the queue was changed");
    assert_eq!(zcard(&server, &k("d", "holders")), 0, "orphaned permit");

    // Release with a corrupt grants record leaves the permit as it was.
    let p = sem("r").try_acquire().unwrap().unwrap();
    run(&server, &["DEL", &k("r", "grants")]);
    run(&server, &["SET", &k("r", "grants"), "x"]);
    assert_corrupt(p.release(), &k("r", "grants"));
    assert_eq!(zcard(&server, &k("r", "holders")), 1, "released halfway");
}

#[test]
fn extend_on_an_auto_extended_permit_keeps_room_for_renewals() {
    let server = TestRedis::start();
    let s = connect(&server, "shrink");
    let sem = s
        .semaphore("one", 1)
        .unwrap()
        .ttl(2 * SEC)
        .auto_extend(true);
    let p = sem.try_acquire().unwrap().unwrap();
    // Three heartbeats are 300 ms here: 150 ms could lapse between beats.
    let err = p.extend(Duration::from_millis(150)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { what: "ttl", .. }),
        "{err}"
    );
    p.extend(SEC).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(p.is_held());
    assert_eq!(sem.holders().unwrap(), 1);
}

#[test]
fn release_of_a_permit_gone_from_redis_is_lease_lost() {
    let server = TestRedis::start();
    let s = connect(&server, "gone");
    let sem = s.semaphore("one", 1).unwrap().ttl(60 * SEC);
    let p = sem.try_acquire().unwrap().unwrap();
    // An operator, or a Redis restart without persistence.
    run(&server, &["DEL", "{gone:sem:one}:holders"]);
    let err = p.release().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
}

#[test]
fn a_permit_wait_of_duration_max_blocks_until_a_permit_is_released() {
    let server = TestRedis::start();
    let a = connect(&server, "forever");
    let b = connect(&server, "forever");
    let held = a
        .semaphore("one", 1)
        .unwrap()
        .try_acquire()
        .unwrap()
        .unwrap();
    let sem = b.semaphore("one", 1).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(sem.acquire(Duration::MAX));
    });
    // Still waiting (not panicked, not timed out) while the permit is held.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    held.release().unwrap();
    let permit = rx
        .recv_timeout(10 * SEC)
        .expect("acquire(Duration::MAX) never returned")
        .unwrap();
    assert!(permit.is_held());
}

#[test]
fn permit_ttls_above_max_ttl_are_invalid_input() {
    let server = TestRedis::start();
    let s = connect(&server, "hugettl");
    let wrapping = Duration::from_millis(u64::MAX) + Duration::from_millis(5);
    let is_ttl_error = |e: &Error| matches!(e, Error::InvalidInput { what: "ttl", .. });
    for ttl in [
        wrapping,
        Duration::MAX,
        redswarm::MAX_TTL + Duration::from_millis(1),
    ] {
        let sem = s.semaphore("s", 1).unwrap().ttl(ttl);
        let err = sem.try_acquire().unwrap_err();
        assert!(is_ttl_error(&err), "{ttl:?}: {err}");
        let err = sem.acquire(SEC).unwrap_err();
        assert!(is_ttl_error(&err), "{ttl:?}: {err}");
    }
    // No permit was granted with a wrapped 5 ms TTL.
    assert_eq!(s.semaphore("s", 1).unwrap().holders().unwrap(), 0);
    let permit = s.semaphore("s", 1).unwrap().try_acquire().unwrap().unwrap();
    let err = permit.extend(wrapping).unwrap_err();
    assert!(is_ttl_error(&err), "{err}");
    assert!(permit.is_held());
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
    fn auto_extended_permits_outlive_their_ttl_and_report_loss() {
        let mut server = RedisServer::start();
        let s = connect(&server, "auto");
        let sem = s
            .semaphore("one", 1)
            .unwrap()
            .ttl(Duration::from_millis(400))
            .auto_extend(true);
        let p = sem.try_acquire().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        assert!(p.is_held());
        assert!(sem.try_acquire().unwrap().is_none());
        let lost = p.lost();
        server.kill();
        assert!(lost.recv_timeout(5 * SEC).is_ok());
        assert!(!p.is_held());
    }

    #[test]
    fn try_acquire_whose_reply_is_lost_gets_the_same_permit_and_leaves_no_orphan() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = connect_url(&proxy.url(), "lostsem", SEC);
        let sem = s.semaphore("pool", 2).unwrap().ttl(60 * SEC);
        // Load the script first, so the watched call runs it (no NOSCRIPT round).
        drop(sem.try_acquire().unwrap());
        proxy.drop_reply_to(b"{lostsem:sem:pool}:holders\r\n");
        let p = sem
            .try_acquire()
            .unwrap()
            .expect("the permit whose reply was lost");
        assert_eq!(proxy.dropped_replies(), 1);
        assert_eq!(sem.holders().unwrap(), 1, "one permit, not two");
        let counter: u64 = redis::cmd("GET")
            .arg("{lostsem:sem:pool}:fence")
            .query(&mut server.conn())
            .unwrap();
        assert_eq!(p.fencing_token(), counter);
        p.release().unwrap();
        assert_eq!(sem.holders().unwrap(), 0, "nothing left orphaned");
    }

    #[test]
    fn acquire_whose_reply_is_lost_does_not_wait_on_itself() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = connect_url(&proxy.url(), "lostsemwait", SEC);
        for (name, fair) in [("plain", false), ("fair", true)] {
            // The TTL (60 s) is longer than the wait (20 s): waiting for our own
            // permit to lapse would time out.
            let sem = s.semaphore(name, 1).unwrap().ttl(60 * SEC).fair(fair);
            drop(sem.try_acquire().unwrap());
            proxy.drop_reply_to(format!("{{lostsemwait:sem:{name}}}:holders\r\n").as_bytes());
            let p = sem
                .acquire(20 * SEC)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(proxy.dropped_replies() >= 1, "{name}: no reply was dropped");
            assert_eq!(sem.holders().unwrap(), 1, "{name}");
            p.release().unwrap();
        }
        assert_eq!(proxy.dropped_replies(), 2);
    }

    #[test]
    fn permit_fencing_tokens_keep_rising_across_a_redis_restart_without_persistence() {
        let mut server = RedisServer::start();
        let s = connect(&server, "restart");
        let sem = s.semaphore("s", 3).unwrap().ttl(5 * SEC);
        let mut highest = 0;
        for _ in 0..3 {
            let p = sem.try_acquire().unwrap().unwrap();
            assert!(p.fencing_token() > highest);
            highest = p.fencing_token();
            p.release().unwrap();
        }
        server.restart();
        let mut got = None;
        assert!(
            support::wait_until(10 * SEC, || {
                got = sem.try_acquire().ok().flatten();
                got.is_some()
            }),
            "no permit after the restart"
        );
        let p = got.unwrap();
        assert!(
            p.fencing_token() > highest,
            "token {} after the restart, {highest} before",
            p.fencing_token()
        );
    }
}
