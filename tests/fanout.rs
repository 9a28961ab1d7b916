//! Fan-out of in-flight work against a real redis-server.
//!
//! With `REDSWARM_TEST_BACKEND=cluster` the tests outside `mod
//! single_server` run on a 3-primary Redis Cluster shared by the whole
//! file instead, with `REDSWARM_TEST_BACKEND=sentinel` on one shared
//! Sentinel set-up (`tests/support/backend.rs`).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use redswarm::{Config, Error, FanoutError, Push, Redswarm, Waited};
use support::{FaultProxy, RedisServer, Target, TestRedis};

const SEC: Duration = Duration::from_secs(1);

fn config(url: String, ns: &str) -> Config {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .pool_size(32)
        .build()
        .unwrap()
}

fn connect(server: &impl Target, ns: &str) -> Redswarm {
    Redswarm::connect(config(server.url(), ns)).unwrap()
}

/// Runs `job` as the leader of `id` on another thread and returns once the
/// job has started, so whoever calls next is sure to wait, not lead (a fixed
/// head start would not be sure on a loaded machine).
fn lead_in_background<T>(
    swarm: Redswarm,
    id: &'static str,
    job: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> std::thread::JoinHandle<Result<T, FanoutError<String>>>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let (started_tx, started) = crossbeam_channel::bounded(1);
    let leader = std::thread::spawn(move || {
        swarm.fanout(id, 10 * SEC, move || {
            let _ = started_tx.send(());
            job()
        })
    });
    started
        .recv_timeout(10 * SEC)
        .expect("the leader's job never started");
    leader
}

#[test]
fn one_leader_and_fifty_waiters_on_two_handles_run_the_job_once() {
    let server = TestRedis::start();
    let handles = [connect(&server, "burst"), connect(&server, "burst")];
    let runs = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(51));
    let threads: Vec<_> = (0..51)
        .map(|i| {
            let swarm = handles[i % 2].clone();
            let (runs, barrier) = (runs.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                swarm.fanout("report", 30 * SEC, || -> Result<String, String> {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(800));
                    Ok("the report".to_string())
                })
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), "the report");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the job must run once");
}

fn evalsha_calls(server: &impl Target) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_jobs_error_reaches_every_waiter() {
    let server = TestRedis::start();
    let a = connect(&server, "err");
    let b = connect(&server, "err");
    let leader = lead_in_background(a, "job", || -> Result<u32, String> {
        std::thread::sleep(Duration::from_millis(400));
        Err("backend down".into())
    });
    let waited = b.fanout("job", 10 * SEC, || -> Result<u32, String> {
        panic!("must not run")
    });
    assert!(
        matches!(waited, Err(FanoutError::Job(ref e)) if e == "backend down"),
        "{waited:?}"
    );
    assert!(matches!(leader.join().unwrap(), Err(FanoutError::Job(_))));
}

#[test]
fn a_waiter_times_out_while_the_job_goes_on_for_the_others() {
    let server = TestRedis::start();
    let a = connect(&server, "timeout");
    let b = connect(&server, "timeout");
    let leader = lead_in_background(a, "slow", || -> Result<u32, String> {
        std::thread::sleep(Duration::from_millis(1000));
        Ok(7)
    });
    let started = Instant::now();
    let r = b.fanout(
        "slow",
        Duration::from_millis(200),
        || -> Result<u32, String> { Ok(0) },
    );
    assert!(matches!(r, Err(FanoutError::Timeout { .. })), "{r:?}");
    assert!(started.elapsed() < 2 * SEC);
    assert_eq!(leader.join().unwrap().unwrap(), 7);
}

#[test]
fn a_leader_that_stops_renewing_is_replaced_by_a_waiter() {
    let server = TestRedis::start();
    let a = connect(&server, "dead");
    let b = connect(&server, "dead");
    let lease = Duration::from_millis(400);
    let Push::Lead(completer) = a
        .fanout_options()
        .leader_lease(lease)
        .push::<String, String>("job")
        .unwrap()
    else {
        panic!("first caller leads");
    };
    // The leader's process "dies": its heartbeat stops and it never completes.
    a.shutdown();
    std::mem::forget(completer);
    let started = Instant::now();
    let r = b.fanout_options().leader_lease(lease).run(
        "job",
        10 * SEC,
        || -> Result<String, String> { Ok("from the waiter".into()) },
    );
    assert_eq!(r.unwrap(), "from the waiter");
    assert!(started.elapsed() < 5 * SEC);
}

