//! What redis-rs's sync cluster client (`redis::cluster`, redswarm feature
//! `cluster`) does with redswarm's scripts on a real Redis Cluster: the
//! findings behind the README's "Redis Cluster" section, on which
//! redswarm's cluster support (`src/redis_cluster.rs`, `src/connection.rs`)
//! is built.
#![cfg(feature = "cluster")]

mod support;

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redswarm::keys::{Keys, LockKeys};
use support::RedisCluster;

/// `lock_acquire.lua` behind the prelude, exactly as `lua_script!` builds it.
fn lock_acquire() -> redis::Script {
    redis::Script::new(concat!(
        include_str!("../src/scripts/prelude.lua"),
        include_str!("../src/scripts/lock_acquire.lua")
    ))
}

fn client(cluster: &RedisCluster) -> ClusterClient {
    ClusterClient::builder(cluster.urls())
        .connection_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(5))
        .build()
        .expect("cluster client")
}

/// `{1, fence, ms left}` when granted, `{0, owner ttl}` when not.
fn acquire(
    conn: &mut ClusterConnection,
    script: &redis::Script,
    k: &LockKeys,
    token: &str,
) -> Vec<i64> {
    script
        .key(&k.owner)
        .key(&k.fence)
        .key(&k.queue)
        .key(&k.tickets)
        .arg(token)
        .arg(30_000)
        .arg("0")
        .arg(5_000)
        .invoke(conn)
        .unwrap_or_else(|e| panic!("lock_acquire on {}: {e}", k.owner))
}

/// Keys per node (DBSIZE on a plain connection to each).
fn keys_per_node(cluster: &RedisCluster) -> Vec<i64> {
    (0..cluster.urls().len())
        .map(|i| redis::cmd("DBSIZE").query(&mut cluster.conn(i)).unwrap())
        .collect()
}

#[test]
fn lock_script_runs_on_the_node_of_its_slot_and_survives_script_flush() {
    let cluster = RedisCluster::start(3);
    let mut conn = client(&cluster).get_connection().unwrap();
    let script = lock_acquire();
    let keys = Keys::new("app");
    let locks: Vec<LockKeys> = (0..12)
        .map(|i| keys.lock(&format!("lock-{i}")).unwrap())
        .collect();

    // Each EVALSHA is routed by its first key's slot; the first call on a
    // node answers NOSCRIPT, `Script::invoke` loads (SCRIPT LOAD goes to
    // every node) and retries.
    let mut fences = Vec::new();
    for k in &locks {
        let r = acquire(&mut conn, &script, k, "t1");
        assert_eq!(r[0], 1, "{} granted: {r:?}", k.owner);
        fences.push(r[1]);
        let owner: String = redis::cmd("GET").arg(&k.owner).query(&mut conn).unwrap();
        assert_eq!(owner, "t1");
    }
    let spread = keys_per_node(&cluster);
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "locks on several nodes: {spread:?}"
    );

    // Another token is refused, with the owner's TTL.
    let r = acquire(&mut conn, &script, &locks[0], "t2");
    assert_eq!(r[0], 0, "{r:?}");
    assert!(r[1] > 0, "{r:?}");

    // After SCRIPT FLUSH on every node the cached SHA is gone everywhere:
    // the retry (idempotent for its token) reloads and returns the same
    // grant and fencing token.
    for i in 0..3 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut cluster.conn(i))
            .unwrap();
    }
    for (k, fence) in locks.iter().zip(&fences) {
        let r = acquire(&mut conn, &script, k, "t1");
        assert_eq!((r[0], r[1]), (1, *fence), "{} after SCRIPT FLUSH", k.owner);
    }
}

#[test]
fn a_script_call_with_keys_of_two_slots_is_refused() {
    // What heartbeat.lua would meet: `{ns:nodes}` and a lock's owner key.
    let cluster = RedisCluster::start(3);
    let mut conn = client(&cluster).get_connection().unwrap();
    let keys = Keys::new("app");
    let nodes = keys.nodes();
    let owner = keys.lock("orders").unwrap().owner;
    let slot = |k: &str| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut cluster.conn(0))
            .unwrap()
    };
    assert_ne!(slot(&nodes), slot(&owner));
    let r: redis::RedisResult<i64> = redis::Script::new("return #KEYS")
        .key(&nodes)
        .key(&owner)
        .invoke(&mut conn);
    let e = r.expect_err("cross-slot script call");
    assert!(e.to_string().to_uppercase().contains("CROSSSLOT"), "{e}");
}

