//! A counting semaphore whose permits are leases.
//!
//! Each permit is a member of a sorted set scored by its deadline (Redis
//! clock) with a unique id, so a crashed holder's permit comes back by
//! itself when its TTL passes: the acquire script drops expired permits
//! before counting. Extension never revives an expired permit, so there are
//! never more than `permits` live holders at any instant. Waiters are woken
//! by a release message, bounded by the earliest permit's expiry and
//! `wait_recheck`. Fair mode admits waiters in arrival order. Every grant
//! carries a fencing token (one counter per semaphore, never below the
//! Redis clock in microseconds, as for locks).
//!
//! Grants are idempotent per permit id: a call whose reply was lost is
//! retried with the same id and gets the same permit and fencing token
//! back. Scripts check everything they read before their first write;
//! unusable data is [`Error::CorruptData`] naming the key.
//!
//! All users of one semaphore name must pass the same `permits`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{Error, Result};
use crate::grant::{grant_start, once_more_if_lost, validate_ttl, wait_for_grant};
use crate::keys::SemaphoreKeys;
use crate::lease::{Lease, LeaseLost, LeaseTarget};
use crate::runtime::Runtime;
use crate::scripts::{invoke, lua_script};
use crate::util::{millis, owner_token};

lua_script!(SEM_ACQUIRE, "semaphore_acquire.lua");
lua_script!(SEM_RELEASE, "semaphore_release.lua");
lua_script!(SEM_EXTEND, "semaphore_extend.lua");
lua_script!(SEM_COUNT, "semaphore_count.lua");
lua_script!(SEM_LEAVE_QUEUE, "semaphore_leave_queue.lua");

/// A named counting semaphore; create with [`Redswarm::semaphore`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let sem = swarm.semaphore("pdf-renderers", 4)?.ttl(Duration::from_secs(60)).auto_extend(true);
/// let permit = sem.acquire(Duration::from_secs(10))?;
/// // at most 4 of these run at once, across every process
/// drop(permit); // released
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    swarm: Runtime,
    name: String,
    keys: SemaphoreKeys,
    permits: u32,
    ttl: Duration,
    auto_extend: bool,
    fair: bool,
}

impl Semaphore {
    pub(crate) fn new(swarm: &Runtime, name: &str, permits: u32) -> Result<Semaphore> {
        let keys = swarm.keys().semaphore(name)?;
        if permits == 0 {
            return Err(Error::invalid("permits", "must be at least 1"));
        }
        Ok(Semaphore {
            swarm: swarm.clone(),
            name: name.to_string(),
            keys,
            permits,
            ttl: Duration::from_secs(30),
            auto_extend: false,
            fair: false,
        })
    }

    /// Permit TTL (default 30 s, at most [`crate::MAX_TTL`]): a holder
    /// that dies gives its permit back after this long.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sem = swarm.semaphore("s", 2)?.ttl(std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Renew permits every heartbeat while held (default off).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sem = swarm.semaphore("s", 2)?.auto_extend(true);
    /// # Ok(()) }
    /// ```
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// Admit waiters in arrival order (default off).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sem = swarm.semaphore("s", 2)?.fair(true);
    /// # Ok(()) }
    /// ```
    pub fn fair(mut self, on: bool) -> Self {
        self.fair = on;
        self
    }

    /// Takes a permit if one is free now. A lost reply is retried once with
    /// the same permit id (which returns the permit if the first call
    /// granted it); if that fails too, the permit is given back by id (when
    /// Redis answers) before the error is returned.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sem = swarm.semaphore("s", 2)?;
    /// if let Some(permit) = sem.try_acquire()? { /* ... */ }
    /// # Ok(()) }
    /// ```
    pub fn try_acquire(&self) -> Result<Option<Permit>> {
        validate_ttl(&self.swarm, self.ttl, self.auto_extend)?;
        let id = owner_token(self.swarm.node_id());
        match once_more_if_lost(|| self.attempt(&id)) {
            Ok(Ok(p)) => Ok(Some(p)),
            Ok(Err(_)) => {
                if self.fair {
                    self.leave_queue(&id);
                }
                Ok(None)
            }
            Err(e) => {
                self.give_up(&id, e.is_unavailable());
                Err(e)
            }
        }
    }

