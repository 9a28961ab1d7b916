//! All-or-nothing locks on several names.
//!
//! Names are taken one by one in sorted order, each with its own script, so
//! the names may live on different Redis Cluster slots. If one is busy,
//! every lock taken so far in this round is released at once (by token,
//! which also covers a grant whose reply was lost) and the caller sleeps on
//! the busy lock's release channel before trying the whole set again. A
//! caller never holds part of a set while waiting, so two callers asking
//! for overlapping sets in any order cannot deadlock. Under heavy contention
//! a large set can starve against smaller ones; bound it with `wait`.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{Error, Result};
use crate::grant::{validate_ttl, wait_for_release};
use crate::keys::LockKeys;
use crate::lease::LeaseLost;
use crate::lock::{attempt, Attempt, LockGuard};
use crate::runtime::Runtime;
use crate::subscriber::Subscription;
use crate::util::{owner_token, Deadline};

/// Options for a multi-lock; start with [`Redswarm::multi_lock`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let all = swarm
///     .multi_lock(&["account:1", "account:2"])
///     .ttl(Duration::from_secs(10))
///     .auto_extend(true)
///     .lock(Duration::from_secs(5))?;
/// // move money between the two accounts ...
/// all.release()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MultiLockOptions {
    swarm: Runtime,
    names: Vec<String>,
    ttl: Duration,
    auto_extend: bool,
}

impl MultiLockOptions {
    pub(crate) fn new(swarm: &Runtime, names: &[&str]) -> MultiLockOptions {
        let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        names.sort();
        names.dedup();
        MultiLockOptions {
            swarm: swarm.clone(),
            names,
            ttl: Duration::from_secs(30),
            auto_extend: false,
        }
    }

    /// TTL of every lock in the set (default 30 s).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let o = swarm.multi_lock(&["a", "b"]).ttl(std::time::Duration::from_secs(3));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Renew every lock of the set each heartbeat (default off).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let o = swarm.multi_lock(&["a", "b"]).auto_extend(true);
    /// # Ok(()) }
    /// ```
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// Takes every lock of the set, or none, within `wait`
    /// (`Duration::MAX` waits forever).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let all = swarm.multi_lock(&["a", "b"]).lock(std::time::Duration::from_secs(1))?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, wait: Duration) -> Result<MultiLockGuard> {
        if self.names.is_empty() {
            return Err(Error::invalid("lock names", "the set is empty"));
        }
        validate_ttl(&self.swarm, self.ttl, self.auto_extend)?;
        let keys: Vec<LockKeys> = self
            .names
            .iter()
            .map(|n| self.swarm.keys().lock(n))
            .collect::<Result<_>>()?;
        let token = owner_token(self.swarm.node_id());
        // Saturating: a wait of Duration::MAX waits forever.
        let deadline = Deadline::after(wait);
        let mut sub: Option<(usize, Subscription)> = None;
        loop {
            let (taken, blocked) = self.round(&keys, &token)?;
            let Some((busy, owner_ttl)) = blocked else {
                let guards = taken
                    .into_iter()
                    .map(|(i, fence, sent)| {
                        LockGuard::new(
                            &self.swarm,
                            &self.names[i],
                            keys[i].clone(),
                            token.clone(),
                            fence,
                            sent,
                            self.ttl,
                            self.auto_extend,
                        )
                    })
                    .collect();
                return Ok(MultiLockGuard { guards });
            };
            if deadline.has_passed() {
                return Err(Error::Timeout {
                    what: format!("locks {:?} (`{}` busy)", self.names, self.names[busy]),
                    waited: wait,
                });
            }
            if sub.as_ref().map(|s| s.0) != Some(busy) {
                // Newly blocked on this lock: subscribe, then retry at once
                // (it may have been released before the subscription).
                sub = Some((busy, self.swarm.subscribe(&keys[busy].released)?));
                continue;
            }
            let mut nap = deadline.nap(self.swarm.config().wait_recheck());
            if let Some(t) = owner_ttl {
                nap = nap.min(t.max(Duration::from_millis(1)));
            }
            if let Some((_, s)) = &sub {
                wait_for_release(s, nap, None);
            }
        }
    }

    /// One pass over the sorted set. Returns the grants, and the first busy
    /// lock (with its owner's TTL) if the pass failed; on failure every
    /// lock attempted in this pass has been released again.
    #[allow(clippy::type_complexity)]
    fn round(
        &self,
        keys: &[LockKeys],
        token: &str,
    ) -> Result<(
        Vec<(usize, u64, Instant)>,
        Option<(usize, Option<Duration>)>,
    )> {
        let mut taken = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match attempt(&self.swarm, k, token, self.ttl, false, Duration::ZERO, None) {
                Ok(Attempt::Granted { fence, sent }) => taken.push((i, fence, sent)),
                Ok(Attempt::Busy { owner_ttl }) => {
                    release_by_token(&self.swarm, &keys[..i], token);
                    return Ok((Vec::new(), Some((i, owner_ttl))));
                }
                Err(e) => {
                    // The reply may be lost after a grant: release this one too.
                    release_by_token(&self.swarm, &keys[..=i], token);
                    if e.is_unavailable() {
                        return Ok((Vec::new(), Some((i, None))));
                    }
                    return Err(e);
                }
            }
        }
        Ok((taken, None))
    }
}

