//! A tiny in-process TCP fault proxy in front of an upstream (Redis) for
//! partition tests: forward, delay, blackhole or cut connections on demand.
//!
//! One accept thread plus two copy threads per proxied connection. The copy
//! threads read with a short timeout so they notice mode changes and
//! shutdown promptly.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often idle copy threads look at the mode.
const POLL: Duration = Duration::from_millis(50);
/// A blackholed direction buffers at most this much, then stops reading
/// (TCP back-pressure does the rest).
const HOLD_MAX: usize = 8 << 20;
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Pass = 0,
    Blackhole = 1,
    Cut = 2,
    Refuse = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Blackhole,
            2 => Mode::Cut,
            3 => Mode::Refuse,
            _ => Mode::Pass,
        }
    }
}

/// Both sockets of one proxied connection (clones, for shutting it down).
struct Pair {
    client: TcpStream,
    upstream: TcpStream,
}

impl Pair {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

struct Shared {
    upstream: SocketAddr,
    mode: AtomicU8,
    latency_us: AtomicU64,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Live connections. Mode changes to `Cut` and registrations happen
    /// under this lock, so no connection slips past a `cut()`.
    conns: Mutex<HashMap<u64, Pair>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// `drop_reply_to`: the request bytes to watch for (one-shot).
    drop_needle: Mutex<Option<Vec<u8>>>,
    /// Connections whose next reply is to be dropped.
    drop_armed: Mutex<HashSet<u64>>,
    dropped: AtomicU64,
}

impl Shared {
    fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A TCP proxy on `127.0.0.1:<free port>` in front of `upstream`.
///
/// Modes, switched at any time from the test thread:
/// - [`pass`](FaultProxy::pass) (the initial mode): forward both ways.
/// - [`set_latency`](FaultProxy::set_latency): forward, delaying every
///   chunk by `d` in each direction (a request/reply round trip gains
///   about `2·d`). `pass()` sets the latency back to zero.
/// - [`blackhole`](FaultProxy::blackhole): like a network partition. New
///   connections are accepted, and nothing is forwarded in either direction
///   on new or existing connections; the bytes are held (buffered), the
///   connections stay open. On `pass()` the held bytes are delivered in
///   order, like TCP retransmission after a partition heals. A connection
///   whose either end closes while blackholed is closed entirely and its
///   held bytes dropped.
/// - [`cut`](FaultProxy::cut): closes every existing connection at once
///   (both sides) and closes new connections as soon as they are accepted,
///   until the mode changes.
/// - [`refuse`](FaultProxy::refuse): existing connections keep forwarding,
///   new ones are closed as soon as they are accepted.
/// - [`drop_reply_to`](FaultProxy::drop_reply_to) (one-shot, in any
///   forwarding mode): the next request containing given bytes reaches the
///   server, but its reply is thrown away and that connection closed — a
///   reply lost in flight: the server did the work, the client never hears.
///
/// Drop stops the accept thread, closes every connection and joins all
/// threads.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking proxy listener");
        let addr = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared {
            upstream,
            mode: AtomicU8::new(Mode::Pass as u8),
            latency_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            drop_needle: Mutex::new(None),
            drop_armed: Mutex::new(HashSet::new()),
            dropped: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn fault proxy accept thread");
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Forward normally, without added latency. Bytes held by a blackhole
    /// are delivered.
    pub fn pass(&self) {
        self.shared.latency_us.store(0, Ordering::SeqCst);
        self.set_mode(Mode::Pass);
    }

    /// Forward, delaying every forwarded chunk by `d` (in each direction).
    pub fn set_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(us, Ordering::SeqCst);
        self.set_mode(Mode::Pass);
    }

    /// Forward nothing in either direction, on new and existing connections;
    /// connections stay open and bytes are held until `pass()`.
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Close all existing connections now (both sides) and close new ones
    /// at once until the mode changes.
    pub fn cut(&self) {
        let conns = self.shared.conns.lock();
        self.shared.mode.store(Mode::Cut as u8, Ordering::SeqCst);
        for pair in conns.values() {
            pair.close();
        }
    }

    /// Keep existing connections forwarding, close new ones at once.
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Loses one reply: the next request (a chunk read from a client)
    /// containing `needle` is forwarded, but the first reply bytes that
    /// follow on that connection are discarded and the connection is closed
    /// on both sides. The needle must fit in one request (it is matched per
    /// chunk) and is forgotten once it matched.
    pub fn drop_reply_to(&self, needle: &[u8]) {
        *self.shared.drop_needle.lock() = Some(needle.to_vec());
    }