    /// Blocks until a permit is free or `wait` passes ([`Error::Timeout`];
    /// `Duration::MAX` waits forever).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let permit = swarm.semaphore("s", 2)?.acquire(std::time::Duration::from_secs(1))?;
    /// # Ok(()) }
    /// ```
    pub fn acquire(&self, wait: Duration) -> Result<Permit> {
        validate_ttl(&self.swarm, self.ttl, self.auto_extend)?;
        let id = owner_token(self.swarm.node_id());
        // Whether the last attempt's outcome is unknown (its reply was lost).
        let unknown = Cell::new(false);
        let granted = wait_for_grant(
            &self.swarm,
            &self.keys.released,
            wait,
            None,
            || format!("a permit of semaphore `{}`", self.name),
            || {
                let attempt = self.attempt(&id);
                unknown.set(attempt.as_ref().is_err_and(Error::is_unavailable));
                attempt
            },
        );
        if granted.is_err() {
            self.give_up(&id, unknown.get());
        }
        granted
    }

    /// Cleanup after a failed `try_acquire`/`acquire`: give back a permit
    /// the last attempt may have granted (`maybe_granted`: its reply was
    /// lost) and leave the fair queue. Best effort: if Redis is unreachable
    /// the permit lapses after its TTL.
    fn give_up(&self, id: &str, maybe_granted: bool) {
        if maybe_granted {
            if let Err(e) = release_permit(&self.swarm, &self.keys, id) {
                log::warn!(
                    "semaphore `{}`: could not give back a permit whose reply was lost: {e} (it lapses after its TTL)",
                    self.name
                );
            }
        }
        if self.fair {
            self.leave_queue(id);
        }
    }

    /// Live permits right now (by Redis's clock).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let n = swarm.semaphore("s", 2)?.holders()?;
    /// assert!(n <= 2);
    /// # Ok(()) }
    /// ```
    pub fn holders(&self) -> Result<u64> {
        let mut conn = self.swarm.conn()?;
        invoke(SEM_COUNT.prepare().key(&self.keys.holders), &mut *conn)
    }

    /// The permit count.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.semaphore("s", 2)?.permits(), 2);
    /// # Ok(()) }
    /// ```
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// One attempt: Ok(Ok(permit)), or Ok(Err(time until the earliest
    /// permit expires)).
    fn attempt(&self, id: &str) -> Result<std::result::Result<Permit, Option<Duration>>> {
        let mut conn = self.swarm.conn()?;
        let sent = Instant::now();
        let reply: Vec<i64> = invoke(
            SEM_ACQUIRE
                .prepare()
                .key(&self.keys.holders)
                .key(&self.keys.fence)
                .key(&self.keys.queue)
                .key(&self.keys.tickets)
                .key(&self.keys.grants)
                .arg(id)
                .arg(self.permits)
                .arg(millis(self.ttl))
                .arg(if self.fair { "1" } else { "0" })
                .arg(millis(self.swarm.config().wait_recheck() * 3)),
            &mut *conn,
        )?;
        match reply.as_slice() {
            [1, fence, left, ..] => {
                let fence = u64::try_from(*fence)
                    .map_err(|_| Error::corrupt(&self.keys.fence, "negative fencing counter"))?;
                let sent = grant_start(sent, self.ttl, *left);
                let what = format!("permit of semaphore `{}`", self.name);
                let target = LeaseTarget::Member {
                    zset: self.keys.holders.clone(),
                    member: id.to_string(),
                };
                let lease = if self.auto_extend {
                    self.swarm.lease(what, target, self.ttl, sent)
                } else {
                    self.swarm.lease_unrenewed(what, target, self.ttl, sent)
                };
                Ok(Ok(Permit {
                    swarm: self.swarm.clone(),
                    name: self.name.clone(),
                    keys: self.keys.clone(),
                    id: id.to_string(),
                    fence,
                    auto_extend: self.auto_extend,
                    lease: Some(lease),
                }))
            }
            [0, next, ..] => Ok(Err(u64::try_from(*next).ok().map(Duration::from_millis))),
            other => Err(Error::corrupt(
                &self.keys.holders,
                format!("unexpected acquire reply {other:?}"),
            )),
        }
    }

    fn leave_queue(&self, id: &str) {
        let r = self.swarm.conn().and_then(|mut c| {
            invoke::<i64>(
                SEM_LEAVE_QUEUE
                    .prepare()
                    .key(&self.keys.queue)
                    .key(&self.keys.tickets)
                    .arg(id)
                    .arg(&self.keys.released),
                &mut *c,
            )
        });
        if let Err(e) = r {
            log::debug!(
                "could not leave the queue of semaphore `{}`: {e}",
                self.name
            );
        }
    }
}