fn release_by_token(swarm: &Runtime, keys: &[LockKeys], token: &str) {
    for k in keys {
        if let Err(e) = crate::lock::release_token(swarm, k, token) {
            log::warn!(
                "multi-lock: could not release {}: {e} (it will expire)",
                k.owner
            );
        }
    }
}

/// Every lock of a set, held together; released on drop.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let all = swarm.lock_all(&["a", "b"], std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))?;
/// for (name, token) in all.fencing_tokens() { log::info!("{name}: {token}"); }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MultiLockGuard {
    guards: Vec<LockGuard>,
}

impl MultiLockGuard {
    /// (name, fencing token) of each lock, in sorted name order.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let all = swarm.lock_all(&["a"], std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))?;
    /// assert_eq!(all.fencing_tokens().len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn fencing_tokens(&self) -> Vec<(String, u64)> {
        self.guards
            .iter()
            .map(|g| (g.name().to_string(), g.fencing_token()))
            .collect()
    }

    /// True while every lock of the set is held.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let all = swarm.lock_all(&["a"], std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))?;
    /// assert!(all.is_held());
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.guards.iter().all(LockGuard::is_held)
    }

    /// A channel that receives a [`LeaseLost`] for each lock of the set
    /// that is lost.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let all = swarm.lock_all(&["a"], std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))?;
    /// let lost = all.lost();
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> Receiver<LeaseLost> {
        let (tx, rx) = crossbeam_channel::bounded(self.guards.len().max(1));
        for g in &self.guards {
            g.notify_on_loss(tx.clone());
        }
        rx
    }

    /// Extends every lock; [`Error::Partial`] names the ones that failed.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let all = swarm.lock_all(&["a"], std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))?;
    /// all.extend(std::time::Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        let failed: Vec<(String, String)> = self
            .guards
            .iter()
            .filter_map(|g| {
                g.extend(ttl)
                    .err()
                    .map(|e| (g.name().to_string(), e.to_string()))
            })
            .collect();
        partial("extend", failed)
    }

    /// Releases every lock; [`Error::Partial`] names the ones that failed
    /// (the others are released all the same).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let all = swarm.lock_all(&["a"], std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))?;
    /// all.release()?;
    /// # Ok(()) }
    /// ```
    pub fn release(mut self) -> Result<()> {
        let failed: Vec<(String, String)> = std::mem::take(&mut self.guards)
            .into_iter()
            .filter_map(|g| {
                let name = g.name().to_string();
                g.release().err().map(|e| (name, e.to_string()))
            })
            .collect();
        partial("release", failed)
    }
}

fn partial(what: &'static str, failed: Vec<(String, String)>) -> Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Partial { what, failed })
    }
}
