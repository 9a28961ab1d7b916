//! Partition awareness: the peer mesh against a real redis-server and the
//! fault proxy.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use redswarm::{
    Config, PartitionState, Redswarm, StopReason, SwarmWorker, TaskState, WorkerOptions,
};
use serde_json::Value;
use support::{FaultProxy, RedisServer};

const SEC: Duration = Duration::from_secs(1);

fn builder(url: &str, ns: &str) -> redswarm::ConfigBuilder {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(80))
        .connect_timeout(Duration::from_millis(200))
        .node_ttl(SEC)
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
}

fn mesh_node(url: &str, ns: &str) -> Redswarm {
    Redswarm::connect(
        builder(url, ns)
            .peer_listen("127.0.0.1:0".parse().unwrap())
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn wait_state(
    s: &Redswarm,
    within: Duration,
    f: impl Fn(PartitionState) -> bool,
) -> PartitionState {
    let mut last = s.partition_state();
    support::wait_until(within, || {
        last = s.partition_state();
        f(last)
    });
    last
}

fn wait_peers(s: &Redswarm, n: usize) {
    assert!(
        support::wait_until(5 * SEC, || s.known_peers().len() == n),
        "expected {n} known peers, have {:?}",
        s.known_peers()
    );
}

#[test]
fn nodes_advertise_their_peer_addresses_and_learn_each_other() {
    let server = RedisServer::start();
    let nodes: Vec<Redswarm> = (0..3).map(|_| mesh_node(&server.url(), "adv")).collect();
    let live = nodes[0].live_nodes().unwrap();
    assert_eq!(live.len(), 3);
    for n in &nodes {
        let me = live.iter().find(|i| i.id == n.node_id()).unwrap();
        assert_eq!(me.peer_addr, n.peer_addr().map(|a| a.to_string()));
        wait_peers(n, 2);
        assert!(
            !n.known_peers()
                .contains(&n.peer_addr().unwrap().to_string()),
            "a node does not ping itself"
        );
    }
}

#[test]
fn a_node_cut_off_from_redis_whose_peers_still_reach_it_is_partitioned() {
    // Its peers answer, but they also say they reach Redis: the outage is
    // this node's alone, so its tasks will be re-queued elsewhere and it
    // must stop (the PONG's Redis flag; DESIGN's partition rule).
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let _a = mesh_node(&server.url(), "cut");
    let _b = mesh_node(&server.url(), "cut");
    let c = mesh_node(&proxy.url(), "cut");
    wait_peers(&c, 2);
    proxy.blackhole();
    let s = wait_state(&c, 5 * SEC, |s| s != PartitionState::Connected);
    assert_eq!(
        s,
        PartitionState::Partitioned {
            answered: 2,
            known: 2
        }
    );
    assert!(!c.partition_state().may_work());
    proxy.pass();
    let s = wait_state(&c, 10 * SEC, |s| s == PartitionState::Connected);
    assert_eq!(s, PartitionState::Connected);
}

#[test]
fn when_redis_dies_nodes_that_reach_each_other_keep_working_and_a_lone_node_stops() {
    let mut server = RedisServer::start();
    let a = mesh_node(&server.url(), "dead");
    let b = mesh_node(&server.url(), "dead");
    wait_peers(&a, 1);
    wait_peers(&b, 1);
    server.kill();
    for n in [&a, &b] {
        let s = wait_state(n, 5 * SEC, |s| s != PartitionState::Connected);
        assert_eq!(
            s,
            PartitionState::RedisLostPeersOk {
                answered: 1,
                known: 1
            }
        );
    }
    b.shutdown();
    let s = wait_state(&a, 5 * SEC, |s| {
        matches!(s, PartitionState::Partitioned { .. })
    });
    assert_eq!(
        s,
        PartitionState::Partitioned {
            answered: 0,
            known: 1
        }
    );
    server.restart();
    assert_eq!(
        wait_state(&a, 10 * SEC, |s| s == PartitionState::Connected),
        PartitionState::Connected
    );
}

#[test]
fn peers_with_another_secret_do_not_count() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let _a = Redswarm::connect(
        builder(&server.url(), "sec")
            .peer_listen(listen)
            .peer_secret("right")
            .build()
            .unwrap(),
    )
    .unwrap();
    let _b = Redswarm::connect(
        builder(&server.url(), "sec")
            .peer_listen(listen)
            .peer_secret("wrong")
            .build()
            .unwrap(),
    )
    .unwrap();
    let c = Redswarm::connect(
        builder(&proxy.url(), "sec")
            .peer_listen(listen)
            .peer_secret("right")
            .build()
            .unwrap(),
    )
    .unwrap();
    wait_peers(&c, 2);
    proxy.blackhole();
    let s = wait_state(&c, 5 * SEC, |s| s != PartitionState::Connected);
    // One of two answers with the right MAC: 50 % < 60 %.
    assert_eq!(
        s,
        PartitionState::Partitioned {
            answered: 1,
            known: 2
        }
    );
}

fn exchange(addr: SocketAddr, send: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(3 * SEC)).ok()?;
    let _ = s.write_all(send);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    (!line.is_empty()).then_some(line)
}

