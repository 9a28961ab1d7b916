//! The status server (feature `web`): a small synchronous HTTP server that
//! shows a swarm's state to people (a page that refreshes itself), to
//! scripts (a JSON API) and to Prometheus (`/metrics`).
//!
//! It reads through [`crate::admin`], the same layer as the `redswarm` tool,
//! and changes nothing unless started with [`WebOptions::allow_actions`];
//! then the page's retry button POSTs to an action that runs the same fenced
//! script as `redswarm retry`. It binds loopback unless told otherwise, and
//! with [`WebOptions::token`] refuses every request that does not carry the
//! token (as a bearer token, or as the password of HTTP basic auth).
//!
//! Routes (all `GET` unless noted):
//!
//! | path | answer |
//! |---|---|
//! | `/` (`/app.js`, `/app.css`) | the status page |
//! | `/metrics` | Prometheus text format |
//! | `/api/overview` | everything the page shows, in one object |
//! | `/api/nodes`, `/api/queues`, `/api/locks`, `/api/semaphores`, `/api/clusters`, `/api/trackers` | one section each |
//! | `/api/queues/{queue}` | one queue's counts and rates |
//! | `/api/queues/{queue}/failed?limit=N`, `/api/queues/{queue}/running?limit=N` | its failed or running tasks |
//! | `POST /api/queues/{queue}/failed/{id}/retry` | re-queue one failed task (needs `allow_actions`) |
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
//! let server = redswarm::web::WebServer::start(
//!     &swarm,
//!     redswarm::web::WebOptions::new().listen("127.0.0.1:7480"),
//! )?;
//! log::info!("status page at {}", server.url());
//! server.join();
//! # Ok(()) }
//! ```

mod api;
mod auth;
mod metrics;
mod progress;
mod router;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::handle::Redswarm;

/// Default listen address: loopback only.
///
/// ```
/// let addr: std::net::SocketAddr = redswarm::web::DEFAULT_LISTEN.parse().unwrap();
/// assert!(addr.ip().is_loopback());
/// ```
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";

/// Environment variable the `redswarm web` command reads the token from
/// when `--token` is not given.
///
/// ```
/// let token = std::env::var(redswarm::web::TOKEN_ENV).ok();
/// let opts = redswarm::web::WebOptions::new().token(token);
/// ```
pub const TOKEN_ENV: &str = "REDSWARM_WEB_TOKEN";

/// How the status server listens and what it allows.
///
/// ```
/// use std::time::Duration;
/// let opts = redswarm::web::WebOptions::new()
///     .listen("127.0.0.1:0")
///     .token(Some("s3cret".into()))
///     .allow_actions(true)
///     .refresh(Duration::from_secs(5));
/// assert!(opts.actions_allowed());
/// ```
#[derive(Clone, Debug)]
pub struct WebOptions {
    listen: String,
    token: Option<String>,
    allow_actions: bool,
    threads: usize,
    refresh: Duration,
    list_limit: usize,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions::new()
    }
}

impl WebOptions {
    /// Loopback on port 7480, no token, read-only, 4 request threads, the
    /// page refreshing every 2 s, up to 50 failed and running tasks listed
    /// per queue.
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new();
    /// assert!(!opts.actions_allowed());
    /// ```
    pub fn new() -> WebOptions {
        WebOptions {
            listen: DEFAULT_LISTEN.to_string(),
            token: None,
            allow_actions: false,
            threads: 4,
            refresh: Duration::from_secs(2),
            list_limit: 50,
        }
    }

    /// Address to listen on (`host:port`; port 0 picks a free one, see
    /// [`WebServer::addr`]). Anything but loopback exposes the swarm's
    /// state to the network: set a [`token`](Self::token) then.
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new().listen("0.0.0.0:7480");
    /// ```
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// A token every request must carry, as `Authorization: Bearer <token>`
    /// or as the basic-auth password (any user name). `None` (the
    /// default) leaves the server open to whoever can reach it.
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new()
    ///     .token(std::env::var(redswarm::web::TOKEN_ENV).ok());
    /// ```
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Allows the actions (POSTs that change state: retrying a failed
    /// task). Off by default: a read-only server answers them 403.
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new().allow_actions(true);
    /// ```
    pub fn allow_actions(mut self, allow: bool) -> Self {
        self.allow_actions = allow;
        self
    }

    /// Whether actions are allowed.
    ///
    /// ```
    /// assert!(redswarm::web::WebOptions::new().allow_actions(true).actions_allowed());
    /// ```
    pub fn actions_allowed(&self) -> bool {
        self.allow_actions
    }

    /// Threads answering requests (each request holds a Redis connection
    /// from the pool while it reads). Between 1 and 64.
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new().threads(2);
    /// ```
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// How often the page reloads its data (between 500 ms and 1 hour).
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new().refresh(std::time::Duration::from_secs(10));
    /// ```
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }

    /// Most failed and most running tasks listed per queue on the page
    /// and in the overview (1 to 1000; the per-queue endpoints take
    /// `?limit=` up to the same cap).
    ///
    /// ```
    /// let opts = redswarm::web::WebOptions::new().list_limit(20);
    /// ```
    pub fn list_limit(mut self, n: usize) -> Self {
        self.list_limit = n;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.threads) {
            return Err(Error::config(
                "web threads",
                format!("{} is outside 1..=64", self.threads),
            ));
        }
        if self.refresh < Duration::from_millis(500) || self.refresh > Duration::from_secs(3600) {
            return Err(Error::config(
                "web refresh",
                format!("{:?} is outside 500ms..=1h", self.refresh),
            ));
        }
        if !(1..=api::MAX_LIST).contains(&self.list_limit) {
            return Err(Error::config(
                "web list_limit",
                format!("{} is outside 1..={}", self.list_limit, api::MAX_LIST),
            ));
        }
        if let Some(t) = &self.token {
            if t.is_empty() {
                return Err(Error::config("web token", "must not be empty"));
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::config(
                    "web token",
                    "must not contain spaces or control characters (it travels in a header)",
                ));
            }
        }
        Ok(())
    }
}

