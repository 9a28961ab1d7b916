//! A throwaway Redis Cluster: N primaries (no replicas) as child processes
//! on free ports, sharing one temporary directory. Every process is killed
//! and the directory removed on drop, also when the test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{free_port, unique_dir};
use super::watchdog::Watchdog;

/// How long one node gets to answer PING.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster gets to report `cluster_state:ok` on every node
/// after `redis-cli --cluster create` (gossip needs a few rounds).
const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(60);
/// How many fresh ports one node tries when it exits at once.
const START_ATTEMPTS: usize = 10;
/// The cluster bus listens on port + 10000, so a node port must leave room.
const MAX_NODE_PORT: u16 = u16::MAX - 10_000;

/// A Redis Cluster of primaries owned by one test.
///
/// Each node runs `redis-server --cluster-enabled yes --save ''
/// --appendonly no` with its own `nodes-<port>.conf` and log in the shared
/// directory; the slots are split by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// With [`RedisCluster::start_watched`]: the [`Watchdog`] that kills
    /// the nodes and removes `dir` once this process is gone, however it
    /// ended.
    watchdog: Option<Watchdog>,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3, Redis Cluster's minimum),
    /// joins them with all 16384 slots spread over them, and waits until
    /// every node reports `cluster_state:ok`.
    ///
    /// Panics if `redis-server` or `redis-cli` are missing, a node does not
    /// come up, the create command fails, or the cluster is not ok within
    /// 60 s (messages carry the failing output or log tail).
    pub fn start(primaries: usize) -> RedisCluster {
        Self::start_inner(primaries, false)
    }

    /// Like [`RedisCluster::start`], for a cluster that is never dropped
    /// (one shared by every test of a binary, in a `static`): a
    /// [`Watchdog`] started first learns the directory and each node's pid
    /// and, once this process exited — normally, by a panic, or killed
    /// with SIGKILL — SIGKILLs the nodes and removes the directory.
    pub fn start_watched(primaries: usize) -> RedisCluster {
        Self::start_inner(primaries, true)
    }

    fn start_inner(primaries: usize, watched: bool) -> RedisCluster {
        assert!(
            primaries >= 3,
            "Redis Cluster needs at least 3 primaries, got {primaries}"
        );
        let dir = unique_dir();
        let watchdog = watched.then(Watchdog::spawn);
        if let Some(watchdog) = &watchdog {
            watchdog.watch_dir(&dir);
        }
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create redis cluster dir {}: {e}", dir.display()));
        // From here on Drop kills what started and removes the directory.
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(primaries),
            dir,
            watchdog,
        };
        for _ in 0..primaries {
            let node = cluster.start_node();
            cluster.nodes.push(node);
        }
        cluster.create();
        cluster.wait_ok();
        cluster
    }

    /// `redis://127.0.0.1:PORT/` of every node, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,.../`: redswarm's URL of
    /// the whole cluster, every node a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// `127.0.0.1:PORT` of every node, in start order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .map(|n| SocketAddr::from(([127, 0, 0, 1], n.port)))
            .collect()
    }

    /// The process ids of the running nodes, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// The shared data directory (configs and logs of all nodes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A plain (non-cluster) connection to node `i` with 5 s connect, read
    /// and write timeouts; for commands any node answers (`CLUSTER
    /// KEYSLOT`, `CLUSTER INFO`). Panics if it cannot connect.
    pub fn conn(&self, i: usize) -> redis::Connection {
        let url = &self.urls()[i];
        connect(url, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to cluster node {url}: {e}"))
    }

    /// SIGKILL node `i` and wait for it (its slots become unserved until
    /// the cluster notices; with no replicas they stay so).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `i`'s process is alive.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn start_node(&self) -> Node {
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if port > MAX_NODE_PORT {
                last_err = format!("port {port} leaves no room for the cluster bus port");
                continue;
            }
            let child = self.spawn(port);
            if let Some(watchdog) = &self.watchdog {
                watchdog.watch_pid(child.id());
            }
            let mut node = Node {
                port,
                child: Some(child),
            };
            match self.wait_node(&mut node) {
                Ok(()) => return node,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start a cluster node after {START_ATTEMPTS} attempts: {last_err}");
    }

    fn spawn(&self, port: u16) -> Child {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(self.dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path(port))
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server not found on PATH; install it (e.g. apt-get install redis-server)"
            ),
            Err(e) => panic!("spawn redis-server: {e}"),
        }
    }

    /// `Err` when the process exited (a bind error: retry on another
    /// port); panics when it runs but never answers.
    fn wait_node(&self, node: &mut Node) -> Result<(), String> {
        let url = format!("redis://127.0.0.1:{}/", node.port);
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return Err(format!(
                        "cluster node on port {} exited with {status}; log tail:\n{}",
                        node.port,
                        self.log_tail(node.port)
                    ));
                }
            }
            let pong = connect(&url, Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if matches!(pong, Ok(ref s) if s == "PONG") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail(node.port);
                if let Some(mut child) = node.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!(
                    "cluster node on port {} not ready within {NODE_READY_TIMEOUT:?}; log tail:\n{tail}",
                    node.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`.
    fn create(&self) {
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.addrs().iter().map(ToString::to_string))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("run redis-cli (apt-get install redis-tools if missing): {e}")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Until every node says `cluster_state:ok` and sees all slots served.
    fn wait_ok(&self) {
        let urls = self.urls();
        let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
        let mut last: String;
        for url in &urls {
            loop {
                let info = connect(url, Duration::from_secs(1))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
                match info {
                    Ok(info)
                        if info.lines().any(|l| l.trim() == "cluster_state:ok")
                            && info.lines().any(|l| l.trim() == "cluster_slots_ok:16384") =>
                    {
                        break
                    }
                    Ok(info) => last = info,
                    Err(e) => last = e.to_string(),
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {url} not ok within {CLUSTER_OK_TIMEOUT:?}; last CLUSTER INFO:\n{last}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.join(format!("redis-{port}.log"))
    }

    fn log_tail(&self, port: u16) -> String {
        let log = std::fs::read_to_string(self.log_path(port)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // EOF: the watchdog finds the nodes gone and the directory removed.
        drop(self.watchdog.take());
    }
}

/// A connection with `timeout` for connect, read and write.
fn connect(url: &str, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(c)
}