    /// How many replies [`drop_reply_to`](FaultProxy::drop_reply_to) has
    /// dropped so far.
    pub fn dropped_replies(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// How many proxied connections are open right now.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }

    fn set_mode(&self, mode: Mode) {
        let _conns = self.shared.conns.lock();
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for pair in self.shared.conns.lock().values() {
            pair.close();
        }
        let threads: Vec<_> = self.shared.threads.lock().drain(..).collect();
        for h in threads {
            let _ = h.join();
        }
        self.shared.conns.lock().clear();
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    while !sh.stopping() {
        match listener.accept() {
            Ok((client, _)) => handle(client, &sh),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                log::debug!("fault proxy accept: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn handle(client: TcpStream, sh: &Arc<Shared>) {
    if matches!(sh.mode(), Mode::Cut | Mode::Refuse) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let _ = client.set_nonblocking(false);
    let upstream = match TcpStream::connect_timeout(&sh.upstream, UPSTREAM_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("fault proxy: connect upstream {}: {e}", sh.upstream);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let clones = (|| {
        Some((
            Pair {
                client: client.try_clone().ok()?,
                upstream: upstream.try_clone().ok()?,
            },
            client.try_clone().ok()?,
            upstream.try_clone().ok()?,
        ))
    })();
    let Some((pair, client2, upstream2)) = clones else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    };
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = sh.conns.lock();
        if matches!(sh.mode(), Mode::Cut | Mode::Refuse) || sh.stopping() {
            pair.close();
            return;
        }
        conns.insert(id, pair);
    }
    let mut threads = sh.threads.lock();
    threads.retain(|h| !h.is_finished());
    for (from, to, up) in [(client, upstream, true), (upstream2, client2, false)] {
        let sh2 = sh.clone();
        let dir = if up { "up" } else { "down" };
        let spawned = std::thread::Builder::new()
            .name(format!("fault-proxy-{id}-{dir}"))
            .spawn(move || pump(from, to, id, up, sh2));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                log::warn!("fault proxy: spawn copy thread: {e}");
                if let Some(pair) = sh.conns.lock().remove(&id) {
                    pair.close();
                }
            }
        }
    }
}

/// Copies `from` → `to` (`up`: client to server) until either side closes,
/// the connection is cut, a reply is dropped, or the proxy stops; then
/// closes the whole connection.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, up: bool, sh: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 16 * 1024];
    let mut held: Vec<u8> = Vec::new();
    while !sh.stopping() {
        match sh.mode() {
            Mode::Cut => break,
            Mode::Blackhole => {
                if held.len() >= HOLD_MAX {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match read(&mut from, &mut buf) {
                    Got::Data(n) => held.extend_from_slice(&buf[..n]),
                    Got::Idle => {}
                    Got::Closed => break,
                }
            }
            Mode::Pass | Mode::Refuse => {
                if !held.is_empty() {
                    if !delay(&sh) || !forward(&mut to, &held, id, up, &sh) {
                        break;
                    }
                    held.clear();
                }
                match read(&mut from, &mut buf) {
                    Got::Data(n) => match sh.mode() {
                        Mode::Blackhole => held.extend_from_slice(&buf[..n]),
                        Mode::Cut => break,
                        Mode::Pass | Mode::Refuse => {
                            if !delay(&sh) || !forward(&mut to, &buf[..n], id, up, &sh) {
                                break;
                            }
                        }
                    },
                    Got::Idle => {}
                    Got::Closed => break,
                }
            }
        }
    }
    if let Some(pair) = sh.conns.lock().remove(&id) {
        pair.close();
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Writes `data` on, applying `drop_reply_to`: a request containing the
/// needle arms its connection; the next reply on an armed connection is not
/// written, and false (close the connection) is returned, as on a failed
/// write.
fn forward(to: &mut TcpStream, data: &[u8], id: u64, up: bool, sh: &Shared) -> bool {
    if up {
        let mut needle = sh.drop_needle.lock();
        let hit = needle
            .as_deref()
            .is_some_and(|n| !n.is_empty() && data.windows(n.len()).any(|w| w == n));
        if hit {
            *needle = None;
            // Armed before the request is written: its reply cannot overtake.
            sh.drop_armed.lock().insert(id);
        }
    } else if sh.drop_armed.lock().remove(&id) {
        sh.dropped.fetch_add(1, Ordering::SeqCst);
        return false;
    }
    to.write_all(data).is_ok()
}

enum Got {
    Data(usize),
    Idle,
    Closed,
}

fn read(from: &mut TcpStream, buf: &mut [u8]) -> Got {
    match from.read(buf) {
        Ok(0) => Got::Closed,
        Ok(n) => Got::Data(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Got::Idle,
        Err(e) if e.kind() == ErrorKind::Interrupted => Got::Idle,
        Err(_) => Got::Closed,
    }
}

/// Sleeps for the configured latency; false if the proxy stopped meanwhile.
fn delay(sh: &Shared) -> bool {
    let d = sh.latency();
    if d.is_zero() {
        return true;
    }
    let until = Instant::now() + d;
    loop {
        if sh.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(10)));
    }
}
