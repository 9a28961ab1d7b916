//! One ping of one peer, whole exchange under a total deadline.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::net::{read_line_by, resolve_by};
use super::{PeerAddr, PeerIdentity, MAX_LINE};

/// A peer whose address is already resolved: pinging it needs no lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedPeer {
    /// The node id that must answer.
    pub(crate) id: String,
    /// The address as advertised (for logs).
    pub(crate) addr: String,
    /// Where to connect.
    pub(crate) sock: SocketAddr,
}

/// What one ping found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PingOutcome {
    /// The node we pinged answered correctly; whether it reaches Redis.
    Answered {
        /// The peer's heartbeat reaches Redis (so Redis is up).
        reaches_redis: bool,
    },
    /// No valid answer by the deadline; why, for debug logs.
    NoAnswer(String),
}

fn left(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("deadline passed".into())
    } else {
        Ok(left)
    }
}

fn exchange(peer: &ResolvedPeer, me: &PeerIdentity, deadline: Instant) -> Result<bool, String> {
    let nonce = crate::util::random_id();
    let request = me.ping_line(&peer.id, &nonce)?;
    let stream = TcpStream::connect_timeout(&peer.sock, left(deadline)?)
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(|e| format!("socket: {e}"))?;
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let line = read_line_by(&stream, deadline, MAX_LINE).map_err(|e| e.to_string())?;
    me.read_pong(&line, &peer.id, &nonce)
}

/// Pings `peer` as `me`: connect, send, and read the answer, all ending by
/// `deadline` (monotonic clock) whatever the peer does. Only an answer from
/// the node id we pinged, for our nonce, with a valid MAC counts.
pub(crate) fn ping(peer: &ResolvedPeer, me: &PeerIdentity, deadline: Instant) -> PingOutcome {
    match exchange(peer, me, deadline) {
        Ok(reaches_redis) => PingOutcome::Answered { reaches_redis },
        Err(why) => {
            let why = format!("{} at {}: {why}", peer.id, peer.addr);
            log::debug!("peer ping: no answer from {why}");
            PingOutcome::NoAnswer(why)
        }
    }
}

/// Pings every peer in parallel, resolution included, all by `now +
/// timeout`; how many answered. A stopgap for the heartbeat until it runs a
/// [`Pinger`](super::Pinger): it still blocks its caller (for at most the
/// timeout) and ignores the answers' Redis flags.
pub(crate) fn ping_all(peers: &[PeerAddr], me: &PeerIdentity, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    std::thread::scope(|s| {
        let pings: Vec<_> = peers
            .iter()
            .filter(|p| p.id != me.node_id)
            .filter_map(|p| {
                std::thread::Builder::new()
                    .name("redswarm-peer-ping".into())
                    .spawn_scoped(s, move || {
                        let sock = resolve_by(&p.addr, deadline).ok()?;
                        let peer = ResolvedPeer {
                            id: p.id.clone(),
                            addr: p.addr.clone(),
                            sock,
                        };
                        Some(ping(&peer, me, deadline))
                    })
                    .ok()
            })
            .collect();
        pings
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .filter(|o| matches!(o, PingOutcome::Answered { .. }))
            .count()
    })
}
