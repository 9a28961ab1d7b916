//! One ping of one peer, whole exchange under a total deadline.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::net::read_line_by;
use super::{PeerIdentity, MAX_LINE};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::peer::PeerListener;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    pub(crate) fn ident(node: &str) -> PeerIdentity {
        PeerIdentity {
            namespace: "ns".into(),
            node_id: node.into(),
            secret: Some("s3cret".into()),
        }
    }

    pub(crate) fn listener(node: &str, reaches_redis: bool) -> (PeerListener, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(reaches_redis));
        let l = PeerListener::start(
            "127.0.0.1:0".parse().unwrap(),
            ident(node),
            Duration::from_secs(1),
            flag.clone(),
        )
        .unwrap();
        (l, flag)
    }

    pub(crate) fn peer(id: &str, sock: SocketAddr) -> ResolvedPeer {
        ResolvedPeer {
            id: id.into(),
            addr: sock.to_string(),
            sock,
        }
    }

    /// A server that answers every connection with one byte every
    /// `every`, never a line end; stops when the flag drops.
    pub(crate) fn trickler(every: Duration) -> (SocketAddr, Arc<AtomicBool>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let run = running.clone();
        std::thread::spawn(move || {
            l.set_nonblocking(true).unwrap();
            while run.load(Ordering::SeqCst) {
                match l.accept() {
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
        (addr, running)
    }

    fn ping_within(peer: &ResolvedPeer, me: &PeerIdentity, d: Duration) -> PingOutcome {
        ping(peer, me, Instant::now() + d)
    }

    #[test]
    fn an_address_that_reaches_the_pinging_node_itself_does_not_count() {
        let (l, _) = listener("me", true);
        let me = ident("me");
        let d = Duration::from_secs(2);
        // Expecting another node there (a stale or unspecified advertisement).
        let o = ping_within(&peer("other", l.addr()), &me, d);
        assert!(matches!(o, PingOutcome::NoAnswer(_)), "{o:?}");
        // Even asked for by our own id.
        let o = ping_within(&peer("me", l.addr()), &me, d);
        assert!(matches!(o, PingOutcome::NoAnswer(_)), "{o:?}");
    }

    #[test]
    fn an_answer_carries_whether_the_peer_reaches_redis() {
        let (l, flag) = listener("b", true);
        let d = Duration::from_secs(2);
        let b = peer("b", l.addr());
        assert_eq!(
            ping_within(&b, &ident("a"), d),
            PingOutcome::Answered {
                reaches_redis: true
            }
        );
        flag.store(false, Ordering::SeqCst);
        assert_eq!(
            ping_within(&b, &ident("a"), d),
            PingOutcome::Answered {
                reaches_redis: false
            }
        );
        // Another node listening where `c` was advertised does not count.
        assert!(matches!(
            ping_within(&peer("c", l.addr()), &ident("a"), d),
            PingOutcome::NoAnswer(_)
        ));
    }

    #[test]
    fn a_peer_that_trickles_its_answer_is_cut_off_at_the_deadline() {
        let (addr, running) = trickler(Duration::from_millis(300));
        let deadline = Duration::from_secs(1);
        let started = Instant::now();
        let o = ping_within(&peer("slow", addr), &ident("a"), deadline);
        let took = started.elapsed();
        running.store(false, Ordering::SeqCst);
        assert!(
            matches!(&o, PingOutcome::NoAnswer(why) if why.contains("deadline")),
            "{o:?}"
        );
        assert!(took < 2 * deadline, "ping took {took:?}");
    }

    #[test]
    fn a_crowd_of_trickling_clients_does_not_keep_a_real_ping_out() {
        let (l, _) = listener("b", true);
        let running = Arc::new(AtomicBool::new(true));
        let crowd: Vec<_> = (0..40)
            .map(|_| {
                let (addr, run) = (l.addr(), running.clone());
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
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            let o = ping_within(&peer("b", l.addr()), &ident("a"), Duration::from_secs(2));
            assert_eq!(
                o,
                PingOutcome::Answered {
                    reaches_redis: true
                }
            );
        }
        running.store(false, Ordering::SeqCst);
        for c in crowd {
            let _ = c.join();
        }
    }
}