/// A running status server. Dropping it (or [`shutdown`](Self::shutdown))
/// stops it; [`join`](Self::join) blocks until then.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let server = redswarm::web::WebServer::start(
///     &swarm,
///     redswarm::web::WebOptions::new().listen("127.0.0.1:0"),
/// )?;
/// log::info!("listening on {}", server.addr());
/// server.shutdown();
/// # Ok(()) }
/// ```
pub struct WebServer {
    addr: SocketAddr,
    /// Taken (and so closed, once the request threads let go of it) at
    /// shutdown, so the port stops accepting.
    http: Mutex<Option<Arc<tiny_http::Server>>>,
    board: Arc<progress::ProgressBoard>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    thread_count: usize,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl WebServer {
    /// Binds and starts answering. Fails with [`Error::InvalidConfig`]
    /// when an option is out of range, the address does not resolve or
    /// cannot be bound (in use, not local).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let server = redswarm::web::WebServer::start(&swarm, redswarm::web::WebOptions::new())?;
    /// # Ok(()) }
    /// ```
    pub fn start(swarm: &Redswarm, options: WebOptions) -> Result<WebServer> {
        options.validate()?;
        let addrs: Vec<SocketAddr> = options
            .listen
            .to_socket_addrs()
            .map_err(|e| Error::config("web listen", format!("`{}`: {e}", options.listen)))?
            .collect();
        let listener = TcpListener::bind(&addrs[..])
            .map_err(|e| Error::config("web listen", format!("`{}`: {e}", options.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::config("web listen", format!("`{}`: {e}", options.listen)))?;
        if !addr.ip().is_loopback() && options.token.is_none() {
            log::warn!(
                "status server on {addr} (not loopback) has no token: anyone who can reach it \
                 sees the swarm's state{}",
                if options.allow_actions {
                    " and can retry failed tasks"
                } else {
                    ""
                }
            );
        }
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| Error::config("web listen", format!("`{}`: {e}", options.listen)))?;
        let http = Arc::new(http);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let board = Arc::new(progress::ProgressBoard::start(swarm)?);
        let router = Arc::new(router::Router::new(
            swarm.clone(),
            options.clone(),
            board.clone(),
        ));
        let mut threads = Vec::with_capacity(options.threads);
        for i in 0..options.threads {
            let (h, r, s) = (http.clone(), router.clone(), stopping.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("redswarm-web-{i}"))
                .spawn(move || serve(&h, &r, &s));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let server = WebServer {
                        addr,
                        http: Mutex::new(Some(http)),
                        board,
                        thread_count: threads.len(),
                        threads: Mutex::new(threads),
                        stopping,
                    };
                    server.shutdown();
                    return Err(Error::config(
                        "web threads",
                        format!("cannot spawn a request thread: {e}"),
                    ));
                }
            }
        }
        log::info!(
            "status server on http://{addr}/ ({}, {})",
            if options.allow_actions {
                "actions allowed"
            } else {
                "read-only"
            },
            if options.token.is_some() {
                "token required"
            } else {
                "no token"
            }
        );
        Ok(WebServer {
            addr,
            http: Mutex::new(Some(http)),
            board,
            thread_count: threads.len(),
            threads: Mutex::new(threads),
            stopping,
        })
    }

    /// The address bound (with the real port when asked for port 0).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let server = redswarm::web::WebServer::start(&swarm, redswarm::web::WebOptions::new())?;
    /// assert_eq!(server.addr().port(), 7480);
    /// # Ok(()) }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, `http://addr/`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let server = redswarm::web::WebServer::start(&swarm, redswarm::web::WebOptions::new())?;
    /// assert_eq!(server.url(), "http://127.0.0.1:7480/");
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops answering, waits for requests in progress and closes the
    /// port. Idempotent.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let server = redswarm::web::WebServer::start(&swarm, redswarm::web::WebOptions::new())?;
    /// server.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) {
        use std::sync::atomic::Ordering;
        if !self.stopping.swap(true, Ordering::SeqCst) {
            if let Some(http) = self.http.lock().as_ref() {
                // One wake-up per thread (each unblock ends one recv, now
                // or later), also for threads a concurrent join() awaits.
                for _ in 0..self.thread_count {
                    http.unblock();
                }
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        self.board.stop();
        // The last reference once the threads are gone: dropping it stops
        // tiny_http's accept thread and closes the listening socket.
        drop(self.http.lock().take());
    }

    /// Blocks until the server is shut down from another thread (the
    /// `redswarm web` command does it on Ctrl-C).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let server = redswarm::web::WebServer::start(&swarm, redswarm::web::WebOptions::new())?;
    /// server.join();
    /// # Ok(()) }
    /// ```
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One request thread: answers until the server is stopped.
fn serve(
    http: &tiny_http::Server,
    router: &router::Router,
    stopping: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    loop {
        match http.recv() {
            Ok(request) => router.answer(request),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            // A connection that failed before its request was read: its
            // own problem, not the server's.
            Err(e) => log::debug!("status server: a connection failed: {e}"),
        }
    }
}
