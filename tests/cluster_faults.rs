//! What redswarm does when a Redis Cluster changes under it: a slot that
//! moves to another node while tasks run (nothing is lost, the worker's
//! blocking wait follows the slot), and a node that dies (only the leases
//! on that node are lost).
#![cfg(feature = "cluster")]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::swarm::{SwarmWorker, WorkerOptions};
use redswarm::{Config, Health, Redswarm, SubEvent};
use support::{wait_until, RedisCluster};

fn connect(cluster: &RedisCluster, ns: &str) -> Redswarm {
    let config = Config::builder()
        .url(cluster.url())
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(200))
        .node_ttl(Duration::from_millis(1200))
        .reconnect_max(Duration::from_millis(200))
        .build()
        .unwrap();
    Redswarm::connect(config).unwrap()
}

/// Index of the node that serves `key` (the others answer MOVED).
fn owner_of(cluster: &RedisCluster, key: &str) -> usize {
    (0..cluster.urls().len())
        .find(|&i| {
            redis::cmd("EXISTS")
                .arg(key)
                .query::<i64>(&mut cluster.conn(i))
                .is_ok()
        })
        .unwrap_or_else(|| panic!("no node serves {key}"))
}

fn slot_of(cluster: &RedisCluster, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut cluster.conn(0))
        .unwrap()
}

fn node_id(cluster: &RedisCluster, i: usize) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut cluster.conn(i))
        .unwrap()
}

/// Moves `slot` from node `from` to node `to` the way `redis-cli --cluster
/// reshard` does: IMPORTING/MIGRATING, MIGRATE the keys in batches (clients
/// meanwhile get ASK and TRYAGAIN), then SETSLOT NODE on every node.
fn move_slot(cluster: &RedisCluster, slot: u16, from: usize, to: usize) {
    let (from_id, to_id) = (node_id(cluster, from), node_id(cluster, to));
    let mut src = cluster.conn(from);
    let mut dst = cluster.conn(to);
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&from_id)
        .query(&mut dst)
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&to_id)
        .query(&mut src)
        .unwrap();
    let port = cluster.addrs()[to].port();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(5)
            .query(&mut src)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut src)
            .unwrap();
        // Let clients run into the half-moved slot for a while.
        std::thread::sleep(Duration::from_millis(30));
    }
    for i in 0..cluster.urls().len() {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to_id)
            .query(&mut cluster.conn(i))
            .unwrap();
    }
}

