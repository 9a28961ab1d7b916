//! Self test of the shared test support (throwaway redis-server, fault
//! proxy, helpers).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{FaultProxy, RedisCluster, RedisServer, SentinelSet};

const SHORT: Duration = Duration::from_millis(300);

fn ping(c: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(c)
}

/// A connection with a short read timeout, for expecting silence.
fn short_conn(url: &str) -> redis::Connection {
    let c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    c.set_read_timeout(Some(SHORT)).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Whether a fresh connection to `url` answers PING (within 1 s).
fn answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    matches!(ping(&mut c), Ok(s) if s == "PONG")
}

fn is_timeout(e: &redis::RedisError) -> bool {
    e.is_timeout()
}

#[test]
fn server_starts_and_answers() {
    support::init_logging();
    support::init_logging();
    let server = RedisServer::start();
    assert!(server.is_running());
    assert!(server.pid().is_some());
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(server.addr().port(), server.port());
    assert_eq!(ping(&mut server.conn()).unwrap(), "PONG");
    let mut c = server.client().get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let v: String = redis::cmd("GET")
        .arg("k")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(v, "v");
    // No persistence by default.
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query(&mut c)
        .unwrap();
    assert_eq!(aof, ["appendonly", "no"]);
}

#[test]
fn two_servers_get_different_ports_and_dirs() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert!(a.dir().is_dir());
}

#[test]
fn aof_survives_kill_and_restart_on_the_same_port() {
    let mut server = RedisServer::builder().aof(true).start();
    let port = server.port();
    let pid = server.pid();
    let _: () = redis::cmd("SET")
        .arg("durable")
        .arg("yes")
        .query(&mut server.conn())
        .unwrap();
    server.kill();
    assert!(!server.is_running());
    assert!(!answers(&server.url()));
    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    let v: Option<String> = redis::cmd("GET")
        .arg("durable")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(v.as_deref(), Some("yes"));
}

#[test]
fn without_persistence_restart_starts_empty() {
    let mut server = RedisServer::start();
    let port = server.port();
    let _: () = redis::cmd("SET")
        .arg("gone")
        .arg("1")
        .query(&mut server.conn())
        .unwrap();
    server.restart();
    assert_eq!(server.port(), port);
    let v: Option<String> = redis::cmd("GET")
        .arg("gone")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(v, None);
}

#[test]
fn stop_is_graceful_and_restart_brings_it_back() {
    let mut server = RedisServer::start();
    server.stop();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    assert!(!answers(&server.url()));
    server.restart();
    assert!(answers(&server.url()));
}

#[test]
fn pause_hangs_the_server_and_resume_wakes_it() {
    let server = RedisServer::start();
    let mut c = short_conn(&server.url());
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    server.pause();
    assert!(server.is_running());
    let started = Instant::now();
    let err = ping(&mut c).unwrap_err();
    assert!(is_timeout(&err), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.resume();
    assert!(support::wait_until(Duration::from_secs(5), || answers(
        &server.url()
    )));
}

#[test]
fn dropping_a_paused_server_still_cleans_up() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = server.dir().to_path_buf();
    server.pause();
    drop(server);
    assert!(!answers(&url));
    assert!(!dir.exists());
}

#[test]
fn dropping_the_server_stops_it_and_removes_its_dir() {
    let server = RedisServer::start();
    let url = server.url();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    assert!(answers(&url));
    drop(server);
    assert!(!answers(&url));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists());
}

#[test]
fn drop_runs_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = RedisServer::start();
        tx.send((server.url(), server.dir().to_path_buf())).unwrap();
        panic!("test failure while the server runs");
    })
    .join();
    assert!(result.is_err());
    let (url, dir) = rx.recv().unwrap();
    assert!(!answers(&url));
    assert!(!dir.exists());
}

#[test]
fn proxy_pass_forwards() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    assert_eq!(proxy.url(), format!("redis://{}/", proxy.addr()));
    assert_eq!(proxy.upstream(), server.addr());
    let mut c = short_conn(&proxy.url());
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    let _: () = redis::cmd("SET")
        .arg("via")
        .arg("proxy")
        .query(&mut c)
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("via")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(v, "proxy");
    assert_eq!(proxy.connections(), 1);
    drop(c);
    assert!(support::wait_until(Duration::from_secs(5), || proxy
        .connections()
        == 0));
}

#[test]
fn proxy_latency_delays_and_pass_clears_it() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut c = short_conn(&proxy.url());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    proxy.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    assert!(started.elapsed() >= Duration::from_millis(200));
    proxy.pass();
    assert_eq!(ping(&mut c).unwrap(), "PONG");
}

