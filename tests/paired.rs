//! Paired workers against a real redis-server: the winner works, backups
//! learn of its success, take over on its failure or death, and a stale
//! winner's report is rejected by its fencing token.
//!
//! With `REDSWARM_TEST_BACKEND=cluster` the tests outside `mod
//! single_server` run on a 3-primary Redis Cluster shared by the whole
//! file instead, with `REDSWARM_TEST_BACKEND=sentinel` on one shared
//! Sentinel set-up (`tests/support/backend.rs`).

mod support;

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redswarm::{Config, Error, PairedJob, PairedOutcome, PairedRun, Redswarm};
use support::{FaultProxy, RedisServer, Target, TestRedis};

const SEC: Duration = Duration::from_secs(1);

fn builder(url: &str, ns: &str) -> redswarm::ConfigBuilder {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(300))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .pool_size(32)
        // Far above every lease below: a backup that reacts sooner than
        // the lease was woken, not polling.
        .wait_recheck(30 * SEC)
}

fn connect_url(url: &str, ns: &str) -> Redswarm {
    Redswarm::connect(builder(url, ns).build().unwrap()).unwrap()
}

fn connect(server: &impl Target, ns: &str) -> Redswarm {
    connect_url(&server.url(), ns)
}

fn won<T>(o: PairedOutcome<T>) -> PairedJob<T> {
    match o {
        PairedOutcome::Won(job) => job,
        other => panic!("expected Won, got {other:?}"),
    }
}

fn took_over<T>(o: PairedOutcome<T>) -> PairedJob<T> {
    match o {
        PairedOutcome::TookOver(job) => job,
        other => panic!("expected TookOver, got {other:?}"),
    }
}

fn outcome<T>(
    rx: &Receiver<redswarm::Result<PairedOutcome<T>>>,
    within: Duration,
) -> PairedOutcome<T> {
    rx.recv_timeout(within)
        .expect("no outcome in time")
        .expect("the outcome is an error")
}

fn hget(server: &impl Target, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut server.conn())
        .unwrap()
}