/// One permit of a [`Semaphore`]; released on drop.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let permit = swarm.semaphore("s", 1)?.acquire(std::time::Duration::from_secs(1))?;
/// log::info!("fencing token {}", permit.fencing_token());
/// permit.release()?;
/// # Ok(()) }
/// ```
pub struct Permit {
    swarm: Runtime,
    name: String,
    keys: SemaphoreKeys,
    id: String,
    fence: u64,
    auto_extend: bool,
    lease: Option<Lease>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("semaphore", &self.name)
            .field("fencing_token", &self.fence)
            .finish()
    }
}

impl Permit {
    /// Fencing token of this grant: greater than every earlier grant's of
    /// the same semaphore, also across a Redis restart without persistence
    /// (never below the Redis server's clock in microseconds).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let permit = swarm.semaphore("s", 1)?.try_acquire()?.ok_or("missing")?;
    /// assert!(permit.fencing_token() > 0);
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Whether the permit is still ours (not released, not lost, TTL minus
    /// a safety margin not passed locally).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let permit = swarm.semaphore("s", 1)?.try_acquire()?.ok_or("missing")?;
    /// assert!(permit.is_held());
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.is_lost())
    }

    /// A channel that receives one [`LeaseLost`] when the permit is lost.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let permit = swarm.semaphore("s", 1)?.try_acquire()?.ok_or("missing")?;
    /// let lost = permit.lost();
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> Receiver<LeaseLost> {
        crate::lease::loss_channel(self.lease.as_ref(), || {
            format!("permit of semaphore `{}`", self.name)
        })
    }

    /// Extends the permit to now + `ttl`; [`Error::LeaseLost`] if it expired.
    /// On an auto-extended permit `ttl` must leave room for renewals (three
    /// heartbeat intervals), else [`Error::InvalidInput`] and nothing changes.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let permit = swarm.semaphore("s", 1)?.try_acquire()?.ok_or("missing")?;
    /// permit.extend(std::time::Duration::from_secs(30))?;
    /// # Ok(()) }
    /// ```
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        let lease = self
            .lease
            .as_ref()
            .ok_or_else(|| self.lost_error("already released"))?;
        validate_ttl(&self.swarm, ttl, self.auto_extend)?;
        let mut conn = self.swarm.conn()?;
        let sent = Instant::now();
        let r: i64 = invoke(
            SEM_EXTEND
                .prepare()
                .key(&self.keys.holders)
                .arg(&self.id)
                .arg(millis(ttl)),
            &mut *conn,
        )?;
        if r == 1 {
            lease.renewed(sent, ttl);
            Ok(())
        } else {
            lease.mark_lost("expired before extend");
            Err(self.lost_error("it expired"))
        }
    }

    /// Gives the permit back. Idempotent: if the reply is lost the call is
    /// retried once, and finding the permit already gone then is `Ok`.
    /// [`Error::LeaseLost`] if the permit was no longer live in Redis: it
    /// expired, or was deleted or lost in a Redis restart while we believed
    /// we held it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let permit = swarm.semaphore("s", 1)?.try_acquire()?.ok_or("missing")?;
    /// permit.release()?;
    /// # Ok(()) }
    /// ```
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        let lost_locally = lease.is_lost();
        drop(lease);
        let mut retried = false;
        let released = once_more_if_lost(|| {
            let r = release_permit(&self.swarm, &self.keys, &self.id);
            retried |= r.is_err();
            r
        })?;
        match released {
            1 => Ok(()),
            // The lost first call released it.
            _ if retried && !lost_locally => Ok(()),
            _ if lost_locally => Err(self.lost_error("it expired before release")),
            _ => {
                Err(self
                    .lost_error("it was no longer in Redis (deleted or lost in a Redis restart)"))
            }
        }
    }

    fn lost_error(&self, reason: &str) -> Error {
        Error::LeaseLost {
            what: format!("permit of semaphore `{}`", self.name),
            reason: reason.to_string(),
        }
    }
}

/// Gives permit `id` back (1: it was live; 0: already gone) and wakes
/// waiters.
fn release_permit(swarm: &Runtime, keys: &SemaphoreKeys, id: &str) -> Result<i64> {
    let mut conn = swarm.store().conn()?;
    invoke(
        SEM_RELEASE
            .prepare()
            .key(&keys.holders)
            .key(&keys.grants)
            .arg(id)
            .arg(&keys.released),
        &mut *conn,
    )
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            log::warn!("releasing a permit of `{}` on drop: {e}", self.name);
        }
    }
}
