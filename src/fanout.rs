//! Fan-out of in-flight work: across every process and thread, one caller
//! runs a job for a given id while every concurrent caller waits and gets
//! the same outcome.
//!
//! How it works: a caller subscribes to the job's done channel (confirmed
//! by Redis), then runs one script that either returns a stored outcome,
//! makes it the leader (a leased key), or tells it how long the current
//! leader's lease has left. The leader's lease is renewed by the heartbeat
//! while the job runs; when it finishes, one script stores the outcome
//! briefly (`result_ttl`, default 5 s), steps down and publishes the
//! outcome itself, so waiters need no second round trip. Waiters sleep
//! until that message, a reconnect, the leader's remaining lease or
//! `wait_recheck`; then they claim again — which returns the stored
//! outcome, or promotes one of them if the leader died (its lease expired)
//! or gave up.
//!
//! Leadership is a fenced grant: [`Completer::fencing_token`] rises with
//! every new leader of a job id (never below the Redis clock in
//! microseconds, so also across a Redis restart without persistence). A
//! claim whose reply was lost is retried with the same token and answers
//! "lead" again with the same fencing token instead of waiting for its own
//! lease to lapse. Unusable data in Redis is [`Error::CorruptData`] naming
//! the key, with nothing changed.
//!
//! The stored outcome is also served to callers that arrive within
//! `result_ttl` after completion: they get the result without running the
//! job. Set it low if results go stale fast.
//!
//! In-process coalescing: threads of one handle that call [`Fanout::run`]
//! for the same id at once share one driver — only it claims, waits or
//! leads in Redis; the others wait in memory for its outcome (and carry on
//! alone if it gives up, e.g. on a shorter timeout).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::grant::{grant_start, once_more_if_lost, validate_ttl};
use crate::keys::FanoutKeys;
use crate::lease::{Lease, LeaseTarget};
use crate::runtime::Runtime;
use crate::scripts::{invoke, lua_script};
use crate::subscriber::{SubEvent, Subscription};
use crate::util::{check_ttl, millis, panic_message, random_id, Deadline};

lua_script!(FANOUT_CLAIM, "fanout_claim.lua");
lua_script!(FANOUT_COMPLETE, "fanout_complete.lua");
lua_script!(FANOUT_ABANDON, "fanout_abandon.lua");

/// What a fan-out caller gets when it does not get the value.
///
/// ```
/// let e: redswarm::FanoutError<String> = redswarm::FanoutError::Job("backend down".into());
/// assert_eq!(e.to_string(), "the job failed: backend down");
/// ```
#[derive(Debug)]
pub enum FanoutError<E> {
    /// The job returned this error (here or in the leader's process).
    Job(E),
    /// The leader could not produce a shareable outcome: its job panicked,
    /// or the result could not be serialized or was too large.
    LeaderFailed(String),
    /// The caller waited longer than its timeout (the job goes on for the
    /// others).
    Timeout {
        /// How long it waited.
        waited: Duration,
    },
    /// Redis, a bad job id, a corrupt outcome, shut down, ...
    Redswarm(Error),
}

impl<E: std::fmt::Display> std::fmt::Display for FanoutError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FanoutError::Job(e) => write!(f, "the job failed: {e}"),
            FanoutError::LeaderFailed(why) => write!(f, "the leader failed: {why}"),
            FanoutError::Timeout { waited } => write!(f, "no outcome within {waited:?}"),
            FanoutError::Redswarm(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for FanoutError<E> {}

impl<E> From<Error> for FanoutError<E> {
    fn from(e: Error) -> Self {
        FanoutError::Redswarm(e)
    }
}

/// The outcome as stored and published (JSON).
#[derive(Serialize, Deserialize)]
enum Outcome<T, E> {
    Ok(T),
    Err(E),
    Failed(String),
}

impl<T, E> Outcome<T, E> {
    fn into_result(self) -> std::result::Result<T, FanoutError<E>> {
        match self {
            Outcome::Ok(v) => Ok(v),
            Outcome::Err(e) => Err(FanoutError::Job(e)),
            Outcome::Failed(why) => Err(FanoutError::LeaderFailed(why)),
        }
    }
}

/// Fan-out settings; start with [`Redswarm::fanout_options`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let fanout = swarm.fanout_options()
///     .result_ttl(Duration::from_millis(500))
///     .leader_lease(Duration::from_secs(10))
///     .max_result_bytes(64 * 1024);
/// let price: Result<u64, redswarm::FanoutError<String>> =
///     fanout.run("price:sku-1", Duration::from_secs(5), || Ok(42));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Fanout {
    swarm: Runtime,
    result_ttl: Duration,
    leader_lease: Duration,
    max_result_bytes: usize,
}

