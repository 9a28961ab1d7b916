//! Chunk tracker (the seed's tusker): a task is made of chunks that any
//! process works on; each chunk is locked while it is worked on; once the
//! task is closed and no chunk is locked any more, the task is *released*
//! and handed to exactly one consumer, which finishes it (merging the
//! chunks) and reports. A failed or timed-out attempt gives the task
//! another one until its attempts are used up; then it is failed.
//!
//! How it works, per tracker (all keys share one hash tag, see
//! [`keys`](crate::keys)):
//! - [`Tracker::lock`] takes a chunk lock for this process: the chunk's
//!   owner token in the task's chunks hash, its deadline in the `locks`
//!   zset. The heartbeat renews the deadline while this process lives, so a
//!   long chunk is never timed out under a live server; a dead server's
//!   locks lapse and the sweep removes them. [`Tracker::lock_fixed`] asks
//!   for a fixed timeout instead (not renewed).
//! - A chunk may be locked while the task is open or closed but not yet
//!   released (a late chunk after `close` delays the release); once the
//!   task is released, processing, completed or failed, a lock is refused
//!   with [`Error::Conflict`].
//! - [`Tracker::close`] stores the task's info, attempts and processing
//!   timeout; a task closed with no chunk locked (or none ever) is released
//!   at once. Closing again changes nothing ([`Closed::AlreadyClosed`]).
//! - [`Tracker::released`] gives a blocking [`Consumer`]: its claim script
//!   moves a released task into the `processing` zset with a deadline, a
//!   counted attempt and a new fencing token in one step, so a consumer
//!   that crashes loses nothing (the task comes back at its processing
//!   deadline) and a stale consumer's [`Released::done`] is refused.
//!   Consumers wait on a pub/sub wake-up, re-checking after
//!   [`Config::wait_recheck`](crate::Config::wait_recheck) and reconnects.
//! - Lock and processing timeouts need no cron: each [`Tracker`] runs a
//!   sweeping thread that wakes at the earliest deadline (read from the
//!   deadline zsets, O(log n + k)) or when a script publishes an earlier
//!   one. [`Tracker::timeout_locks`] and [`Tracker::timeout_processing`]
//!   still run a sweep by hand.
//!
//! Seed terms: `lock`/`unlock` → [`Tracker::lock`] / [`ChunkLock::unlock`]
//! or [`Tracker::unlock`]; `close(task, info, {attempts, timeout})` →
//! [`Tracker::close`] with [`CloseOptions`]; `fetchReleased` +
//! `completed(err)` → [`Tracker::released`] + [`Released::done`] (or
//! [`Tracker::consume`]); `timeoutLocks(age)` → automatic, or
//! [`Tracker::timeout_locks`]; `timeoutProcessing` → automatic, or
//! [`Tracker::timeout_processing`]; `stats` → [`Tracker::stats`].

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use redis::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::grant::{once_more_if_lost, wait_for_release};
use crate::keys::TrackerKeys;
use crate::lease::{Lease, LeaseLost, LeaseTarget};
use crate::runtime::Runtime;
use crate::scripts::{invoke, lua_script};
use crate::threadpool::ThreadPool;
use crate::util::{check_ttl, millis, panic_message, random_id, Deadline};

lua_script!(TRACKER_LOCK, "tracker_lock.lua", with "tracker_lib.lua");
lua_script!(TRACKER_UNLOCK, "tracker_unlock.lua", with "tracker_lib.lua");
lua_script!(TRACKER_CLOSE, "tracker_close.lua", with "tracker_lib.lua");
lua_script!(TRACKER_CLAIM, "tracker_claim.lua", with "tracker_lib.lua");
lua_script!(TRACKER_DONE, "tracker_done.lua", with "tracker_lib.lua");
lua_script!(TRACKER_SWEEP, "tracker_sweep.lua", with "tracker_lib.lua");

/// Most chunk locks and attempts one sweep script call times out; a sweep
/// that hits it runs again at once.
const SWEEP_BATCH: usize = 500;
/// How long a [`Consuming`] thread waits after an error before claiming again.
const CONSUME_BACKOFF: Duration = Duration::from_millis(500);

/// Settings of a tracker; pass to [`Redswarm::tracker_with`](crate::Redswarm::tracker_with).
///
/// ```
/// use std::time::Duration;
/// let opts = redswarm::TrackerOptions {
///     lock_timeout: Duration::from_secs(10),
///     ..Default::default()
/// };
/// assert!(opts.sweep);
/// ```
#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// Chunk lock lease (default 30 s): renewed by the heartbeat while the
    /// locking process lives, so it bounds how long a *dead* server's
    /// chunk holds its task back. At least three heartbeat intervals.
    pub lock_timeout: Duration,
    /// How long a completed or failed task's record stays for
    /// [`Tracker::get`] (default 1 h). After it, the name is a new task.
    pub retention: Duration,
    /// Largest serialized `info` accepted by [`Tracker::close`] (default 1 MiB).
    pub max_info_bytes: usize,
    /// Run this handle's background sweep for the tracker (default true).
    /// Any number of processes may sweep; each step is one script.
    pub sweep: bool,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            lock_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            max_info_bytes: 1 << 20,
            sweep: true,
        }
    }
}

/// What [`Tracker::close`] stores with a task (the seed's close options).
///
/// ```
/// let o = redswarm::CloseOptions::default();
/// assert_eq!(o.attempts, 1);
/// assert_eq!(o.timeout, std::time::Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseOptions {
    /// Attempts in all (at least 1, default 1): a failed or timed-out
    /// attempt gives the task another while any is left.
    pub attempts: u32,
    /// Processing timeout of one attempt (default 30 s, the seed's):
    /// measured by Redis's clock from the claim; fixed, not renewed.
    pub timeout: Duration,
}

