//! The foundation against a real redis-server: config, connect, pool,
//! scripts, subscriber, heartbeat, thread pool.

mod support;

use std::time::{Duration, Instant};

use redswarm::{Config, Error, Health, Redswarm, SubEvent};
use support::RedisServer;

fn config(server: &RedisServer, ns: &str) -> redswarm::ConfigBuilder {
    Config::builder()
        .url(server.url())
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
}

fn next_message(sub: &redswarm::Subscription) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(SubEvent::Message(m)) => return Some(m.payload_str().unwrap_or("").to_string()),
            _ => continue,
        }
    }
    None
}

#[test]
fn invalid_config_names_the_field() {
    let err = Config::builder().pool_size(0).build().unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "pool_size",
                ..
            }
        ),
        "{err}"
    );
    let err = Config::builder()
        .heartbeat_interval(Duration::from_secs(1))
        .node_ttl(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "node_ttl",
                ..
            }
        ),
        "{err}"
    );
    let err = Config::builder().namespace("").build().unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "namespace",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn connect_to_a_dead_port_fails_fast_and_clearly() {
    // Bind then drop to get a port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = Redswarm::connect(Config::from_url(&format!("redis://127.0.0.1:{port}/")).unwrap())
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(err.is_unavailable());
}

#[test]
fn pool_exhaustion_is_a_timeout_error_not_a_hang() {
    let server = RedisServer::start();
    let swarm = Redswarm::connect(
        config(&server, "pool")
            .pool_size(2)
            .pool_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .unwrap();
    let _a = swarm.connection().unwrap();
    let _b = swarm.connection().unwrap();
    let started = Instant::now();
    let err = swarm
        .connection()
        .err()
        .expect("a third checkout must fail");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, Error::PoolExhausted { size: 2, .. }), "{err}");
}

#[test]
fn scripts_survive_script_flush() {
    let server = RedisServer::start();
    let swarm = Redswarm::connect(config(&server, "flush").build().unwrap()).unwrap();
    assert!(swarm
        .live_nodes()
        .unwrap()
        .iter()
        .any(|n| n.id == swarm.node_id()));
    let before = swarm.live_nodes().unwrap()[0].deadline_ms;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.conn())
        .unwrap();
    // Single EVALSHA path.
    assert!(swarm
        .live_nodes()
        .unwrap()
        .iter()
        .any(|n| n.id == swarm.node_id()));
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.conn())
        .unwrap();
    // Pipelined path (the heartbeat): beats keep advancing the deadline.
    assert!(support::wait_until(Duration::from_secs(5), || {
        swarm.live_nodes().unwrap()[0].deadline_ms > before + 150
    }));
    assert_eq!(swarm.health(), Health::Healthy);
}

#[test]
fn subscriber_delivers_shares_and_unsubscribes_on_drop() {
    let server = RedisServer::start();
    let swarm = Redswarm::connect(config(&server, "sub").build().unwrap()).unwrap();
    let other = Redswarm::connect(config(&server, "sub").build().unwrap()).unwrap();
    let a = swarm.subscribe("news").unwrap();
    let b = swarm.subscribe("news").unwrap();
    // Confirmed before subscribe returned: a publish right now is received.
    assert_eq!(
        other.publish("news", "one").unwrap(),
        1,
        "one Redis subscription shared by both"
    );
    assert_eq!(next_message(&a).as_deref(), Some("one"));
    assert_eq!(next_message(&b).as_deref(), Some("one"));
    assert_eq!(support::numsub(&server, "news"), 1);

    let p = swarm.psubscribe("ne*").unwrap();
    other.publish("news", "two").unwrap();
    assert_eq!(next_message(&p).as_deref(), Some("two"));
    assert_eq!(next_message(&a).as_deref(), Some("two"));
    assert_eq!(next_message(&b).as_deref(), Some("two"));

    drop(a);
    other.publish("news", "three").unwrap();
    assert_eq!(next_message(&b).as_deref(), Some("three"));
    drop(b);
    drop(p);
    assert!(support::wait_until(
        Duration::from_secs(5),
        || support::numsub(&server, "news") == 0
    ));
}

