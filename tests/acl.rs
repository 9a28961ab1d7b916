//! Redis ACL users: every feature runs as a user with exactly the rules of
//! `redswarm::acl_rules` (the default user disabled), and a missing
//! permission is an error that names it.

mod support;

use std::time::Duration;

use redswarm::{
    CloseOptions, ClusterEvent, ClusterWorker, ClusterWorkerOptions, Config, Error, Master,
    MasterOptions, Monitor, PairedOutcome, Redswarm, SwarmWorker, TaskOutcome, TaskState,
    WorkerOptions,
};
use serde_json::json;
use support::RedisServer;

const SEC: Duration = Duration::from_secs(1);
const NS: &str = "app";

/// The test's own superuser, for set-up and inspection once `default` is off.
fn admin(server: &RedisServer) -> redis::Connection {
    let url = format!("redis://admin:adminpw@127.0.0.1:{}/", server.port());
    let c = redis::Client::open(url).unwrap();
    let conn = c.get_connection_with_timeout(5 * SEC).unwrap();
    conn.set_read_timeout(Some(5 * SEC)).unwrap();
    conn
}

/// A server where `admin` may do anything, `app` has `rules`, and the
/// passwordless default user is off.
fn server_with_user(rules: &str) -> RedisServer {
    let server = RedisServer::start();
    let mut c = server.conn();
    redis::cmd("ACL")
        .arg(&["SETUSER", "admin", "on", ">adminpw", "~*", "&*", "+@all"])
        .exec(&mut c)
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"])
        .exec(&mut c)
        .unwrap();
    set_app_rules(&server, rules);
    server
}

fn set_app_rules(server: &RedisServer, rules: &str) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg(&["SETUSER", "app", "reset", "on", ">apppw"]);
    for rule in rules.split_whitespace() {
        cmd.arg(rule);
    }
    cmd.exec(&mut admin(server)).unwrap();
}

fn connect(server: &RedisServer) -> redswarm::Result<Redswarm> {
    let url = format!("redis://app:apppw@127.0.0.1:{}/", server.port());
    Redswarm::connect(
        Config::builder()
            .url(url)
            .namespace(NS)
            .heartbeat_interval(Duration::from_millis(100))
            .command_timeout(Duration::from_millis(100))
            .node_ttl(SEC)
            .peer_timeout(Duration::from_millis(50))
            .pool_size(24)
            .build()?,
    )
}

/// What `ACL LOG` recorded: one line per denial (reason, object, user).
fn acl_denials(server: &RedisServer) -> Vec<String> {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg(&["LOG", "128"])
        .query(&mut admin(server))
        .unwrap();
    entries
        .into_iter()
        .map(|e| {
            let fields: Vec<String> = redis::from_redis_value(e).unwrap_or_default();
            fields.join(" ")
        })
        .collect()
}

#[test]
fn every_feature_runs_under_the_documented_minimal_acl() {
    support::init_logging();
    let server = server_with_user(&redswarm::acl_rules(NS, &["jobs"]).unwrap());
    let a = connect(&server).unwrap();
    let b = connect(&server).unwrap();

    // Lock, with a waiter woken through pub/sub; then a fair lock.
    let g = a.try_lock("res", 5 * SEC).unwrap().expect("free lock");
    g.extend(5 * SEC).unwrap();
    let b2 = b.clone();
    let waiter =
        std::thread::spawn(move || b2.lock("res", 5 * SEC, 10 * SEC).map(|g| g.fencing_token()));
    std::thread::sleep(Duration::from_millis(200));
    let first = g.fencing_token();
    g.release().unwrap();
    assert!(waiter.join().unwrap().unwrap() > first);
    a.lock_options("fair")
        .fair(true)
        .lock(SEC)
        .unwrap()
        .release()
        .unwrap();
    a.multi_lock(&["m1", "m2"])
        .lock(SEC)
        .unwrap()
        .release()
        .unwrap();

    // Paired workers: one wins, the other stands by and learns it is done.
    let PairedOutcome::Won(job) = a.paired("push:1", &1u32).unwrap() else {
        panic!("the first participant wins");
    };
    let b4 = b.clone();
    let standby = std::thread::spawn(move || {
        b4.paired("push:1", &1u32)
            .map(|o| matches!(o, PairedOutcome::DoneByPeer { .. }))
    });
    std::thread::sleep(Duration::from_millis(200));
    job.succeeded().unwrap();
    assert!(
        standby.join().unwrap().unwrap(),
        "the standby learns of the success"
    );

    // Semaphore.
    let sem = a.semaphore("pool", 1).unwrap().ttl(5 * SEC);
    let p = sem.try_acquire().unwrap().expect("a free permit");
    assert!(sem.try_acquire().unwrap().is_none());
    p.release().unwrap();

    // Fan-out: a leader and a waiter on another handle.
    let b3 = b.clone();
    let leader = std::thread::spawn(move || {
        b3.fanout("report", 10 * SEC, || -> Result<u32, String> {
            std::thread::sleep(Duration::from_millis(300));
            Ok(7)
        })
    });
    std::thread::sleep(Duration::from_millis(100));
    let waited: Result<u32, _> = a.fanout("report", 10 * SEC, || Ok::<u32, String>(8));
    assert_eq!(leader.join().unwrap().unwrap(), 7);
    assert!(matches!(waited, Ok(7) | Ok(8)), "{waited:?}");

    // Swarm: a worker (BLPOP waits, control pattern), a monitor, a cancel.
    let q = a.queue("jobs").unwrap();
    let monitor = Monitor::start(&q, Duration::from_millis(200)).unwrap();
    let w = SwarmWorker::start(&q, WorkerOptions::new().threads(2).lease(2 * SEC), |ctx| {
        if ctx.data()["wait"].as_bool() == Some(true) {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err("cancelled".into());
        }
        Ok(json!(ctx.data()["n"].as_u64().unwrap_or(0) + 1))
    })
    .unwrap();
    let done = q.push(&json!({ "n": 41 })).unwrap();
    let long = q.push(&json!({ "wait": true })).unwrap();
    assert!(support::wait_until(10 * SEC, || q
        .get(&long)
        .unwrap()
        .is_some_and(|t| t.state == TaskState::Running)));
    q.cancel(&long).unwrap();
    assert!(support::wait_until(10 * SEC, || q
        .get(&done)
        .unwrap()
        .is_some_and(|t| t.state == TaskState::End(TaskOutcome::Ok))));
    assert_eq!(q.get(&done).unwrap().unwrap().result, Some(json!(42)));
    assert!(support::wait_until(10 * SEC, || q
        .get(&long)
        .unwrap()
        .is_some_and(|t| t.state.is_end())));
    w.shutdown();
    monitor.stop();

    // Tracker: chunks locked, closed, released to a consumer.
    let t = a.tracker("ogg").unwrap();
    let c1 = t.lock("stream", "0.1").unwrap();
    t.close("stream", &json!({ "len": 1 }), CloseOptions::default())
        .unwrap();
    let mut consumer = b
        .tracker("ogg")
        .unwrap()
        .released::<serde_json::Value>()
        .unwrap();
    c1.unlock().unwrap();
    let job = consumer
        .next_timeout(10 * SEC)
        .unwrap()
        .expect("the closed task is released");
    assert_eq!(job.info(), &json!({ "len": 1 }));
    job.done(Ok(())).unwrap();
    assert_eq!(t.stats().unwrap().completed, 1);

    // Job cluster: a master assigns a job to a worker.
    let m = Master::with_options(&a, "c", MasterOptions::new().lease(2 * SEC)).unwrap();
    let cw = ClusterWorker::join(&b, "c", ClusterWorkerOptions::new().lease(2 * SEC)).unwrap();
    let events = cw.events();
    let id = m.add_job(&json!("payload")).unwrap();
    let got = events
        .recv_timeout(10 * SEC)
        .expect("the job reaches the worker");
    assert!(
        matches!(&got, ClusterEvent::Added(j) if j.id() == id),
        "{got:?}"
    );
    cw.terminate().unwrap();
    m.stop();

    // The heartbeat and reapers ran all along: nothing was denied anywhere,
    // not even in a background thread that only logs its errors.
    assert_eq!(acl_denials(&server), Vec::<String>::new());
}