impl Default for CloseOptions {
    fn default() -> Self {
        CloseOptions {
            attempts: 1,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What [`Tracker::close`] did.
///
/// ```
/// let c = redswarm::Closed::Waiting { chunks: 2 };
/// assert_ne!(c, redswarm::Closed::Released);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closed {
    /// No chunk was locked: the task is released to the consumers now.
    Released,
    /// `chunks` chunks are still locked; the last unlock releases the task.
    Waiting {
        /// Chunks still locked.
        chunks: u64,
    },
    /// The task was already closed; nothing changed (its first info and
    /// options stay).
    AlreadyClosed {
        /// Its state now.
        state: TrackerTaskState,
    },
}

/// What an unlock did.
///
/// ```
/// assert_ne!(redswarm::Unlocked::Unlocked, redswarm::Unlocked::NotLocked);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlocked {
    /// The chunk is unlocked; the task still waits (open, or other chunks).
    Unlocked,
    /// The chunk was the closed task's last: the task is released now.
    Released,
    /// The chunk was not locked (never, already unlocked, or timed out).
    NotLocked,
    /// The chunk is locked by another owner now (this lock timed out and
    /// the chunk was locked again); it was left alone.
    LockedByOther,
}

/// What [`Released::done`] did.
///
/// ```
/// assert_ne!(redswarm::DoneOutcome::Completed, redswarm::DoneOutcome::Failed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneOutcome {
    /// The task is completed.
    Completed,
    /// The attempt failed; the task is released for another attempt.
    Retrying,
    /// The attempt failed and it was the last: the task is failed.
    Failed,
}

/// The state of a tracked task.
///
/// ```
/// assert_eq!(redswarm::TrackerTaskState::Open.as_str(), "open");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackerTaskState {
    /// Chunks may be locked; not closed yet.
    Open,
    /// Closed; waiting for its locked chunks.
    Closed,
    /// Waiting for a consumer.
    Released,
    /// A consumer is on it.
    Processing,
    /// Finished successfully.
    Completed,
    /// Every attempt failed.
    Failed,
}

impl TrackerTaskState {
    /// The state's name as stored in Redis.
    ///
    /// ```
    /// assert_eq!(redswarm::TrackerTaskState::Failed.as_str(), "failed");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            TrackerTaskState::Open => "open",
            TrackerTaskState::Closed => "closed",
            TrackerTaskState::Released => "released",
            TrackerTaskState::Processing => "processing",
            TrackerTaskState::Completed => "completed",
            TrackerTaskState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<TrackerTaskState> {
        Some(match s {
            "open" => TrackerTaskState::Open,
            "closed" => TrackerTaskState::Closed,
            "released" => TrackerTaskState::Released,
            "processing" => TrackerTaskState::Processing,
            "completed" => TrackerTaskState::Completed,
            "failed" => TrackerTaskState::Failed,
            _ => return None,
        })
    }
}

/// The seed's `stats()`: counts over the whole tracker.
///
/// ```
/// let s = redswarm::TrackerStats::default();
/// assert_eq!(s.completed + s.released + s.locked + s.failed + s.processing, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Tasks completed (ever; a counter).
    pub completed: u64,
    /// Tasks released and waiting for a consumer.
    pub released: u64,
    /// Chunk locks held now.
    pub locked: u64,
    /// Tasks failed after their last attempt (ever; a counter).
    pub failed: u64,
    /// Tasks a consumer is processing now.
    pub processing: u64,
}

/// One task as [`Tracker::get`] finds it. Times are milliseconds since the
/// epoch by Redis's clock.
///
/// ```
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// # let tracker = swarm.tracker("ogg")?;
/// if let Some(t) = tracker.get("stream-1")? {
///     log::info!("{:?}: {} chunks locked, attempt {}", t.state, t.chunks_locked, t.attempt);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedTask {
    /// Its state.
    pub state: TrackerTaskState,
    /// Chunks locked now.
    pub chunks_locked: u64,
    /// Attempts claimed so far.
    pub attempt: u32,
    /// Attempts allowed (0 until closed).
    pub attempts: u32,
    /// Failed attempts (errors and processing timeouts).
    pub errors: u32,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The info stored by `close`, as JSON.
    pub info_json: Option<String>,
    /// The fencing token of the last claim.
    pub fencing_token: Option<u64>,
    /// When the task was first seen.
    pub created_ms: Option<u64>,
    /// When it was closed.
    pub closed_ms: Option<u64>,
    /// When it was last released.
    pub released_ms: Option<u64>,
    /// When its last attempt was claimed.
    pub started_ms: Option<u64>,
    /// When it was completed or failed.
    pub finished_ms: Option<u64>,
}

/// A chunk tracker; see the [module docs](self) and
/// [`Redswarm::tracker`](crate::Redswarm::tracker). Cheap to clone; its
/// background sweep stops when the last clone is dropped.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let tracker = swarm.tracker("ogg-to-mp3")?;
/// let chunk = tracker.lock("stream-1", "chunk-0")?;
/// // ... encode the chunk ...
/// chunk.unlock()?;
/// tracker.close("stream-1", &"info", redswarm::CloseOptions::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<TrackerInner>,
}

struct TrackerInner {
    rt: Runtime,
    name: String,
    keys: TrackerKeys,
    opts: TrackerOptions,
    /// The handle's sweeper of this tracker, shared by every [`Tracker`]
    /// of the name; the last one dropped disconnects its stop channel.
    _sweep_stop: Option<Arc<Sender<()>>>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("name", &self.inner.name)
            .field("options", &self.inner.opts)
            .finish()
    }
}

