//! Leases held by this process (lock ownership, permits, fan-out
//! leadership, task claims), as the heartbeat renews them and their holders
//! watch them.
//!
//! Each lease remembers when its last successful renewal was *sent*
//! (monotonic clock). Its holder must consider it lost once `ttl - safety`
//! has passed since then, whatever Redis says later (DESIGN rule 6). The
//! heartbeat's scheduler wakes at the earliest such local deadline of every
//! registered lease — renewed or not — and fires `lost()` there, so no
//! holder has to ask (`is_held()`) for the loss to be noticed, and a hung
//! Redis cannot delay it: the scheduler never waits on the network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::health::PartitionState;

/// Every lease this node holds, by id: the ones the heartbeat renews and
/// the ones it only watches for their local deadline.
pub(crate) struct LeaseRegistry {
    leases: Mutex<HashMap<u64, Arc<LeaseState>>>,
    next_id: AtomicU64,
    /// Tells the scheduler that a deadline may have moved earlier.
    changed: Sender<()>,
    /// When the scheduler will wake next (None while it is computing
    /// that): a new lease whose deadline comes later needs no wake-up, so
    /// taking and dropping a lock does not cost a thread switch.
    wake_at: Mutex<Option<Instant>>,
}

impl LeaseRegistry {
    /// A registry and the receiver the scheduler waits on for changes.
    pub(crate) fn new() -> (Arc<LeaseRegistry>, Receiver<()>) {
        let (changed, rx) = bounded(1);
        let registry = LeaseRegistry {
            leases: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed,
            wake_at: Mutex::new(None),
        };
        (Arc::new(registry), rx)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn insert(&self, state: Arc<LeaseState>) {
        let deadline = state.local_deadline();
        self.leases.lock().insert(state.id, state);
        // After the insert: a scheduler that already took its snapshot has
        // published its wake-up time (or None while between the two).
        if self.wake_at.lock().is_none_or(|at| deadline < at) {
            self.notify();
        }
    }

    /// The scheduler is about to look at the leases (`None`) or will wake
    /// at `at`.
    pub(crate) fn set_wake_at(&self, at: Option<Instant>) {
        *self.wake_at.lock() = at;
    }

    fn remove(&self, id: u64) {
        self.leases.lock().remove(&id);
    }

    fn notify(&self) {
        let _ = self.changed.try_send(());
    }

    /// The live leases the heartbeat renews.
    pub(crate) fn to_renew(&self) -> Vec<Arc<LeaseState>> {
        self.leases
            .lock()
            .values()
            .filter(|l| l.renew && l.lost.lock().is_none())
            .cloned()
            .collect()
    }

    /// Marks every lease whose local deadline has passed at `now` as lost;
    /// returns the earliest deadline still ahead, if any.
    pub(crate) fn fence(&self, now: Instant) -> Option<Instant> {
        let leases: Vec<Arc<LeaseState>> = self.leases.lock().values().cloned().collect();
        let mut earliest: Option<Instant> = None;
        for lease in leases {
            if lease.lost.lock().is_some() || !lease.deadline_applies() {
                continue;
            }
            let deadline = lease.local_deadline();
            if now >= deadline {
                lease.mark_lost(lease.timeout_reason());
            } else {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        earliest
    }

    pub(crate) fn len(&self) -> usize {
        self.leases.lock().len()
    }
}

/// Why a lease was lost, as delivered to its holder.
///
/// ```
/// let l = redswarm::LeaseLost { what: "lock `a`".into(), reason: "expired".into() };
/// assert!(l.to_string().contains("expired"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseLost {
    /// The resource.
    pub what: String,
    /// Why it is lost.
    pub reason: String,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease on {} lost: {}", self.what, self.reason)
    }
}

/// What a lease renewal checks and extends in Redis.
#[derive(Clone, Debug)]
pub(crate) enum LeaseTarget {
    /// A string key whose value is our token; renewal PEXPIREs it.
    Key { key: String, token: String },
    /// A zset member scored by its deadline.
    Member { zset: String, member: String },
    /// A zset member scored by deadline, valid while `hash[field] == token`.
    Guarded {
        zset: String,
        member: String,
        hash: String,
        field: String,
        token: String,
    },
}

impl LeaseTarget {
    /// The key that decides the lease's cluster slot (every key of a lease
    /// shares one hash tag).
    pub(crate) fn first_key(&self) -> &str {
        match self {
            LeaseTarget::Key { key, .. } => key,
            LeaseTarget::Member { zset, .. } | LeaseTarget::Guarded { zset, .. } => zset,
        }
    }
}

pub(crate) struct LeaseState {
    id: u64,
    what: String,
    pub(crate) target: LeaseTarget,
    /// Renewed by the heartbeat (auto-extended), or only watched.
    pub(crate) renew: bool,
    pub(crate) ttl: Mutex<Duration>,
    safety: Duration,
    pub(crate) last_ok: Mutex<Instant>,
    pub(crate) lost: Mutex<Option<String>>,
    watchers: Mutex<Vec<Sender<LeaseLost>>>,
    /// For leases kept through a Redis outage while enough peers answer
    /// (task claims: the swarm's partition rule): the node's verdict.
    tolerate_outage: Option<Arc<Mutex<PartitionState>>>,
    /// Set by [`Lease::ending`]: a loss is expected, not worth a warning.
    ending: AtomicBool,
}

impl LeaseState {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        what: String,
        target: LeaseTarget,
        renew: bool,
        ttl: Duration,
        heartbeat: Duration,
        acquired: Instant,
        tolerate_outage: Option<Arc<Mutex<PartitionState>>>,
    ) -> LeaseState {
        LeaseState {
            id,
            what,
            target,
            renew,
            ttl: Mutex::new(ttl),
            safety: safety_margin(heartbeat, ttl),
            last_ok: Mutex::new(acquired),
            lost: Mutex::new(None),
            watchers: Mutex::new(Vec::new()),
            tolerate_outage,
            ending: AtomicBool::new(false),
        }
    }

