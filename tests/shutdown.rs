//! No thread outlives its handle. Alone in its own test binary so other
//! tests' threads do not disturb the count.

mod support;

use std::time::Duration;

fn names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| std::fs::read_to_string(e.path().join("comm")).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn no_thread_is_left_after_shutdown_or_drop() {
    let server = support::RedisServer::start();
    let baseline = threads();
    let config = redswarm::Config::builder()
        .url(server.url())
        .namespace("threads")
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .build()
        .unwrap();

    // Explicit shutdown.
    let swarm = redswarm::Redswarm::connect(config.clone()).unwrap();
    let sub = swarm.subscribe("x").unwrap();
    let _conn = swarm.connection().unwrap();
    assert!(threads() > baseline);
    swarm.shutdown();
    drop(sub);
    drop(_conn);
    drop(swarm);
    assert!(
        support::wait_until(Duration::from_secs(5), || threads() <= baseline),
        "{} threads left after shutdown (baseline {baseline}): {:?}",
        threads(),
        names()
    );

    // Dropping the last clone does the same, with the peer mesh on too.
    let config = redswarm::Config::builder()
        .url(config.url())
        .namespace("threads")
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
        .peer_timeout(Duration::from_millis(50))
        .peer_listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let swarm = redswarm::Redswarm::connect(config).unwrap();
    let peer = swarm.peer_addr().unwrap();
    // A ping in flight when the handle goes away must not leave a thread.
    let _client = std::net::TcpStream::connect(peer).unwrap();
    let clone = swarm.clone();
    let sub = clone.subscribe("y").unwrap();
    drop(swarm);
    drop(sub);
    drop(clone);
    assert!(
        support::wait_until(Duration::from_secs(5), || threads() <= baseline),
        "{} threads left after drop (baseline {baseline})",
        threads()
    );
}