fn reply_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn reply_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => reply_str(Some(other))?.parse().ok(),
    }
}

fn reply_i64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        other => reply_str(Some(other))?.parse().ok(),
    }
}

impl Tracker {
    pub(crate) fn new(rt: &Runtime, name: &str, opts: TrackerOptions) -> Result<Tracker> {
        let keys = rt.keys().tracker(name)?;
        check_ttl("tracker lock timeout", opts.lock_timeout)?;
        crate::grant::validate_ttl(rt, opts.lock_timeout, true)?;
        check_ttl("tracker retention", opts.retention)?;
        if opts.retention.is_zero() {
            return Err(Error::invalid("tracker retention", "must be above zero"));
        }
        if opts.max_info_bytes == 0 {
            return Err(Error::invalid(
                "tracker max info bytes",
                "must be greater than zero",
            ));
        }
        rt.check_up()?;
        let sweep_stop = if opts.sweep {
            Some(
                rt.feature_state::<Sweepers>()
                    .get_or_start(rt, &keys, opts.retention)?,
            )
        } else {
            None
        };
        Ok(Tracker {
            inner: Arc::new(TrackerInner {
                rt: rt.clone(),
                name: name.to_string(),
                keys,
                opts,
                _sweep_stop: sweep_stop,
            }),
        })
    }

