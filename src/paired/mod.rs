//! Paired workers (the seed's redis-paired-worker): two or more processes
//! race for the same task; one wins and does it, the others stand by, learn
//! when it succeeded, and take over when it fails or dies.
//!
//! How it works, per task:
//! - A participant subscribes to the task's events channel (confirmed by
//!   Redis), then runs one script (`paired_join.lua`) that either creates
//!   the task record and grants it attempt 1 ([`PairedOutcome::Won`]),
//!   hands it the task because the last attempt failed or its holder's lease
//!   lapsed ([`PairedOutcome::TookOver`]), reports the task finished
//!   ([`PairedOutcome::DoneByPeer`], [`PairedOutcome::Failed`]), or tells it
//!   how long the holder's lease has left.
//! - The holder's lease is renewed by the heartbeat while it works, so a
//!   long task is never taken over from a live worker (the seed judged a
//!   fixed 100 ms `lockTimeout` by the client's clock). If the holder dies,
//!   the lease lapses in Redis and the backups take over.
//! - The holder reports with [`PairedJob::succeeded`] or
//!   [`PairedJob::failed`] (one script, `paired_report.lua`, checking its
//!   token and fencing token); the script publishes the new state, which
//!   wakes every backup at once. Backups otherwise sleep until the holder's
//!   remaining lease as read from Redis, bounded by `wait_recheck`, and
//!   re-check after every pub/sub reconnect: no polling.
//! - A finished task's record stays for the retention (default 5 min), so a
//!   backup that arrives late learns the outcome instead of running the task
//!   again. After that, the same id is a new task.
//! - Every attempt carries a fencing token that grows across attempts (and
//!   across a Redis restart without persistence); a holder that was paused
//!   past its lease has its late report rejected.
//!
//! The seed's settings map as follows: `lockTimeout` → [`Paired::lease`]
//! (renewed while the worker lives, so it only bounds how fast a *dead*
//! worker is replaced); `firstAttemptInterval` / `otherAttemptInterval` →
//! not needed (backups are woken, the fallback re-check is
//! [`Config::wait_recheck`](crate::Config::wait_recheck)); `hlock` →
//! [`Redswarm::paired_in_hash`] / [`Paired::hash_field`].

mod dispatch;
mod job;
mod standby;

use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use redis::{ScriptInvocation, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::PairedKeys;
use crate::runtime::Runtime;
use crate::scripts::{invoke, lua_script, LuaScript};
use crate::util::millis;

pub(crate) use dispatch::PairedRuntime;
pub use job::PairedJob;

use dispatch::Deliver;
use standby::Standby;

lua_script!(PAIRED_JOIN, "paired_join.lua");
lua_script!(pub(super) PAIRED_REPORT, "paired_report.lua");

/// What a participant of a paired task ends up with.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use redswarm::PairedOutcome;
/// match swarm.paired("push:42", &"hello".to_string())? {
///     PairedOutcome::Won(job) | PairedOutcome::TookOver(job) => {
///         log::info!("attempt {} of {}", job.attempt(), job.payload());
///         job.succeeded()?;
///     }
///     PairedOutcome::DoneByPeer { attempt } => log::info!("a peer did it (attempt {attempt})"),
///     PairedOutcome::Failed { attempts, reason } => log::warn!("{attempts} attempts failed: {reason}"),
/// }
/// # Ok(()) }
/// ```
pub enum PairedOutcome<T> {
    /// This participant won the race (attempt 1): do the work, then report.
    Won(PairedJob<T>),
    /// Another participant did the task successfully.
    DoneByPeer {
        /// The attempt that succeeded.
        attempt: u32,
    },
    /// The last attempt failed or its worker died: the task is this
    /// participant's now ([`PairedJob::attempt`] says which attempt).
    TookOver(PairedJob<T>),
    /// Every attempt failed and the attempts are used up.
    Failed {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure's reason.
        reason: String,
    },
}

// By hand: a job's Debug does not show its payload, so T need not be Debug.
impl<T> std::fmt::Debug for PairedOutcome<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairedOutcome::Won(job) => f.debug_tuple("Won").field(job).finish(),
            PairedOutcome::DoneByPeer { attempt } => f
                .debug_struct("DoneByPeer")
                .field("attempt", attempt)
                .finish(),
            PairedOutcome::TookOver(job) => f.debug_tuple("TookOver").field(job).finish(),
            PairedOutcome::Failed { attempts, reason } => f
                .debug_struct("Failed")
                .field("attempts", attempts)
                .field("reason", reason)
                .finish(),
        }
    }
}

