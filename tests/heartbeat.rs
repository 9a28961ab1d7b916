//! The heartbeat keeps its promises whatever Redis, the network or a peer
//! does: `lost()` fires by itself, before the lease can lapse in Redis, with
//! Redis hung (SIGSTOP) or blackholed, for one lease and for many; one
//! corrupt key loses one lease only; a slow peer cannot stall the beat.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use redswarm::{Config, Health, LockGuard, Redswarm};
use support::{FaultProxy, RedisServer};

const HEARTBEAT: Duration = Duration::from_millis(300);

fn config(url: String, ns: &str) -> redswarm::ConfigBuilder {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(HEARTBEAT)
        .command_timeout(HEARTBEAT)
        .node_ttl(HEARTBEAT * 4)
        .peer_timeout(Duration::from_millis(100))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .pool_size(8)
}

/// The smallest TTL an auto-extended lease may have: the tightest case.
fn min_ttl(swarm: &Redswarm) -> Duration {
    swarm.config().heartbeat_interval() * 3
}

fn owner_key(swarm: &Redswarm, name: &str) -> String {
    swarm.keys().lock(name).unwrap().owner
}

/// Milliseconds the key has left in Redis (-2: gone).
fn pttl(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(conn).unwrap()
}

fn auto_extended_locks(swarm: &Redswarm, n: usize) -> Vec<LockGuard> {
    (0..n)
        .map(|i| {
            swarm
                .lock_options(&format!("res-{i}"))
                .ttl(min_ttl(swarm))
                .auto_extend(true)
                .try_lock()
                .unwrap()
                .expect("free lock")
        })
        .collect()
}

#[test]
fn lost_fires_by_itself_for_a_lock_without_auto_extension() {
    let server = RedisServer::start();
    let swarm = Redswarm::connect(config(server.url(), "unrenewed").build().unwrap()).unwrap();
    let ttl = Duration::from_millis(1500);
    let guard = swarm
        .lock_options("short")
        .ttl(ttl)
        .auto_extend(false)
        .try_lock()
        .unwrap()
        .expect("free lock");
    let lost = guard.lost();
    // Nobody calls is_held(): the runtime must notice on its own.
    let note = lost
        .recv_timeout(ttl * 4)
        .expect("lost() fired without anyone asking");
    let mut conn = server.conn();
    let left = pttl(&mut conn, &owner_key(&swarm, "short"));
    assert!(
        left > 0,
        "lost() must fire while the lock still exists in Redis (PTTL {left}): {note}"
    );
    assert!(note.reason.contains("TTL"), "{note}");
}

/// Holds `n` auto-extended locks with the minimum TTL, hangs Redis with
/// SIGSTOP, and checks that every lost() fired while its key was still
/// alive in Redis.
fn lost_before_expiry_with_redis_paused(n: usize) {
    let server = RedisServer::start();
    let swarm =
        Redswarm::connect(config(server.url(), &format!("paused{n}")).build().unwrap()).unwrap();
    let guards = auto_extended_locks(&swarm, n);
    let losses: Vec<_> = guards.iter().map(|g| g.lost()).collect();
    // Let a few beats renew them, so the pause hits a steady state.
    std::thread::sleep(HEARTBEAT * 4);
    assert!(guards.iter().all(|g| g.is_held()));
    server.pause();
    let give_up = Instant::now() + min_ttl(&swarm) * 4;
    for (i, rx) in losses.iter().enumerate() {
        let left = give_up.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            server.resume();
            panic!("lease {i} of {n}: lost() did not fire while Redis was hung");
        }
    }
    // Resume at once and look: every key must still be alive in Redis,
    // i.e. each holder stopped before anyone else could have taken over.
    server.resume();
    let mut conn = server.conn();
    for i in 0..n {
        let left = pttl(&mut conn, &owner_key(&swarm, &format!("res-{i}")));
        assert!(
            left > 0,
            "lease {i} of {n}: lost() fired after the key had expired in Redis (PTTL {left})"
        );
    }
    assert!(guards.iter().all(|g| !g.is_held()));
}

