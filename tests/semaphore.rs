//! Semaphores against a real redis-server.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{Config, Error, Redswarm};
use support::RedisServer;

fn connect(server: &RedisServer, ns: &str) -> Redswarm {
    connect_with_recheck(server, ns, Duration::from_secs(1))
}

fn connect_with_recheck(server: &RedisServer, ns: &str, recheck: Duration) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(server.url())
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
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
fn extend_never_revives_an_expired_permit() {
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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

#[test]
fn a_permit_wait_of_duration_max_blocks_until_a_permit_is_released() {
    let server = RedisServer::start();
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
    let server = RedisServer::start();
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
