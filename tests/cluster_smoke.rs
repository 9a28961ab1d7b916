//! redswarm over a real 3-primary Redis Cluster: a first pass over every
//! feature through a `redis+cluster://` URL.
#![cfg(feature = "cluster")]

mod support;

use std::time::{Duration, Instant};

use redswarm::swarm::{SwarmWorker, WorkerOptions};
use redswarm::{Config, Redswarm};
use support::RedisCluster;

fn connect(cluster: &RedisCluster, ns: &str) -> Redswarm {
    let config = Config::builder()
        .url(cluster.url())
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(200))
        .node_ttl(Duration::from_millis(1200))
        .build()
        .unwrap();
    Redswarm::connect(config).unwrap()
}

#[test]
fn every_feature_works_through_a_cluster_url() {
    support::init_logging();
    let t0 = Instant::now();
    let cluster = RedisCluster::start(3);
    eprintln!("cluster up in {:?}", t0.elapsed());
    let s = connect(&cluster, "smoke");
    assert!(s.connection().unwrap().is_cluster());

    // Locks on names spread over the nodes, held past several beats.
    let guards: Vec<_> = (0..12)
        .map(|i| {
            s.lock_options(&format!("l{i}"))
                .ttl(Duration::from_millis(900))
                .auto_extend(true)
                .try_lock()
                .unwrap()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for g in &guards {
        assert!(g.is_held(), "a lease on some node was not renewed");
    }
    drop(guards);
    let g = s.try_lock("l3", Duration::from_secs(5)).unwrap();
    assert!(g.is_some());
    drop(g);

    // A multi-lock over several slots.
    let m = s
        .lock_all(
            &["a", "b", "c", "d"],
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .unwrap();
    drop(m);

    // A semaphore.
    let sem = s.semaphore("sem", 2).unwrap();
    let p1 = sem.try_acquire().unwrap().unwrap();
    let _p2 = sem.try_acquire().unwrap().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    drop(p1);

    // Fan-out.
    let v: u32 = s
        .fanout("job-1", Duration::from_secs(5), || Ok::<u32, String>(42))
        .unwrap();
    assert_eq!(v, 42);

    // The swarm: tasks on two queues (two slots) run to the end.
    for name in ["q1", "q2"] {
        let q = s.queue(name).unwrap();
        let ids = q.push_many(&(0..50).collect::<Vec<u32>>()).unwrap();
        let w = SwarmWorker::start(&q, WorkerOptions::new().threads(4), |ctx| {
            Ok(ctx.data().clone())
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while q.counts().unwrap().ended < 50 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(q.counts().unwrap().ended, 50, "queue {name}: {ids:?}");
        w.shutdown();
    }

    // The admin listing sees keys on every node.
    let locks = redswarm::admin::locks(&s).unwrap();
    eprintln!("admin locks: {}", locks.len());
    s.shutdown();
}