#[test]
fn lost_fires_before_expiry_with_redis_hung_one_lease() {
    lost_before_expiry_with_redis_paused(1);
}

#[test]
fn lost_fires_before_expiry_with_redis_hung_fifty_leases() {
    lost_before_expiry_with_redis_paused(50);
}

/// The same with the network swallowing every byte (Redis itself runs on,
/// so the keys' TTLs can be read at the moment each lost() fires).
fn lost_before_expiry_with_blackhole(n: usize) {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let swarm =
        Redswarm::connect(config(proxy.url(), &format!("hole{n}")).build().unwrap()).unwrap();
    let guards = auto_extended_locks(&swarm, n);
    let losses: Vec<_> = guards.iter().map(|g| g.lost()).collect();
    std::thread::sleep(HEARTBEAT * 4);
    let mut conn = server.conn();
    proxy.blackhole();
    let give_up = Instant::now() + min_ttl(&swarm) * 4;
    for (i, rx) in losses.iter().enumerate() {
        let left = give_up.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("lease {i} of {n}: lost() did not fire"));
        let ttl = pttl(&mut conn, &owner_key(&swarm, &format!("res-{i}")));
        assert!(
            ttl > 0,
            "lease {i} of {n}: lost() fired after the key expired in Redis (PTTL {ttl})"
        );
    }
    proxy.pass();
}

#[test]
fn lost_fires_before_expiry_with_a_blackhole_one_lease() {
    lost_before_expiry_with_blackhole(1);
}

#[test]
fn lost_fires_before_expiry_with_a_blackhole_fifty_leases() {
    lost_before_expiry_with_blackhole(50);
}

/// Holds `n` auto-extended locks with the minimum TTL on a Redis with AOF,
/// kills Redis (`kill -9`), and once every lost() has fired starts it again
/// from its AOF: every key must still be alive, i.e. each holder stopped
/// before the lease could have lapsed. A slower heartbeat than the other
/// tests gives the restart room within the safety margin.
fn lost_before_expiry_with_redis_dead(n: usize) {
    let mut server = RedisServer::builder().aof(true).start();
    let beat = Duration::from_secs(1);
    let swarm = Redswarm::connect(
        config(server.url(), &format!("dead{n}"))
            .heartbeat_interval(beat)
            .command_timeout(beat)
            .node_ttl(beat * 4)
            .build()
            .unwrap(),
    )
    .unwrap();
    let guards = auto_extended_locks(&swarm, n);
    let losses: Vec<_> = guards.iter().map(|g| g.lost()).collect();
    std::thread::sleep(beat * 2);
    assert!(guards.iter().all(|g| g.is_held()));
    server.kill();
    let give_up = Instant::now() + min_ttl(&swarm) * 4;
    for (i, rx) in losses.iter().enumerate() {
        let left = give_up.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("lease {i} of {n}: lost() did not fire with Redis dead"));
    }
    server.restart();
    let mut conn = server.conn();
    for i in 0..n {
        let left = pttl(&mut conn, &owner_key(&swarm, &format!("res-{i}")));
        assert!(
            left > 0,
            "lease {i} of {n}: lost() fired after the key had expired (PTTL {left})"
        );
    }
}

#[test]
fn lost_fires_before_expiry_with_redis_dead_one_lease() {
    lost_before_expiry_with_redis_dead(1);
}

#[test]
fn lost_fires_before_expiry_with_redis_dead_fifty_leases() {
    lost_before_expiry_with_redis_dead(50);
}