/// An unauthenticated `RSWP/2` ping of `node` from `from`.
fn ping_line(ns: &str, from: &str, node: &str) -> String {
    format!("RSWP/2 PING {ns} {from} {node} nonce1 -\n")
}

#[test]
fn garbage_on_the_peer_port_is_dropped_without_harm() {
    let server = RedisServer::start();
    let node = mesh_node(&server.url(), "garbage");
    let addr = node.peer_addr().unwrap();
    let good = ping_line("garbage", "tester", node.node_id());
    assert!(exchange(addr, good.as_bytes())
        .unwrap()
        .starts_with(&format!("RSWP/2 PONG garbage {} nonce1 ", node.node_id())));

    assert_eq!(exchange(addr, b"\x00\xff\x13garbage\n"), None);
    assert_eq!(
        exchange(addr, format!("{}\n", "A".repeat(10_000)).as_bytes()),
        None
    );
    assert_eq!(
        exchange(addr, good.replace("RSWP/2", "RSWP/1").as_bytes()),
        None
    );
    assert_eq!(
        exchange(
            addr,
            good.replace(" garbage ", " other-namespace ").as_bytes()
        ),
        None
    );
    // Addressed to another node, or claiming to come from this one.
    assert_eq!(
        exchange(
            addr,
            ping_line("garbage", "tester", "someone-else").as_bytes()
        ),
        None
    );
    assert_eq!(
        exchange(
            addr,
            ping_line("garbage", node.node_id(), node.node_id()).as_bytes()
        ),
        None
    );
    assert_eq!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n"), None);
    // Slow clients that send nothing, and a crowd of them.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(5 * SEC)).unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a silent client is closed without a reply");
    assert!(started.elapsed() < 4 * SEC);
    let crowd: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    drop(crowd);
    // Still answering, still healthy.
    assert!(support::wait_until(5 * SEC, || exchange(
        addr,
        good.as_bytes()
    )
    .is_some_and(|l| l.starts_with("RSWP/2 PONG"))));
    assert_eq!(node.partition_state(), PartitionState::Connected);
}

#[test]
fn a_pong_says_that_the_answering_node_reaches_redis() {
    let server = RedisServer::start();
    let node = mesh_node(&server.url(), "flag");
    let reply = exchange(
        node.peer_addr().unwrap(),
        ping_line("flag", "tester", node.node_id()).as_bytes(),
    )
    .unwrap();
    let fields: Vec<&str> = reply.trim_end().split(' ').collect();
    assert_eq!(
        fields,
        [
            "RSWP/2",
            "PONG",
            "flag",
            node.node_id(),
            "nonce1",
            "redis:up",
            "-"
        ]
    );
}