    /// The tracker's name.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.tracker("ogg")?.name(), "ogg");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn label(&self, task: &str) -> String {
        format!("tracker `{}` task `{task}`", self.inner.name)
    }

    /// Locks chunk `chunk` of task `task` for this process (the seed's
    /// `lock`); the lock is renewed by the heartbeat while this process
    /// lives and unlocked when the guard is dropped or
    /// [`ChunkLock::unlock`]ed. A chunk another owner holds gives
    /// [`Error::Conflict`], as does a task already released or finished
    /// (chunks may be locked after [`Tracker::close`] until the release).
    /// The task record is created by its first lock or its close.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let tracker = swarm.tracker("ogg")?;
    /// let chunk = tracker.lock("stream-1", "chunk-7")?;
    /// drop(chunk); // unlocks
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, task: &str, chunk: &str) -> Result<ChunkLock> {
        self.lock_inner(task, chunk, self.inner.opts.lock_timeout, true)
    }

    /// [`Tracker::lock`] with a fixed `timeout` that is not renewed: the
    /// sweep removes the lock `timeout` after it was taken even if this
    /// process is alive (the seed's behaviour).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let tracker = swarm.tracker("ogg")?;
    /// let chunk = tracker.lock_fixed("stream-1", "chunk-7", std::time::Duration::from_secs(15))?;
    /// # Ok(()) }
    /// ```
    pub fn lock_fixed(&self, task: &str, chunk: &str, timeout: Duration) -> Result<ChunkLock> {
        self.lock_inner(task, chunk, timeout, false)
    }

    fn lock_inner(&self, task: &str, chunk: &str, ttl: Duration, renew: bool) -> Result<ChunkLock> {
        crate::grant::validate_ttl(&self.inner.rt, ttl, renew)?;
        crate::keys::validate_name("tracker chunk name", chunk)?;
        let k = &self.inner.keys;
        let tkey = k.task(task)?;
        let ckey = k.chunks(task)?;
        let token = random_id();
        let sent = Instant::now();
        let reply: Vec<Value> = once_more_if_lost(|| {
            let mut conn = self.inner.rt.conn()?;
            let mut inv = TRACKER_LOCK.prepare();
            inv.key(&tkey)
                .key(&ckey)
                .key(&k.locks)
                .key(&k.since)
                .arg(task)
                .arg(chunk)
                .arg(&token)
                .arg(millis(ttl))
                .arg(&k.sweep);
            invoke(&inv, &mut *conn)
        })?;
        let what = format!("{} chunk `{chunk}`", self.label(task));
        match reply_str(reply.first()).as_deref() {
            Some("locked") => {}
            Some("busy") => {
                return Err(Error::Conflict {
                    what,
                    reason: "the chunk is locked by another owner".into(),
                })
            }
            Some("refused") => {
                let state = reply_str(reply.get(1)).unwrap_or_default();
                return Err(Error::Conflict {
                    what,
                    reason: format!(
                        "the task is {state}; chunks can be locked only until it is released"
                    ),
                });
            }
            _ => {
                return Err(Error::corrupt(
                    &k.locks,
                    "unexpected reply from tracker_lock",
                ))
            }
        }
        let target = LeaseTarget::Guarded {
            zset: k.locks.clone(),
            member: format!("{task}\n{chunk}"),
            hash: ckey,
            field: chunk.to_string(),
            token: token.clone(),
        };
        let lease = if renew {
            self.inner.rt.lease(what, target, ttl, sent)
        } else {
            self.inner.rt.lease_unrenewed(what, target, ttl, sent)
        };
        Ok(ChunkLock {
            tracker: self.clone(),
            task: task.to_string(),
            chunk: chunk.to_string(),
            token,
            lease: Some(lease),
        })
    }

    /// Unlocks chunk `chunk` of task `task` whoever holds it (the seed's
    /// `unlock`, for a server that did not keep its guard). An unknown
    /// chunk gives [`Unlocked::NotLocked`].
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let tracker = swarm.tracker("ogg")?;
    /// assert_eq!(tracker.unlock("stream-1", "nope")?, redswarm::Unlocked::NotLocked);
    /// # Ok(()) }
    /// ```
    pub fn unlock(&self, task: &str, chunk: &str) -> Result<Unlocked> {
        crate::keys::validate_name("tracker chunk name", chunk)?;
        self.unlock_as(task, chunk, "")
    }

    fn unlock_as(&self, task: &str, chunk: &str, token: &str) -> Result<Unlocked> {
        let k = &self.inner.keys;
        let tkey = k.task(task)?;
        let ckey = k.chunks(task)?;
        let reply: String = once_more_if_lost(|| {
            let mut conn = self.inner.rt.conn()?;
            let mut inv = TRACKER_UNLOCK.prepare();
            inv.key(&tkey)
                .key(&ckey)
                .key(&k.locks)
                .key(&k.since)
                .key(&k.released)
                .arg(task)
                .arg(chunk)
                .arg(token)
                .arg(&k.wake);
            invoke(&inv, &mut *conn)
        })?;
        Ok(match reply.as_str() {
            "unlocked" => Unlocked::Unlocked,
            "released" => Unlocked::Released,
            "not_owner" => Unlocked::LockedByOther,
            _ => Unlocked::NotLocked,
        })
    }

    /// Closes task `task` (the seed's `close`): no more chunks are expected
    /// (a chunk locked later is still waited for, until the release).
    /// `info` is handed to the consumer. Fails with [`Error::TooLarge`]
    /// for an info over [`TrackerOptions::max_info_bytes`] and
    /// [`Error::InvalidInput`] for zero attempts or a zero timeout. Not
    /// retried after a lost reply: asking again answers
    /// [`Closed::AlreadyClosed`] if the first call went through.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// use std::time::Duration;
    /// let tracker = swarm.tracker("ogg")?;
    /// let opts = redswarm::CloseOptions { attempts: 3, timeout: Duration::from_secs(60) };
    /// match tracker.close("stream-1", &serde_json::json!({"chunks": 12}), opts)? {
    ///     redswarm::Closed::Released => log::info!("released now"),
    ///     redswarm::Closed::Waiting { chunks } => log::info!("{chunks} chunks still locked"),
    ///     redswarm::Closed::AlreadyClosed { state } => log::info!("already {state:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn close<T: Serialize + ?Sized>(
        &self,
        task: &str,
        info: &T,
        opts: CloseOptions,
    ) -> Result<Closed> {
        if opts.attempts == 0 {
            return Err(Error::invalid(
                "tracker close attempts",
                "must be at least 1",
            ));
        }
        if opts.timeout < Duration::from_millis(1) {
            return Err(Error::invalid(
                "tracker close timeout",
                "must be at least 1 ms",
            ));
        }
        check_ttl("tracker close timeout", opts.timeout)?;
        let info = serde_json::to_vec(info)?;
        if info.len() > self.inner.opts.max_info_bytes {
            return Err(Error::TooLarge {
                what: "tracker task info",
                size: info.len(),
                limit: self.inner.opts.max_info_bytes,
            });
        }
        let k = &self.inner.keys;
        let tkey = k.task(task)?;
        let ckey = k.chunks(task)?;
        let mut conn = self.inner.rt.conn()?;
        let mut inv = TRACKER_CLOSE.prepare();
        inv.key(&tkey)
            .key(&ckey)
            .key(&k.released)
            .arg(task)
            .arg(&info)
            .arg(opts.attempts)
            .arg(millis(opts.timeout))
            .arg(&k.wake);
        let reply: Vec<Value> = invoke(&inv, &mut *conn)?;
        match reply_str(reply.first()).as_deref() {
            Some("released") => Ok(Closed::Released),
            Some("waiting") => Ok(Closed::Waiting {
                chunks: reply_u64(reply.get(1)).unwrap_or(0),
            }),
            Some("already") => {
                let s = reply_str(reply.get(1)).unwrap_or_default();
                let state = TrackerTaskState::parse(&s)
                    .ok_or_else(|| Error::corrupt(&tkey, format!("state `{s}`")))?;
                Ok(Closed::AlreadyClosed { state })
            }
            _ => Err(Error::corrupt(&tkey, "unexpected reply from tracker_close")),
        }
    }

    /// A blocking consumer of released tasks (the seed's `fetchReleased`),
    /// whose info deserializes as `T`.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let tracker = swarm.tracker("ogg")?;
    /// let mut consumer = tracker.released::<serde_json::Value>()?;
    /// if let Some(task) = consumer.next_timeout(std::time::Duration::from_secs(5))? {
    ///     // ... merge the chunks of task.task() ...
    ///     task.done(Ok(()))?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn released<T: DeserializeOwned>(&self) -> Result<Consumer<T>> {
        // Subscribed (and confirmed) before the first claim, so a release
        // between a claim that found nothing and the wait wakes us.
        let sub = self.inner.rt.subscribe(&self.inner.keys.wake)?;
        Ok(Consumer {
            tracker: self.clone(),
            sub,
            _t: std::marker::PhantomData,
        })
    }

    /// Runs `handler` on `threads` threads for every released task and
    /// reports its result ([`Released::done`]; a panic counts as an error).
    /// Stops when the returned [`Consuming`] is stopped or dropped.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let tracker = swarm.tracker("ogg")?;
    /// let consuming = tracker.consume(2, |task: &redswarm::Released<serde_json::Value>| {
    ///     log::info!("merging {}", task.task());
    ///     Ok(())
    /// })?;
    /// # consuming.stop();
    /// # Ok(()) }
    /// ```
    pub fn consume<T, F>(&self, threads: usize, handler: F) -> Result<Consuming>
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(&Released<T>) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        let pool = ThreadPool::new(&format!("tracker-{}", self.inner.name), threads, threads)?;
        // Never sent on: dropping the sender (stop) wakes every thread.
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let handler = Arc::new(handler);
        for _ in 0..threads {
            let mut consumer = self.released::<T>()?;
            let stop = stop_rx.clone();
            let handler = handler.clone();
            pool.execute(move || loop {
                let task = match consumer.next_until(Duration::MAX, Some(&stop)) {
                    Ok(Some(task)) => task,
                    Ok(None) | Err(Error::ShutDown) => return,
                    Err(e) => {
                        log::warn!("tracker consumer: {e}");
                        // Back off; stop still ends the wait at once.
                        if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                            stop.recv_timeout(CONSUME_BACKOFF)
                        {
                            return;
                        }
                        continue;
                    }
                };
                let result = catch_unwind(AssertUnwindSafe(|| handler(&task)))
                    .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(p.as_ref()))));
                let label = task.task().to_string();
                if let Err(e) = task.done(result) {
                    log::warn!("tracker task `{label}`: report refused: {e}");
                }
            })?;
        }
        Ok(Consuming {
            pool,
            stop: Some(stop_tx),
        })
    }

    /// The seed's `stats()`.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let s = swarm.tracker("ogg")?.stats()?;
    /// log::info!("{} completed, {} failed", s.completed, s.failed);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<TrackerStats> {
        let k = &self.inner.keys;
        let mut conn = self.inner.rt.conn()?;
        let (released, processing, locked, counters): (u64, u64, u64, Vec<Option<String>>) =
            redis::pipe()
                .atomic()
                .cmd("LLEN")
                .arg(&k.released)
                .cmd("ZCARD")
                .arg(&k.processing)
                .cmd("ZCARD")
                .arg(&k.locks)
                .cmd("HMGET")
                .arg(&k.stats)
                .arg("completed")
                .arg("failed")
                .query(&mut *conn)?;
        let counter = |i: usize| -> Result<u64> {
            match counters.get(i).cloned().flatten() {
                None => Ok(0),
                Some(v) => v.parse().map_err(|_| {
                    Error::corrupt(&k.stats, format!("counter `{v}` is not a number"))
                }),
            }
        };
        Ok(TrackerStats {
            completed: counter(0)?,
            released,
            locked,
            failed: counter(1)?,
            processing,
        })
    }

    /// Task `task` as it is now; `None` when unknown (or its retention
    /// after completion ran out).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert!(swarm.tracker("ogg")?.get("never-seen")?.is_none());
    /// # Ok(()) }
    /// ```
    pub fn get(&self, task: &str) -> Result<Option<TrackedTask>> {
        let k = &self.inner.keys;
        let tkey = k.task(task)?;
        let ckey = k.chunks(task)?;
        let mut conn = self.inner.rt.conn()?;
        let (fields, chunks): (HashMap<String, String>, u64) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(&tkey)
            .cmd("HLEN")
            .arg(&ckey)
            .query(&mut *conn)
            .map_err(|e| {
                // A wrong-typed record (or chunks hash) is not ours to read.
                if e.to_string().contains("WRONGTYPE") {
                    Error::corrupt(&tkey, "the task record or its chunks hash is not a hash")
                } else {
                    e.into()
                }
            })?;
        if fields.is_empty() {
            return Ok(None);
        }
        let state_s = fields.get("state").map(String::as_str).unwrap_or("");
        let state = TrackerTaskState::parse(state_s)
            .ok_or_else(|| Error::corrupt(&tkey, format!("state `{state_s}`")))?;
        let num = |f: &str| -> Result<Option<u64>> {
            match fields.get(f) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::corrupt(&tkey, format!("`{f}` is not a number: `{v}`"))),
            }
        };
        let small = |f: &str| -> Result<u32> {
            Ok(u32::try_from(num(f)?.unwrap_or(0)).unwrap_or(u32::MAX))
        };
        Ok(Some(TrackedTask {
            state,
            chunks_locked: chunks,
            attempt: small("attempt")?,
            attempts: small("attempts")?,
            errors: small("errors")?,
            last_error: fields.get("error").cloned(),
            info_json: fields.get("info").cloned(),
            fencing_token: num("fence")?,
            created_ms: num("created")?,
            closed_ms: num("closed")?,
            released_ms: num("released")?,
            started_ms: num("started")?,
            finished_ms: num("finished")?,
        }))
    }

    /// Times out, now, every chunk lock taken more than `age` ago, renewed
    /// or not (the seed's `timeoutLocks(age)`; the background sweep does
    /// this by itself for locks whose lease lapsed). Returns how many.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let n = swarm.tracker("ogg")?.timeout_locks(std::time::Duration::from_secs(60))?;
    /// # Ok(()) }
    /// ```
    pub fn timeout_locks(&self, age: Duration) -> Result<u64> {
        check_ttl("tracker lock age", age)?;
        let mut total = 0;
        loop {
            let s = sweep(
                &self.inner.rt,
                &self.inner.keys,
                self.inner.opts.retention,
                "locks",
                Some(age),
            )?;
            total += s.locks;
            if !s.more {
                return Ok(total);
            }
        }
    }

    /// Times out, now, every attempt past its processing deadline (the
    /// seed's `timeoutProcessing`; the background sweep does this by
    /// itself). Returns how many.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let n = swarm.tracker("ogg")?.timeout_processing()?;
    /// # Ok(()) }
    /// ```
    pub fn timeout_processing(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let s = sweep(
                &self.inner.rt,
                &self.inner.keys,
                self.inner.opts.retention,
                "processing",
                None,
            )?;
            total += s.processing;
            if !s.more {
                return Ok(total);
            }
        }
    }
}