#[test]
fn one_corrupt_lease_key_loses_that_lease_only() {
    let server = RedisServer::start();
    let swarm = Redswarm::connect(config(server.url(), "corrupt").build().unwrap()).unwrap();
    let guards = auto_extended_locks(&swarm, 3);
    let sem = swarm.semaphore("pool", 2).unwrap();
    let permit = sem
        .ttl(min_ttl(&swarm))
        .auto_extend(true)
        .try_acquire()
        .unwrap()
        .expect("a free permit");
    let bad_lock = guards[1].lost();
    let permit_lost = permit.lost();
    let mut conn = server.conn();
    // Replace one lock's key with a hash.
    let key = owner_key(&swarm, "res-1");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&key)
        .cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let note = bad_lock
        .recv_timeout(Duration::from_secs(5))
        .expect("the corrupt lease is reported lost");
    assert!(note.reason.contains(&key), "reason names the key: {note}");
    // Several more beats: the others are renewed, the node stays healthy.
    std::thread::sleep(min_ttl(&swarm) * 2);
    assert!(guards[0].is_held() && guards[2].is_held());
    assert!(permit.is_held());
    assert!(permit_lost.try_recv().is_err());
    assert_eq!(swarm.health(), Health::Healthy);
    assert!(swarm
        .live_nodes()
        .unwrap()
        .iter()
        .any(|n| n.id == swarm.node_id()));
    for i in [0, 2] {
        let left = pttl(&mut conn, &owner_key(&swarm, &format!("res-{i}")));
        assert!(left > 0, "lock {i} still renewed in Redis");
    }
}

/// A fake peer that accepts connections and answers one byte every 40 ms:
/// faster than any per-read timeout, so only an overall deadline stops it.
fn trickling_peer() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(20);
        let mut clients = Vec::new();
        while Instant::now() < until {
            if let Ok((s, _)) = listener.accept() {
                clients.push(s);
            }
            for c in &mut clients {
                let _ = c.write_all(b"R");
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    (addr, handle)
}

#[test]
fn a_slow_peer_cannot_stall_the_heartbeat() {
    let server = RedisServer::start();
    let (slow_addr, _slow) = trickling_peer();
    // A second node whose advertised peer address is the trickling fake.
    let _other = Redswarm::connect(
        config(server.url(), "slowpeer")
            .peer_listen("127.0.0.1:0".parse().unwrap())
            .peer_advertise(slow_addr.clone())
            .build()
            .unwrap(),
    )
    .unwrap();
    let swarm = Redswarm::connect(config(server.url(), "slowpeer").build().unwrap()).unwrap();
    assert!(
        support::wait_until(Duration::from_secs(5), || swarm
            .known_peers()
            .contains(&slow_addr)),
        "the node learns its peer's address"
    );
    let health = swarm.watch_health();
    server.pause();
    assert!(matches!(
        health.recv_timeout(Duration::from_secs(5)),
        Ok(Health::LostRedis { .. })
    ));
    // Several beats' worth of pings at the trickling peer.
    std::thread::sleep(Duration::from_secs(3));
    server.resume();
    assert_eq!(
        health.recv_timeout(Duration::from_secs(3)),
        Ok(Health::Healthy),
        "the heartbeat beats on schedule again right after Redis is back"
    );
    assert!(swarm
        .live_nodes()
        .unwrap()
        .iter()
        .any(|n| n.id == swarm.node_id()));
}

/// A handle shut down right after connecting (what a command-line tool
/// does) leaves no live node behind: a beat still in flight at shutdown
/// must not re-register the node after it deregistered.
#[test]
fn shutdown_right_after_connect_leaves_no_live_node() {
    let server = RedisServer::start();
    let observer = Redswarm::connect(config(server.url(), "leave").build().unwrap()).unwrap();
    for _ in 0..40 {
        let s = Redswarm::connect(config(server.url(), "leave").build().unwrap()).unwrap();
        s.shutdown();
    }
    // Any beat that was in flight has landed by now.
    std::thread::sleep(HEARTBEAT);
    let live: Vec<String> = observer
        .live_nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(
        live,
        [observer.node_id()],
        "nodes left behind by shut-down handles"
    );
}