/// Registers a node that does not exist, advertising `peer_addr`, live for
/// an hour.
fn register_fake_node(server: &RedisServer, ns: &str, id: &str, peer_addr: &str) {
    let mut conn = server.conn();
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("{{{ns}:nodes}}"))
        .arg((secs + 3600) * 1000)
        .arg(id)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{{{ns}:nodes}}:info:{id}"))
        .arg("peer")
        .arg(peer_addr)
        .query(&mut conn)
        .unwrap();
}

/// A TCP server that answers every connection with one byte every
/// `every`, never a whole line, until dropped.
struct Trickler {
    addr: SocketAddr,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Trickler {
    fn start(every: Duration) -> Trickler {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let run = running.clone();
        std::thread::spawn(move || {
            while run.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let run = run.clone();
                        std::thread::spawn(move || {
                            while run.load(Ordering::SeqCst) && s.write_all(b"R").is_ok() {
                                std::thread::sleep(every);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Trickler { addr, running }
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.running
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_node_never_counts_an_answer_from_itself() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let c = mesh_node(&proxy.url(), "self");
    // A record whose address loops back to `c` (a stale entry, or a node
    // that advertised 0.0.0.0 or loopback on another host).
    let own = c.peer_addr().unwrap().to_string();
    register_fake_node(&server, "self", "ghost", &own);
    wait_peers(&c, 1);
    assert_eq!(c.known_peers(), vec![own]);
    proxy.blackhole();
    let s = wait_state(&c, 5 * SEC, |s| s != PartitionState::Connected);
    assert_eq!(
        s,
        PartitionState::Partitioned {
            answered: 0,
            known: 1
        },
        "the node answered its own ping"
    );
}

#[test]
fn a_peer_that_trickles_its_answer_does_not_hold_up_the_verdict() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    // One byte every 20 ms, well within the 250 ms peer timeout: a bound
    // per read alone would keep reading for 1536 x 20 ms.
    let slow = Trickler::start(Duration::from_millis(20));
    register_fake_node(&server, "trickle", "slowpoke", &slow.addr.to_string());
    let c = Redswarm::connect(
        builder(&proxy.url(), "trickle")
            .heartbeat_interval(Duration::from_millis(300))
            .peer_timeout(Duration::from_millis(250))
            .peer_listen("127.0.0.1:0".parse().unwrap())
            .build()
            .unwrap(),
    )
    .unwrap();
    wait_peers(&c, 1);
    proxy.blackhole();
    // Notice (a beat and a command timeout) plus one ping: about a second.
    let s = wait_state(&c, 4 * SEC, |s| s != PartitionState::Connected);
    assert_eq!(
        s,
        PartitionState::Partitioned {
            answered: 0,
            known: 1
        }
    );
}

#[test]
fn a_peer_name_that_does_not_resolve_does_not_hold_up_the_verdict() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    register_fake_node(&server, "dns", "lost", "no-such-host.invalid:7400");
    let b = mesh_node(&server.url(), "dns");
    let c = mesh_node(&proxy.url(), "dns");
    wait_peers(&c, 2);
    proxy.blackhole();
    let s = wait_state(&c, 3 * SEC, |s| s != PartitionState::Connected);
    assert_eq!(
        s,
        PartitionState::Partitioned {
            answered: 1,
            known: 2
        }
    );
    drop(b);
}

#[test]
fn a_crowd_of_trickling_clients_does_not_keep_real_pings_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = RedisServer::start();
    let node = mesh_node(&server.url(), "crowd");
    let addr = node.peer_addr().unwrap();
    let running = std::sync::Arc::new(AtomicBool::new(true));
    let crowd: Vec<_> = (0..40)
        .map(|_| {
            let run = running.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                while run.load(Ordering::SeqCst) && s.write_all(b"R").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let good = ping_line("crowd", "tester", node.node_id());
    for _ in 0..5 {
        let reply = exchange(addr, good.as_bytes());
        assert!(
            reply
                .as_deref()
                .is_some_and(|l| l.starts_with("RSWP/2 PONG")),
            "a real ping got {reply:?}"
        );
    }
    running.store(false, Ordering::SeqCst);
    for c in crowd {
        let _ = c.join();
    }
}

#[test]
fn an_unspecified_listen_address_is_advertised_as_a_concrete_one() {
    let server = RedisServer::start();
    let node = Redswarm::connect(
        builder(&server.url(), "any")
            .peer_listen("0.0.0.0:0".parse().unwrap())
            .build()
            .unwrap(),
    )
    .unwrap();
    let port = node.peer_addr().unwrap().port();
    let me = node
        .live_nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.id == node.node_id())
        .unwrap();
    // Redis is on loopback here, so loopback is the interface reaching it.
    assert_eq!(me.peer_addr, Some(format!("127.0.0.1:{port}")));
    let reply = exchange(
        me.peer_addr.unwrap().parse().unwrap(),
        ping_line("any", "tester", node.node_id()).as_bytes(),
    );
    assert!(reply.is_some_and(|l| l.starts_with("RSWP/2 PONG")));
}

/// A worker behind the proxy runs a long task; the proxy is cut.
fn cut_off_worker(with_peers: bool) -> (Option<StopReason>, TaskState) {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let ns = if with_peers { "keep" } else { "stop" };
    let peers: Vec<Redswarm> = if with_peers {
        (0..2).map(|_| mesh_node(&server.url(), ns)).collect()
    } else {
        vec![]
    };
    let worker_node = mesh_node(&proxy.url(), ns);
    wait_peers(&worker_node, peers.len());
    let q = worker_node.queue("jobs").unwrap();
    let id = q.push(&"long").unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (started_tx, started) = crossbeam_channel::bounded(1);
    let _w = SwarmWorker::start(
        &q,
        WorkerOptions::new()
            .threads(1)
            .lease(Duration::from_millis(600)),
        move |ctx| {
            // try_send: a task handed back runs again, and nobody reads the
            // second run's notes.
            let _ = started_tx.try_send(());
            let stopped = !ctx.sleep(Duration::from_millis(2500));
            let _ = tx.try_send(ctx.stop_reason());
            if stopped {
                Err("stopped".into())
            } else {
                Ok(Value::Null)
            }
        },
    )
    .unwrap();
    let inspector = Redswarm::connect(builder(&server.url(), ns).build().unwrap()).unwrap();
    let iq = inspector.queue("jobs").unwrap();
    assert!(support::wait_until(5 * SEC, || iq
        .get(&id)
        .unwrap()
        .unwrap()
        .state
        == TaskState::Running));
    // Running in Redis is not enough: the claim's reply could still be on its
    // way through the proxy, and the cut would then hold it back.
    started
        .recv_timeout(10 * SEC)
        .expect("the handler never started");
    proxy.blackhole();
    let reason = rx.recv_timeout(10 * SEC).expect("handler returned");
    proxy.pass();
    let state = if with_peers {
        let mut last = TaskState::Running;
        // Handed back (or re-queued once the lost claim's lease lapses), then
        // run again by the reconnected worker.
        let ended = support::wait_until(30 * SEC, || {
            last = iq.get(&id).unwrap().unwrap().state;
            last.is_end()
        });
        assert!(ended, "task not ended: {:?}", iq.get(&id));
        last
    } else {
        iq.get(&id).unwrap().unwrap().state
    };
    (reason, state)
}

#[test]
fn a_cut_off_worker_whose_peers_still_reach_redis_stops_its_task() {
    // Answering peers that reach Redis prove the outage is the worker's
    // own: it stops rather than run on while the task is re-queued.
    let (reason, state) = cut_off_worker(true);
    assert!(
        matches!(
            reason,
            Some(StopReason::Partitioned | StopReason::LeaseLost)
        ),
        "{reason:?}"
    );
    // And the task is not lost: it ends ok after the worker is back.
    assert_eq!(state, TaskState::End(redswarm::TaskOutcome::Ok));
}

#[test]
fn a_cut_off_worker_without_enough_peers_stops_its_task_before_the_lease_runs_out() {
    let (reason, _) = cut_off_worker(false);
    assert!(
        matches!(
            reason,
            Some(StopReason::Partitioned | StopReason::LeaseLost)
        ),
        "{reason:?}"
    );
}