    /// Whether the local deadline applies now: not for an outage-tolerant
    /// lease while Redis is away but the peers answer.
    pub(crate) fn deadline_applies(&self) -> bool {
        !self
            .tolerate_outage
            .as_ref()
            .is_some_and(|p| matches!(*p.lock(), PartitionState::RedisLostPeersOk { .. }))
    }

    pub(crate) fn mark_lost(&self, reason: &str) {
        let mut lost = self.lost.lock();
        if lost.is_some() {
            return;
        }
        if self.ending.load(Ordering::Relaxed) {
            log::debug!("lease on {} lost while ending: {reason}", self.what);
        } else {
            log::warn!("lease on {} lost: {reason}", self.what);
        }
        *lost = Some(reason.to_string());
        let note = LeaseLost {
            what: self.what.clone(),
            reason: reason.to_string(),
        };
        for w in self.watchers.lock().drain(..) {
            let _ = w.try_send(note.clone());
        }
    }

    pub(crate) fn local_deadline(&self) -> Instant {
        let left = self.ttl.lock().saturating_sub(self.safety);
        let last = *self.last_ok.lock();
        // A TTL too long to add is a deadline that never comes.
        last.checked_add(left)
            .unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 24 * 3600))
    }

    fn timeout_reason(&self) -> &'static str {
        if self.renew {
            "not renewed in time (Redis unreachable or too slow)"
        } else {
            "its TTL ran out (not auto-extended)"
        }
    }

    /// Records a successful renewal sent at `sent`.
    pub(crate) fn renewed_at(&self, sent: Instant) {
        let mut last = self.last_ok.lock();
        if sent > *last {
            *last = sent;
        }
    }
}

/// A lease kept alive by the heartbeat; unregistered on drop.
pub(crate) struct Lease {
    state: Arc<LeaseState>,
    registry: Weak<LeaseRegistry>,
}

impl Lease {
    pub(crate) fn new(state: Arc<LeaseState>, registry: Weak<LeaseRegistry>) -> Lease {
        Lease { state, registry }
    }

    /// True once the lease must be considered gone: a renewal found it
    /// taken over or expired, or its local deadline passed.
    pub(crate) fn is_lost(&self) -> bool {
        if self.state.lost.lock().is_some() {
            return true;
        }
        if self.state.deadline_applies() && Instant::now() >= self.state.local_deadline() {
            self.state.mark_lost(self.state.timeout_reason());
            return true;
        }
        false
    }

    /// The holder is ending the lease itself (a finished task being
    /// reported): a renewal refused from now on is expected (the finish may
    /// land first), so a loss is logged at debug level, not as a warning.
    pub(crate) fn ending(&self) {
        self.state.ending.store(true, Ordering::Relaxed);
    }

    /// Adds `tx` to the receivers of the loss notice.
    pub(crate) fn notify_on_loss(&self, tx: Sender<LeaseLost>) {
        let lost = self.state.lost.lock();
        match &*lost {
            Some(reason) => {
                let _ = tx.try_send(LeaseLost {
                    what: self.state.what.clone(),
                    reason: reason.clone(),
                });
            }
            None => self.state.watchers.lock().push(tx),
        }
    }

    /// Records a successful renewal made outside the heartbeat (a manual
    /// extend) that was sent at `sent`, possibly with a new TTL.
    pub(crate) fn renewed(&self, sent: Instant, ttl: Duration) {
        *self.state.ttl.lock() = ttl;
        self.state.renewed_at(sent);
        // The deadline may have moved earlier (a shorter TTL).
        if let Some(registry) = self.registry.upgrade() {
            registry.notify();
        }
    }

    /// Marks the lease lost (for example when a manual extend found it gone).
    pub(crate) fn mark_lost(&self, reason: &str) {
        self.state.mark_lost(reason);
    }
}

/// The `lost()` channel of a guard (lock, permit): it receives one
/// [`LeaseLost`] when `lease` is lost. A guard already released has no lease
/// any more; its channel holds a "released" notice for `what` at once.
pub(crate) fn loss_channel(
    lease: Option<&Lease>,
    what: impl FnOnce() -> String,
) -> Receiver<LeaseLost> {
    let (tx, rx) = bounded(1);
    match lease {
        Some(l) => l.notify_on_loss(tx),
        None => {
            let _ = tx.send(LeaseLost {
                what: what(),
                reason: "released".into(),
            });
        }
    }
    rx
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.state.id);
        }
    }
}

/// How long before its TTL runs out a lease counts as lost locally: half a
/// heartbeat (time for the holder to notice and stop), but never more than a
/// quarter of a short TTL.
fn safety_margin(heartbeat: Duration, ttl: Duration) -> Duration {
    (heartbeat / 2).min(ttl / 4)
}
