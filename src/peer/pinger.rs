//! Rounds of parallel pings on a thread of their own, and the partition
//! verdict drawn from a round.
//!

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::net::{literal, spawn_lookup};
use super::ping::{ping, PingOutcome, ResolvedPeer};
use super::{PeerAddr, PeerIdentity};
use crate::error::{Error, Result};
use crate::health::PartitionState;

/// Pings in flight at once in one round; more peers share these threads
/// (and the round's one deadline).
const MAX_PARALLEL: usize = 32;
/// Round results kept for a reader that lags; older ones are dropped.
const RESULTS_KEPT: usize = 4;
/// A resolved name is looked up again after this long (addresses move).
const RESOLVE_AGAIN: Duration = Duration::from_secs(60);

/// The outcome of one round of pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerPoll {
    /// Peers known (this node excluded), answering or not.
    pub(crate) known: usize,
    /// Peers whose own node id answered correctly.
    pub(crate) answered: usize,
    /// Of those, peers whose heartbeat reaches Redis.
    pub(crate) reaching_redis: usize,
    /// When the round started: its answers are no older than this.
    pub(crate) at: Instant,
}

/// May this node keep working without Redis? Only if some peers are known,
/// at least `partition_percentage` % of them answered, and **none** of them
/// reaches Redis: an answering peer that reaches Redis proves Redis is up
/// and this node is the one cut off, so monitors will re-queue its tasks.
pub(crate) fn verdict(poll: &PeerPoll, partition_percentage: u8) -> PartitionState {
    let (answered, known) = (poll.answered, poll.known);
    let enough = known > 0 && answered * 100 >= usize::from(partition_percentage) * known;
    if enough && poll.reaching_redis == 0 {
        PartitionState::RedisLostPeersOk { answered, known }
    } else {
        PartitionState::Partitioned { answered, known }
    }
}

enum Command {
    Peers(Vec<PeerAddr>),
    Poll,
    Resolved {
        addr: String,
        result: std::result::Result<SocketAddr, String>,
    },
    Stop,
}

/// A peer as the pinger thread tracks it.
struct Entry {
    peer: PeerAddr,
    sock: Option<SocketAddr>,
    /// When the last lookup of a name succeeded.
    resolved_at: Option<Instant>,
    lookup_pending: bool,
}