#[test]
fn classic_publish_reaches_a_subscriber_on_another_node() {
    // Cluster-wide pub/sub: a plain connection to any node can subscribe;
    // PUBLISH through the cluster client (on whichever node) reaches it.
    let cluster = RedisCluster::start(3);
    let mut sub_conn = cluster.conn(2);
    let mut conn = client(&cluster).get_connection().unwrap();
    let channel = Keys::new("app").lock("orders").unwrap().released;
    let mut sub = sub_conn.as_pubsub();
    sub.subscribe(&channel).unwrap();
    sub.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let got = support::wait_until(Duration::from_secs(10), || {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg("hi")
            .query(&mut conn)
            .unwrap();
        match sub.get_message() {
            Ok(m) => m.get_payload::<String>().unwrap() == "hi",
            Err(_) => false,
        }
    });
    assert!(got, "no message on {channel}");
}

#[test]
fn blocking_pop_follows_the_slot_and_is_cut_by_the_response_timeout() {
    let cluster = RedisCluster::start(3);
    let client = ClusterClient::builder(cluster.urls())
        .response_timeout(Duration::from_secs(1))
        .retries(0)
        .build()
        .unwrap();
    let mut conn = client.get_connection().unwrap();
    let marker = Keys::new("app").queue("q").unwrap().marker;
    let _: i64 = redis::cmd("RPUSH")
        .arg(&marker)
        .arg("m")
        .query(&mut conn)
        .unwrap();
    // Routed to the marker's node like any keyed command.
    let got: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(&marker)
        .arg(0.2)
        .query(&mut conn)
        .unwrap();
    assert_eq!(got, Some((marker.clone(), "m".to_string())));
    // A BLPOP longer than the response timeout fails as a timeout: a
    // blocking waker needs its own client (or a plain connection to the
    // slot's node) with a longer read timeout.
    let r: redis::RedisResult<Option<(String, String)>> =
        redis::cmd("BLPOP").arg(&marker).arg(3).query(&mut conn);
    let e = r.expect_err("BLPOP 3 s with a 1 s response timeout");
    assert!(e.is_timeout(), "{e}");
}

#[test]
fn r2d2_pools_cluster_connections() {
    let cluster = RedisCluster::start(3);
    let pool = r2d2::Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_secs(10))
        .build(client(&cluster))
        .expect("pool of cluster connections");
    let mut a = pool.get().unwrap();
    let mut b = pool.get().unwrap();
    for i in 0..20 {
        let key = format!("k{i}");
        let _: () = redis::cmd("SET").arg(&key).arg(i).query(&mut *a).unwrap();
        let v: i64 = redis::cmd("GET").arg(&key).query(&mut *b).unwrap();
        assert_eq!(v, i);
    }
}

/// The index of the node that serves `key` (the others answer MOVED).
fn owner_node(cluster: &RedisCluster, key: &str) -> usize {
    (0..cluster.urls().len())
        .find(|i| {
            redis::cmd("EXISTS")
                .arg(key)
                .query::<i64>(&mut cluster.conn(*i))
                .is_ok()
        })
        .unwrap_or_else(|| panic!("no node serves {key}"))
}

#[test]
fn undeclared_keys_work_only_while_their_slot_is_on_the_same_node() {
    // Queue, cluster and tracker scripts build record keys from a prefix in
    // ARGV (`<queue>:task:<id>`). Redis 7 runs a script (without flags)
    // that touches an undeclared key whenever that key is on the node, even
    // of another slot; only a key on another node is refused. So the
    // server does not catch a cross-slot mistake until a reshard separates
    // the slots: tests/cluster_slots.rs does.
    support::init_logging();
    let cluster = RedisCluster::start(3);
    let mut conn = client(&cluster).get_connection().unwrap();
    let keys = Keys::new("app");
    let q = keys.queue("q").unwrap();
    let set_argv_key = redis::Script::new(
        "redis.call('SET', KEYS[1], 'declared'); return redis.call('SET', ARGV[1], 'derived')",
    );
    let run = |conn: &mut ClusterConnection, key: &str| -> redis::RedisResult<String> {
        set_argv_key.key(&q.seq).arg(key).invoke(conn)
    };
    assert_eq!(run(&mut conn, &q.task("t1")).unwrap(), "OK");
    let got: String = redis::cmd("GET")
        .arg(q.task("t1"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(got, "derived");

    let home = owner_node(&cluster, &q.seq);
    let slot = |k: &str| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut cluster.conn(0))
            .unwrap()
    };
    let locks: Vec<String> = (0..200)
        .map(|i| keys.lock(&format!("l{i}")).unwrap().owner)
        .collect();
    let same_node = locks
        .iter()
        .find(|k| slot(k) != slot(&q.seq) && owner_node(&cluster, k) == home)
        .expect("a lock in another slot of the same node");
    let other_node = locks
        .iter()
        .find(|k| owner_node(&cluster, k) != home)
        .expect("a lock on another node");

    assert_eq!(run(&mut conn, same_node).unwrap(), "OK", "{same_node}");
    let e = run(&mut conn, other_node).expect_err("undeclared key on another node");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(other_node)
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, 0, "nothing written under {other_node}: {e}");
    log::info!("undeclared key on another node: {e}");
}