#[test]
fn a_leader_that_gives_up_promotes_a_waiter_at_once() {
    let server = TestRedis::start();
    let a = connect(&server, "abandon");
    let b = connect(&server, "abandon");
    let f = a.fanout_options().leader_lease(10 * SEC);
    let Push::Lead(completer) = f.push::<u32, String>("job").unwrap() else {
        panic!("leads")
    };
    let (waiting_tx, waiting) = crossbeam_channel::bounded(1);
    let waiter = std::thread::spawn(move || {
        let Push::Wait(w) = b.fanout_options().push::<u32, String>("job").unwrap() else {
            panic!("waits")
        };
        let _ = waiting_tx.send(());
        let started = Instant::now();
        match w.wait(10 * SEC).unwrap() {
            Waited::Promoted(c) => (c.complete(Ok(9)).unwrap(), started.elapsed()),
            Waited::Done(r) => panic!("expected promotion, got {r:?}"),
        }
    });
    waiting.recv_timeout(10 * SEC).unwrap();
    drop(completer); // gives up without an outcome
    let (v, took) = waiter.join().unwrap();
    assert_eq!(v, 9);
    assert!(
        took < 5 * SEC,
        "promoted after {took:?}; the lease was 10 s"
    );
}

#[test]
fn a_waiter_can_receive_the_outcome_on_a_channel() {
    let server = TestRedis::start();
    let a = connect(&server, "channel");
    let b = connect(&server, "channel");
    let Push::Lead(completer) = a.fanout_options().push::<u32, String>("job").unwrap() else {
        panic!("leads")
    };
    let Push::Wait(w) = b.fanout_options().push::<u32, String>("job").unwrap() else {
        panic!("waits")
    };
    let outcome = w.into_receiver(10 * SEC);
    assert!(outcome.try_recv().is_err(), "nothing before completion");
    completer.complete(Ok(11)).unwrap();
    match outcome.recv_timeout(10 * SEC).unwrap().unwrap() {
        Waited::Done(r) => assert_eq!(r.unwrap(), 11),
        Waited::Promoted(_) => panic!("the leader completed"),
    }
}

/// Child role: leads job `CHILD_JOB` and never finishes (the parent SIGKILLs it).
#[test]
fn child_fanout_leader() {
    let (Ok(url), Ok(job)) = (std::env::var("CHILD_URL"), std::env::var("CHILD_JOB")) else {
        return;
    };
    let swarm = Redswarm::connect(config(url, "sigkill")).unwrap();
    let _ = swarm
        .fanout_options()
        .leader_lease(Duration::from_millis(500))
        .run(&job, 600 * SEC, || -> Result<String, String> {
            std::thread::sleep(600 * SEC);
            Ok("never".into())
        });
}

#[test]
fn a_leader_process_killed_with_sigkill_is_replaced_by_a_waiter() {
    let server = TestRedis::start();
    let mut child = support::child_role("child_fanout_leader")
        .env("CHILD_URL", server.url())
        .env("CHILD_JOB", "k")
        .spawn()
        .unwrap();
    let leads = || -> bool {
        let n: i64 = redis::cmd("EXISTS")
            .arg("{sigkill:fanout:k}")
            .query(&mut server.conn())
            .unwrap();
        n == 1
    };
    assert!(
        support::wait_until(10 * SEC, leads),
        "the child never became leader"
    );
    let b = connect(&server, "sigkill");
    let waiter = std::thread::spawn(move || {
        b.fanout_options()
            .leader_lease(Duration::from_millis(500))
            .run("k", 20 * SEC, || -> Result<String, String> {
                Ok("from the waiter".into())
            })
    });
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), "from the waiter");
}

#[test]
fn a_panicking_job_fails_every_caller_instead_of_hanging() {
    let server = TestRedis::start();
    let a = connect(&server, "panic");
    let b = connect(&server, "panic");
    let leader = lead_in_background(a, "job", || -> Result<u32, String> {
        std::thread::sleep(Duration::from_millis(300));
        panic!("job exploded");
    });
    let r = b.fanout("job", 10 * SEC, || -> Result<u32, String> { Ok(1) });
    assert!(
        matches!(r, Err(FanoutError::LeaderFailed(ref m)) if m.contains("job exploded")),
        "{r:?}"
    );
    assert!(matches!(
        leader.join().unwrap(),
        Err(FanoutError::LeaderFailed(_))
    ));
}