/// The rules minus one of them (a command, or the queue's pattern).
fn without(rule: &str) -> String {
    let rules = redswarm::acl_rules(NS, &["jobs"]).unwrap();
    let kept: Vec<&str> = rules.split_whitespace().filter(|r| *r != rule).collect();
    assert_ne!(
        kept.len(),
        rules.split_whitespace().count(),
        "{rule} is not in the rules"
    );
    kept.join(" ")
}

#[test]
fn a_missing_command_permission_is_an_error_naming_the_command() {
    // Connected with every permission (the first heartbeat needs ZADD too),
    // then ZADD is taken away.
    let server = server_with_user(&redswarm::acl_rules(NS, &[]).unwrap());
    let a = connect(&server).unwrap();
    set_app_rules(&server, &without("+zadd"));
    // The semaphore's acquire script calls ZADD: Redis refuses inside the script.
    // Redis's own reply names neither; redswarm adds the script and command.
    let err = a
        .semaphore("pool", 1)
        .unwrap()
        .try_acquire()
        .expect_err("ZADD is not allowed");
    let text = err.to_string();
    assert!(
        matches!(&err, Error::Redis(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)),
        "{err:?}"
    );
    assert!(
        text.contains("NoPerm") && text.contains("calls `zadd`"),
        "{text}"
    );

    set_app_rules(&server, &without("+evalsha"));
    let err = a.try_lock("res", SEC).expect_err("EVALSHA is not allowed");
    let text = err.to_string();
    assert!(
        text.contains("NoPerm") && text.contains("'evalsha' command"),
        "{text}"
    );
}

#[test]
fn connecting_without_info_fails_at_once_naming_it() {
    let server = server_with_user(&without("+info"));
    let err = connect(&server).expect_err("INFO is needed for the version check");
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        text.contains("NoPerm") && text.contains("'info' command"),
        "{text}"
    );
}

#[test]
fn keys_of_another_namespace_are_refused_naming_the_key_permission() {
    let rules = redswarm::acl_rules("other", &[]).unwrap();
    let server = server_with_user(&rules);
    // Connecting only needs INFO; the first script touches `{app:...}` keys.
    let err = connect(&server)
        .and_then(|a| a.try_lock("res", SEC))
        .expect_err("keys of namespace `app` are not allowed");
    let text = err.to_string();
    assert!(text.contains("NoPerm") && text.contains("keys"), "{text}");
}

#[test]
fn a_worker_without_its_queue_pattern_is_refused_naming_the_pattern() {
    let pattern = "&{app:queue:jobs}:task:*:control";
    let server = server_with_user(&without(pattern));
    let a = connect(&server).unwrap();
    let q = a.queue("jobs").unwrap();
    let err = SwarmWorker::start(&q, WorkerOptions::new().threads(1), |_| Ok(json!(null)))
        .err()
        .expect("PSUBSCRIBE of the control pattern is not allowed");
    let text = err.to_string();
    assert!(matches!(err, Error::SubscriptionRefused { .. }), "{err:?}");
    assert!(
        text.contains(&pattern[1..]) && text.contains("NOPERM"),
        "{text}"
    );
}
