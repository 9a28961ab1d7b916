//! Distributed locks with fencing tokens, optional auto-extension and an
//! optional fair (FIFO) mode.
//!
//! - Acquire, release and extend are one Lua script each; release and extend
//!   compare the owner token inside the script, so nobody can release or
//!   extend a lock they do not hold, and extend never re-creates an expired
//!   lock.
//! - Every grant takes the next token of a per-name fencing counter that
//!   never expires and never goes below the Redis server clock in
//!   microseconds, so tokens keep rising across a Redis restart that lost
//!   the counter; pass [`LockGuard::fencing_token`] to the resource you
//!   protect and have it reject tokens lower than the highest it has seen.
//! - Grants are idempotent: a call whose reply was lost (timeout, dropped
//!   connection) is retried with the same owner token, and the script hands
//!   back the same grant and fencing token instead of waiting on itself.
//!   Scripts check everything they read before their first write; unusable
//!   data is [`Error::CorruptData`] naming the key, with nothing changed.
//! - Waiters subscribe to the lock's release channel *before* trying, then
//!   sleep until a release message, a `Reconnected` notice, the owner's
//!   remaining TTL or `wait_recheck`, whichever comes first: no polling loop,
//!   and a lost message costs at most that bound.
//! - Fair mode: waiters queue in arrival order and only the head may take
//!   the lock; a release wakes only the head. Waiters that die lose their
//!   place after a ticket timeout. The default (unfair) mode is a plain
//!   `SET NX PX` and is faster under low contention; under heavy contention
//!   any waiter may win, so one can starve.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{Error, Result};
use crate::grant::{grant_start, once_more_if_lost, validate_ttl, wait_for_grant};
use crate::keys::LockKeys;
use crate::lease::{Lease, LeaseLost, LeaseTarget};
use crate::runtime::Runtime;
use crate::scripts::{invoke, lua_script};
use crate::util::{check_ttl, millis, owner_token};

lua_script!(LOCK_ACQUIRE, "lock_acquire.lua");
lua_script!(LOCK_RELEASE, "lock_release.lua");
lua_script!(LOCK_EXTEND, "lock_extend.lua");
lua_script!(LOCK_LEAVE_QUEUE, "lock_leave_queue.lua");

/// Options for acquiring one lock; start with [`Redswarm::lock_options`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let guard = swarm
///     .lock_options("reports:nightly")
///     .ttl(Duration::from_secs(30))
///     .auto_extend(true) // renewed by the heartbeat while held
///     .fair(true)        // FIFO among waiters
///     .lock(Duration::from_secs(10))?;
/// log::info!("fencing token {}", guard.fencing_token());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LockOptions {
    swarm: Runtime,
    name: String,
    ttl: Duration,
    auto_extend: bool,
    fair: bool,
    replicas: Option<(u32, Duration)>,
}

/// Outcome of one acquire attempt.
pub(crate) enum Attempt {
    Granted { fence: u64, sent: Instant },
    Busy { owner_ttl: Option<Duration> },
}

impl LockOptions {
    pub(crate) fn new(swarm: &Runtime, name: &str) -> LockOptions {
        LockOptions {
            swarm: swarm.clone(),
            name: name.to_string(),
            ttl: Duration::from_secs(30),
            auto_extend: false,
            fair: false,
            replicas: None,
        }
    }

    /// Only grant the lock once at least `replicas` replicas have it
    /// (`WAIT replicas timeout` after the grant); otherwise release it and
    /// fail with [`Error::NotReplicated`]. Narrows, but does not close, the
    /// window in which a failover loses a granted lock: replication stays
    /// asynchronous and a replica may still be behind when promoted.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let opts = swarm.lock_options("a").replicas(1, std::time::Duration::from_millis(100));
    /// # Ok(()) }
    /// ```
    pub fn replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Lock TTL (default 30 s). With auto-extension it must be at least
    /// three heartbeat intervals; it may not exceed [`crate::MAX_TTL`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let opts = swarm.lock_options("a").ttl(std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Renew the lock every heartbeat while the guard lives (default off).
    /// If renewal fails, the guard reports the lock lost before its TTL can
    /// run out in Redis.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let opts = swarm.lock_options("a").auto_extend(true);
    /// # Ok(()) }
    /// ```
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// FIFO fairness among waiters (default off). Use one mode per lock name.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let opts = swarm.lock_options("a").fair(true);
    /// # Ok(()) }
    /// ```
    pub fn fair(mut self, on: bool) -> Self {
        self.fair = on;
        self
    }