#[test]
fn tasks_keep_running_while_their_queue_slot_moves_to_another_node() {
    let cluster = RedisCluster::start(3);
    let s = connect(&cluster, "reshard");
    let q = s.queue("jobs").unwrap();
    let key = &s.keys().queue("jobs").unwrap().ready;
    let from = owner_of(&cluster, key);
    let to = (from + 1) % 3;
    let slot = slot_of(&cluster, key);

    const N: u64 = 400;
    let ran = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (r, sn) = (ran.clone(), seen.clone());
    let w = SwarmWorker::start(&q, WorkerOptions::new().threads(4), move |ctx| {
        r.fetch_add(1, Ordering::SeqCst);
        sn.lock().insert(ctx.data().as_u64().unwrap_or(u64::MAX));
        std::thread::sleep(Duration::from_millis(5));
        Ok(ctx.data().clone())
    })
    .unwrap();
    // First half before the move, second half pushed while it moves.
    q.push_many(&(0..N / 2).collect::<Vec<u64>>()).unwrap();
    wait_until(Duration::from_secs(20), || ran.load(Ordering::SeqCst) >= 20);
    let pusher = {
        let q = s.queue("jobs").unwrap();
        std::thread::spawn(move || {
            for i in N / 2..N {
                // A push that meets the half-moved slot may fail
                // (TRYAGAIN past the retries): push it again, as a user
                // would (a push whose reply was lost may then run twice).
                let mut tries = 0;
                while let Err(e) = q.push(&i) {
                    tries += 1;
                    assert!(tries < 50, "push {i} kept failing: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    // The move must meet work in flight, or the test proves nothing.
    let in_flight = q.counts().unwrap().pending();
    assert!(in_flight > 0, "every task ended before the slot moved");
    let (before, t0) = (ran.load(Ordering::SeqCst), Instant::now());
    move_slot(&cluster, slot, from, to);
    // While keys of the slot are split between the nodes, Redis answers a
    // script whose declared keys are partly moved with TRYAGAIN: work on
    // this queue mostly pauses until the slot has moved.
    eprintln!(
        "slot moved in {:?} with {in_flight} tasks pending; {} ran meanwhile",
        t0.elapsed(),
        ran.load(Ordering::SeqCst) - before
    );
    pusher.join().unwrap();
    assert_eq!(owner_of(&cluster, key), to, "the slot did not move");

    // Nothing lost: every pushed value ran (at least once), and every task
    // ended ok.
    let all_ran = wait_until(Duration::from_secs(60), || seen.lock().len() as u64 == N);
    let missing: Vec<u64> = (0..N).filter(|i| !seen.lock().contains(i)).collect();
    assert!(all_ran, "tasks never ran after the move: {missing:?}");
    let settled = wait_until(Duration::from_secs(30), || {
        q.counts().map(|c| c.pending() == 0).unwrap_or(false)
    });
    let c = q.counts().unwrap();
    assert!(settled, "tasks still pending: {c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    assert!(c.ended >= N, "{c:?}");
    assert!(ran.load(Ordering::SeqCst) >= N);
    // The worker's blocking wait follows the slot: a task pushed now, to
    // the new owner, is picked up.
    let id = q.push(&"after").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || q
            .get(&id)
            .ok()
            .flatten()
            .is_some_and(|t| t.state.is_end())),
        "a task pushed after the move did not run"
    );
    w.shutdown();
    s.shutdown();
}

#[test]
fn a_dead_node_costs_only_the_leases_on_it() {
    support::init_logging();
    let mut cluster = RedisCluster::start(3);
    // With no replicas a dead primary leaves its slots unserved; let the
    // others keep serving theirs (the default stops the whole cluster).
    for i in 0..3 {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query(&mut cluster.conn(i))
            .unwrap();
    }
    // The victim is node 0, the first seed: the pub/sub connection's node.
    // Pick a namespace whose membership set lives elsewhere.
    let ns = (0..100)
        .map(|i| format!("dead{i}"))
        .find(|ns| owner_of(&cluster, &redswarm::keys::Keys::new(ns.as_str()).nodes()) != 0)
        .unwrap();
    let s = connect(&cluster, &ns);
    let victim = 0;
    let sub = s.subscribe("news").unwrap();
    let guards: Vec<_> = (0..24)
        .map(|i| {
            s.lock_options(&format!("l{i}"))
                .ttl(Duration::from_millis(900))
                .auto_extend(true)
                .try_lock()
                .unwrap()
                .unwrap()
        })
        .collect();
    let on_victim: Vec<bool> = (0..24)
        .map(|i| owner_of(&cluster, &s.keys().lock(&format!("l{i}")).unwrap().owner) == victim)
        .collect();
    assert!(on_victim.iter().any(|&v| v) && on_victim.iter().any(|&v| !v));

    cluster.kill(victim);
    let t0 = Instant::now();
    // Every lock on the dead node is lost by its local deadline...
    assert!(
        wait_until(Duration::from_secs(5), || guards
            .iter()
            .zip(&on_victim)
            .all(|(g, &v)| !v || !g.is_held())),
        "a lock on the dead node still claims to be held"
    );
    // ...while the others are renewed, well past their TTL.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(t0.elapsed()));
    for (i, (g, &v)) in guards.iter().zip(&on_victim).enumerate() {
        if !v {
            assert!(
                g.is_held(),
                "lock l{i} on a live node was lost: {:?}",
                g.lost().try_recv()
            );
        }
    }
    assert_eq!(s.health(), Health::Healthy);
    // Pub/sub moved to a live node and subscribed again: a message
    // published now arrives.
    let mut got = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got && Instant::now() < deadline {
        // The channel's slot may be on the dead node: publish goes to
        // another one then.
        s.publish("news", "after").unwrap();
        while let Ok(ev) = sub.recv_timeout(Duration::from_millis(200)) {
            if let SubEvent::Message(m) = ev {
                got |= m.payload_str() == Some("after");
            }
        }
    }
    assert!(got, "no message after the pub/sub node died");
    // New locks on live nodes still work.
    let live = (0..100)
        .map(|i| format!("n{i}"))
        .find(|n| owner_of_live(&cluster, victim, &s.keys().lock(n).unwrap().owner))
        .unwrap();
    assert!(s.try_lock(&live, Duration::from_secs(5)).unwrap().is_some());
    drop(guards);
    s.shutdown();
}

/// True when a live node (not `dead`) serves `key`.
fn owner_of_live(cluster: &RedisCluster, dead: usize, key: &str) -> bool {
    (0..cluster.urls().len()).filter(|&i| i != dead).any(|i| {
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut cluster.conn(i))
            .is_ok()
    })
}