#[test]
fn proxy_blackhole_swallows_and_pass_works_again() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut c = short_conn(&proxy.url());
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    proxy.blackhole();
    let err = ping(&mut c).unwrap_err();
    assert!(is_timeout(&err), "{err:?}");
    // New connections are accepted but get nothing either.
    let mut raw = TcpStream::connect(proxy.addr()).unwrap();
    raw.set_read_timeout(Some(SHORT)).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 64];
    let e = raw.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e:?}"
    );
    proxy.pass();
    // Held bytes are delivered once the partition heals.
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = raw.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    // And a new connection works.
    let mut fresh = short_conn(&proxy.url());
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}

#[test]
fn proxy_drop_reply_to_loses_one_reply_after_the_server_acted() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut c = short_conn(&proxy.url());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    proxy.drop_reply_to(b"lost-reply-key");
    // Other requests pass while the needle waits.
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    let err = redis::cmd("INCR")
        .arg("lost-reply-key")
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(err.is_connection_dropped() || err.is_io_error(), "{err:?}");
    assert_eq!(proxy.dropped_replies(), 1);
    // The server did the work.
    let v: i64 = redis::cmd("GET")
        .arg("lost-reply-key")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(v, 1);
    // One-shot: the next such request gets its reply.
    let mut fresh = short_conn(&proxy.url());
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let v: i64 = redis::cmd("INCR")
        .arg("lost-reply-key")
        .query(&mut fresh)
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(proxy.dropped_replies(), 1);
}

#[test]
fn proxy_cut_breaks_existing_connections_and_pass_allows_new_ones() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut c = short_conn(&proxy.url());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    proxy.cut();
    let started = Instant::now();
    assert!(ping(&mut c).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an error, not a timeout"
    );
    assert!(support::wait_until(Duration::from_secs(5), || proxy
        .connections()
        == 0));
    // While cut, new connections are closed at once.
    let mut raw = TcpStream::connect(proxy.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.write_all(b"PING\r\n");
    let mut buf = [0u8; 64];
    assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
    assert!(!answers(&proxy.url()));
    proxy.pass();
    let mut fresh = short_conn(&proxy.url());
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}

#[test]
fn proxy_refuse_keeps_existing_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut c = short_conn(&proxy.url());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    proxy.refuse();
    assert!(!answers(&proxy.url()));
    assert_eq!(ping(&mut c).unwrap(), "PONG");
    proxy.pass();
    assert!(answers(&proxy.url()));
}

#[test]
fn dropping_the_proxy_closes_its_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let addr = proxy.addr();
    let mut c = short_conn(&proxy.url());
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    proxy.blackhole();
    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(ping(&mut c).is_err());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn wait_until_reports_success_and_timeout() {
    let mut n = 0;
    assert!(support::wait_until(Duration::from_secs(5), || {
        n += 1;
        n == 3
    }));
    let started = Instant::now();
    assert!(!support::wait_until(Duration::from_millis(50), || false));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

/// The slot ranges each node of `CLUSTER NODES` serves, by port.
fn slots_by_port(c: &mut redis::Connection) -> Vec<(u16, Vec<(u16, u16)>)> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(c).unwrap();
    nodes
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
            let port = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in CLUSTER NODES line {line:?}"));
            let ranges = fields[8..]
                .iter()
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            (port, ranges)
        })
        .collect()
}