    fn validate(&self) -> Result<LockKeys> {
        let keys = self.swarm.keys().lock(&self.name)?;
        validate_ttl(&self.swarm, self.ttl, self.auto_extend)?;
        if let Some((_, timeout)) = self.replicas {
            // WAIT takes milliseconds; the bound also keeps the widened
            // read timeout below from overflowing.
            check_ttl("replicas timeout", timeout)?;
        }
        Ok(keys)
    }

    /// Takes the lock if it is free right now (in fair mode: if nobody is
    /// queued ahead); `None` otherwise. If the reply is lost (timeout,
    /// dropped connection) the call is made once more with the same owner
    /// token, which returns the grant if the first call made one; if that
    /// fails too, the lock is given back by token (when Redis answers) before
    /// the error is returned, so no orphaned lock waits out its TTL.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if let Some(guard) = swarm.lock_options("a").try_lock()? { /* ... */ }
    /// # Ok(()) }
    /// ```
    pub fn try_lock(&self) -> Result<Option<LockGuard>> {
        let keys = self.validate()?;
        let token = owner_token(self.swarm.node_id());
        match once_more_if_lost(|| self.try_once(&keys, &token)) {
            Ok(Attempt::Granted { fence, sent }) => Ok(Some(self.guard(keys, token, fence, sent))),
            Ok(Attempt::Busy { .. }) => {
                if self.fair {
                    leave_queue(&self.swarm, &keys, &token);
                }
                Ok(None)
            }
            Err(e) => {
                self.give_up(&keys, &token, e.is_unavailable());
                Err(e)
            }
        }
    }

    /// Blocks until the lock is taken or `wait` passes
    /// ([`Error::Timeout`]; `Duration::MAX` waits forever). Woken by the
    /// release message, not by polling. Attempts whose reply was lost are
    /// retried with the same owner token and get their grant back; Redis
    /// outages are waited out within `wait`, unless this node's peers judge
    /// it partitioned ([`Error::Partitioned`]; only with peers configured).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let guard = swarm.lock_options("a").lock(std::time::Duration::from_secs(3))?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, wait: Duration) -> Result<LockGuard> {
        let keys = self.validate()?;
        let token = owner_token(self.swarm.node_id());
        // Whether the last attempt's outcome is unknown (its reply was lost).
        let unknown = Cell::new(false);
        let granted = wait_for_grant(
            &self.swarm,
            &keys.released,
            wait,
            self.fair.then_some(token.as_str()),
            || format!("lock `{}`", self.name),
            || {
                let attempt = self.try_once(&keys, &token);
                unknown.set(attempt.as_ref().is_err_and(Error::is_unavailable));
                Ok(match attempt? {
                    Attempt::Granted { fence, sent } => Ok((fence, sent)),
                    Attempt::Busy { owner_ttl } => Err(owner_ttl),
                })
            },
        );
        match granted {
            Ok((fence, sent)) => Ok(self.guard(keys, token, fence, sent)),
            Err(e) => {
                self.give_up(&keys, &token, unknown.get());
                Err(e)
            }
        }
    }

    /// Cleanup after a failed `try_lock`/`lock`: leave the fair queue, and
    /// give back a grant the last attempt may have made (`maybe_granted`:
    /// its reply was lost). Best effort: if Redis is unreachable the grant
    /// lapses after its TTL.
    fn give_up(&self, keys: &LockKeys, token: &str, maybe_granted: bool) {
        if maybe_granted {
            if let Err(e) = release_token(&self.swarm, keys, token) {
                log::warn!(
                    "lock `{}`: could not give back a grant whose reply was lost: {e} (it lapses after its TTL)",
                    self.name
                );
            }
        }
        if self.fair {
            leave_queue(&self.swarm, keys, token);
        }
    }

    /// One acquire attempt with these options.
    fn try_once(&self, keys: &LockKeys, token: &str) -> Result<Attempt> {
        attempt(
            &self.swarm,
            keys,
            token,
            self.ttl,
            self.fair,
            self.ticket_ttl(),
            self.replicas,
        )
    }

    fn ticket_ttl(&self) -> Duration {
        // A live waiter refreshes its ticket at least every wait_recheck.
        self.swarm.config().wait_recheck() * 3
    }

    fn guard(&self, keys: LockKeys, token: String, fence: u64, sent: Instant) -> LockGuard {
        LockGuard::new(
            &self.swarm,
            &self.name,
            keys,
            token,
            fence,
            sent,
            self.ttl,
            self.auto_extend,
        )
    }
}

