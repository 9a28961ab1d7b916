//! The peer mesh: partition awareness when Redis is unreachable
//! (task-swarm's `partitionPercentage`).
//!
//! Each node may listen on a TCP address (`peer_listen`) and advertises it
//! in its membership record; every node keeps the list of peers it last
//! read from Redis. When a heartbeat fails, the node pings every known peer
//! in parallel (each bounded by `peer_timeout`). If at least
//! `partition_percentage` % answer, the outage is Redis's and not this
//! node's: it keeps working ([`PartitionState::RedisLostPeersOk`]).
//! Otherwise it is cut off ([`PartitionState::Partitioned`]): running tasks
//! are told to stop and no new work starts. With no peers known it counts as
//! partitioned.
//!
//! Wire protocol (one line each way, at most 512 bytes, ASCII):
//! `RSWP/1 PING <namespace> <node-id> <nonce> <mac>` →
//! `RSWP/1 PONG <namespace> <node-id> <mac>`. With a shared secret, `mac` is
//! HMAC-SHA256(secret, `PING|ns|node|nonce`) (and `PONG|ns|node|nonce` in
//! the reply), so the secret never crosses the wire and a replayed reply
//! does not match a new nonce; without one it is `-`. Anything else — wrong
//! version, namespace or MAC, garbage, an oversized or silent client — is
//! dropped and logged; at most 32 connections are served at once and each
//! has a short deadline.
//!
//! [`PartitionState::RedisLostPeersOk`]: crate::PartitionState::RedisLostPeersOk
//! [`PartitionState::Partitioned`]: crate::PartitionState::Partitioned

mod sha256;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Longest line either side may send.
pub(crate) const MAX_LINE: usize = 512;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
const VERSION: &str = "RSWP/1";

/// Identity and secret a node pings and answers with.
#[derive(Clone, Debug)]
pub(crate) struct PeerIdentity {
    pub(crate) namespace: String,
    pub(crate) node_id: String,
    pub(crate) secret: Option<String>,
}

impl PeerIdentity {
    fn mac(&self, kind: &str, node: &str, nonce: &str) -> String {
        match &self.secret {
            Some(secret) => sha256::hmac_hex(
                secret.as_bytes(),
                format!("{kind}|{}|{node}|{nonce}", self.namespace).as_bytes(),
            ),
            None => "-".to_string(),
        }
    }

    fn mac_ok(&self, kind: &str, node: &str, nonce: &str, mac: &str) -> bool {
        sha256::constant_time_eq(self.mac(kind, node, nonce).as_bytes(), mac.as_bytes())
    }

    /// Checks one request line; the reply line if it is a valid ping.
    pub(crate) fn answer(&self, line: &str) -> std::result::Result<String, String> {
        let parts: Vec<&str> = line.trim_end_matches(['\r', '\n']).split(' ').collect();
        let [version, verb, ns, from, nonce, mac] = parts.as_slice() else {
            return Err(format!("malformed request ({} fields)", parts.len()));
        };
        if *version != VERSION {
            return Err(format!("unsupported version {version:?}"));
        }
        if *verb != "PING" {
            return Err(format!("unknown verb {verb:?}"));
        }
        if *ns != self.namespace {
            return Err(format!("namespace {ns:?} is not ours"));
        }
        if nonce.is_empty() || nonce.len() > 64 || from.is_empty() || from.len() > 128 {
            return Err("bad node id or nonce".into());
        }
        if !self.mac_ok("PING", from, nonce, mac) {
            return Err(format!("bad MAC from {from:?}"));
        }
        Ok(format!(
            "{VERSION} PONG {} {} {}\n",
            self.namespace,
            self.node_id,
            self.mac("PONG", &self.node_id, nonce)
        ))
    }
}

