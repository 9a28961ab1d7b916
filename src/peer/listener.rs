//! The port that answers peer pings.
//!
//! Every connection gets one total deadline for its request line (valid
//! peers send it at once). At most [`MAX_CONNECTIONS`] are served at once;
//! a newcomer beyond that evicts the oldest (its socket is shut down), so a
//! crowd of slow or silent clients cannot keep real pings out: they would
//! have to open connections faster than a real ping is answered. Dropped
//! connections are logged one by one at debug level and as one warning
//! with counts at most every [`SUMMARY_EVERY`].

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::net::{read_line_by, ReadFail};
use super::{PeerIdentity, MAX_LINE};
use crate::error::{Error, Result};

/// Connections served at once; a newcomer beyond this evicts the oldest.
const MAX_CONNECTIONS: usize = 32;
/// Dropped connections are summed up in one warning at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// How long the accept loop sleeps when nobody is connecting (it also
/// checks for shutdown then).
const ACCEPT_IDLE: Duration = Duration::from_millis(10);

/// The listener answering peer pings.
pub(crate) struct PeerListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PeerListener {
    /// Listens on `bind`, answering as `identity`; each connection must
    /// deliver its request line within `deadline`. Answers carry the
    /// current value of `reaches_redis` (this node's heartbeat reaches Redis).
    pub(crate) fn start(
        bind: SocketAddr,
        identity: PeerIdentity,
        deadline: Duration,
        reaches_redis: Arc<AtomicBool>,
    ) -> Result<PeerListener> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| Error::config("peer_listen", format!("cannot listen on {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::config("peer_listen", e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::config("peer_listen", e.to_string()))?;
        if identity.secret.is_none() && !addr.ip().is_loopback() {
            log::warn!(
                "peer listener on {addr} has no peer_secret: anyone who can reach this port \
                 can answer or probe pings; set peer_secret on every node"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = Acceptor {
            listener,
            identity: Arc::new(identity),
            deadline,
            reaches_redis,
            stop: stop.clone(),
            drops: Arc::new(Drops::default()),
            active: VecDeque::new(),
            closing: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("redswarm-peer-listener".into())
            .spawn(move || acceptor.run())
            .map_err(|e| Error::config("peer_listen", format!("cannot spawn listener: {e}")))?;
        log::info!("peer listener on {addr}");
        Ok(PeerListener {
            addr,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The address bound (with the real port when asked for port 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, shuts the open connections down and waits for
    /// their threads. Idempotent.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connections dropped since the last summary, by cause.
#[derive(Default)]
struct Drops {
    bad: AtomicU64,
    slow: AtomicU64,
    evicted: AtomicU64,
    failed: AtomicU64,
}

impl Drops {
    fn take(&self) -> [u64; 4] {
        [&self.bad, &self.slow, &self.evicted, &self.failed].map(|c| c.swap(0, Ordering::SeqCst))
    }
}

struct Connection {
    /// A handle on the socket, to shut it down on eviction or stop.
    socket: TcpStream,
    thread: JoinHandle<()>,
}

struct Acceptor {
    listener: TcpListener,
    identity: Arc<PeerIdentity>,
    deadline: Duration,
    reaches_redis: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    drops: Arc<Drops>,
    /// Oldest first.
    active: VecDeque<Connection>,
    /// Evicted connections whose threads are still finishing.
    closing: Vec<JoinHandle<()>>,
}

impl Acceptor {
    fn run(mut self) {
        let mut last_summary = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((stream, from)) => self.serve(stream, from),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(ACCEPT_IDLE)
                }
                Err(e) => {
                    log::debug!("peer listener: accept failed: {e}");
                    std::thread::sleep(ACCEPT_IDLE);
                }
            }
            self.active.retain(|c| !c.thread.is_finished());
            self.closing.retain(|t| !t.is_finished());
            if last_summary.elapsed() >= SUMMARY_EVERY {
                last_summary = Instant::now();
                self.summarise();
            }
        }
        for c in self.active.drain(..) {
            let _ = c.socket.shutdown(Shutdown::Both);
            let _ = c.thread.join();
        }
        for t in self.closing.drain(..) {
            let _ = t.join();
        }
    }

    fn summarise(&self) {
        let [bad, slow, evicted, failed] = self.drops.take();
        if bad + slow + evicted + failed > 0 {
            log::warn!(
                "peer listener dropped connections in the last {}s: {bad} bad requests, \
                 {slow} too slow, {evicted} evicted at capacity ({MAX_CONNECTIONS}), \
                 {failed} socket errors (details at debug level)",
                SUMMARY_EVERY.as_secs()
            );
        }
    }

    fn serve(&mut self, stream: TcpStream, from: SocketAddr) {
        self.active.retain(|c| !c.thread.is_finished());
        if self.active.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = self.active.pop_front() {
                // Its reader wakes at once and ends; real pings are quick,
                // so the oldest is the likeliest to be a slow client.
                let _ = oldest.socket.shutdown(Shutdown::Both);
                self.closing.push(oldest.thread);
                self.drops.evicted.fetch_add(1, Ordering::Relaxed);
                log::debug!("peer listener: at capacity, evicted the oldest connection for {from}");
            }
        }
        let socket = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                self.drops.failed.fetch_add(1, Ordering::Relaxed);
                log::debug!("peer listener: dropped {from}: {e}");
                return;
            }
        };
        let deadline = Instant::now() + self.deadline;
        let (identity, reaches, drops) = (
            self.identity.clone(),
            self.reaches_redis.clone(),
            self.drops.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("redswarm-peer-conn".into())
            .spawn(move || {
                let served = answer(&stream, &identity, deadline, &reaches);
                // Close now: the acceptor holds a clone of this socket until
                // it prunes finished connections.
                let _ = stream.shutdown(Shutdown::Both);
                if let Err(fail) = served {
                    let counter = match &fail {
                        Fail::Read(ReadFail::Slow { .. }) => Some(&drops.slow),
                        Fail::Read(ReadFail::Bad(_)) | Fail::Refused(_) => Some(&drops.bad),
                        Fail::Read(ReadFail::Io(_)) | Fail::Write(_) => Some(&drops.failed),
                        // Connect-and-close probes (health checks) and evicted
                        // connections: not worth a warning.
                        Fail::Read(ReadFail::Closed { .. }) => None,
                    };
                    if let Some(c) = counter {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    log::debug!("peer listener: dropped {from}: {fail}");
                }
            });
        match spawned {
            Ok(thread) => self.active.push_back(Connection { socket, thread }),
            Err(e) => {
                self.drops.failed.fetch_add(1, Ordering::Relaxed);
                log::debug!("peer listener: cannot spawn a handler for {from}: {e}");
            }
        }
    }
}

enum Fail {
    Read(ReadFail),
    Refused(String),
    Write(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Read(r) => write!(f, "{r}"),
            Fail::Refused(why) => write!(f, "refused: {why}"),
            Fail::Write(e) => write!(f, "write: {e}"),
        }
    }
}

/// Serves one connection: one request line by `deadline`, one reply, close.
fn answer(
    stream: &TcpStream,
    identity: &PeerIdentity,
    deadline: Instant,
    reaches_redis: &AtomicBool,
) -> std::result::Result<(), Fail> {
    // Accepted sockets may inherit the listener's non-blocking mode.
    stream
        .set_nonblocking(false)
        .map_err(|e| Fail::Write(e.to_string()))?;
    let line = read_line_by(stream, deadline, MAX_LINE).map_err(Fail::Read)?;
    let reply = identity
        .answer(&line, reaches_redis.load(Ordering::SeqCst))
        .map_err(Fail::Refused)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| Fail::Write(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let mut w = stream;
    w.write_all(reply.as_bytes())
        .map_err(|e| Fail::Write(e.to_string()))
}