#[test]
fn a_caller_arriving_just_after_completion_gets_the_stored_outcome() {
    let server = TestRedis::start();
    let a = connect(&server, "window");
    let f = a.fanout_options().result_ttl(5 * SEC);
    assert_eq!(
        f.run("job", SEC, || -> Result<u32, String> { Ok(3) })
            .unwrap(),
        3
    );
    let again = f.run("job", SEC, || -> Result<u32, String> {
        panic!("must not run again")
    });
    assert_eq!(again.unwrap(), 3);
    let short = a.fanout_options().result_ttl(Duration::from_millis(50));
    assert_eq!(
        short
            .run("job2", SEC, || -> Result<u32, String> { Ok(1) })
            .unwrap(),
        1
    );
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        short
            .run("job2", SEC, || -> Result<u32, String> { Ok(2) })
            .unwrap(),
        2
    );
}

#[test]
fn bad_ids_oversized_and_unserializable_results_are_clear_errors() {
    let server = TestRedis::start();
    let a = connect(&server, "bad");
    let r = a.fanout("", SEC, || -> Result<u32, String> { Ok(1) });
    assert!(
        matches!(
            r,
            Err(FanoutError::Redswarm(Error::InvalidInput {
                what: "job id",
                ..
            }))
        ),
        "{r:?}"
    );

    let small = a.fanout_options().max_result_bytes(16);
    let r = small.run("big", SEC, || -> Result<String, String> {
        Ok("x".repeat(100))
    });
    assert!(
        matches!(r, Err(FanoutError::Redswarm(Error::TooLarge { .. }))),
        "{r:?}"
    );
    // Waiters of that run (and late callers) learn it failed.
    let late = small.run("big", SEC, || -> Result<String, String> { Ok("y".into()) });
    assert!(
        matches!(late, Err(FanoutError::LeaderFailed(_))),
        "{late:?}"
    );

    // JSON cannot have non-string map keys.
    let r = a.fanout("map", SEC, || -> Result<HashMap<(u8, u8), u8>, String> {
        Ok(HashMap::from([((1, 2), 3)]))
    });
    assert!(
        matches!(r, Err(FanoutError::Redswarm(Error::Serialization(_)))),
        "{r:?}"
    );
}

fn run(server: &impl Target, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut server.conn()).unwrap();
}

fn exists(server: &impl Target, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(&mut server.conn())
        .unwrap()
        == 1
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, FanoutError<String>>, key: &str) {
    match r {
        Err(FanoutError::Redswarm(Error::CorruptData { key: k, reason })) => {
            assert_eq!(k, key, "{reason}")
        }
        other => panic!("expected CorruptData naming {key}, got {other:?}"),
    }
}

#[test]
fn corrupt_fanout_data_is_an_error_naming_the_key_and_nothing_is_written() {
    let server = TestRedis::start();
    let s = connect(&server, "corrupt");
    let job = |id: &str| s.fanout(id, SEC, || -> Result<u32, String> { Ok(1) });

    // The leader key is a hash.
    run(&server, &["HSET", "{corrupt:fanout:l}", "leader", "x"]);
    assert_corrupt(job("l"), "{corrupt:fanout:l}");

    // The outcome key is a hash.
    run(&server, &["HSET", "{corrupt:fanout:r}:result", "ok", "1"]);
    assert_corrupt(job("r"), "{corrupt:fanout:r}:result");
    assert!(!exists(&server, "{corrupt:fanout:r}"), "a leader was set");

    // The outcome is not the expected JSON.
    run(&server, &["SET", "{corrupt:fanout:j}:result", "not json"]);
    assert_corrupt(job("j"), "{corrupt:fanout:j}:result");

    // The fencing counter is not a number: nobody is made leader.
    run(&server, &["SET", "{corrupt:fanout:f}:fence", "seven"]);
    assert_corrupt(job("f"), "{corrupt:fanout:f}:fence");
    assert!(!exists(&server, "{corrupt:fanout:f}"), "orphaned leader");
}

