//! The pub/sub subscriber against a real redis-server: no lost wake-ups
//! around subscribe/drop, refused subscriptions, lingering subscriptions,
//! and a process that is stopped and continued.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use parking_lot::Mutex;
use redswarm::{Config, ConfigBuilder, Error, Redswarm, SubEvent, Subscription};
use support::RedisServer;

const SEC: Duration = Duration::from_secs(1);

fn config(url: &str, ns: &str) -> ConfigBuilder {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
}

fn connect(b: ConfigBuilder) -> Redswarm {
    Redswarm::connect(b.build().unwrap()).unwrap()
}

/// The next message's payload within `wait`, skipping other events.
fn next_message(sub: &Subscription, wait: Duration) -> Option<String> {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match sub.recv_timeout(left) {
            Ok(SubEvent::Message(m)) => return Some(m.payload_str().unwrap_or("?").to_string()),
            Ok(SubEvent::Reconnected) => continue,
            Err(_) => return None,
        }
    }
}

fn publish(conn: &mut redis::Connection, channel: &str, payload: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query(conn)
        .unwrap()
}

/// `calls` of one command in `INFO commandstats` (0 if never called).
fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Ids of the server's clients that hold subscriptions.
fn pubsub_client_ids(server: &RedisServer) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut server.conn())
        .unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_confirmed_subscription_hears_the_next_publish_through_10000_subscribe_drop_rounds() {
    let server = RedisServer::start();
    // No linger: every drop may be followed by an UNSUBSCRIBE decision, the
    // moment the next subscribe() must not be fooled by.
    let swarm = connect(config(&server.url(), "churn").subscription_linger(Duration::ZERO));
    // Another thread of the same handle subscribes to and drops other
    // channels meanwhile, as a busy node's lock waiters do: the pub/sub
    // thread keeps (un)subscribing at random moments.
    let stop = Arc::new(AtomicBool::new(false));
    let noisy = {
        let (swarm, stop) = (swarm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                drop(swarm.subscribe(&format!("noise:{}", i % 1000)).unwrap());
                i += 1;
            }
        })
    };
    let mut publisher = server.conn();
    for round in 0..10_000u32 {
        let sub = swarm.subscribe("churn").unwrap();
        let receivers = publish(&mut publisher, "churn", &round.to_string());
        assert!(
            receivers >= 1,
            "round {round}: subscribe() returned but the channel had no subscriber in Redis"
        );
        assert_eq!(
            next_message(&sub, 10 * SEC),
            Some(round.to_string()),
            "round {round}: message lost"
        );
        drop(sub);
    }
    stop.store(true, Ordering::Relaxed);
    noisy.join().unwrap();
}

#[test]
fn a_refused_subscription_is_an_error_naming_the_channel_and_others_keep_delivering() {
    let server = RedisServer::start();
    // A user that may use every key but only its own channels: the handle's
    // wake channel and `allowed:*`.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "resetchannels",
            "&{acl}:wake:*",
            "&allowed:*",
            "+@all",
        ])
        .query(&mut server.conn())
        .unwrap();
    let url = format!("redis://limited:pw@127.0.0.1:{}/", server.port());
    let swarm = connect(config(&url, "acl"));
    let mut admin = server.conn();

    let allowed = swarm.subscribe("allowed:1").unwrap();
    for (what, refused) in [
        ("secret", swarm.subscribe("secret")),
        ("secret:*", swarm.psubscribe("secret:*")),
    ] {
        match refused {
            Err(Error::SubscriptionRefused { channel, reason }) => {
                assert_eq!(channel, what);
                assert!(reason.contains("NOPERM"), "{reason}");
            }
            Err(e) => panic!("{what}: wrong error {e}"),
            Ok(_) => panic!("{what}: a refused subscription looked confirmed"),
        }
    }

    // The connection and the other subscription keep working.
    assert_eq!(publish(&mut admin, "allowed:1", "still here"), 1);
    assert_eq!(
        next_message(&allowed, 10 * SEC).as_deref(),
        Some("still here")
    );
    let second = swarm.subscribe("allowed:2").unwrap();
    assert_eq!(publish(&mut admin, "allowed:2", "new one"), 1);
    assert_eq!(next_message(&second, 10 * SEC).as_deref(), Some("new one"));
    // Asking again gets the same answer, not a hang or an Ok.
    let again = swarm.subscribe("secret").err().expect("refused again");
    assert!(again.to_string().contains("`secret`"), "{again}");
    // Nothing of this cost a reconnect.
    assert!(
        !allowed
            .receiver()
            .try_iter()
            .any(|e| e == SubEvent::Reconnected),
        "a refusal must not reconnect the pub/sub connection"
    );
}

