//! A throwaway redis-server on a free port, stopped on drop (even when the
//! test panics).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Options for [`RedisServer`].
#[derive(Clone, Debug, Default)]
pub struct Builder {
    aof: bool,
    replica_of: Option<u16>,
}

impl Builder {
    /// Persist with AOF, `appendfsync always` (survives `kill()`).
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Start as a replica of the server on `port` (127.0.0.1).
    pub fn replica_of(mut self, port: u16) -> Self {
        self.replica_of = Some(port);
        self
    }

    /// Starts the server and waits until it answers PING.
    pub fn start(self) -> RedisServer {
        let nonce = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "redswarm-test-{}-{nonce}-{stamp}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create redis test dir");
        let mut last_err = String::new();
        for _ in 0..10 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                aof: self.aof,
                replica_of: self.replica_of,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    server.kill();
                }
            }
        }
        panic!("could not start redis-server: {last_err}");
    }
}

/// A redis-server child process for one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    aof: bool,
    replica_of: Option<u16>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> RedisServer {
        Builder::default().start()
    }

    /// Options (AOF).
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--save", ""]);
        if let Some(port) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1"]).arg(port.to_string());
        }
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("redis-server not found on PATH; install it (e.g. apt-get install redis-server)")
                }
                format!("spawn redis-server: {e}")
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "redis-server exited with {status}: {}",
                    self.log_tail()
                ));
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "redis-server did not answer in 10 s: {}",
            self.log_tail()
        ))
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
        matches!(redis::cmd("PING").query::<String>(&mut c), Ok(ref s) if s == "PONG")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A client for inspecting the server from the test.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    /// A fresh connection for inspecting the server from the test.
    pub fn conn(&self) -> redis::Connection {
        let c = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c
    }

    /// The server's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// SIGKILL and wait: a crash, no shutdown save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal_child(&child, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal_child(&self, child: &Child, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status();
    }

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal_child(&child, "CONT");
            self.signal_child(&child, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same data dir and options.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    self.kill();
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restart failed: {e}"),
            }
        }
    }

    /// SIGSTOP: the server hangs (connections stay open, nothing answers).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
