//! A throwaway `redis-server` child process on a free port, with its own
//! temporary data directory. It is killed and its directory removed on drop,
//! also when the test panics (drop runs on unwind).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::watchdog::Watchdog;

/// How long a (re)started server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports `start()` tries when a server exits at once.
const START_ATTEMPTS: usize = 10;
/// How long `restart()` keeps retrying the same port.
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop()` waits for a graceful exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const NOT_FOUND: &str =
    "redis-server not found on PATH; install it (e.g. apt-get install redis-server)";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Options for [`RedisServer`]; get one from [`RedisServer::builder`].
#[derive(Clone, Debug, Default)]
pub struct Builder {
    aof: bool,
    replica_of: Option<u16>,
    extra: Vec<(String, String)>,
    tls: Option<TlsFiles>,
    watchdog: Option<Watchdog>,
}

/// What a TLS listener needs: the server's certificate and key, and the CA
/// that client certificates must chain to.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA for client certificates (PEM).
    pub ca: PathBuf,
    /// `tls-auth-clients yes`: a client without a certificate is refused.
    pub auth_clients: bool,
}

impl Builder {
    /// Persist with AOF and `appendfsync always`, so a write acknowledged
    /// before [`RedisServer::kill`] survives [`RedisServer::restart`].
    /// Off by default (no persistence at all).
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Start as a replica of the server listening on 127.0.0.1:`port`.
    pub fn replica_of(mut self, port: u16) -> Self {
        self.replica_of = Some(port);
        self
    }

    /// Also listen with TLS on a second free port ([`RedisServer::tls_port`],
    /// [`RedisServer::tls_url`]); the plain port stays open for the test's
    /// own inspection (`conn()`, readiness checks).
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Tell `watchdog` the data directory and every process started (also
    /// by [`RedisServer::restart`]), for a server that may never be
    /// dropped (one in a `static`).
    pub fn watched_by(mut self, watchdog: &Watchdog) -> Self {
        self.watchdog = Some(watchdog.clone());
        self
    }

    /// Any other config option, passed as `--name value`.
    pub fn config(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the server on a free port and waits until it answers PING.
    ///
    /// Panics if `redis-server` is not on PATH, if no port could be bound
    /// after several attempts, or if the server does not become ready
    /// within 10 s (the message carries the tail of its log).
    pub fn start(self) -> RedisServer {
        let dir = unique_dir();
        if let Some(watchdog) = &self.watchdog {
            watchdog.watch_dir(&dir);
        }
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create redis test dir {}: {e}", dir.display()));
        // From here on the directory is removed by Drop, also on panic.
        let mut server = RedisServer {
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
            port: 0,
            tls_port: 0,
            dir,
            opts: self,
        };
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if server.opts.tls.is_some() {
                server.tls_port = free_port();
            }
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server after {START_ATTEMPTS} attempts: {last_err}");
    }
}

/// A `redis-server` child process owned by one test.
///
/// Defaults: `--bind 127.0.0.1 --protected-mode no --save "" --appendonly no`,
/// its own data directory under the system temp dir and a log file in it.
pub struct RedisServer {
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    port: u16,
    /// 0 unless started with [`Builder::tls`].
    tls_port: u16,
    dir: PathBuf,
    opts: Builder,
}

impl RedisServer {
    /// A server without persistence on a free port, ready to use.
    pub fn start() -> RedisServer {
        Builder::default().start()
    }

    /// Options: `RedisServer::builder().aof(true).start()`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://localhost:TLS_PORT/` (the test certificates name
    /// `localhost`). Panics unless started with [`Builder::tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://localhost:{}/", self.tls_port())
    }

    /// The TLS port. Panics unless started with [`Builder::tls`].
    pub fn tls_port(&self) -> u16 {
        assert!(self.tls_port != 0, "this server was started without TLS");
        self.tls_port
    }

    /// The TCP port; it stays the same across [`RedisServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` (e.g. the upstream of a `FaultProxy`).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's data directory (`--dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `redis::Client` for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// A fresh connection for inspecting the server from the test
    /// (connect, read and write timeouts of 5 s, so a paused server fails
    /// the test instead of hanging it). Panics if it cannot connect.
    pub fn conn(&self) -> redis::Connection {
        let timeout = Duration::from_secs(5);
        let c = self
            .client()
            .get_connection_with_timeout(timeout)
            .unwrap_or_else(|e| panic!("connect to test redis at {}: {e}", self.url()));
        c.set_read_timeout(Some(timeout)).expect("set read timeout");
        c.set_write_timeout(Some(timeout))
            .expect("set write timeout");
        c
    }

    /// The process id, if a process was started and not killed/stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Child::id)
    }

    /// Whether the server process is alive (a paused server counts as
    /// running).
    pub fn is_running(&self) -> bool {
        match self.child.lock().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and wait for the process: a crash, nothing is saved on the
    /// way out (with [`Builder::aof`] acknowledged writes are on disk).
    pub fn kill(&mut self) {
        self.kill_child();
    }

    /// Graceful stop: SIGTERM (after SIGCONT, in case it is paused), wait
    /// up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.get_mut().take() else {
            return;
        };
        if self.paused.swap(false, Ordering::SeqCst) {
            signal(child.id(), "CONT");
        }
        signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server if it is running, then starts it again on the same
    /// port with the same data directory and options and waits until it
    /// answers PING (and has finished loading its data).
    ///
    /// Retries for a few seconds if the port cannot be bound yet.
    pub fn restart(&mut self) {
        self.kill_child();
        let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    log::debug!("redis-server restart on port {} failed: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("could not restart redis-server on port {}: {e}", self.port),
            }
        }
    }

    /// SIGSTOP: the process hangs. Connections stay open (the kernel still
    /// accepts new ones) but nothing is answered until
    /// [`RedisServer::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            self.paused.store(true, Ordering::SeqCst);
            signal(pid, "STOP");
        }
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.get_mut().take() {
            if self.paused.swap(false, Ordering::SeqCst) {
                signal(child.id(), "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawns on `self.port` and waits until ready. `Err` means the attempt
    /// may be retried (the process exited early, typically a bind error);
    /// a server that runs but never gets ready panics.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.kill_child();
        let log_path = self.log_path();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log_path)
            .args(["--save", ""]);
        if self.opts.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(port) = self.opts.replica_of {
            cmd.args(["--replicaof", "127.0.0.1"]).arg(port.to_string());
        }
        if let Some(tls) = &self.opts.tls {
            cmd.arg("--tls-port")
                .arg(self.tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args([
                    "--tls-auth-clients",
                    if tls.auth_clients { "yes" } else { "no" },
                ]);
        }
        for (name, value) in &self.opts.extra {
            cmd.arg(format!("--{name}")).arg(value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            Err(e) => panic!("spawn redis-server: {e}"),
        };
        let pid = child.id();
        if let Some(watchdog) = &self.opts.watchdog {
            watchdog.watch_pid(pid);
        }
        *self.child.get_mut() = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.get_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child.get_mut().take();
                    return Err(format!(
                        "redis-server on port {} exited with {status}; log tail:\n{}",
                        self.port,
                        self.log_tail()
                    ));
                }
            }
            if self.ready(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail();
                self.kill_child();
                panic!(
                    "redis-server on port {} not ready within {READY_TIMEOUT:?}; log tail:\n{tail}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Answers PING, is done loading, and is our process (not some other
    /// server that grabbed the port first).
    fn ready(&self, pid: u32) -> bool {
        let timeout = Duration::from_millis(500);
        let Ok(mut c) = self.client().get_connection_with_timeout(timeout) else {
            return false;
        };
        if c.set_read_timeout(Some(timeout)).is_err() || c.set_write_timeout(Some(timeout)).is_err()
        {
            return false;
        }
        let Ok(info) = redis::cmd("INFO").query::<String>(&mut c) else {
            return false;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .map(str::to_string)
        };
        if field("process_id") != Some(pid.to_string()) || field("loading").as_deref() != Some("0")
        {
            return false;
        }
        matches!(redis::cmd("PING").query::<String>(&mut c), Ok(s) if s == "PONG")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_child();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read, drop).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A fresh, not yet created directory under the system temp dir.
pub(super) fn unique_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("redswarm-test-{}-{n}-{nanos}", std::process::id()))
}

/// `kill -SIG pid` via the `kill` command (no libc crate here).
pub(super) fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        log::warn!("kill -{sig} {pid}: {e}");
    }
}