/// One acquire attempt (one script call).
pub(crate) fn attempt(
    swarm: &Runtime,
    keys: &LockKeys,
    token: &str,
    ttl: Duration,
    fair: bool,
    ticket_ttl: Duration,
    replicas: Option<(u32, Duration)>,
) -> Result<Attempt> {
    let mut conn = swarm.conn()?;
    let sent = Instant::now();
    let reply: Vec<i64> = invoke(
        LOCK_ACQUIRE
            .prepare()
            .key(&keys.owner)
            .key(&keys.fence)
            .key(&keys.queue)
            .key(&keys.tickets)
            .arg(token)
            .arg(millis(ttl))
            .arg(if fair { "1" } else { "0" })
            .arg(millis(ticket_ttl)),
        &mut *conn,
    )?;
    match reply.as_slice() {
        [1, fence, left, ..] => {
            let fence = u64::try_from(*fence)
                .map_err(|_| Error::corrupt(&keys.fence, "negative fencing counter"))?;
            let sent = grant_start(sent, ttl, *left);
            if let Some((wanted, timeout)) = replicas {
                // WAIT on the connection that wrote: how many replicas have
                // the grant? It blocks up to `timeout`, so widen the read
                // timeout for it.
                let command_timeout = swarm.config().command_timeout();
                conn.set_read_timeout(Some(timeout.saturating_add(command_timeout)))?;
                // On a cluster, WAIT must reach the node that wrote the grant.
                let acked: redis::RedisResult<i64> = conn.query_at_key(
                    &keys.owner,
                    redis::cmd("WAIT").arg(wanted).arg(millis(timeout)),
                );
                let _ = conn.set_read_timeout(Some(command_timeout));
                let acked = match acked {
                    Ok(n) => n,
                    Err(e) => {
                        // Unknown replication: give the grant back, then report.
                        drop(conn);
                        let _ = release_token(swarm, keys, token);
                        return Err(e.into());
                    }
                };
                if acked < i64::from(wanted) {
                    drop(conn);
                    release_token(swarm, keys, token)?;
                    return Err(Error::NotReplicated {
                        what: format!("lock `{}`", keys.owner),
                        wanted,
                        acked: u32::try_from(acked).unwrap_or(0),
                    });
                }
            }
            Ok(Attempt::Granted { fence, sent })
        }
        [0, pttl, ..] => Ok(Attempt::Busy {
            owner_ttl: u64::try_from(*pttl).ok().map(Duration::from_millis),
        }),
        other => Err(Error::corrupt(
            &keys.owner,
            format!("unexpected acquire reply {other:?}"),
        )),
    }
}

/// Releases `keys` if `token` holds it (compare-and-delete); for cleanup
/// after a failed multi-lock round.
pub(crate) fn release_token(swarm: &Runtime, keys: &LockKeys, token: &str) -> Result<i64> {
    let mut conn = swarm.store().conn()?;
    invoke(
        LOCK_RELEASE
            .prepare()
            .key(&keys.owner)
            .key(&keys.queue)
            .key(&keys.tickets)
            .arg(token)
            .arg(&keys.released),
        &mut *conn,
    )
}

fn leave_queue(swarm: &Runtime, keys: &LockKeys, token: &str) {
    let r = swarm.conn().and_then(|mut c| {
        invoke::<i64>(
            LOCK_LEAVE_QUEUE
                .prepare()
                .key(&keys.queue)
                .key(&keys.tickets)
                .arg(token)
                .arg(&keys.released),
            &mut *c,
        )
    });
    if let Err(e) = r {
        log::debug!(
            "could not leave the queue of {}: {e} (the ticket will lapse)",
            keys.owner
        );
    }
}

/// A held lock. Released on drop (errors are logged); call
/// [`LockGuard::release`] to see them.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let guard = swarm.lock("orders:42", Duration::from_secs(10), Duration::from_secs(5))?;
/// let token = guard.fencing_token(); // hand this to the storage you write to
/// guard.extend(Duration::from_secs(10))?;
/// assert!(guard.is_held());
/// guard.release()?;
/// # Ok(()) }
/// ```
pub struct LockGuard {
    swarm: Runtime,
    name: String,
    keys: LockKeys,
    token: String,
    fence: u64,
    auto_extend: bool,
    lease: Option<Lease>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("fencing_token", &self.fence)
            .finish()
    }
}