/// The listener answering peer pings.
pub(crate) struct PeerListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PeerListener {
    pub(crate) fn start(
        bind: SocketAddr,
        id: PeerIdentity,
        deadline: Duration,
    ) -> Result<PeerListener> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| Error::config("peer_listen", format!("cannot listen on {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::config("peer_listen", e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::config("peer_listen", e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("redswarm-peer-listener".into())
            .spawn(move || accept_loop(listener, id, deadline, st))
            .map_err(|e| Error::config("peer_listen", format!("cannot spawn listener: {e}")))?;
        log::info!("peer listener on {addr}");
        Ok(PeerListener {
            addr,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

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

fn accept_loop(listener: TcpListener, id: PeerIdentity, deadline: Duration, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                handlers.retain(|h| !h.is_finished());
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    log::warn!("peer listener: too many connections; dropping {from}");
                    continue; // dropping the stream closes it
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (conn_id, conn_active) = (id.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("redswarm-peer-conn".into())
                    .spawn(move || {
                        if let Err(why) = serve(stream, &conn_id, deadline) {
                            log::debug!("peer listener: dropped {from}: {why}");
                        }
                        conn_active.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(h) => handlers.push(h),
                    Err(e) => {
                        active.fetch_sub(1, Ordering::SeqCst);
                        log::warn!("peer listener: cannot spawn a handler: {e}");
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                log::debug!("peer listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Handlers finish within their deadline; wait so no thread outlives us.
    for h in handlers {
        let _ = h.join();
    }
}

/// Serves one connection: one request line, one reply, close.
fn serve(
    stream: TcpStream,
    id: &PeerIdentity,
    deadline: Duration,
) -> std::result::Result<(), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(deadline))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(deadline))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut reader = BufReader::new((&stream).take(MAX_LINE as u64 + 1));
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.len() > MAX_LINE || !line.ends_with('\n') {
        return Err("no complete line within the size limit".into());
    }
    let reply = id.answer(&line)?;
    (&stream)
        .write_all(reply.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    Ok(())
}

/// Pings one peer; true if it answered correctly within `timeout`.
pub(crate) fn ping(addr: &str, id: &PeerIdentity, timeout: Duration) -> bool {
    let Some(sock) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&sock, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let nonce = crate::util::random_id();
    let request = format!(
        "{VERSION} PING {} {} {nonce} {}\n",
        id.namespace,
        id.node_id,
        id.mac("PING", &id.node_id, &nonce)
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut line = String::new();
    if BufReader::new((&stream).take(MAX_LINE as u64))
        .read_line(&mut line)
        .is_err()
    {
        return false;
    }
    let parts: Vec<&str> = line.trim_end().split(' ').collect();
    match parts.as_slice() {
        [VERSION, "PONG", ns, node, mac] => {
            *ns == id.namespace && id.mac_ok("PONG", node, &nonce, mac)
        }
        _ => false,
    }
}

/// Pings every peer in parallel; how many answered.
pub(crate) fn ping_all(peers: &[String], id: &PeerIdentity, timeout: Duration) -> usize {
    std::thread::scope(|s| {
        let pings: Vec<_> = peers
            .iter()
            .map(|p| s.spawn(move || ping(p, id, timeout)))
            .collect();
        pings
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|answered| *answered)
            .count()
    })
}

/// A peer as listed in the membership set. (Temporary shape; replaced by
/// the peer-mesh rework.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerAddr {
    pub(crate) id: String,
    pub(crate) addr: String,
}

/// One round of pings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerPoll {
    pub(crate) known: usize,
    pub(crate) answered: usize,
    pub(crate) reaching_redis: usize,
}

/// The partition rule.
pub(crate) fn verdict(poll: &PeerPoll, percentage: u8) -> crate::health::PartitionState {
    use crate::health::PartitionState;
    let (answered, known) = (poll.answered, poll.known);
    if known > 0 && poll.reaching_redis == 0 && answered * 100 >= percentage as usize * known {
        PartitionState::RedisLostPeersOk { answered, known }
    } else {
        PartitionState::Partitioned { answered, known }
    }
}

/// Pings peers on its own thread.
pub(crate) struct Pinger {
    peers: Arc<Mutex<Vec<PeerAddr>>>,
    requests: crossbeam_channel::Sender<()>,
    results: crossbeam_channel::Receiver<PeerPoll>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Pinger {
    pub(crate) fn start(me: PeerIdentity, timeout: Duration) -> Result<Pinger> {
        let peers: Arc<Mutex<Vec<PeerAddr>>> = Arc::new(Mutex::new(Vec::new()));
        let (requests, inbox) = crossbeam_channel::bounded::<()>(1);
        let (tx, results) = crossbeam_channel::bounded(4);
        let list = peers.clone();
        let thread = std::thread::Builder::new()
            .name("redswarm-pinger".into())
            .spawn(move || {
                for () in inbox {
                    let addrs: Vec<String> = list.lock().iter().map(|p| p.addr.clone()).collect();
                    let answered = ping_all(&addrs, &me, timeout);
                    let poll = PeerPoll {
                        known: addrs.len(),
                        answered,
                        reaching_redis: 0,
                    };
                    if tx.try_send(poll).is_err() {
                        log::debug!("peer verdict dropped");
                    }
                }
            })
            .map_err(|e| Error::Pool(format!("cannot spawn pinger: {e}")))?;
        Ok(Pinger {
            peers,
            requests,
            results,
            thread: Mutex::new(Some(thread)),
        })
    }
    pub(crate) fn set_peers(&self, peers: Vec<PeerAddr>) {
        *self.peers.lock() = peers;
    }
    pub(crate) fn poll(&self) {
        let _ = self.requests.try_send(());
    }
    pub(crate) fn results(&self) -> &crossbeam_channel::Receiver<PeerPoll> {
        &self.results
    }
    pub(crate) fn known_addrs(&self) -> Vec<String> {
        self.peers.lock().iter().map(|p| p.addr.clone()).collect()
    }
    pub(crate) fn stop(&self) {
        // Temporary: the thread ends when the Pinger is dropped.
        let _ = self.thread.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(secret: Option<&str>) -> PeerIdentity {
        PeerIdentity {
            namespace: "ns".into(),
            node_id: "me".into(),
            secret: secret.map(String::from),
        }
    }

    #[test]
    fn answers_only_well_formed_pings_of_its_namespace_and_secret() {
        let me = ident(Some("s3cret"));
        let them = PeerIdentity {
            node_id: "them".into(),
            ..me.clone()
        };
        let good = format!(
            "RSWP/1 PING ns them n1 {}\n",
            them.mac("PING", "them", "n1")
        );
        let reply = me.answer(&good).unwrap();
        assert!(reply.starts_with("RSWP/1 PONG ns me "));
        assert!(me.answer("garbage\n").is_err());
        assert!(me.answer(&good.replace("RSWP/1", "RSWP/2")).is_err());
        assert!(me.answer(&good.replace(" ns ", " other ")).is_err());
        let wrong = PeerIdentity {
            secret: Some("nope".into()),
            ..them.clone()
        };
        assert!(me
            .answer(&format!(
                "RSWP/1 PING ns them n1 {}\n",
                wrong.mac("PING", "them", "n1")
            ))
            .is_err());
        assert!(ident(None).answer("RSWP/1 PING ns them n1 -\n").is_ok());
    }
}