#[test]
fn cluster_of_three_primaries_covers_every_slot() {
    let mut cluster = RedisCluster::start(3);
    let addrs = cluster.addrs();
    let urls = cluster.urls();
    assert_eq!(addrs.len(), 3);
    assert_eq!(urls[0], format!("redis://127.0.0.1:{}/", addrs[0].port()));
    let mut ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "distinct ports: {addrs:?}");

    let mut covered = vec![false; 16384];
    let layout = slots_by_port(&mut cluster.conn(0));
    assert_eq!(layout.len(), 3, "three nodes in {layout:?}");
    for (port, ranges) in &layout {
        assert!(ports.contains(port), "unknown node {port} in {layout:?}");
        assert!(!ranges.is_empty(), "node {port} serves no slot");
        for &(a, b) in ranges {
            for slot in a..=b {
                assert!(!covered[slot as usize], "slot {slot} served twice");
                covered[slot as usize] = true;
            }
        }
    }
    assert!(covered.iter().all(|c| *c), "some slot is not served");
    for i in 0..3 {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut cluster.conn(i))
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "node {i}: {info}");
        assert!(info.contains("cluster_slots_ok:16384"), "node {i}: {info}");
    }

    // A key is served by exactly one node; the others answer MOVED.
    let mut moved = 0;
    for i in 0..3 {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut cluster.conn(i));
        match r {
            Ok(()) => {}
            Err(e) => {
                assert!(e.to_string().to_uppercase().contains("MOVED"), "{e}");
                moved += 1;
            }
        }
    }
    assert_eq!(moved, 2);

    let dir = cluster.dir().to_path_buf();
    assert!(dir.join(format!("nodes-{}.conf", ports[0])).is_file());
    assert!(cluster.is_running(1));
    cluster.kill(1);
    assert!(!cluster.is_running(1));
    assert!(!answers(&urls[1]));
    assert!(answers(&urls[0]));
    drop(cluster);
    assert!(!dir.exists());
    assert!(!answers(&urls[0]));
}

/// The child of the test below: starts a watched cluster, prints its
/// directory and node pids, then waits to be killed.
#[test]
fn child_watched_cluster() {
    if std::env::var("CHILD_WATCHED_CLUSTER").is_err() {
        return;
    }
    let cluster = RedisCluster::start_watched(3);
    report_watched(&[cluster.dir()], &cluster.pids());
    std::thread::sleep(Duration::from_secs(600));
}

/// The child of the test below: starts a watched Sentinel set, prints its
/// directories and pids, then waits to be killed.
#[test]
fn child_watched_sentinels() {
    if std::env::var("CHILD_WATCHED_SENTINELS").is_err() {
        return;
    }
    let set = SentinelSet::start_watched();
    report_watched(&set.dirs(), &set.pids());
    std::thread::sleep(Duration::from_secs(600));
}

/// `watched <n> <dir>... <pid>...` on one line of stdout.
fn report_watched(dirs: &[&std::path::Path], pids: &[u32]) {
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!(
        "watched {} {} {}",
        dirs.len(),
        dirs.join(" "),
        pids.join(" ")
    );
    let _ = std::io::stdout().flush();
}

/// Alive and not a zombie (a killed node waits to be reaped by init).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Runs the child `role` with `env` set, reads the directories and pids it
/// reports (expecting `n_pids` of them), SIGKILLs it and checks that the
/// watchdog kills the processes and removes the directories.
fn watched_processes_and_dirs_go_on_sigkill(role: &str, env: &str, n_pids: usize) {
    use std::io::BufRead;
    let mut child = support::child_role(role)
        .env(env, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            // libtest may print "test name ... " on the same line first.
            if let Some(at) = line.find("watched ") {
                let _ = tx.send(line[at + "watched ".len()..].to_string());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("the child never reported what it started");
    let mut words = line.split_whitespace();
    let n_dirs: usize = words.next().unwrap().parse().unwrap();
    let dirs: Vec<std::path::PathBuf> = words.by_ref().take(n_dirs).map(Into::into).collect();
    let pids: Vec<u32> = words.map(|w| w.parse().unwrap()).collect();
    assert_eq!(dirs.len(), n_dirs, "{line}");
    assert_eq!(pids.len(), n_pids, "{line}");
    assert!(pids.iter().all(|p| process_alive(*p)), "{line}");
    assert!(dirs.iter().all(|d| d.is_dir()), "{line}");
    child.kill().unwrap(); // SIGKILL: no destructor, no atexit
    child.wait().unwrap();
    assert!(
        support::wait_until(Duration::from_secs(20), || !pids
            .iter()
            .any(|p| process_alive(*p))
            && !dirs.iter().any(|d| d.exists())),
        "after the SIGKILL: processes alive {:?}, dirs left {:?}",
        pids.iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>(),
        dirs.iter().filter(|d| d.exists()).collect::<Vec<_>>()
    );
}

#[test]
fn a_watched_clusters_nodes_and_dir_go_when_its_process_is_sigkilled() {
    watched_processes_and_dirs_go_on_sigkill("child_watched_cluster", "CHILD_WATCHED_CLUSTER", 3);
}

#[test]
fn a_watched_sentinel_sets_processes_and_dirs_go_when_its_process_is_sigkilled() {
    // Primary, replica and three sentinels; their three directories.
    watched_processes_and_dirs_go_on_sigkill(
        "child_watched_sentinels",
        "CHILD_WATCHED_SENTINELS",
        5,
    );
}