/// A chunk lock held by this process; unlocks when dropped.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let chunk = swarm.tracker("ogg")?.lock("stream-1", "chunk-0")?;
/// assert_eq!(chunk.chunk(), "chunk-0");
/// # Ok(()) }
/// ```
pub struct ChunkLock {
    tracker: Tracker,
    task: String,
    chunk: String,
    token: String,
    lease: Option<Lease>,
}

impl std::fmt::Debug for ChunkLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkLock")
            .field("tracker", &self.tracker.inner.name)
            .field("task", &self.task)
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl ChunkLock {
    /// The task.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.tracker("ogg")?.lock("s", "c")?.task(), "s");
    /// # Ok(()) }
    /// ```
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The chunk.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.tracker("ogg")?.lock("s", "c")?.chunk(), "c");
    /// # Ok(()) }
    /// ```
    pub fn chunk(&self) -> &str {
        &self.chunk
    }

    /// True once the lock must be considered gone (not renewed in time, or
    /// a renewal found it timed out).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert!(!swarm.tracker("ogg")?.lock("s", "c")?.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.is_lost())
    }

    /// Receives one notice when the lock is lost.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let chunk = swarm.tracker("ogg")?.lock("s", "c")?;
    /// assert!(chunk.lost().try_recv().is_err());
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> Receiver<LeaseLost> {
        crate::lease::loss_channel(self.lease.as_ref(), || {
            format!("{} chunk `{}`", self.tracker.label(&self.task), self.chunk)
        })
    }

    /// Unlocks the chunk (the seed's `unlock`); the closed task's last
    /// chunk releases it ([`Unlocked::Released`]).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let chunk = swarm.tracker("ogg")?.lock("s", "c")?;
    /// assert_eq!(chunk.unlock()?, redswarm::Unlocked::Unlocked);
    /// # Ok(()) }
    /// ```
    pub fn unlock(mut self) -> Result<Unlocked> {
        self.unlock_now()
    }

    fn unlock_now(&mut self) -> Result<Unlocked> {
        let Some(lease) = self.lease.take() else {
            return Ok(Unlocked::NotLocked);
        };
        lease.ending();
        let r = self.tracker.unlock_as(&self.task, &self.chunk, &self.token);
        drop(lease);
        r
    }
}