#[test]
fn a_follower_whose_driver_gives_up_waits_only_its_own_timeout() {
    let server = TestRedis::start();
    let s = connect(&server, "twice");
    // A leader elsewhere holds the job longer than anyone here waits.
    run(
        &server,
        &["SET", "{twice:fanout:job}", "someone-else", "PX", "60000"],
    );
    let timeout = 5 * SEC;
    let driver = {
        let s = s.clone();
        std::thread::spawn(move || s.fanout("job", timeout, || -> Result<u32, String> { Ok(1) }))
    };
    // The driver has subscribed to the job's channel: it drives, and the
    // next caller of this handle follows it.
    // A failed check (an EINTR) just checks again.
    assert!(support::wait_until(10 * SEC, || {
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("{twice:fanout:job}:done")
            .query::<(String, u64)>(&mut server.conn())
            .is_ok_and(|(_, n)| n == 1)
    }));
    let started = Instant::now();
    let r = s.fanout("job", timeout, || -> Result<u32, String> { Ok(2) });
    let waited = started.elapsed();
    assert!(
        matches!(r, Err(FanoutError::Timeout { waited }) if waited == timeout),
        "{r:?}"
    );
    // The driver gives up within the follower's timeout; a follower that
    // then started over would wait up to twice as long.
    assert!(
        waited < timeout + 3 * SEC,
        "waited {waited:?} with a timeout of {timeout:?}"
    );
    assert!(matches!(
        driver.join().unwrap(),
        Err(FanoutError::Timeout { .. })
    ));
}

