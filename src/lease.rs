//! Leases held by this process (lock ownership, permits, fan-out
//! leadership, task claims), as the heartbeat renews them and their holders
//! watch them.
//!
//! Each lease remembers when its last successful renewal was *sent*
//! (monotonic clock). Its holder must consider it lost once `ttl - safety`
//! has passed since then, whatever Redis says later (DESIGN rule 6).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::heartbeat::PartitionState;
use crate::keys::hash_tag;

/// Live leases by id, renewed by the heartbeat.
pub(crate) type LeaseRegistry = Mutex<HashMap<u64, Arc<LeaseState>>>;

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
    /// The cluster slot tag its keys share.
    pub(crate) fn slot(&self) -> &str {
        match self {
            LeaseTarget::Key { key, .. } => hash_tag(key),
            LeaseTarget::Member { zset, .. } | LeaseTarget::Guarded { zset, .. } => hash_tag(zset),
        }
    }
}

pub(crate) struct LeaseState {
    id: u64,
    what: String,
    pub(crate) target: LeaseTarget,
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
    pub(crate) fn new(
        id: u64,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        heartbeat: Duration,
        acquired: Instant,
        tolerate_outage: Option<Arc<Mutex<PartitionState>>>,
    ) -> LeaseState {
        LeaseState {
            id,
            what,
            target,
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
        *self.last_ok.lock() + self.ttl.lock().saturating_sub(self.safety)
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
            self.state
                .mark_lost("not renewed in time (Redis unreachable?)");
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
        let mut last = self.state.last_ok.lock();
        if sent > *last {
            *last = sent;
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
            registry.lock().remove(&self.state.id);
        }
    }
}

/// How long before its TTL runs out a lease counts as lost locally: half a
/// heartbeat (time for the holder to notice and stop), but never more than a
/// quarter of a short TTL.
fn safety_margin(heartbeat: Duration, ttl: Duration) -> Duration {
    (heartbeat / 2).min(ttl / 4)
}