#[test]
fn subscriber_survives_redis_restart_and_says_reconnected() {
    let mut server = RedisServer::start();
    let swarm = Redswarm::connect(config(&server, "restart").build().unwrap()).unwrap();
    let sub = swarm.subscribe("jobs").unwrap();
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reconnected = false;
    while Instant::now() < deadline && !reconnected {
        if let Ok(SubEvent::Reconnected) = sub.recv_timeout(Duration::from_millis(100)) {
            reconnected = true;
        }
    }
    assert!(reconnected, "no Reconnected notice after restart");
    // Resubscribed: messages flow again.
    assert!(support::wait_until(
        Duration::from_secs(5),
        || support::numsub(&server, "jobs") == 1
    ));
    let mut c = server.conn();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("jobs")
        .arg("after")
        .query(&mut c)
        .unwrap();
    assert_eq!(next_message(&sub).as_deref(), Some("after"));
    // And the handle's own commands work again without a restart of the program.
    assert!(support::wait_until(Duration::from_secs(5), || swarm
        .health()
        == Health::Healthy));
    assert!(swarm.live_nodes().is_ok());
}

#[test]
fn heartbeat_reports_lost_redis_and_recovery() {
    let server = RedisServer::start();
    let swarm = Redswarm::connect(config(&server, "health").build().unwrap()).unwrap();
    let changes = swarm.watch_health();
    server.pause();
    let lost = changes.recv_timeout(Duration::from_secs(5));
    let may_work_while_lost = swarm.partition_state().may_work();
    server.resume();
    assert!(matches!(lost, Ok(Health::LostRedis { .. })), "{lost:?}");
    assert!(!may_work_while_lost, "no peers and no Redis: must not work");
    assert_eq!(
        changes.recv_timeout(Duration::from_secs(5)),
        Ok(Health::Healthy)
    );
    assert!(swarm.partition_state().may_work());
}