#[test]
fn a_fanout_timeout_of_duration_max_waits_for_the_outcome() {
    let server = TestRedis::start();
    let a = connect(&server, "forever");
    let b = connect(&server, "forever");
    let (go_tx, go) = crossbeam_channel::bounded::<()>(1);
    let leader = lead_in_background(a.clone(), "slow", move || -> Result<u32, String> {
        go.recv_timeout(30 * SEC).map_err(|e| e.to_string())?;
        Ok(7)
    });
    let waiter = |swarm: Redswarm| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ =
                tx.send(swarm.fanout("slow", Duration::MAX, || -> Result<u32, String> { Ok(0) }));
        });
        rx
    };
    // One waits in memory behind the leader's thread, one in Redis, one
    // through the low-level waiter.
    let same_handle = waiter(a.clone());
    let other_handle = waiter(b.clone());
    let low_level = match b.fanout_options().push::<u32, String>("slow").unwrap() {
        Push::Wait(w) => w.into_receiver(Duration::MAX),
        Push::Lead(_) => panic!("the leader is running"),
    };
    assert!(same_handle
        .recv_timeout(Duration::from_millis(500))
        .is_err());
    assert!(other_handle
        .recv_timeout(Duration::from_millis(10))
        .is_err());
    assert!(low_level.recv_timeout(Duration::from_millis(10)).is_err());
    go_tx.send(()).unwrap();
    assert_eq!(leader.join().unwrap().unwrap(), 7);
    for (who, rx) in [("same handle", same_handle), ("other handle", other_handle)] {
        let r = rx
            .recv_timeout(10 * SEC)
            .unwrap_or_else(|_| panic!("{who}: no outcome"));
        assert_eq!(r.unwrap(), 7, "{who}");
    }
    match low_level
        .recv_timeout(10 * SEC)
        .expect("low-level waiter: no outcome")
    {
        Ok(Waited::Done(r)) => assert_eq!(r.unwrap(), 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fanout_ttls_above_max_ttl_are_invalid_input() {
    let server = TestRedis::start();
    let a = connect(&server, "hugettl");
    let wrapping = Duration::from_millis(u64::MAX) + Duration::from_millis(5);
    let job = || -> Result<u32, String> { Ok(1) };
    for (opts, what) in [
        (a.fanout_options().result_ttl(wrapping), "result ttl"),
        (a.fanout_options().result_ttl(Duration::MAX), "result ttl"),
        (a.fanout_options().leader_lease(wrapping), "leader lease"),
        (
            a.fanout_options().leader_lease(Duration::MAX),
            "leader lease",
        ),
    ] {
        match opts.run("job", SEC, job) {
            Err(FanoutError::Redswarm(Error::InvalidInput { what: w, .. })) => {
                assert_eq!(w, what)
            }
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    // Nothing was stored with a wrapped 5 ms TTL: a fresh run leads.
    let keys = a.keys().fanout("job").unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&keys.leader)
        .arg(&keys.result)
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(exists, 0);
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
    fn threads_of_one_handle_share_one_driver() {
        let server = RedisServer::start();
        // Default heartbeat (1 s): few background script calls during the burst.
        let swarm = Redswarm::connect(
            Config::builder()
                .url(server.url())
                .namespace("local")
                .build()
                .unwrap(),
        )
        .unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(40));
        let before = evalsha_calls(&server);
        let threads: Vec<_> = (0..40)
            .map(|_| {
                let (swarm, runs, barrier) = (swarm.clone(), runs.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    swarm.fanout("shared", 30 * SEC, || -> Result<u32, String> {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Long enough that every thread has joined in, even on
                        // a loaded machine.
                        std::thread::sleep(Duration::from_millis(800));
                        Ok(99)
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), 99);
        }
        let scripts = evalsha_calls(&server) - before;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // One claim and one completion (plus a few heartbeats), not 40 claims.
        assert!(scripts < 12, "{scripts} script calls for 40 callers");
    }

    #[test]
    fn a_waiter_gets_the_outcome_across_a_pubsub_reconnect() {
        let server = RedisServer::start();
        let a = connect(&server, "reconnect");
        let b = connect(&server, "reconnect");
        let leader = lead_in_background(a, "job", || -> Result<u32, String> {
            std::thread::sleep(Duration::from_millis(600));
            Ok(5)
        });
        let waiter = std::thread::spawn(move || {
            b.fanout("job", 10 * SEC, || -> Result<u32, String> { Ok(0) })
        });
        std::thread::sleep(Duration::from_millis(200));
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut server.conn())
            .unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 5);
        assert_eq!(leader.join().unwrap().unwrap(), 5);
    }

    #[test]
    fn a_claim_whose_reply_is_lost_still_leads_and_runs_the_job_once() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = Redswarm::connect(config(proxy.url(), "lostclaim")).unwrap();
        // Load the scripts first, so the watched call runs the claim (no
        // NOSCRIPT round).
        let _ = s.fanout("warm-up", 5 * SEC, || -> Result<u32, String> { Ok(0) });
        proxy.drop_reply_to(b"{lostclaim:fanout:job}\r\n");
        let runs = AtomicU64::new(0);
        let v = s
            .fanout("job", 10 * SEC, || -> Result<u32, String> {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(7)
            })
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(proxy.dropped_replies(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(
            !exists(&server, "{lostclaim:fanout:job}"),
            "the leader stepped down"
        );
    }

    #[test]
    fn fan_out_leaders_are_fenced_and_a_lost_claim_reply_keeps_the_token() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = Redswarm::connect(config(proxy.url(), "fencedclaim")).unwrap();
        let f = s.fanout_options().result_ttl(Duration::from_millis(1));
        let lead = |id: &str| match f.push::<u32, String>(id).unwrap() {
            Push::Lead(c) => c,
            Push::Wait(_) => panic!("nobody else leads `{id}`"),
        };
        let first = lead("job");
        let t1 = first.fencing_token();
        assert!(t1 > 0);
        first.complete(Ok(1)).unwrap();
        assert!(support::wait_until(5 * SEC, || !exists(
            &server,
            "{fencedclaim:fanout:job}:result"
        )));
        proxy.drop_reply_to(b"{fencedclaim:fanout:job}\r\n");
        let second = lead("job");
        assert_eq!(proxy.dropped_replies(), 1);
        assert!(second.fencing_token() > t1);
        let counter: u64 = redis::cmd("GET")
            .arg("{fencedclaim:fanout:job}:fence")
            .query(&mut server.conn())
            .unwrap();
        assert_eq!(second.fencing_token(), counter, "one grant, one token");
        second.complete(Ok(2)).unwrap();
    }

    #[test]
    fn fan_out_leadership_tokens_keep_rising_across_a_redis_restart_without_persistence() {
        let mut server = RedisServer::start();
        let s = connect(&server, "restart");
        let f = s.fanout_options();
        let t1 = match f.push::<u32, String>("job").unwrap() {
            Push::Lead(c) => {
                let t = c.fencing_token();
                drop(c); // steps down without an outcome
                t
            }
            Push::Wait(_) => panic!("nobody else leads"),
        };
        server.restart();
        let mut t2 = None;
        assert!(
            support::wait_until(10 * SEC, || {
                if let Ok(Push::Lead(c)) = f.push::<u32, String>("job") {
                    t2 = Some(c.fencing_token());
                }
                t2.is_some()
            }),
            "no leadership after the restart"
        );
        let t2 = t2.unwrap();
        assert!(t2 > t1, "token {t2} after the restart, {t1} before");
    }
}