/// Pings the known peers on its own thread, one round per request.
pub(crate) struct Pinger {
    commands: Sender<Command>,
    results: Receiver<PeerPoll>,
    known: Arc<Mutex<Vec<PeerAddr>>>,
    me: String,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Pinger {
    /// Starts the pinger thread; each round ends within `timeout` (plus
    /// scheduling) whatever the peers do.
    pub(crate) fn start(me: PeerIdentity, timeout: Duration) -> Result<Pinger> {
        let (commands, rx) = crossbeam_channel::unbounded();
        let (results_tx, results) = crossbeam_channel::bounded(RESULTS_KEPT);
        let worker = Worker {
            me: me.clone(),
            timeout,
            commands: commands.clone(),
            results: results_tx,
            results_rx: results.clone(),
            peers: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("redswarm-peer-pinger".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::invalid("peer pinger", format!("cannot spawn thread: {e}")))?;
        Ok(Pinger {
            commands,
            results,
            known: Arc::new(Mutex::new(Vec::new())),
            me: me.node_id,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Replaces the peer list (this node's own id is left out). Names are
    /// looked up now, on lookup threads, so a round never waits for DNS; a
    /// peer whose name has not resolved by a round counts as not answering.
    pub(crate) fn set_peers(&self, peers: Vec<PeerAddr>) {
        let mut seen = std::collections::HashSet::new();
        let peers: Vec<PeerAddr> = peers
            .into_iter()
            .filter(|p| p.id != self.me && seen.insert(p.id.clone()))
            .collect();
        *self.known.lock() = peers.clone();
        let _ = self.commands.send(Command::Peers(peers));
    }

    /// Asks for one round of pings. Requests made while a round runs are
    /// served by one more round after it, so an answer is never older than
    /// the request it serves.
    pub(crate) fn poll(&self) {
        let _ = self.commands.send(Command::Poll);
    }

    /// Where the result of each round arrives (the latest few are kept).
    pub(crate) fn results(&self) -> &Receiver<PeerPoll> {
        &self.results
    }

    /// The advertised addresses of the known peers.
    pub(crate) fn known_addrs(&self) -> Vec<String> {
        self.known.lock().iter().map(|p| p.addr.clone()).collect()
    }

    /// Stops the thread, after the round in flight if any (bounded by the
    /// timeout). Idempotent.
    pub(crate) fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    me: PeerIdentity,
    timeout: Duration,
    /// Lookup threads report back through the command channel.
    commands: Sender<Command>,
    results: Sender<PeerPoll>,
    /// To drop the oldest result when the reader lags.
    results_rx: Receiver<PeerPoll>,
    peers: Vec<Entry>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            // Take everything queued: several poll requests make one round.
            let (mut poll, mut stop) = (false, false);
            for command in std::iter::once(first).chain(rx.try_iter()) {
                match command {
                    Command::Peers(list) => self.set_peers(list),
                    Command::Poll => poll = true,
                    Command::Resolved { addr, result } => self.resolved(&addr, result),
                    Command::Stop => stop = true,
                }
            }
            if stop {
                return;
            }
            if poll {
                let result = self.round();
                self.publish(result);
            }
        }
    }

    fn set_peers(&mut self, list: Vec<PeerAddr>) {
        let mut old: Vec<Entry> = std::mem::take(&mut self.peers);
        for peer in list {
            let mut entry = match old.iter().position(|e| e.peer == peer) {
                Some(i) => old.swap_remove(i),
                None => Entry {
                    sock: literal(&peer.addr),
                    peer,
                    resolved_at: None,
                    lookup_pending: false,
                },
            };
            let stale = entry
                .resolved_at
                .is_none_or(|at| at.elapsed() >= RESOLVE_AGAIN);
            if literal(&entry.peer.addr).is_none() && stale && !entry.lookup_pending {
                // A lookup of the same name for another id serves both.
                let pending_elsewhere = self
                    .peers
                    .iter()
                    .any(|e| e.lookup_pending && e.peer.addr == entry.peer.addr);
                entry.lookup_pending = pending_elsewhere || self.lookup(&entry.peer.addr);
            }
            self.peers.push(entry);
        }
    }

    /// Starts a lookup whose answer comes back as a command; false if it
    /// could not start (tried again at the next peer list).
    fn lookup(&self, addr: &str) -> bool {
        let back = self.commands.clone();
        let name = addr.to_string();
        match spawn_lookup(addr.to_string(), move |result| {
            let _ = back.send(Command::Resolved { addr: name, result });
        }) {
            Ok(()) => true,
            Err(why) => {
                log::debug!("peer pinger: no lookup of {addr:?}: {why}");
                false
            }
        }
    }

    fn resolved(&mut self, addr: &str, result: std::result::Result<SocketAddr, String>) {
        for e in self.peers.iter_mut().filter(|e| e.peer.addr == addr) {
            e.lookup_pending = false;
            match &result {
                Ok(sock) => {
                    e.sock = Some(*sock);
                    e.resolved_at = Some(Instant::now());
                }
                // Keep an address that resolved before: it may still work.
                Err(why) => log::debug!("peer pinger: peer {}: {why}", e.peer.id),
            }
        }
    }

    fn round(&self) -> PeerPoll {
        let at = Instant::now();
        let deadline = at + self.timeout;
        let targets: Vec<ResolvedPeer> = self
            .peers
            .iter()
            .filter_map(|e| {
                Some(ResolvedPeer {
                    id: e.peer.id.clone(),
                    addr: e.peer.addr.clone(),
                    sock: e.sock?,
                })
            })
            .collect();
        let next = AtomicUsize::new(0);
        let answered = AtomicUsize::new(0);
        let reaching = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(peer) = targets.get(i) else { return };
            if let PingOutcome::Answered { reaches_redis } = ping(peer, &self.me, deadline) {
                answered.fetch_add(1, Ordering::SeqCst);
                if reaches_redis {
                    reaching.fetch_add(1, Ordering::SeqCst);
                }
            }
        };
        std::thread::scope(|s| {
            let spawned = (0..targets.len().min(MAX_PARALLEL))
                .filter(|_| {
                    std::thread::Builder::new()
                        .name("redswarm-peer-ping".into())
                        .spawn_scoped(s, work)
                        .is_ok()
                })
                .count();
            if spawned == 0 {
                // No thread to be had: ping from here; the deadline still holds.
                work();
            }
        });
        PeerPoll {
            known: self.peers.len(),
            answered: answered.into_inner(),
            reaching_redis: reaching.into_inner(),
            at,
        }
    }

    fn publish(&self, result: PeerPoll) {
        let mut result = result;
        loop {
            match self.results.try_send(result) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    // The reader lags: the newest answer matters, drop the oldest.
                    let _ = self.results_rx.try_recv();
                    result = back;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ping::tests::{ident, listener, trickler};

    fn addr(id: &str, addr: impl ToString) -> PeerAddr {
        PeerAddr {
            id: id.into(),
            addr: addr.to_string(),
        }
    }

    #[test]
    fn a_round_counts_the_answers_and_redis_flags_of_the_peers_it_meant() {
        let (b, _) = listener("b", true);
        let (c, _) = listener("c", false);
        let (me, _) = listener("me", true);
        let (slow, running) = trickler(Duration::from_millis(20));
        let timeout = Duration::from_millis(500);
        let pinger = Pinger::start(ident("me"), timeout).unwrap();
        pinger.set_peers(vec![
            addr("b", b.addr()),
            addr("c", c.addr()),
            addr("me", me.addr()),    // ourselves: left out
            addr("ghost", me.addr()), // an address that loops back to us
            addr("slow", slow),
            addr("b", b.addr()), // listed twice: counted once
        ]);
        assert_eq!(pinger.known_addrs().len(), 4);
        let started = Instant::now();
        pinger.poll();
        let poll = pinger
            .results()
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
        let took = started.elapsed();
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            (poll.known, poll.answered, poll.reaching_redis),
            (4, 2, 1),
            "{poll:?}"
        );
        assert!(
            took < timeout + Duration::from_secs(1),
            "round took {took:?}"
        );
        assert!(
            !verdict(&poll, 50).may_work(),
            "c reaches Redis: we are cut off"
        );
        pinger.stop();
    }

    #[test]
    fn a_name_that_does_not_resolve_does_not_hold_up_a_round() {
        let (b, _) = listener("b", true);
        let timeout = Duration::from_millis(300);
        let pinger = Pinger::start(ident("me"), timeout).unwrap();
        pinger.set_peers(vec![
            addr("b", b.addr()),
            addr("lost", "no-such-host.invalid:7400"),
        ]);
        for _ in 0..3 {
            let started = Instant::now();
            pinger.poll();
            let poll = pinger
                .results()
                .recv_timeout(Duration::from_secs(5))
                .unwrap();
            assert!(started.elapsed() < timeout + Duration::from_secs(1));
            assert_eq!((poll.known, poll.answered), (2, 1), "{poll:?}");
        }
    }

    #[test]
    fn requests_made_during_a_round_share_one_more_round() {
        let (slow, running) = trickler(Duration::from_millis(20));
        let pinger = Pinger::start(ident("me"), Duration::from_millis(300)).unwrap();
        pinger.set_peers(vec![addr("slow", slow)]);
        pinger.poll();
        std::thread::sleep(Duration::from_millis(100)); // the round is in flight
        for _ in 0..4 {
            pinger.poll();
        }
        let rx = pinger.results();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(second.at > first.at);
        assert!(
            rx.recv_timeout(Duration::from_millis(700)).is_err(),
            "at most two rounds"
        );
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        drop(pinger); // joins its thread
    }

    fn poll(known: usize, answered: usize, reaching_redis: usize) -> PeerPoll {
        PeerPoll {
            known,
            answered,
            reaching_redis,
            at: Instant::now(),
        }
    }

    #[test]
    fn keeps_working_only_when_enough_peers_answer_and_none_reaches_redis() {
        use PartitionState::*;
        assert_eq!(
            verdict(&poll(2, 2, 0), 60),
            RedisLostPeersOk {
                answered: 2,
                known: 2
            }
        );
        assert_eq!(
            verdict(&poll(5, 3, 0), 60),
            RedisLostPeersOk {
                answered: 3,
                known: 5
            }
        );
        // 50 % < 60 %.
        assert_eq!(
            verdict(&poll(2, 1, 0), 60),
            Partitioned {
                answered: 1,
                known: 2
            }
        );
        // Redis is up for a peer: we are the ones cut off.
        assert_eq!(
            verdict(&poll(3, 3, 1), 60),
            Partitioned {
                answered: 3,
                known: 3
            }
        );
        // Nobody known: on our own, even at 0 %.
        assert_eq!(
            verdict(&poll(0, 0, 0), 0),
            Partitioned {
                answered: 0,
                known: 0
            }
        );
        assert!(verdict(&poll(4, 0, 0), 0).may_work());
        assert!(!verdict(&poll(4, 3, 0), 100).may_work());
        assert!(verdict(&poll(4, 4, 0), 100).may_work());
    }
}