#[test]
fn a_resubscribe_within_the_linger_sends_no_subscribe_and_the_topic_goes_after_it() {
    let server = RedisServer::start();
    let linger = 3 * SEC;
    let swarm = connect(config(&server.url(), "linger").subscription_linger(linger));
    let mut publisher = server.conn();
    let sub = swarm.subscribe("lingering").unwrap();
    drop(sub);
    // Well inside the linger: still subscribed in Redis.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        support::numsub(&server, "lingering"),
        1,
        "dropped at once, no linger"
    );
    let (subscribes, publishes) = (
        command_calls(&server, "subscribe"),
        command_calls(&server, "publish"),
    );
    let sub = swarm.subscribe("lingering").unwrap();
    assert_eq!(
        command_calls(&server, "subscribe"),
        subscribes,
        "a re-subscribe within the linger sent SUBSCRIBE again"
    );
    assert_eq!(
        command_calls(&server, "publish"),
        publishes,
        "a re-subscribe within the linger woke the pub/sub thread"
    );
    // And it is live: the publish reaches it.
    assert_eq!(publish(&mut publisher, "lingering", "again"), 1);
    assert_eq!(next_message(&sub, 10 * SEC).as_deref(), Some("again"));
    drop(sub);
    assert!(
        support::wait_until(linger + 10 * SEC, || support::numsub(&server, "lingering")
            == 0),
        "still subscribed long after the linger"
    );
}

#[test]
fn lingering_channels_are_capped_oldest_first() {
    let server = RedisServer::start();
    let swarm = connect(config(&server.url(), "cap").subscription_linger(60 * SEC));
    for i in 0..400 {
        drop(swarm.subscribe(&format!("capped:{i}")).unwrap());
    }
    let lingering = || {
        let names: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("capped:*")
            .query(&mut server.conn())
            .unwrap();
        names.len()
    };
    // README: at most 256 channels linger.
    assert!(
        support::wait_until(10 * SEC, || lingering() <= 256),
        "{} channels still subscribed",
        lingering()
    );
    assert_eq!(
        support::numsub(&server, "capped:0"),
        0,
        "the oldest goes first"
    );
    assert_eq!(
        support::numsub(&server, "capped:399"),
        1,
        "the newest lingers"
    );
}

#[test]
fn fair_lock_hand_off_between_eight_handles_loses_no_wake_up() {
    let server = RedisServer::start();
    let recheck = 10 * SEC;
    let handles: Vec<Redswarm> = (0..8)
        .map(|_| {
            connect(
                config(&server.url(), "fair")
                    .wait_recheck(recheck)
                    .pool_size(4),
            )
        })
        .collect();
    let longest = Arc::new(Mutex::new(Duration::ZERO));
    let threads: Vec<_> = handles
        .into_iter()
        .map(|swarm| {
            let longest = longest.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    let started = Instant::now();
                    let guard = swarm
                        .lock_options("hot")
                        .ttl(60 * SEC)
                        .fair(true)
                        .lock(120 * SEC)
                        .unwrap();
                    let waited = started.elapsed();
                    {
                        let mut l = longest.lock();
                        *l = (*l).max(waited);
                    }
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let longest = *longest.lock();
    // Not a speed check: a wait near wait_recheck means a release message
    // reached nobody and the waiter only woke on its fallback timer.
    assert!(
        longest < recheck / 2,
        "a waiter slept {longest:?}: a wake-up was lost"
    );
}

/// Child role for the stop/continue test: holds one subscription and
/// prints every event it gets (`message <payload>` or `reconnected`).
#[test]
fn child_subscriber_process() {
    let Ok(url) = std::env::var("CHILD_SUB_URL") else {
        return;
    };
    let swarm = connect(config(&url, "stopcont"));
    let sub = swarm.subscribe("news").unwrap();
    println!("ready");
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(SubEvent::Message(m)) => println!("message {}", m.payload_str().unwrap_or("?")),
            Ok(SubEvent::Reconnected) => println!("reconnected"),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn a_stopped_and_continued_process_keeps_its_subscription_without_reconnecting() {
    let server = RedisServer::start();
    let mut child = support::child_role("child_subscriber_process")
        .env("CHILD_SUB_URL", server.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = |wait: Duration| lines.recv_timeout(wait).ok();
    // The harness prints `test <name> ... ` before the role's first line.
    while !next_line(20 * SEC)
        .expect("child never got ready")
        .ends_with("ready")
    {}
    let before = pubsub_client_ids(&server);
    assert_eq!(before.len(), 1, "one pub/sub connection: {before:?}");

    for _ in 0..3 {
        signal(child.id(), "STOP");
        std::thread::sleep(Duration::from_millis(300));
        signal(child.id(), "CONT");
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut conn = server.conn();
    assert!(support::wait_until(10 * SEC, || publish(
        &mut conn, "news", "after"
    ) == 1));
    let mut seen = Vec::new();
    while let Some(line) = next_line(10 * SEC) {
        let done = line == "message after";
        seen.push(line);
        if done {
            break;
        }
    }
    let after = pubsub_client_ids(&server);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("message after"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l == "reconnected"),
        "SIGSTOP/SIGCONT cost a reconnect: {seen:?}"
    );
    assert_eq!(after, before, "the pub/sub connection was replaced");
}