impl Drop for ChunkLock {
    fn drop(&mut self) {
        match self.unlock_now() {
            Ok(_) => {}
            Err(Error::ShutDown) => log::debug!(
                "{} chunk `{}`: handle shut down; the lock times out by itself",
                self.tracker.label(&self.task),
                self.chunk
            ),
            Err(e) => log::warn!(
                "{} chunk `{}`: unlock on drop failed ({e}); the lock times out by itself",
                self.tracker.label(&self.task),
                self.chunk
            ),
        }
    }
}

/// A blocking consumer of released tasks; see [`Tracker::released`]. As
/// an iterator it waits forever for each task.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for task in swarm.tracker("ogg")?.released::<String>()? {
///     let task = task?;
///     task.done(Ok(()))?;
/// }
/// # Ok(()) }
/// ```
pub struct Consumer<T> {
    tracker: Tracker,
    sub: crate::Subscription,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tracker", &self.tracker.inner.name)
            .finish()
    }
}

impl<T: DeserializeOwned> Consumer<T> {
    /// The next released task, waiting up to `wait` (`Duration::MAX`:
    /// forever); `None` when none came in time.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let mut c = swarm.tracker("ogg")?.released::<String>()?;
    /// let next = c.next_timeout(std::time::Duration::from_millis(10))?;
    /// # Ok(()) }
    /// ```
    pub fn next_timeout(&mut self, wait: Duration) -> Result<Option<Released<T>>> {
        self.next_until(wait, None)
    }

    /// [`Consumer::next_timeout`] that also returns `None` as soon as
    /// `stop` disconnects (or receives).
    fn next_until(
        &mut self,
        wait: Duration,
        stop: Option<&Receiver<()>>,
    ) -> Result<Option<Released<T>>> {
        let deadline = Deadline::after(wait);
        let recheck = self.tracker.inner.rt.config().wait_recheck();
        loop {
            match self.claim() {
                Ok(Some(task)) => return Ok(Some(task)),
                Ok(None) => {}
                Err(e) if e.is_unavailable() => {
                    log::debug!("tracker `{}`: claim failed: {e}", self.tracker.inner.name)
                }
                Err(e) => return Err(e),
            }
            if deadline.has_passed() {
                return Ok(None);
            }
            let nap = deadline.nap(recheck);
            match stop {
                // Any message or reconnect is a reason to claim again.
                None => wait_for_release(&self.sub, nap, None),
                Some(stop) => select! {
                    recv(stop) -> _ => return Ok(None),
                    recv(self.sub.receiver()) -> _ => {}
                    default(nap) => {}
                },
            }
        }
    }