/// What [`PairedTask::spawn`] delivers.
///
/// ```
/// let r = redswarm::PairedRun::DoneByPeer { attempt: 1 };
/// assert!(matches!(r, redswarm::PairedRun::DoneByPeer { .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairedRun {
    /// This participant ran the work (it won or took over) and its result
    /// was reported and accepted.
    Ran {
        /// Which attempt it was (1 = won the race).
        attempt: u32,
        /// Whether it was a takeover.
        took_over: bool,
        /// What the work returned (a panic counts as `Err`).
        result: std::result::Result<(), String>,
    },
    /// Another participant did the task successfully.
    DoneByPeer {
        /// The attempt that succeeded.
        attempt: u32,
    },
    /// Every attempt failed and the attempts are used up.
    Failed {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure's reason.
        reason: String,
    },
}

/// Paired-task settings; start with [`Redswarm::paired_options`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let paired = swarm
///     .paired_options()
///     .lease(Duration::from_secs(5))        // the seed's lockTimeout, but renewed
///     .retention(Duration::from_secs(600))  // late backups still learn the outcome
///     .max_attempts(3);                     // winner + two takeovers
/// let outcome = paired.task("push:42")?.run(&"payload".to_string())?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Paired {
    swarm: Runtime,
    lease: Duration,
    retention: Duration,
    max_attempts: u32,
    wait: Duration,
    max_payload_bytes: usize,
}

impl Paired {
    pub(crate) fn new(swarm: &Runtime) -> Paired {
        Paired {
            lease: Duration::from_secs(10).max(swarm.config().min_renewable_ttl()),
            swarm: swarm.clone(),
            retention: Duration::from_secs(300),
            max_attempts: 2,
            wait: Duration::MAX,
            max_payload_bytes: 1 << 20,
        }
    }