impl LockGuard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: &Runtime,
        name: &str,
        keys: LockKeys,
        token: String,
        fence: u64,
        sent: Instant,
        ttl: Duration,
        auto_extend: bool,
    ) -> LockGuard {
        let what = format!("lock `{name}`");
        let target = LeaseTarget::Key {
            key: keys.owner.clone(),
            token: token.clone(),
        };
        let lease = if auto_extend {
            swarm.lease(what, target, ttl, sent)
        } else {
            swarm.lease_unrenewed(what, target, ttl, sent)
        };
        LockGuard {
            swarm: swarm.clone(),
            name: name.to_string(),
            keys,
            token,
            fence,
            auto_extend,
            lease: Some(lease),
        }
    }

    /// Also tells `tx` when this lock is lost (multi-lock guards share one).
    pub(crate) fn notify_on_loss(&self, tx: crossbeam_channel::Sender<LeaseLost>) {
        if let Some(l) = &self.lease {
            l.notify_on_loss(tx);
        }
    }

    /// The lock's name.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let guard = swarm.try_lock("a", std::time::Duration::from_secs(1))?.ok_or("missing")?;
    /// assert_eq!(guard.name(), "a");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this acquisition: strictly greater than every
    /// earlier acquisition's of the same name, never reused (the counter
    /// survives the lock key's expiry, and never goes below the Redis
    /// server's clock in microseconds, so it keeps rising across a Redis
    /// restart without persistence — unless the Redis host's clock was
    /// stepped backwards across that restart).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let guard = swarm.try_lock("a", std::time::Duration::from_secs(1))?.ok_or("missing")?;
    /// assert!(guard.fencing_token() > 0);
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Whether this guard may still act as the owner: not released, no
    /// renewal was refused, and the TTL (minus a safety margin) has not run
    /// out since the last successful acquire, extend or renewal.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let guard = swarm.try_lock("a", std::time::Duration::from_secs(1))?.ok_or("missing")?;
    /// if !guard.is_held() { /* stop writing */ }
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.is_lost())
    }

    /// A channel that receives one [`LeaseLost`] when the lock is lost
    /// (renewal refused or not possible in time).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let guard = swarm.lock_options("a").auto_extend(true).try_lock()?.ok_or("missing")?;
    /// let lost = guard.lost();
    /// crossbeam_channel::select! {
    ///     recv(lost) -> why => log::warn!("stop: {why:?}"),
    ///     default(std::time::Duration::from_secs(1)) => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> Receiver<LeaseLost> {
        crate::lease::loss_channel(self.lease.as_ref(), || format!("lock `{}`", self.name))
    }

    /// Sets the lock's expiry to now + `ttl` (Redis clock). Fails with
    /// [`Error::LeaseLost`] if the lock expired or is held by someone else;
    /// never re-creates it. On an auto-extended guard `ttl` must leave room
    /// for renewals (three heartbeat intervals, as for
    /// [`LockOptions::ttl`]), else [`Error::InvalidInput`] and nothing
    /// changes: a shorter TTL could lapse between two beats.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let guard = swarm.try_lock("a", std::time::Duration::from_secs(1))?.ok_or("missing")?;
    /// guard.extend(std::time::Duration::from_secs(5))?;
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
            LOCK_EXTEND
                .prepare()
                .key(&self.keys.owner)
                .arg(&self.token)
                .arg(millis(ttl)),
            &mut *conn,
        )?;
        match r {
            1 => {
                lease.renewed(sent, ttl);
                Ok(())
            }
            0 => {
                lease.mark_lost("expired before extend");
                Err(self.lost_error("it expired"))
            }
            _ => {
                lease.mark_lost("held by another owner");
                Err(self.lost_error("another owner holds it"))
            }
        }
    }

    /// Releases the lock and wakes waiters. Idempotent: if the reply is lost
    /// the call is retried once, and finding the lock already released then
    /// is `Ok`. Fails with [`Error::LeaseLost`] if the lock had already
    /// passed to someone else (it is left untouched) or was no longer in
    /// Redis: it expired, or was deleted or lost in a Redis restart while we
    /// believed we held it — whatever we did under it was not protected.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let guard = swarm.try_lock("a", std::time::Duration::from_secs(1))?.ok_or("missing")?;
    /// guard.release()?;
    /// # Ok(()) }
    /// ```
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        // Stop renewing first; a renewal already in flight compares the
        // token in Lua and cannot revive the lock after the DEL below.
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        let lost_locally = lease.is_lost();
        drop(lease);
        let mut retried = false;
        let released = once_more_if_lost(|| {
            let r = release_token(&self.swarm, &self.keys, &self.token);
            retried |= r.is_err();
            r
        })?;
        match released {
            1 => Ok(()),
            // The lost first call released it.
            0 if retried && !lost_locally => Ok(()),
            0 if lost_locally => Err(self.lost_error("it expired before release")),
            0 => Err(self.lost_error(
                "it was no longer in Redis (deleted, evicted or lost in a Redis restart)",
            )),
            _ => Err(self.lost_error("another owner holds it now")),
        }
    }

    fn lost_error(&self, reason: &str) -> Error {
        Error::LeaseLost {
            what: format!("lock `{}`", self.name),
            reason: reason.to_string(),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            log::warn!("releasing lock `{}` on drop: {e}", self.name);
        }
    }
}