#[test]
fn a_second_live_process_cannot_take_the_same_node_id() {
    let server = RedisServer::start();
    let _first = Redswarm::connect(config(&server, "dup").node_id("n1").build().unwrap()).unwrap();
    let err = Redswarm::connect(config(&server, "dup").node_id("n1").build().unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "node_id",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn shutdown_deregisters_the_node_at_once() {
    let server = RedisServer::start();
    let a = Redswarm::connect(config(&server, "leave").build().unwrap()).unwrap();
    let b = Redswarm::connect(config(&server, "leave").build().unwrap()).unwrap();
    assert_eq!(b.live_nodes().unwrap().len(), 2);
    a.shutdown();
    assert!(matches!(a.live_nodes(), Err(Error::ShutDown)));
    let live = b.live_nodes().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, b.node_id());
    assert!(
        b.dead_nodes().unwrap().is_empty(),
        "a clean leave is not a death"
    );
}

/// Child role for the lease-expiry test: connects as node `$CHILD_NODE`
/// and then blocks until killed.
#[test]
fn child_node_process() {
    let (Ok(url), Ok(node)) = (std::env::var("CHILD_URL"), std::env::var("CHILD_NODE")) else {
        return;
    };
    let swarm = Redswarm::connect(
        Config::builder()
            .url(url)
            .namespace("expiry")
            .node_id(node)
            .heartbeat_interval(Duration::from_millis(100))
            .command_timeout(Duration::from_millis(100))
            .node_ttl(Duration::from_millis(600))
            .peer_timeout(Duration::from_millis(50))
            .build()
            .unwrap(),
    )
    .unwrap();
    let _keep = swarm;
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn node_expires_from_membership_after_its_process_dies() {
    let server = RedisServer::start();
    let observer = Redswarm::connect(config(&server, "expiry").build().unwrap()).unwrap();
    let mut child = support::child_role("child_node_process")
        .env("CHILD_URL", server.url())
        .env("CHILD_NODE", "doomed")
        .spawn()
        .unwrap();
    let alive = |o: &Redswarm| o.live_nodes().unwrap().iter().any(|n| n.id == "doomed");
    assert!(
        support::wait_until(Duration::from_secs(10), || alive(&observer)),
        "child never joined"
    );
    let info = observer
        .live_nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.id == "doomed")
        .unwrap();
    assert_eq!(info.pid, child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        support::wait_until(Duration::from_secs(5), || !alive(&observer)),
        "dead node still listed as live"
    );
    assert!(observer
        .dead_nodes()
        .unwrap()
        .iter()
        .any(|n| n.id == "doomed"));
}

fn config_error_field(r: redswarm::Result<Config>) -> &'static str {
    match r {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn config_bounds_and_durations_fail_by_field_name_without_panicking() {
    let wrapping = Duration::from_millis(u64::MAX) + Duration::from_millis(5);
    let cases: Vec<(redswarm::ConfigBuilder, &str)> = vec![
        // r2d2 reserves a slot per connection up front: this used to abort.
        (Config::builder().pool_size(u32::MAX), "pool_size"),
        (
            Config::builder().pool_size(Config::MAX_POOL_SIZE + 1),
            "pool_size",
        ),
        // `3 × heartbeat_interval` used to overflow and panic.
        (
            Config::builder().heartbeat_interval(Duration::MAX),
            "heartbeat_interval",
        ),
        (
            Config::builder().heartbeat_interval(wrapping),
            "heartbeat_interval",
        ),
        (Config::builder().node_ttl(Duration::MAX), "node_ttl"),
        (
            Config::builder().connect_timeout(Duration::MAX),
            "connect_timeout",
        ),
        (
            Config::builder().pool_timeout(Duration::MAX),
            "pool_timeout",
        ),
        (
            Config::builder().reconnect_max(Duration::MAX),
            "reconnect_max",
        ),
        (Config::builder().namespace("a:lock"), "namespace"),
        (Config::builder().namespace("two words"), "namespace"),
        (Config::builder().node_id("a|b"), "node_id"),
        (Config::builder().node_id("node 1"), "node_id"),
    ];
    for (b, field) in cases {
        let got = config_error_field(b.build());
        assert_eq!(got, field);
    }
}

/// Child role: builds a config from the environment the parent set and
/// exits non-zero unless it fails with InvalidConfig for `CHILD_FIELD`.
#[test]
fn child_config_from_env() {
    let Ok(field) = std::env::var("CHILD_FIELD") else {
        return;
    };
    let got = config_error_field(Config::from_env());
    assert_eq!(got, field);
}

#[test]
fn from_env_rejects_a_huge_pool_size_instead_of_aborting() {
    for (var, value, field) in [
        ("REDSWARM_POOL_SIZE", "4294967295", "pool_size"),
        ("REDSWARM_POOL_SIZE", "99999999999", "pool_size"),
        ("REDSWARM_NAMESPACE", "a:lock", "namespace"),
        ("REDSWARM_NODE_ID", "has space", "node_id"),
    ] {
        let status = support::child_role("child_config_from_env")
            .env_remove("REDIS_URL")
            .env(var, value)
            .env("CHILD_FIELD", field)
            .status()
            .unwrap();
        assert!(status.success(), "{var}={value}: {status}");
    }
}

#[test]
fn debug_output_and_errors_never_show_the_password_or_peer_secret() {
    let builder = Config::builder()
        .url("redis://admin:hunter2@127.0.0.1:1/0")
        .peer_secret("peer-s3cret");
    let config = builder.clone().build().unwrap();
    for text in [
        format!("{builder:?}"),
        format!("{config:?}"),
        format!("{config:#?}"),
        config.masked_url(),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("peer-s3cret"), "{text}");
    }
    // A raw `/` in the password: the URL is refused, the error masks it.
    let err = Config::from_url("redis://:pa/ss@127.0.0.1:1/0").unwrap_err();
    assert!(!err.to_string().contains("pa/ss"), "{err}");
    assert!(!format!("{err:?}").contains("pa/ss"), "{err:?}");
    // A unix socket with `?pass=`.
    let c = Config::from_url("redis+unix:///tmp/nope.sock?pass=hunter2").unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!c.masked_url().contains("hunter2"));
    // A connect error names the URL without its password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Redswarm::connect(
        Config::from_url(&format!("redis://u:hunter2@127.0.0.1:{port}/")).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}