    /// The holder's lease (default 10 s, at least three heartbeats; the
    /// seed's `lockTimeout`). The heartbeat renews it while the holder's
    /// process lives, so it only bounds how long backups wait after the
    /// holder *dies*.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let p = swarm.paired_options().lease(std::time::Duration::from_secs(3));
    /// # Ok(()) }
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a finished task's record (and so its outcome) stays in
    /// Redis (default 5 min). A participant arriving within it gets
    /// [`PairedOutcome::DoneByPeer`] or [`PairedOutcome::Failed`]; after it
    /// the same id starts a new task.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let p = swarm.paired_options().retention(std::time::Duration::from_secs(3600));
    /// # Ok(()) }
    /// ```
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How many attempts a task gets in all (default 2: the winner and one
    /// backup, as in the seed's pair). A failure report or a lapsed lease
    /// uses one up; after the last one the task ends as
    /// [`PairedOutcome::Failed`]. The value of the participant that creates
    /// the task applies. Until then a failed task waits for the next
    /// participant (its record does not expire).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let p = swarm.paired_options().max_attempts(3); // a three-way pair
    /// # Ok(()) }
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How long a backup stands by before giving up with
    /// [`Error::Timeout`] (default: until the task is finished or its
    /// own; `Duration::MAX` means the same).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let p = swarm.paired_options().wait_timeout(std::time::Duration::from_secs(60));
    /// # Ok(()) }
    /// ```
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Largest serialized payload accepted (default 1 MiB).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let p = swarm.paired_options().max_payload_bytes(64 * 1024);
    /// # Ok(()) }
    /// ```
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<()> {
        crate::util::check_ttl("paired lease", self.lease)?;
        crate::grant::validate_ttl(&self.swarm, self.lease, true)?;
        crate::util::check_ttl("paired retention", self.retention)?;
        if self.retention.is_zero() {
            return Err(Error::invalid("paired retention", "must be above zero"));
        }
        if self.max_attempts == 0 {
            return Err(Error::invalid("paired max attempts", "must be at least 1"));
        }
        if self.max_payload_bytes == 0 {
            return Err(Error::invalid(
                "paired max payload bytes",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The paired task `task_id` with these settings.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let task = swarm.paired_options().task("push:42")?;
    /// assert!(swarm.paired_options().task("").is_err());
    /// # Ok(()) }
    /// ```
    pub fn task(&self, task_id: &str) -> Result<PairedTask> {
        self.validate()?;
        Ok(PairedTask {
            keys: self.swarm.keys().paired(task_id)?,
            opts: self.clone(),
            id: task_id.to_string(),
            hash: None,
        })
    }

    /// The paired task kept as `field` of hash `hash` (the seed's `hlock`:
    /// the owner token is a field of a Redis hash, its lease a zset score).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let task = swarm.paired_options().hash_field("pushes", "user:7")?;
    /// # Ok(()) }
    /// ```
    pub fn hash_field(&self, hash: &str, field: &str) -> Result<PairedTask> {
        self.validate()?;
        Ok(PairedTask {
            keys: self.swarm.keys().paired_in_hash(hash, field)?,
            opts: self.clone(),
            id: field.to_string(),
            hash: Some(hash.to_string()),
        })
    }
}

/// One paired task with its settings: join it by blocking
/// ([`PairedTask::run`]), through a channel ([`PairedTask::receiver`]) or
/// with a closure run on the handle's thread pool ([`PairedTask::spawn`]).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let task = swarm.paired_options().task("push:42")?;
/// assert_eq!(task.id(), "push:42");
/// assert_eq!(task.hash(), None);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PairedTask {
    opts: Paired,
    keys: PairedKeys,
    id: String,
    hash: Option<String>,
}

/// What one join script call found.
enum Joined {
    Granted {
        took_over: bool,
        attempt: u32,
        fence: u64,
        payload: Vec<u8>,
    },
    Wait {
        left: Option<Duration>,
    },
    Done {
        attempt: u32,
    },
    Failed {
        attempts: u32,
        reason: String,
    },
}

impl PairedTask {
    /// The task id (for the hash form: the field).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.paired_options().hash_field("h", "f")?.id(), "f");
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The hash, for the hash form.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.paired_options().hash_field("h", "f")?.hash(), Some("h"));
    /// # Ok(()) }
    /// ```
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// Joins the task and blocks until this participant wins it, takes it
    /// over, or learns it is finished. `payload` is stored by the
    /// participant that creates the task; the job carries that stored
    /// payload (every participant should pass the same).
    ///
    /// Fails with [`Error::Timeout`] after [`Paired::wait_timeout`], and
    /// with [`Error::Partitioned`] when this node is cut off from Redis and
    /// from its peers while standing by (it does not take over blind).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let task = swarm.paired_options().task("push:42")?;
    /// if let redswarm::PairedOutcome::Won(job) = task.run(&7u32)? {
    ///     job.succeeded()?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn run<T>(&self, payload: &T) -> Result<PairedOutcome<T>>
    where
        T: Serialize + DeserializeOwned,
    {
        let mut standby = Standby::start(self.clone(), self.encode(payload)?)?;
        loop {
            if let Some(outcome) = standby.step()? {
                return Ok(outcome);
            }
            standby.sleep();
        }
    }

    /// Like [`PairedTask::run`], but returns at once with a channel that
    /// receives the outcome. Standing by does not take a thread of its own:
    /// one thread per handle waits for every task in flight. The first
    /// join happens before this returns; errors after the arguments were
    /// checked arrive on the channel.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let rx = swarm.paired_options().task("push:42")?.receiver(&7u32)?;
    /// crossbeam_channel::select! {
    ///     recv(rx) -> outcome => log::info!("{outcome:?}"),
    ///     default(std::time::Duration::from_secs(30)) => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub fn receiver<T>(&self, payload: &T) -> Result<Receiver<Result<PairedOutcome<T>>>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let (tx, rx) = bounded(1);
        self.deliver(
            payload,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        )?;
        Ok(rx)
    }

    /// Joins the task and, if this participant wins it or takes it over,
    /// runs `work` on the handle's thread pool (as many threads as the
    /// connection pool), reports its result (`Err` or a panic count as
    /// failure) and delivers a [`PairedRun`] on the returned channel. For
    /// callers with many tasks in flight: neither standing by nor the work
    /// takes the caller's thread. The pool queues up to 1,024 jobs; beyond
    /// that, handing work over waits for a free slot (the caller's thread
    /// for a won task, the waiting thread for a takeover).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let done = swarm.paired_options().task("push:42")?.spawn(&7u32, |job| {
    ///     log::info!("pushing {} (attempt {})", job.payload(), job.attempt());
    ///     Ok(())
    /// })?;
    /// let run = done.recv().map_err(|_| redswarm::Error::ShutDown)??;
    /// # Ok(()) }
    /// ```
    pub fn spawn<T, F>(&self, payload: &T, work: F) -> Result<Receiver<Result<PairedRun>>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&PairedJob<T>) -> std::result::Result<(), String> + Send + 'static,
    {
        let pool = self
            .swarm()
            .feature_state::<PairedRuntime>()
            .pool(self.swarm())?;
        let (tx, rx) = bounded(1);
        self.deliver(
            payload,
            Box::new(move |outcome| match outcome {
                Ok(PairedOutcome::Won(job) | PairedOutcome::TookOver(job)) => {
                    let reply = tx.clone();
                    let queued = pool.execute(move || dispatch::run_work(job, work, reply));
                    if let Err(e) = queued {
                        // The job went down with the closure: it reported
                        // the attempt failed on drop.
                        let _ = tx.send(Err(e));
                    }
                }
                Ok(PairedOutcome::DoneByPeer { attempt }) => {
                    let _ = tx.send(Ok(PairedRun::DoneByPeer { attempt }));
                }
                Ok(PairedOutcome::Failed { attempts, reason }) => {
                    let _ = tx.send(Ok(PairedRun::Failed { attempts, reason }));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }),
        )?;
        Ok(rx)
    }

    /// First join here; if it must stand by, the handle's waiting thread
    /// takes over and calls `deliver` when the outcome is known.
    fn deliver<T>(&self, payload: &T, deliver: Deliver<T>) -> Result<()>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut standby = Standby::start(self.clone(), self.encode(payload)?)?;
        match standby.step() {
            Ok(Some(outcome)) => deliver(Ok(outcome)),
            Ok(None) => self
                .swarm()
                .feature_state::<PairedRuntime>()
                .add(standby, deliver),
            Err(e) => deliver(Err(e)),
        }
        Ok(())
    }

    fn swarm(&self) -> &Runtime {
        &self.opts.swarm
    }

    /// "paired task `id`" or "paired task `field` of hash `h`", for errors
    /// and logs.
    fn label(&self) -> String {
        match &self.hash {
            Some(h) => format!("paired task `{}` of hash `{h}`", self.id),
            None => format!("paired task `{}`", self.id),
        }
    }

    fn encode<T: Serialize>(&self, payload: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(payload)?;
        if bytes.len() > self.opts.max_payload_bytes {
            return Err(Error::TooLarge {
                what: "paired task payload",
                size: bytes.len(),
                limit: self.opts.max_payload_bytes,
            });
        }
        Ok(bytes)
    }

    /// A script invocation with this task's keys and the mode arguments
    /// (`ARGV[1]` mode, `ARGV[2]` field) every paired script starts with.
    fn prepare<'a>(&self, script: &'a LuaScript) -> ScriptInvocation<'a> {
        let mut inv = script.prepare();
        inv.key(&self.keys.record)
            .key(&self.keys.fence)
            .key(&self.keys.owner);
        if let Some(leases) = &self.keys.leases {
            inv.key(leases);
        }
        match &self.keys.field {
            Some(field) => inv.arg("field").arg(field),
            None => inv.arg("key").arg(""),
        };
        inv
    }

    /// One join script call with our `token` (the same on every retry, so
    /// a lost reply's grant is handed back, not waited on).
    fn join(&self, token: &str, payload: &[u8]) -> Result<Joined> {
        let mut conn = self.swarm().conn()?;
        let mut inv = self.prepare(&PAIRED_JOIN);
        inv.arg(token)
            .arg(millis(self.opts.lease))
            .arg(self.opts.max_attempts)
            .arg(payload)
            .arg(self.swarm().node_id())
            .arg(millis(self.opts.retention))
            .arg(&self.keys.events);
        let reply: Vec<Value> = invoke(&inv, &mut *conn)?;
        let r = Reply::new(&self.keys.record, "join", &reply);
        match r.text(0)?.as_str() {
            tag @ ("won" | "took") => Ok(Joined::Granted {
                took_over: tag == "took",
                attempt: r.number(1)?,
                fence: r.number(2)?,
                payload: r.bytes(3)?,
            }),
            "wait" => Ok(Joined::Wait {
                left: u64::try_from(r.number::<i64>(1)?)
                    .ok()
                    .map(Duration::from_millis),
            }),
            "done" => Ok(Joined::Done {
                attempt: r.number(1)?,
            }),
            "failed" => Ok(Joined::Failed {
                attempts: r.number(1)?,
                reason: r.text(2)?,
            }),
            "corrupt" => Err(Error::corrupt(r.text(1)?, r.text(2)?)),
            other => Err(r.bad(&format!("unknown tag {other:?}"))),
        }
    }
}

