//! redswarm over a Redis Cluster that speaks only TLS to its clients
//! (`rediss+cluster://`): the routed pool, the heartbeat, the worker's node
//! connection and pub/sub all verify the nodes' certificate against the
//! test's own CA. The nodes announce the hostname their certificate names
//! (`cluster-announce-hostname localhost`), as a production cluster behind
//! DNS names would.
#![cfg(all(feature = "cluster", feature = "tls"))]

mod support;

use std::time::{Duration, Instant};

use redswarm::swarm::{SwarmWorker, WorkerOptions};
use redswarm::{Config, Redswarm, SubEvent};
use support::{wait_until, RedisServer, TestPki, TlsFiles};

/// Three TLS cluster nodes (the plain ports stay open for the test's own
/// inspection; redswarm only gets the TLS ports). With `tls-cluster yes`
/// the cluster bus is TLS too and listens at the TLS port + 10000, so the
/// cluster is created over the TLS ports.
fn tls_cluster(pki: &TestPki) -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::builder()
                .tls(TlsFiles {
                    cert: pki.server_cert(),
                    key: pki.server_key(),
                    ca: pki.ca(),
                    auth_clients: false,
                })
                .config("cluster-enabled", "yes")
                .config("tls-cluster", "yes")
                // The bus always checks the connecting node's certificate,
                // and the server certificate is for server use only.
                .config("tls-client-cert-file", &pki.client_cert().to_string_lossy())
                .config("tls-client-key-file", &pki.client_key().to_string_lossy())
                .config("cluster-announce-hostname", "localhost")
                .config("cluster-preferred-endpoint-type", "hostname")
                .start()
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.tls_port()))
        .collect();
    // `timeout`: a cluster that cannot join would leave redis-cli waiting.
    let out = std::process::Command::new("timeout")
        .args(["60", "redis-cli"])
        .arg("--tls")
        .arg("--cacert")
        .arg(pki.ca())
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(60), || {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut n.conn())
                .is_ok_and(|i| i.contains("cluster_state:ok"))
        });
        assert!(ok, "the TLS cluster never reached cluster_state:ok");
    }
    nodes
}

#[test]
fn every_connection_to_a_tls_cluster_checks_the_nodes_certificates() {
    let pki = TestPki::generate();
    let nodes = tls_cluster(&pki);
    let seeds: Vec<String> = nodes
        .iter()
        .map(|n| format!("localhost:{}", n.tls_port()))
        .collect();
    let url = format!("rediss+cluster://{}/", seeds.join(","));
    let builder = || {
        Config::builder()
            .url(url.clone())
            .namespace("tls")
            .command_timeout(Duration::from_millis(500))
            .heartbeat_interval(Duration::from_millis(500))
            .node_ttl(Duration::from_secs(3))
    };

    // A CA that did not sign the nodes' certificate is refused.
    let wrong = Redswarm::connect(builder().tls_ca_file(pki.other_ca()).build().unwrap());
    assert!(wrong.is_err(), "connected with the wrong CA");

    let s = Redswarm::connect(builder().tls_ca_file(pki.ca()).build().unwrap()).unwrap();
    assert!(s.connection().unwrap().is_cluster());
    // Locks on several nodes, renewed by the heartbeat over TLS.
    let guards: Vec<_> = (0..6)
        .map(|i| {
            s.lock_options(&format!("l{i}"))
                .ttl(Duration::from_millis(1500))
                .auto_extend(true)
                .try_lock()
                .unwrap()
                .unwrap()
        })
        .collect();
    // Pub/sub on a node connection of its own.
    let sub = s.subscribe("news").unwrap();
    // Tasks: the worker's blocking wait is a TLS connection to the queue's
    // node, found through CLUSTER SLOTS (which names `localhost`).
    let q = s.queue("jobs").unwrap();
    q.push_many(&(0..30).collect::<Vec<u32>>()).unwrap();
    let w = SwarmWorker::start(&q, WorkerOptions::new().threads(2), |ctx| {
        Ok(ctx.data().clone())
    })
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || q
            .counts()
            .is_ok_and(|c| c.ended == 30)),
        "tasks did not end over TLS: {:?}",
        q.counts()
    );
    // A task pushed now wakes the blocked worker.
    let id = q.push(&"late").unwrap();
    assert!(wait_until(Duration::from_secs(10), || q
        .get(&id)
        .ok()
        .flatten()
        .is_some_and(|t| t.state.is_end())));
    w.shutdown();

    let mut got = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got && Instant::now() < deadline {
        s.publish("news", "hello").unwrap();
        if let Ok(SubEvent::Message(m)) = sub.recv_timeout(Duration::from_millis(300)) {
            got = m.payload_str() == Some("hello");
        }
    }
    assert!(got, "no message over the TLS pub/sub connection");
    std::thread::sleep(Duration::from_secs(2));
    for g in &guards {
        assert!(g.is_held(), "a lock was not renewed over TLS");
    }
    drop(guards);
    s.shutdown();
}