    fn claim(&self) -> Result<Option<Released<T>>> {
        let t = &self.tracker.inner;
        let k = &t.keys;
        let sent = Instant::now();
        let reply: Vec<Value> = {
            let mut conn = t.rt.conn()?;
            let mut inv = TRACKER_CLAIM.prepare();
            inv.key(&k.released)
                .key(&k.processing)
                .arg(&k.task_prefix)
                .arg(t.rt.node_id())
                .arg(&k.sweep);
            invoke(&inv, &mut *conn)?
        };
        if reply_str(reply.first()).as_deref() != Some("claimed") {
            return Ok(None);
        }
        let bad = || Error::corrupt(&k.released, "unexpected reply from tracker_claim");
        let task = reply_str(reply.get(1)).ok_or_else(bad)?;
        let info = reply_str(reply.get(2)).unwrap_or_default();
        let attempt = reply_u64(reply.get(3)).ok_or_else(bad)?;
        let attempts = reply_u64(reply.get(4)).ok_or_else(bad)?;
        let fence = reply_u64(reply.get(5)).ok_or_else(bad)?;
        let timeout = Duration::from_millis(reply_u64(reply.get(6)).ok_or_else(bad)?);
        let lease = t.rt.lease_unrenewed(
            format!("{} (attempt {attempt})", self.tracker.label(&task)),
            LeaseTarget::Member {
                zset: k.processing.clone(),
                member: task.clone(),
            },
            timeout,
            sent,
        );
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        let info = if info.is_empty() { "null" } else { &info };
        match serde_json::from_str::<T>(info) {
            Ok(info) => Ok(Some(Released {
                tracker: self.tracker.clone(),
                task,
                info,
                attempt,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                fence,
                lease,
            })),
            Err(e) => {
                // We hold the attempt but cannot read its info: report it
                // failed at once rather than sit on it until the timeout.
                let why = format!("the task's info is not the expected JSON: {e}");
                lease.ending();
                if let Err(report) = report(&self.tracker, &task, fence, attempt, Err(why.clone()))
                {
                    log::warn!("tracker task `{task}`: could not report: {report}");
                }
                Err(Error::corrupt(k.task(&task).unwrap_or_default(), why))
            }
        }
    }
}

impl<T: DeserializeOwned> Iterator for Consumer<T> {
    type Item = Result<Released<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_timeout(Duration::MAX) {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(Error::ShutDown) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// A released task handed to this consumer; report with
/// [`Released::done`]. Dropping it without reporting leaves the task to its
/// processing timeout (then another attempt, or failed).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let mut c = swarm.tracker("ogg")?.released::<String>()?;
/// if let Some(t) = c.next_timeout(std::time::Duration::from_secs(1))? {
///     log::info!("{} attempt {}/{} fence {}", t.task(), t.attempt(), t.attempts(), t.fencing_token());
///     t.done(Err("merge failed".into()))?;
/// }
/// # Ok(()) }
/// ```
pub struct Released<T> {
    tracker: Tracker,
    task: String,
    info: T,
    attempt: u32,
    attempts: u32,
    fence: u64,
    lease: Lease,
}

impl<T> std::fmt::Debug for Released<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Released")
            .field("task", &self.task)
            .field("attempt", &self.attempt)
            .field("attempts", &self.attempts)
            .field("fencing_token", &self.fence)
            .finish()
    }
}

impl<T> Released<T> {
    /// The task's name.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// log::info!("{}", t.task());
    /// # Ok(()) }
    /// ```
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The info given to `close`.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// let info: &String = t.info();
    /// # Ok(()) }
    /// ```
    pub fn info(&self) -> &T {
        &self.info
    }

    /// This attempt's number (1 = first).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// assert!(t.attempt() >= 1);
    /// # Ok(()) }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed in all.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// assert!(t.attempt() <= t.attempts());
    /// # Ok(()) }
    /// ```
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// This attempt's fencing token: higher for every later attempt of the
    /// task; what a merged result's store should check.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// assert!(t.fencing_token() > 0);
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// True once this attempt's processing timeout has passed (by the local
    /// clock, with a safety margin): stop, another attempt may run.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// assert!(!t.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Reports this attempt (the seed's `completed(err)`): `Ok(())`
    /// completes the task; `Err(reason)` gives it another attempt while any
    /// is left, else fails it. A stale attempt (timed out, the task handed
    /// to another consumer) is refused with [`Error::LeaseLost`].
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let t = swarm.tracker("ogg")?.released::<String>()?.next_timeout(std::time::Duration::ZERO)?.unwrap();
    /// assert_eq!(t.done(Ok(()))?, redswarm::DoneOutcome::Completed);
    /// # Ok(()) }
    /// ```
    pub fn done(self, result: std::result::Result<(), String>) -> Result<DoneOutcome> {
        self.lease.ending();
        report(&self.tracker, &self.task, self.fence, self.attempt, result)
    }
}

/// Reports attempt `attempt` (fencing token `fence`) of `task`.
fn report(
    tracker: &Tracker,
    task: &str,
    fence: u64,
    attempt: u32,
    result: std::result::Result<(), String>,
) -> Result<DoneOutcome> {
    let t = &tracker.inner;
    let k = &t.keys;
    let tkey = k.task(task)?;
    let (ok, reason) = match &result {
        Ok(()) => ("1", ""),
        Err(r) => ("0", r.as_str()),
    };
    // Idempotent for the token: a retry after a lost reply gets the answer
    // the first call's report got.
    let reply: Vec<Value> = once_more_if_lost(|| {
        let mut conn = t.rt.conn()?;
        let mut inv = TRACKER_DONE.prepare();
        inv.key(&tkey)
            .key(&k.processing)
            .key(&k.released)
            .key(&k.stats)
            .arg(task)
            .arg(fence.to_string())
            .arg(ok)
            .arg(reason)
            .arg(millis(t.opts.retention))
            .arg(&k.wake);
        invoke(&inv, &mut *conn)
    })?;
    match reply_str(reply.first()).as_deref() {
        Some("completed") => Ok(DoneOutcome::Completed),
        Some("released") => Ok(DoneOutcome::Retrying),
        Some("failed") => Ok(DoneOutcome::Failed),
        Some("stale") => Err(Error::LeaseLost {
            what: format!("{} (attempt {attempt})", tracker.label(task)),
            reason: format!(
                "fencing token {fence} is stale: the attempt timed out (the task is {} now)",
                reply_str(reply.get(1)).unwrap_or_default()
            ),
        }),
        _ => Err(Error::corrupt(tkey, "unexpected reply from tracker_done")),
    }
}