/// A script's array reply, read field by field; anything unexpected is
/// [`Error::CorruptData`] naming the task's record.
struct Reply<'a> {
    key: &'a str,
    script: &'static str,
    values: &'a [Value],
}

impl<'a> Reply<'a> {
    fn new(key: &'a str, script: &'static str, values: &'a [Value]) -> Reply<'a> {
        Reply {
            key,
            script,
            values,
        }
    }

    fn bad(&self, why: &str) -> Error {
        Error::corrupt(self.key, format!("{} reply: {why}", self.script))
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        let v = self
            .values
            .get(i)
            .ok_or_else(|| self.bad(&format!("no element {i}")))?;
        match v {
            // Lua numbers come back as integers.
            Value::Int(n) => Ok(n.to_string().into_bytes()),
            v => redis::from_redis_value_ref(v).map_err(|e| self.bad(&e.to_string())),
        }
    }

    fn text(&self, i: usize) -> Result<String> {
        String::from_utf8(self.bytes(i)?).map_err(|_| self.bad("text is not UTF-8"))
    }

    fn number<N: std::str::FromStr>(&self, i: usize) -> Result<N> {
        let t = self.text(i)?;
        t.parse()
            .map_err(|_| self.bad(&format!("element {i} ({t:?}) is not a number")))
    }
}