fn exists(server: &impl Target, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query(&mut server.conn())
        .unwrap();
    n == 1
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

#[test]
fn a_backup_learns_of_the_winners_success_well_under_the_lease() {
    let server = TestRedis::start();
    let (a, b) = (connect(&server, "ok"), connect(&server, "ok"));
    let lease = 10 * SEC;
    let job = won(a
        .paired_options()
        .lease(lease)
        .task("t")
        .unwrap()
        .run(&"p".to_string())
        .unwrap());
    assert_eq!(job.attempt(), 1);
    assert_eq!(job.payload(), "p");
    // The first join happens before receiver() returns: b is standing by.
    let rx = b
        .paired_options()
        .lease(lease)
        .task("t")
        .unwrap()
        .receiver(&"p".to_string())
        .unwrap();
    assert!(rx.try_recv().is_err(), "b must be standing by");
    let reported = Instant::now();
    job.succeeded().unwrap();
    let o = outcome(&rx, 20 * SEC);
    assert!(
        matches!(o, PairedOutcome::DoneByPeer { attempt: 1 }),
        "{o:?}"
    );
    let took = reported.elapsed();
    assert!(
        took < 3 * SEC,
        "backup learned after {took:?} (lease {lease:?})"
    );
    // The lock is cleaned up; the record stays for late backups.
    assert!(!exists(&server, "{ok:paired:t}"));
    assert_eq!(
        hget(&server, "{ok:paired:t}:record", "state").as_deref(),
        Some("done")
    );
}

#[test]
fn a_backup_takes_over_at_once_when_the_winner_reports_failure() {
    let server = TestRedis::start();
    let (a, b) = (connect(&server, "fail"), connect(&server, "fail"));
    let lease = 10 * SEC;
    let job = won(a
        .paired_options()
        .lease(lease)
        .task("t")
        .unwrap()
        .run(&7u32)
        .unwrap());
    let rx = b
        .paired_options()
        .lease(lease)
        .task("t")
        .unwrap()
        .receiver(&7u32)
        .unwrap();
    assert!(rx.try_recv().is_err(), "b must be standing by");
    let first_fence = job.fencing_token();
    let reported = Instant::now();
    job.failed("gateway said 503").unwrap();
    let job2 = took_over(outcome(&rx, 20 * SEC));
    let took = reported.elapsed();
    assert!(took < 3 * SEC, "took over after {took:?} (lease {lease:?})");
    assert_eq!(job2.attempt(), 2);
    assert!(job2.is_takeover());
    assert_eq!(*job2.payload(), 7);
    assert!(job2.fencing_token() > first_fence);
    assert_eq!(
        hget(&server, "{fail:paired:t}:record", "reason").as_deref(),
        Some("gateway said 503")
    );
    job2.succeeded().unwrap();
    let late = won_or_done(&a, "t");
    assert!(
        matches!(late, PairedOutcome::DoneByPeer { attempt: 2 }),
        "{late:?}"
    );
}

fn won_or_done(s: &Redswarm, id: &str) -> PairedOutcome<u32> {
    s.paired_options()
        .lease(10 * SEC)
        .task(id)
        .unwrap()
        .run(&7u32)
        .unwrap()
}

#[test]
fn a_job_dropped_without_a_report_hands_the_task_to_a_backup_at_once() {
    let server = TestRedis::start();
    let (a, b) = (connect(&server, "drop"), connect(&server, "drop"));
    let job = won(a
        .paired_options()
        .lease(10 * SEC)
        .task("t")
        .unwrap()
        .run(&1u8)
        .unwrap());
    let rx = b
        .paired_options()
        .lease(10 * SEC)
        .task("t")
        .unwrap()
        .receiver(&1u8)
        .unwrap();
    let dropped = Instant::now();
    drop(job);
    let job2 = took_over(outcome(&rx, 20 * SEC));
    assert!(dropped.elapsed() < 3 * SEC);
    assert_eq!(job2.attempt(), 2);
    job2.succeeded().unwrap();
}

#[test]
fn a_live_winner_keeps_its_task_past_its_lease() {
    let server = TestRedis::start();
    let (a, b) = (connect(&server, "long"), connect(&server, "long"));
    let lease = Duration::from_millis(400);
    let job = won(a
        .paired_options()
        .lease(lease)
        .task("t")
        .unwrap()
        .run(&1u8)
        .unwrap());
    let rx = b
        .paired_options()
        .lease(lease)
        .task("t")
        .unwrap()
        .receiver(&1u8)
        .unwrap();
    // Work for many leases: the heartbeat renews the winner's lease, so the
    // backup must not take over (the seed's fixed lockTimeout would).
    assert!(
        rx.recv_timeout(2 * SEC).is_err(),
        "a backup took over from a live winner"
    );
    assert!(job.is_held());
    job.succeeded().unwrap();
    let o = outcome(&rx, 20 * SEC);
    assert!(
        matches!(o, PairedOutcome::DoneByPeer { attempt: 1 }),
        "{o:?}"
    );
}

/// Wins `CHILD_TASK` with a 400 ms lease, then either holds it for ever
/// (`CHILD_MODE=hold`) or waits for an item on list `CHILD_GO` and reports
/// success, pushing what happened onto list `CHILD_RESULT`.
#[test]
fn child_paired_winner() {
    let (Ok(url), Ok(ns), Ok(task), Ok(mode)) = (
        std::env::var("CHILD_URL"),
        std::env::var("CHILD_NS"),
        std::env::var("CHILD_TASK"),
        std::env::var("CHILD_MODE"),
    ) else {
        return;
    };
    let swarm = connect_url(&url, &ns);
    let job = won(swarm
        .paired_options()
        .lease(Duration::from_millis(400))
        .task(&task)
        .unwrap()
        .run(&"from the child".to_string())
        .unwrap());
    if mode == "hold" {
        std::thread::sleep(600 * SEC);
        return;
    }
    // Wait for the go by polling on the handle's own connection (routed by
    // key on a cluster URL too; a BLPOP would outlast its read timeout).
    // An error (a read timing out across our SIGSTOP) is retried on a
    // fresh connection.
    let go = std::env::var("CHILD_GO").unwrap();
    let mut conn = swarm.connection().unwrap();
    loop {
        match redis::cmd("LPOP")
            .arg(&go)
            .query::<Option<String>>(&mut *conn)
        {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(_) => conn = swarm.connection().unwrap(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let fence = job.fencing_token();
    let what = match job.succeeded() {
        Ok(()) => format!("accepted {fence}"),
        Err(Error::LeaseLost { reason, .. }) => format!("rejected {fence} {reason}"),
        Err(e) => format!("error {fence} {e}"),
    };
    let _: i64 = redis::cmd("RPUSH")
        .arg(std::env::var("CHILD_RESULT").unwrap())
        .arg(what)
        .query(&mut *conn)
        .unwrap();
}

fn spawn_winner(server: &impl Target, ns: &str, mode: &str) -> std::process::Child {
    let child = support::child_role("child_paired_winner")
        .env("CHILD_URL", server.url())
        .env("CHILD_NS", ns)
        .env("CHILD_TASK", "t")
        .env("CHILD_MODE", mode)
        .env("CHILD_GO", format!("{ns}:go"))
        .env("CHILD_RESULT", format!("{ns}:result"))
        .spawn()
        .unwrap();
    let record = format!("{{{ns}:paired:t}}:record");
    assert!(
        support::wait_until(20 * SEC, || hget(server, &record, "attempt").as_deref()
            == Some("1")),
        "the child never won the task"
    );
    child
}

#[test]
fn a_backup_takes_over_after_the_lease_when_the_winner_process_is_killed() {
    let server = TestRedis::start();
    let mut child = spawn_winner(&server, "killed", "hold");
    let b = connect(&server, "killed");
    let rx = b
        .paired_options()
        .lease(Duration::from_millis(400))
        .task("t")
        .unwrap()
        .receiver(&"from the parent".to_string())
        .unwrap();
    // Alive, the child keeps its task past several leases.
    assert!(
        rx.recv_timeout(SEC).is_err(),
        "taken over from a live winner"
    );
    child.kill().unwrap(); // SIGKILL: no report, no goodbye
    child.wait().unwrap();
    let killed = Instant::now();
    let job = took_over(outcome(&rx, 20 * SEC));
    log::info!("took over {:?} after the kill", killed.elapsed());
    assert_eq!(job.attempt(), 2);
    // The payload is the task's, as stored by the winner.
    assert_eq!(job.payload(), "from the child");
    assert!(hget(&server, "{killed:paired:t}:record", "reason")
        .unwrap()
        .contains("lost its lease"));
    job.succeeded().unwrap();
}

#[test]
fn a_winner_paused_past_its_lease_is_taken_over_and_its_late_report_is_rejected() {
    let server = TestRedis::start();
    let mut child = spawn_winner(&server, "paused", "report");
    let b = connect(&server, "paused");
    let rx = b
        .paired_options()
        .lease(Duration::from_millis(400))
        .task("t")
        .unwrap()
        .receiver(&"from the parent".to_string())
        .unwrap();
    assert!(rx.try_recv().is_err(), "b must be standing by");
    signal(child.id(), "STOP");
    let job = took_over(outcome(&rx, 20 * SEC));
    assert_eq!(job.attempt(), 2);
    signal(child.id(), "CONT");
    let _: i64 = redis::cmd("RPUSH")
        .arg("paused:go")
        .arg("go")
        .query(&mut server.conn())
        .unwrap();
    let mut result: Option<String> = None;
    assert!(
        support::wait_until(20 * SEC, || {
            result = redis::cmd("LPOP")
                .arg("paused:result")
                .query(&mut server.conn())
                .unwrap();
            result.is_some()
        }),
        "the resumed child never reported"
    );
    let result = result.unwrap();
    let mut words = result.split(' ');
    assert_eq!(words.next(), Some("rejected"), "{result}");
    let child_fence: u64 = words.next().unwrap().parse().unwrap();
    assert!(job.fencing_token() > child_fence, "{result}");
    assert!(child.wait().unwrap().success());
    // The takeover's report is the one that counts.
    job.succeeded().unwrap();
    assert_eq!(
        hget(&server, "{paused:paired:t}:record", "state").as_deref(),
        Some("done")
    );
    assert_eq!(
        hget(&server, "{paused:paired:t}:record", "attempt").as_deref(),
        Some("2")
    );
}

#[test]
fn exactly_one_of_three_racing_participants_wins() {
    let server = TestRedis::start();
    let handles: Vec<Redswarm> = (0..3).map(|_| connect(&server, "race")).collect();
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(3));
        let threads: Vec<_> = handles
            .iter()
            .cloned()
            .map(|s| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    match s.paired(&format!("t{round}"), &round).unwrap() {
                        PairedOutcome::Won(job) => {
                            std::thread::sleep(Duration::from_millis(200));
                            job.succeeded().unwrap();
                            "won"
                        }
                        PairedOutcome::DoneByPeer { attempt: 1 } => "peer",
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        let mut got: Vec<&str> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, ["peer", "peer", "won"], "round {round}");
    }
}

#[test]
fn each_failure_hands_the_task_to_the_next_backup_until_the_attempts_run_out() {
    let server = TestRedis::start();
    let s: Vec<Redswarm> = (0..4).map(|_| connect(&server, "chain")).collect();
    let opts = |i: usize| s[i].paired_options().lease(10 * SEC).max_attempts(3);
    let first = won(opts(0).task("t").unwrap().run(&0u8).unwrap());
    let rx1 = opts(1).task("t").unwrap().receiver(&0u8).unwrap();
    let rx2 = opts(2).task("t").unwrap().receiver(&0u8).unwrap();
    first.failed("one").unwrap();
    // One backup takes over; the other keeps standing by.
    let (second, other) = crossbeam_channel::select! {
        recv(rx1) -> o => (took_over(o.unwrap().unwrap()), rx2),
        recv(rx2) -> o => (took_over(o.unwrap().unwrap()), rx1),
        default(20 * SEC) => panic!("nobody took over"),
    };
    assert_eq!(second.attempt(), 2);
    assert!(other.recv_timeout(Duration::from_millis(300)).is_err());
    second.failed("two").unwrap();
    let third = took_over(outcome(&other, 20 * SEC));
    assert_eq!(third.attempt(), 3);
    third.failed("three").unwrap();
    match opts(3).task("t").unwrap().run(&0u8).unwrap() {
        PairedOutcome::Failed { attempts, reason } => {
            assert_eq!(attempts, 3);
            assert_eq!(reason, "three");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_backup_arriving_after_success_within_the_retention_gets_done_by_peer() {
    let server = TestRedis::start();
    let (a, b) = (connect(&server, "late"), connect(&server, "late"));
    let opts = |s: &Redswarm| s.paired_options().retention(Duration::from_millis(1500));
    let job = won(opts(&a).task("t").unwrap().run(&1u8).unwrap());
    let first_fence = job.fencing_token();
    job.succeeded().unwrap();
    let o = opts(&b).task("t").unwrap().run(&1u8).unwrap();
    assert!(
        matches!(o, PairedOutcome::DoneByPeer { attempt: 1 }),
        "{o:?}"
    );
    // After the retention the same id is a new task, with a higher token.
    assert!(support::wait_until(20 * SEC, || !exists(
        &server,
        "{late:paired:t}:record"
    )));
    let again = won(opts(&b).task("t").unwrap().run(&1u8).unwrap());
    assert_eq!(again.attempt(), 1);
    assert!(again.fencing_token() > first_fence);
    again.succeeded().unwrap();
}

#[test]
fn the_hash_form_keeps_the_lock_in_a_hash_field_and_behaves_the_same() {
    let server = TestRedis::start();
    let (a, b, c) = (
        connect(&server, "h"),
        connect(&server, "h"),
        connect(&server, "h"),
    );
    let lease = Duration::from_millis(400);
    let opts = |s: &Redswarm| s.paired_options().lease(lease);
    let job = won(opts(&a)
        .hash_field("pushes", "user:7")
        .unwrap()
        .run(&5u32)
        .unwrap());
    // The owner token is a field of the hash; other fields are other tasks.
    let owner = hget(&server, "{h:phash:pushes}", "user:7");
    assert!(owner.is_some());
    let other = won(a.paired_in_hash("pushes", "user:8", &6u32).unwrap());
    other.succeeded().unwrap();
    let rx = opts(&b)
        .hash_field("pushes", "user:7")
        .unwrap()
        .receiver(&5u32)
        .unwrap();
    // The heartbeat renews the field's lease while the winner works.
    assert!(
        rx.recv_timeout(2 * SEC).is_err(),
        "taken over from a live winner"
    );
    let reported = Instant::now();
    job.failed("nope").unwrap();
    let job2 = took_over(outcome(&rx, 20 * SEC));
    assert!(reported.elapsed() < 3 * SEC);
    assert_eq!((job2.attempt(), *job2.payload()), (2, 5));
    assert_ne!(hget(&server, "{h:phash:pushes}", "user:7"), owner);
    job2.succeeded().unwrap();
    assert_eq!(hget(&server, "{h:phash:pushes}", "user:7"), None);
    let o = c.paired_in_hash("pushes", "user:7", &5u32).unwrap();
    assert!(
        matches!(o, PairedOutcome::DoneByPeer { attempt: 2 }),
        "{o:?}"
    );
}

#[test]
fn a_hash_field_whose_winner_is_killed_is_taken_over_after_the_lease() {
    let server = TestRedis::start();
    let a = connect(&server, "hk");
    let b = connect(&server, "hk");
    let lease = Duration::from_millis(400);
    let job = won(a
        .paired_options()
        .lease(lease)
        .hash_field("h", "f")
        .unwrap()
        .run(&1u8)
        .unwrap());
    let rx = b
        .paired_options()
        .lease(lease)
        .hash_field("h", "f")
        .unwrap()
        .receiver(&1u8)
        .unwrap();
    // "Kill" a's process: its heartbeat stops, its job is never reported.
    std::mem::forget(job);
    a.shutdown();
    let job2 = took_over(outcome(&rx, 20 * SEC));
    assert_eq!(job2.attempt(), 2);
    job2.succeeded().unwrap();
}

/// Races for `CHILD_N` tasks against another process: `CHILD_FORM=spawn`
/// submits them all on the thread pool, `blocking` joins them one by one.
/// Every run is counted in hash `<ns>:runs`, every outcome in `<ns>:stats`.
#[test]
fn child_paired_racer() {
    let (Ok(url), Ok(ns), Ok(form), Ok(n)) = (
        std::env::var("CHILD_URL"),
        std::env::var("CHILD_NS"),
        std::env::var("CHILD_FORM"),
        std::env::var("CHILD_N"),
    ) else {
        return;
    };
    let n: usize = n.parse().unwrap();
    let swarm = connect_url(&url, &ns);
    let runs = format!("{ns}:runs");
    let stats = format!("{ns}:stats");
    let count = |swarm: &Redswarm, key: &str, field: &str| {
        let _: i64 = redis::cmd("HINCRBY")
            .arg(key)
            .arg(field)
            .arg(1)
            .query(&mut *swarm.connection().unwrap())
            .unwrap();
    };
    let paired = swarm.paired_options().lease(10 * SEC);
    if form == "spawn" {
        let mut pending = Vec::new();
        for i in 0..n {
            let (s, runs) = (swarm.clone(), runs.clone());
            let rx = paired
                .task(&format!("task-{i}"))
                .unwrap()
                .spawn(&i, move |job| {
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg(&runs)
                        .arg(job.task_id())
                        .arg(1)
                        .query(&mut *s.connection().map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?;
                    Ok(())
                })
                .unwrap();
            pending.push(rx);
        }
        for rx in pending {
            let field = match rx.recv_timeout(60 * SEC).unwrap().unwrap() {
                PairedRun::Ran {
                    took_over: false,
                    result: Ok(()),
                    ..
                } => "won",
                PairedRun::DoneByPeer { .. } => "peer",
                other => panic!("{other:?}"),
            };
            count(&swarm, &stats, field);
        }
    } else {
        for i in 0..n {
            let field = match paired.task(&format!("task-{i}")).unwrap().run(&i).unwrap() {
                PairedOutcome::Won(job) => {
                    count(&swarm, &runs, job.task_id());
                    job.succeeded().unwrap();
                    "won"
                }
                PairedOutcome::DoneByPeer { .. } => "peer",
                other => panic!("{other:?}"),
            };
            count(&swarm, &stats, field);
        }
    }
    swarm.shutdown();
}

#[test]
fn a_thousand_tasks_raced_by_two_processes_are_each_done_exactly_once() {
    let server = TestRedis::start();
    let n = 1000;
    let mut children: Vec<std::process::Child> = ["spawn", "blocking"]
        .iter()
        .map(|form| {
            support::child_role("child_paired_racer")
                .env("CHILD_URL", server.url())
                .env("CHILD_NS", "k")
                .env("CHILD_FORM", form)
                .env("CHILD_N", n.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut children {
        let mut status = None;
        assert!(
            support::wait_until(180 * SEC, || {
                status = c.try_wait().unwrap();
                status.is_some()
            }),
            "a racer did not finish"
        );
        assert!(status.unwrap().success(), "a racer failed");
    }
    let runs: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg("k:runs")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(runs.len(), n, "every task ran");
    assert!(runs.values().all(|&v| v == 1), "a task ran twice");
    let stats: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg("k:stats")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(
        stats.get("won").copied().unwrap_or(0),
        n as i64,
        "{stats:?}"
    );
    assert_eq!(
        stats.get("peer").copied().unwrap_or(0),
        n as i64,
        "{stats:?}"
    );
}

#[test]
fn the_spawn_form_runs_the_work_on_the_pool_and_a_panic_counts_as_failure() {
    let server = TestRedis::start();
    let (a, b) = (connect(&server, "pool"), connect(&server, "pool"));
    let (go_tx, go) = crossbeam_channel::bounded::<()>(1);
    let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
    let first = a
        .paired_options()
        .task("t")
        .unwrap()
        .spawn(&3u16, move |_job| -> Result<(), String> {
            let _ = started_tx.send(());
            let _ = go.recv_timeout(20 * SEC);
            panic!("the work exploded");
        })
        .unwrap();
    started
        .recv_timeout(20 * SEC)
        .expect("the work never started");
    let second = b
        .paired_options()
        .task("t")
        .unwrap()
        .spawn(&3u16, |job| {
            assert_eq!(*job.payload(), 3);
            Ok(())
        })
        .unwrap();
    go_tx.send(()).unwrap();
    match first.recv_timeout(20 * SEC).unwrap().unwrap() {
        PairedRun::Ran {
            attempt: 1,
            took_over: false,
            result: Err(why),
        } => assert!(why.contains("the work exploded"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        second.recv_timeout(20 * SEC).unwrap().unwrap(),
        PairedRun::Ran {
            attempt: 2,
            took_over: true,
            result: Ok(())
        }
    );
}

fn mesh_node(url: &str, ns: &str) -> Redswarm {
    Redswarm::connect(
        builder(url, ns)
            .command_timeout(Duration::from_millis(80))
            .node_ttl(SEC)
            .wait_recheck(Duration::from_millis(300))
            .peer_listen("127.0.0.1:0".parse().unwrap())
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn bad_ids_payloads_and_settings_are_clear_errors() {
    let server = TestRedis::start();
    let s = connect(&server, "bad");
    let invalid = |r: redswarm::Result<redswarm::PairedTask>, what: &str| match r {
        Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
        other => panic!("{what}: {other:?}"),
    };
    invalid(s.paired_options().task(""), "paired task id");
    invalid(s.paired_options().task("a{b}"), "paired task id");
    invalid(s.paired_options().task(&"x".repeat(513)), "paired task id");
    invalid(s.paired_options().hash_field("", "f"), "paired hash name");
    invalid(
        s.paired_options().hash_field("h", "\n"),
        "paired hash field",
    );
    invalid(
        s.paired_options()
            .lease(Duration::from_millis(10))
            .task("t"),
        "ttl",
    );
    invalid(
        s.paired_options().lease(Duration::MAX).task("t"),
        "paired lease",
    );
    invalid(
        s.paired_options().retention(Duration::ZERO).task("t"),
        "paired retention",
    );
    invalid(
        s.paired_options().retention(Duration::MAX).task("t"),
        "paired retention",
    );
    invalid(
        s.paired_options().max_attempts(0).task("t"),
        "paired max attempts",
    );
    let big = "x".repeat(2000);
    match s
        .paired_options()
        .max_payload_bytes(1000)
        .task("t")
        .unwrap()
        .run(&big)
    {
        Err(Error::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (2002, 1000)),
        other => panic!("{other:?}"),
    }
    // Waiting for ever is allowed (and the default).
    let job = won(s
        .paired_options()
        .wait_timeout(Duration::MAX)
        .task("t")
        .unwrap()
        .run(&1u8)
        .unwrap());
    job.succeeded().unwrap();
    // A backup with a short wait gives up with Timeout.
    let holder = won(s.paired("u", &1u8).unwrap());
    let r = connect(&server, "bad")
        .paired_options()
        .wait_timeout(Duration::from_millis(300))
        .task("u")
        .unwrap()
        .run(&1u8);
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    holder.succeeded().unwrap();
}

#[test]
fn corrupt_task_keys_are_reported_by_name_and_nothing_is_written() {
    let server = TestRedis::start();
    let s = connect(&server, "corrupt");
    let mut conn = server.conn();
    let corrupt = |r: redswarm::Result<PairedOutcome<u8>>, key: &str| match r {
        Err(Error::CorruptData { key: k, .. }) => assert_eq!(k, key),
        other => panic!("{key}: {other:?}"),
    };
    // A record of the wrong type.
    let _: () = redis::cmd("SET")
        .arg("{corrupt:paired:a}:record")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    corrupt(s.paired("a", &1u8), "{corrupt:paired:a}:record");
    assert!(
        !exists(&server, "{corrupt:paired:a}"),
        "no lock was written"
    );
    assert!(!exists(&server, "{corrupt:paired:a}:fence"));
    // A record in an unknown state.
    let _: () = redis::cmd("HSET")
        .arg("{corrupt:paired:b}:record")
        .arg("state")
        .arg("weird")
        .query(&mut conn)
        .unwrap();
    corrupt(s.paired("b", &1u8), "{corrupt:paired:b}:record");
    assert!(!exists(&server, "{corrupt:paired:b}"));
    // A fencing counter that is not a number: the new record is not created.
    let _: () = redis::cmd("SET")
        .arg("{corrupt:paired:c}:fence")
        .arg("abc")
        .query(&mut conn)
        .unwrap();
    corrupt(s.paired("c", &1u8), "{corrupt:paired:c}:fence");
    assert!(!exists(&server, "{corrupt:paired:c}:record"));
    // The hash form: the owner hash is a string.
    let _: () = redis::cmd("SET")
        .arg("{corrupt:phash:h}")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    corrupt(s.paired_in_hash("h", "f", &1u8), "{corrupt:phash:h}");
    assert!(!exists(&server, "{corrupt:phash:h}:record:f"));
    // A stored payload of another type: the job is given back as failed.
    let job = won(s.paired("d", &"text".to_string()).unwrap());
    job.failed("first").unwrap();
    let r = s
        .paired_options()
        .max_attempts(5)
        .task("d")
        .unwrap()
        .run(&1u8);
    corrupt(r, "{corrupt:paired:d}:record");
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
    fn a_backup_cut_off_from_redis_and_its_peers_stops_with_partitioned() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let winner = connect(&server, "cut");
        let peer = mesh_node(&server.url(), "cut");
        let backup = mesh_node(&proxy.url(), "cut");
        assert!(support::wait_until(10 * SEC, || backup.known_peers().len() == 1));
        let lease = 10 * SEC;
        let job = won(winner
            .paired_options()
            .lease(lease)
            .task("t")
            .unwrap()
            .run(&1u8)
            .unwrap());
        let rx = backup
            .paired_options()
            .lease(lease)
            .task("t")
            .unwrap()
            .receiver(&1u8)
            .unwrap();
        assert!(rx.try_recv().is_err(), "the backup must be standing by");
        proxy.blackhole();
        peer.shutdown();
        match rx.recv_timeout(20 * SEC).expect("the backup kept waiting") {
            Err(Error::Partitioned(why)) => assert!(why.contains("paired task `t`"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Nobody took over: the winner's report is accepted.
        job.succeeded().unwrap();
    }

    #[test]
    fn a_backup_without_peers_waits_out_a_redis_outage() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let winner = connect(&server, "outage");
        let backup = Redswarm::connect(
            builder(&proxy.url(), "outage")
                .wait_recheck(Duration::from_millis(300))
                .build()
                .unwrap(),
        )
        .unwrap();
        let lease = 10 * SEC;
        let job = won(winner
            .paired_options()
            .lease(lease)
            .task("t")
            .unwrap()
            .run(&1u8)
            .unwrap());
        let rx = backup
            .paired_options()
            .lease(lease)
            .task("t")
            .unwrap()
            .receiver(&1u8)
            .unwrap();
        proxy.blackhole();
        assert!(
            support::wait_until(10 * SEC, || !backup.partition_state().may_work()),
            "the backup never noticed the outage"
        );
        assert!(
            rx.recv_timeout(SEC).is_err(),
            "the backup gave up: {:?}",
            rx.try_recv()
        );
        proxy.pass();
        job.succeeded().unwrap();
        let o = outcome(&rx, 20 * SEC);
        assert!(
            matches!(o, PairedOutcome::DoneByPeer { attempt: 1 }),
            "{o:?}"
        );
    }

    #[test]
    fn a_join_retried_after_a_lost_reply_gets_the_same_grant() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = Redswarm::connect(
            builder(&proxy.url(), "retry")
                .wait_recheck(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .unwrap();
        // Load the scripts and open pooled connections now: under the latency
        // below neither NOSCRIPT nor a new connection's handshake would finish.
        won(s.paired("warm-up", &0u8).unwrap()).succeeded().unwrap();
        let warm: Vec<_> = (0..4).map(|_| s.connection().unwrap()).collect();
        drop(warm);
        // Replies come back after the 100 ms command timeout: the first join
        // is granted in Redis, but its reply is lost to the caller.
        proxy.set_latency(Duration::from_millis(400));
        let healer = {
            let record = "{retry:paired:t}:record".to_string();
            let server_conn = server.client();
            std::thread::spawn(move || {
                let mut conn = server_conn.get_connection().unwrap();
                let granted = support::wait_until(20 * SEC, || {
                    let n: i64 = redis::cmd("EXISTS").arg(&record).query(&mut conn).unwrap();
                    n == 1
                });
                std::thread::sleep(Duration::from_millis(500));
                granted
            })
        };
        let started = Instant::now();
        let rx = std::thread::spawn(move || {
            let r = s
                .paired_options()
                .lease(10 * SEC)
                .task("t")
                .unwrap()
                .run(&1u8);
            (r, s)
        });
        assert!(healer.join().unwrap(), "the first join never reached Redis");
        proxy.pass();
        let (r, _s) = rx.join().unwrap();
        // The retry is handed the grant it already had, instead of waiting for
        // its own lease to lapse and taking over from itself.
        let job = won(r.unwrap());
        assert_eq!(job.attempt(), 1);
        assert!(started.elapsed() < 8 * SEC, "{:?}", started.elapsed());
        job.succeeded().unwrap();
    }
}