/// Consumer threads started by [`Tracker::consume`]; stopped by
/// [`Consuming::stop`] or on drop (a task in hand is finished first).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let c = swarm.tracker("ogg")?.consume(1, |_t: &redswarm::Released<String>| Ok(()))?;
/// c.stop();
/// # Ok(()) }
/// ```
pub struct Consuming {
    pool: ThreadPool,
    /// Dropped to stop the threads (it disconnects their stop channel).
    stop: Option<Sender<()>>,
}

impl std::fmt::Debug for Consuming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consuming")
            .field("threads", &self.pool.size())
            .finish()
    }
}

impl Consuming {
    /// Stops taking tasks, finishes the ones in hand and joins the threads.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// swarm.tracker("ogg")?.consume(1, |_t: &redswarm::Released<String>| Ok(()))?.stop();
    /// # Ok(()) }
    /// ```
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Consuming {
    fn drop(&mut self) {
        self.stop.take();
        self.pool.join();
    }
}

/// What one sweep script call did.
struct Swept {
    locks: u64,
    processing: u64,
    next: Option<Duration>,
    more: bool,
}

fn sweep(
    rt: &Runtime,
    k: &TrackerKeys,
    retention: Duration,
    what: &str,
    age: Option<Duration>,
) -> Result<Swept> {
    let mut conn = rt.conn()?;
    let mut inv = TRACKER_SWEEP.prepare();
    inv.key(&k.locks)
        .key(&k.since)
        .key(&k.processing)
        .key(&k.released)
        .key(&k.stats)
        .arg(&k.task_prefix)
        .arg(&k.chunks_prefix)
        .arg(SWEEP_BATCH)
        .arg(millis(retention))
        .arg(&k.wake)
        .arg(
            age.map(|a| crate::util::whole_millis(a).to_string())
                .unwrap_or_default(),
        )
        .arg(what);
    let reply: Vec<Value> = invoke(&inv, &mut *conn)?;
    let next = reply_i64(reply.get(2)).unwrap_or(-1);
    Ok(Swept {
        locks: reply_u64(reply.first()).unwrap_or(0),
        processing: reply_u64(reply.get(1)).unwrap_or(0),
        next: u64::try_from(next).ok().map(Duration::from_millis),
        more: reply_u64(reply.get(3)) == Some(1),
    })
}

/// Per handle: the running sweeper of each tracker name, so asking for
/// the same tracker many times starts one thread, not many.
#[derive(Default)]
struct Sweepers {
    running: parking_lot::Mutex<HashMap<String, Weak<Sender<()>>>>,
}

impl Sweepers {
    /// The stop sender of `keys`' sweeper, starting one if none runs. The
    /// first tracker's retention applies to the attempts its sweep fails.
    fn get_or_start(
        &self,
        rt: &Runtime,
        keys: &TrackerKeys,
        retention: Duration,
    ) -> Result<Arc<Sender<()>>> {
        let mut running = self.running.lock();
        if let Some(stop) = running.get(&keys.base).and_then(Weak::upgrade) {
            return Ok(stop);
        }
        running.retain(|_, w| w.strong_count() > 0);
        let (tx, rx) = bounded::<()>(0);
        start_sweeper(rt.clone(), keys.clone(), retention, rx)?;
        let tx = Arc::new(tx);
        running.insert(keys.base.clone(), Arc::downgrade(&tx));
        Ok(tx)
    }
}

/// Starts the tracker's sweeping thread: it sweeps, then sleeps until the
/// earliest deadline left, a message on the sweep channel (an earlier
/// deadline was added), a reconnect, or `wait_recheck`; it ends when `stop`
/// disconnects (the last [`Tracker`] clone dropped) or the handle shuts down.
fn start_sweeper(
    rt: Runtime,
    keys: TrackerKeys,
    retention: Duration,
    stop: Receiver<()>,
) -> Result<()> {
    let sub = rt.subscribe(&keys.sweep)?;
    let name = keys.base.clone();
    std::thread::Builder::new()
        .name("redswarm-tracker-sweep".into())
        .spawn(move || loop {
            if rt.is_shut_down() {
                return;
            }
            let recheck = rt.config().wait_recheck();
            let nap = match sweep(&rt, &keys, retention, "both", None) {
                Ok(s) => {
                    if s.locks + s.processing > 0 {
                        log::info!(
                            "tracker {name}: timed out {} chunk locks and {} attempts",
                            s.locks,
                            s.processing
                        );
                    }
                    if s.more {
                        continue;
                    }
                    // A deadline reached counts from the next millisecond.
                    s.next.map_or(recheck, |n| {
                        n.saturating_add(Duration::from_millis(1)).min(recheck)
                    })
                }
                Err(Error::ShutDown) => return,
                Err(e) => {
                    log::warn!("tracker {name}: sweep failed: {e}");
                    recheck.min(Duration::from_secs(1))
                }
            };
            select! {
                recv(stop) -> _ => return,
                recv(sub.receiver()) -> m => if m.is_err() { return },
                default(nap) => {}
            }
        })
        .map_err(|e| Error::invalid("tracker sweep thread", e.to_string()))?;
    Ok(())
}