impl Fanout {
    pub(crate) fn new(swarm: &Runtime) -> Fanout {
        Fanout {
            leader_lease: Duration::from_secs(10).max(swarm.config().min_renewable_ttl()),
            swarm: swarm.clone(),
            result_ttl: Duration::from_secs(5),
            max_result_bytes: 1 << 20,
        }
    }

    /// How long the outcome stays in Redis after completion (default 5 s,
    /// at most [`crate::MAX_TTL`]): late waiters and callers arriving in
    /// that window get it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let f = swarm.fanout_options().result_ttl(std::time::Duration::from_secs(1));
    /// # Ok(()) }
    /// ```
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// The leader's lease, renewed by the heartbeat while the job runs
    /// (default 10 s; at least three heartbeats, at most
    /// [`crate::MAX_TTL`]). If the leader dies, a
    /// waiter takes over within this time.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let f = swarm.fanout_options().leader_lease(std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn leader_lease(mut self, lease: Duration) -> Self {
        self.leader_lease = lease;
        self
    }

    /// Largest serialized outcome shared (default 1 MiB).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let f = swarm.fanout_options().max_result_bytes(4096);
    /// # Ok(()) }
    /// ```
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<()> {
        check_ttl("leader lease", self.leader_lease)?;
        validate_ttl(&self.swarm, self.leader_lease, true)?;
        if self.result_ttl.is_zero() {
            return Err(Error::invalid("result ttl", "must be greater than zero"));
        }
        check_ttl("result ttl", self.result_ttl)?;
        if self.max_result_bytes == 0 {
            return Err(Error::invalid(
                "max result bytes",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// Runs `job` for `job_id` unless it is already running somewhere; in
    /// that case waits up to `timeout` for its outcome. If the leader dies
    /// meanwhile, this caller may be promoted and run `job` itself.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let v: Result<String, redswarm::FanoutError<String>> = swarm
    ///     .fanout_options()
    ///     .run("user:7", std::time::Duration::from_secs(3), || Ok("profile".to_string()));
    /// # Ok(()) }
    /// ```
    pub fn run<T, E, F>(
        &self,
        job_id: &str,
        timeout: Duration,
        job: F,
    ) -> std::result::Result<T, FanoutError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        // Threads of this handle asking for the same job share one driver:
        // it alone claims, waits or leads in Redis; the others wait here.
        // Saturating: a timeout of Duration::MAX waits forever.
        let deadline = Deadline::after(timeout);
        let flights = self.swarm.feature_state::<LocalFlights>();
        let (flight, driver) = flights.join(job_id);
        if !driver {
            let timed_out = || Err(FanoutError::Timeout { waited: timeout });
            return match flight.wait_until(deadline) {
                Some(FlightEnd::Done(bytes)) => decode::<T, E>(job_id, &bytes),
                // The driver gave up (its own timeout, an error): go on alone
                // for the rest of this caller's timeout, not a fresh one.
                Some(FlightEnd::Abandoned) => {
                    let left = deadline.remaining().unwrap_or(Duration::MAX);
                    if left.is_zero() {
                        return timed_out();
                    }
                    match self.run_alone(job_id, left, job) {
                        Err(FanoutError::Timeout { .. }) => timed_out(),
                        other => other,
                    }
                }
                None => timed_out(),
            };
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.run_alone(job_id, timeout, job)));
        match result {
            Ok(result) => {
                flights.finish(job_id, &flight, share(&result));
                result
            }
            Err(panic) => {
                // Not the job (its panics are caught inside): still, never
                // leave the waiting threads hanging.
                flights.finish(job_id, &flight, FlightEnd::Abandoned);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// [`Fanout::run`] without the in-process sharing.
    fn run_alone<T, E, F>(
        &self,
        job_id: &str,
        timeout: Duration,
        job: F,
    ) -> std::result::Result<T, FanoutError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        // Saturating: a timeout of Duration::MAX waits forever.
        let deadline = Deadline::after(timeout);
        let completer = match self.push::<T, E>(job_id)? {
            Push::Lead(c) => c,
            Push::Wait(w) => match w.wait(deadline.remaining().unwrap_or(Duration::MAX))? {
                Waited::Done(r) => return r,
                Waited::Promoted(c) => c,
            },
        };
        let outcome = catch_unwind(AssertUnwindSafe(job));
        match outcome {
            Ok(result) => completer.complete(result),
            Err(panic) => {
                let msg = panic_message(panic.as_ref());
                completer.fail(&format!("the job panicked: {msg}"));
                Err(FanoutError::LeaderFailed(format!(
                    "the job panicked: {msg}"
                )))
            }
        }
    }

    /// The low-level step: joins job `job_id` and says whether this caller
    /// must do the work ([`Push::Lead`], with a [`Completer`]) or wait for
    /// someone else's outcome ([`Push::Wait`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// use redswarm::{Push, Waited};
    /// match swarm.fanout_options().push::<u32, String>("job")? {
    ///     Push::Lead(completer) => { completer.complete(Ok(7))?; }
    ///     Push::Wait(waiter) => match waiter.wait(std::time::Duration::from_secs(5))? {
    ///         Waited::Done(result) => log::info!("{result:?}"),
    ///         Waited::Promoted(completer) => { completer.complete(Ok(7))?; }
    ///     },
    /// }
    /// # Ok(()) }
    /// ```
    pub fn push<T, E>(&self, job_id: &str) -> Result<Push<T, E>>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
    {
        self.validate()?;
        let keys = self.swarm.keys().fanout(job_id)?;
        // Subscribe before claiming: an outcome published after our claim
        // cannot be missed, and one published before it is stored.
        let sub = self.swarm.subscribe(&keys.done)?;
        let token = random_id();
        let mut waiter = Waiter {
            fanout: self.clone(),
            job_id: job_id.to_string(),
            keys,
            token,
            sub,
            ready: None,
        };
        // A lost reply is asked once more with the same token (the claim is
        // idempotent); if that fails too, a leadership the first call may
        // have taken is given back so nobody waits out its lease.
        match once_more_if_lost(|| waiter.claim()) {
            Ok(Claim::Done(r)) => {
                waiter.ready = Some(r);
                Ok(Push::Wait(waiter))
            }
            Ok(Claim::Lead { fence, since }) => Ok(Push::Lead(waiter.into_completer(fence, since))),
            Ok(Claim::Wait(_)) => Ok(Push::Wait(waiter)),
            Err(e) => {
                if e.is_unavailable() {
                    waiter.step_down();
                }
                Err(e)
            }
        }
    }
}

/// Whether this caller leads a fan-out job or waits for it.
#[derive(Debug)]
pub enum Push<T, E> {
    /// Do the work and call [`Completer::complete`].
    Lead(Completer<T, E>),
    /// Someone else is doing it; [`Waiter::wait`] for the outcome.
    Wait(Waiter<T, E>),
}

/// What [`Waiter::wait`] ends with.
#[derive(Debug)]
pub enum Waited<T, E> {
    /// The shared outcome.
    Done(std::result::Result<T, FanoutError<E>>),
    /// The leader died or gave up and this caller must do the work now.
    Promoted(Completer<T, E>),
}

enum Claim<T, E> {
    Done(std::result::Result<T, FanoutError<E>>),
    /// Leadership with its fencing token, judged from `since`.
    Lead {
        fence: u64,
        since: Instant,
    },
    Wait(Option<Duration>),
}

/// A caller waiting for a fan-out job's outcome.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// if let redswarm::Push::Wait(w) = swarm.fanout_options().push::<u32, String>("job")? {
///     let _ = w.wait(std::time::Duration::from_secs(1));
/// }
/// # Ok(()) }
/// ```
pub struct Waiter<T, E> {
    fanout: Fanout,
    job_id: String,
    keys: FanoutKeys,
    token: String,
    sub: Subscription,
    ready: Option<std::result::Result<T, FanoutError<E>>>,
}

impl<T, E> std::fmt::Debug for Waiter<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("job_id", &self.job_id)
            .finish()
    }
}

impl<T, E> Waiter<T, E>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    /// Blocks until the outcome arrives, this caller is promoted to leader,
    /// or `timeout` passes ([`FanoutError::Timeout`]; `Duration::MAX` waits
    /// forever).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if let redswarm::Push::Wait(w) = swarm.fanout_options().push::<u32, String>("job")? {
    ///     match w.wait(std::time::Duration::from_secs(5)) {
    ///         Ok(redswarm::Waited::Done(v)) => log::info!("{v:?}"),
    ///         Ok(redswarm::Waited::Promoted(c)) => { c.complete(Ok(1))?; }
    ///         Err(e) => log::warn!("{e}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn wait(mut self, timeout: Duration) -> std::result::Result<Waited<T, E>, FanoutError<E>> {
        if let Some(r) = self.ready.take() {
            return Ok(Waited::Done(r));
        }
        // Saturating: a timeout of Duration::MAX waits forever.
        let deadline = Deadline::after(timeout);
        let recheck = self.fanout.swarm.config().wait_recheck();
        let mut leader_left: Option<Duration> = None;
        // Whether the last claim's reply was lost (it may have made us leader).
        let mut unknown = false;
        loop {
            if deadline.has_passed() {
                if unknown {
                    self.step_down();
                }
                return Err(FanoutError::Timeout { waited: timeout });
            }
            let mut nap = deadline.nap(recheck);
            if let Some(l) = leader_left {
                // Wake just after the leader's lease would lapse.
                nap = nap.min(l + Duration::from_millis(5));
            }
            match self.sub.recv_timeout(nap) {
                Ok(SubEvent::Message(m)) if !m.payload.is_empty() => {
                    return Ok(Waited::Done(decode::<T, E>(&self.keys.done, &m.payload)));
                }
                // '' = the leader gave up; Reconnected = messages may be
                // lost; timeout = bounded re-check. All: claim again.
                _ => {}
            }
            unknown = false;
            match self.claim() {
                Ok(Claim::Done(r)) => return Ok(Waited::Done(r)),
                Ok(Claim::Lead { fence, since }) => {
                    log::info!(
                        "fan-out `{}`: leader gone, this caller takes over",
                        self.job_id
                    );
                    return Ok(Waited::Promoted(self.into_completer(fence, since)));
                }
                Ok(Claim::Wait(left)) => leader_left = left,
                Err(e) if e.is_unavailable() => {
                    // Asked again with the same token at the next round.
                    unknown = true;
                    leader_left = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits on a thread of its own and delivers the outcome on a crossbeam
    /// channel (dlock's completion callback, for `select!`-style code).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if let redswarm::Push::Wait(w) = swarm.fanout_options().push::<u32, String>("job")? {
    ///     let outcome = w.into_receiver(std::time::Duration::from_secs(5));
    ///     crossbeam_channel::select! {
    ///         recv(outcome) -> r => log::info!("{r:?}"),
    ///         default(std::time::Duration::from_secs(6)) => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_receiver(
        self,
        timeout: Duration,
    ) -> crossbeam_channel::Receiver<std::result::Result<Waited<T, E>, FanoutError<E>>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job_id = self.job_id.clone();
        let spawned = std::thread::Builder::new()
            .name("redswarm-fanout-wait".into())
            .spawn(move || {
                let _ = tx.send(self.wait(timeout));
            });
        if let Err(e) = spawned {
            log::error!("fan-out `{job_id}`: cannot spawn a waiting thread: {e}");
        }
        rx
    }

    fn claim(&mut self) -> Result<Claim<T, E>> {
        let mut conn = self.fanout.swarm.conn()?;
        let sent = Instant::now();
        let reply: Vec<redis::Value> = invoke(
            FANOUT_CLAIM
                .prepare()
                .key(&self.keys.leader)
                .key(&self.keys.result)
                .key(&self.keys.fence)
                .arg(&self.token)
                .arg(millis(self.fanout.leader_lease)),
            &mut *conn,
        )?;
        let corrupt = |why: &str| Error::corrupt(&self.keys.leader, format!("claim reply: {why}"));
        let tag: String = match reply.first() {
            Some(v) => redis::from_redis_value_ref(v).map_err(|e| corrupt(&e.to_string()))?,
            None => return Err(corrupt("empty")),
        };
        match tag.as_str() {
            "done" => {
                let bytes: Vec<u8> = match reply.get(1) {
                    Some(v) => {
                        redis::from_redis_value_ref(v).map_err(|e| corrupt(&e.to_string()))?
                    }
                    None => return Err(corrupt("no outcome")),
                };
                match decode::<T, E>(&self.keys.result, &bytes) {
                    Err(FanoutError::Redswarm(e)) => Err(e),
                    outcome => Ok(Claim::Done(outcome)),
                }
            }
            "lead" => {
                let field = |i: usize, what: &str| -> Result<i64> {
                    let text: String = match reply.get(i) {
                        Some(v) => {
                            redis::from_redis_value_ref(v).map_err(|e| corrupt(&e.to_string()))?
                        }
                        None => return Err(corrupt(&format!("no {what}"))),
                    };
                    text.parse::<i64>()
                        .map_err(|e| corrupt(&format!("{what} {text:?}: {e}")))
                };
                let fence = u64::try_from(field(1, "fencing token")?)
                    .map_err(|_| Error::corrupt(&self.keys.fence, "negative fencing counter"))?;
                let left = field(2, "lease left")?;
                Ok(Claim::Lead {
                    fence,
                    since: grant_start(sent, self.fanout.leader_lease, left),
                })
            }
            "wait" => {
                let left: String = match reply.get(1) {
                    Some(v) => {
                        redis::from_redis_value_ref(v).map_err(|e| corrupt(&e.to_string()))?
                    }
                    None => "-1".into(),
                };
                Ok(Claim::Wait(
                    left.parse::<u64>().ok().map(Duration::from_millis),
                ))
            }
            other => Err(corrupt(&format!("unknown tag {other:?}"))),
        }
    }

    /// Gives back a leadership a claim with a lost reply may have taken
    /// (best effort; otherwise it lapses after the lease).
    fn step_down(&self) {
        if let Err(e) = abandon(&self.fanout.swarm, &self.keys, &self.token) {
            log::warn!(
                "fan-out `{}`: could not give back a claim whose reply was lost: {e} (it lapses after the lease)",
                self.job_id
            );
        }
    }

    fn into_completer(self, fence: u64, since: Instant) -> Completer<T, E> {
        let swarm = &self.fanout.swarm;
        let lease = swarm.lease(
            format!("fan-out leader of `{}`", self.job_id),
            LeaseTarget::Key {
                key: self.keys.leader.clone(),
                token: self.token.clone(),
            },
            self.fanout.leader_lease,
            since,
        );
        Completer {
            fanout: self.fanout,
            job_id: self.job_id,
            keys: self.keys,
            token: self.token,
            fence,
            lease: Some(lease),
            _types: std::marker::PhantomData,
        }
    }
}

/// An outcome borrowed for re-encoding (same JSON as [`Outcome`]).
#[derive(Serialize)]
enum OutcomeRef<'a, T, E> {
    Ok(&'a T),
    Err(&'a E),
    Failed(&'a str),
}

/// What a driver's result means for the threads that waited on it: an
/// outcome to share, or nothing (timeout, Redis error: they go on alone).
fn share<T: Serialize, E: Serialize>(result: &std::result::Result<T, FanoutError<E>>) -> FlightEnd {
    let encoded = match result {
        Ok(v) => serde_json::to_vec(&OutcomeRef::<T, E>::Ok(v)),
        Err(FanoutError::Job(e)) => serde_json::to_vec(&OutcomeRef::<T, E>::Err(e)),
        Err(FanoutError::LeaderFailed(why)) => serde_json::to_vec(&OutcomeRef::<T, E>::Failed(why)),
        Err(FanoutError::Timeout { .. } | FanoutError::Redswarm(_)) => return FlightEnd::Abandoned,
    };
    match encoded {
        Ok(bytes) => FlightEnd::Done(Arc::new(bytes)),
        Err(_) => FlightEnd::Abandoned,
    }
}

/// How a local flight ended.
#[derive(Clone)]
pub(crate) enum FlightEnd {
    Done(Arc<Vec<u8>>),
    Abandoned,
}

/// One job id being driven by a thread of this handle.
pub(crate) struct Flight {
    end: Mutex<Option<FlightEnd>>,
    cv: Condvar,
}

impl Flight {
    fn wait_until(&self, deadline: Deadline) -> Option<FlightEnd> {
        let mut end = self.end.lock();
        while end.is_none() {
            match deadline.instant() {
                Some(at) => {
                    if self.cv.wait_until(&mut end, at).timed_out() {
                        break;
                    }
                }
                None => self.cv.wait(&mut end),
            }
        }
        end.clone()
    }
}

/// The per-handle table of in-flight fan-out jobs.
#[derive(Default)]
pub(crate) struct LocalFlights {
    table: Mutex<HashMap<String, Arc<Flight>>>,
}

impl LocalFlights {
    /// The flight for `job_id`, and whether the caller drives it.
    fn join(&self, job_id: &str) -> (Arc<Flight>, bool) {
        let mut table = self.table.lock();
        if let Some(f) = table.get(job_id) {
            return (f.clone(), false);
        }
        let f = Arc::new(Flight {
            end: Mutex::new(None),
            cv: Condvar::new(),
        });
        table.insert(job_id.to_string(), f.clone());
        (f, true)
    }

    fn finish(&self, job_id: &str, flight: &Arc<Flight>, end: FlightEnd) {
        {
            let mut table = self.table.lock();
            if table.get(job_id).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                table.remove(job_id);
            }
        }
        *flight.end.lock() = Some(end);
        flight.cv.notify_all();
    }
}

pub(crate) fn decode<T: DeserializeOwned, E: DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> std::result::Result<T, FanoutError<E>> {
    let outcome: Outcome<T, E> = serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupt(
            key,
            format!("fan-out outcome is not the expected JSON: {e}"),
        )
    })?;
    outcome.into_result()
}

/// The leader's side of a fan-out job: publish the outcome with
/// [`Completer::complete`]. Dropped without completing, it steps down and a
/// waiter is promoted at once.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// if let redswarm::Push::Lead(c) = swarm.fanout_options().push::<u32, String>("job")? {
///     assert!(c.is_leader());
///     c.complete(Ok(5))?;
/// }
/// # Ok(()) }
/// ```
pub struct Completer<T, E> {
    fanout: Fanout,
    job_id: String,
    keys: FanoutKeys,
    token: String,
    fence: u64,
    lease: Option<Lease>,
    _types: std::marker::PhantomData<fn() -> (T, E)>,
}

impl<T, E> std::fmt::Debug for Completer<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer")
            .field("job_id", &self.job_id)
            .field("fencing_token", &self.fence)
            .finish()
    }
}

impl<T, E> Completer<T, E>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    /// True while this caller still holds the leader lease.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::Push::Lead(c) = swarm.fanout_options().push::<u32, String>("job")? {
    /// assert!(c.is_leader());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn is_leader(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.is_lost())
    }

    /// The fencing token of this leadership: greater than every earlier
    /// leader's of the same job id (never below the Redis server's clock in
    /// microseconds, so also across a Redis restart without persistence).
    /// Hand it to whatever the job writes to, so a leader that lost its
    /// lease cannot overwrite its successor's work.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if let redswarm::Push::Lead(c) = swarm.fanout_options().push::<u32, String>("job")? {
    ///     assert!(c.fencing_token() > 0);
    ///     c.complete(Ok(5))?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Shares `result` with every waiter and returns it to the caller. If
    /// it cannot be shared (not serializable, over the size limit) waiters
    /// get [`FanoutError::LeaderFailed`] and the caller the reason.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::Push::Lead(c) = swarm.fanout_options().push::<u32, String>("job")? {
    /// let v = c.complete(Ok(5))?;
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn complete(
        mut self,
        result: std::result::Result<T, E>,
    ) -> std::result::Result<T, FanoutError<E>> {
        let outcome = match result {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Err(e),
        };
        let encoded = match serde_json::to_vec(&outcome) {
            Ok(b) if b.len() <= self.fanout.max_result_bytes => Ok(b),
            Ok(b) => Err(Error::TooLarge {
                what: "fan-out outcome",
                size: b.len(),
                limit: self.fanout.max_result_bytes,
            }),
            Err(e) => Err(Error::Serialization(e)),
        };
        match encoded {
            Ok(bytes) => {
                self.publish(&bytes)?;
                outcome.into_result()
            }
            Err(e) => {
                self.fail(&format!("the leader could not share its outcome: {e}"));
                Err(FanoutError::Redswarm(e))
            }
        }
    }

    /// Tells every waiter the job failed for a reason of the leader's own
    /// (a panic, an unshareable result).
    fn fail(mut self, why: &str) {
        let outcome: Outcome<(), ()> = Outcome::Failed(why.to_string());
        match serde_json::to_vec(&outcome) {
            Ok(bytes) => {
                if let Err(e) = self.publish(&bytes) {
                    log::warn!("fan-out `{}`: could not publish failure: {e}", self.job_id);
                }
            }
            Err(e) => log::error!("fan-out `{}`: cannot encode failure: {e}", self.job_id),
        }
    }

    fn publish(&mut self, bytes: &[u8]) -> Result<()> {
        self.lease.take(); // stop renewing; the script checks the token anyway
        let mut conn = self.fanout.swarm.store().conn()?;
        let published: i64 = invoke(
            FANOUT_COMPLETE
                .prepare()
                .key(&self.keys.leader)
                .key(&self.keys.result)
                .arg(&self.token)
                .arg(bytes)
                .arg(millis(self.fanout.result_ttl))
                .arg(&self.keys.done),
            &mut *conn,
        )?;
        if published == 0 {
            log::warn!(
                "fan-out `{}`: our lease lapsed and another leader took over; our outcome was not shared",
                self.job_id
            );
        }
        Ok(())
    }
}

impl<T, E> Drop for Completer<T, E> {
    fn drop(&mut self) {
        if self.lease.take().is_none() {
            return; // completed
        }
        match abandon(&self.fanout.swarm, &self.keys, &self.token) {
            Ok(_) => log::info!("fan-out `{}`: leader stepped down without an outcome", self.job_id),
            Err(e) => log::warn!(
                "fan-out `{}`: could not step down ({e}); a waiter takes over when the lease lapses",
                self.job_id
            ),
        }
    }
}

/// Steps down as leader of a job if `token` leads it (compare-and-delete)
/// and tells the waiters to claim again. 1 if it led, else 0.
fn abandon(swarm: &Runtime, keys: &FanoutKeys, token: &str) -> Result<i64> {
    let mut conn = swarm.store().conn()?;
    invoke(
        FANOUT_ABANDON
            .prepare()
            .key(&keys.leader)
            .arg(token)
            .arg(&keys.done),
        &mut *conn,
    )
}
