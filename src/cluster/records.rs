//! What masters and workers of a job cluster share: the scripts, the
//! records they list, the messages workers receive, and the checks of
//! user-supplied settings.

use std::time::Duration;

use redis::Value;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::scripts::lua_script;

lua_script!(pub(crate) CLUSTER_OPEN, "cluster_open.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_ADD, "cluster_add.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_DELETE, "cluster_delete.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_ELECT, "cluster_elect.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_RESIGN, "cluster_resign.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_SWEEP, "cluster_sweep.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_JOIN, "cluster_join.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_LEAVE, "cluster_leave.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_SYNC, "cluster_sync.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_JOBS, "cluster_jobs.lua", with "cluster_prelude.lua");
lua_script!(pub(crate) CLUSTER_WORKERS, "cluster_workers.lua", with "cluster_prelude.lua");

/// A job's id within its cluster (any name [`validate_name`](crate::keys::validate_name)
/// accepts; [`Master::add_job`](crate::Master::add_job) makes random ones).
pub type JobId = String;

/// Longest lease or interval redswarm passes to Redis (about 35 years):
/// beyond it millisecond arithmetic in scripts loses precision.
const MAX_DURATION: Duration = Duration::from_millis(1 << 50);

/// Runs a cluster script: EVALSHA (loading on NOSCRIPT), with a script's
/// `CORRUPT` error turned into [`Error::CorruptData`] naming the key.
pub(crate) fn run<T: redis::FromRedisValue>(
    inv: &redis::ScriptInvocation<'_>,
    conn: &mut dyn redis::ConnectionLike,
) -> Result<T> {
    crate::scripts::invoke(inv, conn).map_err(corrupt_from_script)
}

/// `CORRUPT <what> :: <key>` (raised by `cluster_prelude.lua`, with Redis's
/// ` script: <sha>, on @user_script:<line>.` appended) → `CorruptData`.
fn corrupt_from_script(e: Error) -> Error {
    let Error::Redis(re) = &e else { return e };
    if re.code() != Some("CORRUPT") {
        return e;
    }
    let detail = re.detail().unwrap_or_default();
    let detail = match detail.rsplit_once(" script: ") {
        Some((head, _)) => head,
        None => detail,
    };
    match detail.split_once(" :: ") {
        Some((what, key)) => Error::corrupt(key, what),
        None => Error::corrupt("(cluster)", detail),
    }
}

/// The default lease of the master seat and of worker membership: 3 s, or
/// three heartbeats if that is longer.
pub(crate) fn default_lease(swarm: &crate::runtime::Runtime) -> Duration {
    Duration::from_secs(3).max(swarm.config().min_renewable_ttl())
}

/// Checks a lease: at least three heartbeats (the heartbeat renews it) and
/// no longer than Redis arithmetic allows.
pub(crate) fn check_lease(
    swarm: &crate::runtime::Runtime,
    what: &'static str,
    lease: Duration,
) -> Result<()> {
    let min = swarm.config().min_renewable_ttl();
    if lease < min {
        return Err(Error::invalid(
            what,
            format!("{lease:?} is below {min:?} (3 heartbeat intervals); it could lapse between two renewals"),
        ));
    }
    if lease > MAX_DURATION {
        return Err(Error::invalid(
            what,
            format!("{lease:?} is longer than the {MAX_DURATION:?} redswarm can pass to Redis"),
        ));
    }
    Ok(())
}

/// Checks a wake-up interval: above zero (`Duration::MAX` means "never").
pub(crate) fn check_interval(what: &'static str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::invalid(what, "must be greater than zero"));
    }
    Ok(())
}

/// Why a worker was told a job is no longer its own.
///
/// ```
/// let r = redswarm::DeleteReason::Rebalanced;
/// assert_eq!(r.to_string(), "rebalanced");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeleteReason {
    /// A master deleted the job, or this worker did with
    /// [`Job::delete`](crate::Job::delete). It is gone from the cluster.
    Deleted,
    /// This worker's membership lease is lost (Redis unreachable past its
    /// local deadline, renewal refused, or reaped): it must stop the job
    /// now; the job goes to another worker once the lease lapses in Redis.
    LeaseLost,
    /// The active master moved the job to a less loaded worker (only with
    /// [`MasterOptions::rebalance`](crate::MasterOptions::rebalance)).
    Rebalanced,
    /// This worker terminated ([`ClusterWorker::terminate`](crate::ClusterWorker::terminate));
    /// the job goes back to the cluster for another worker.
    Terminated,
}

impl std::fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeleteReason::Deleted => "deleted",
            DeleteReason::LeaseLost => "lease lost",
            DeleteReason::Rebalanced => "rebalanced",
            DeleteReason::Terminated => "terminated",
        })
    }
}

/// A job as [`Master::jobs`](crate::Master::jobs) lists it.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let master = redswarm::Master::new(&swarm, "streams")?;
/// for job in master.jobs()? {
///     match (&job.worker, job.token) {
///         (Some(w), Some(t)) => log::info!("{} on {w} (token {t})", job.id),
///         _ => log::info!("{} waits for a worker", job.id),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    /// The job id.
    pub id: JobId,
    /// Its payload.
    pub payload: serde_json::Value,
    /// The worker it is assigned to; `None` while it waits for one.
    pub worker: Option<String>,
    /// The fencing token of its current assignment.
    pub token: Option<u64>,
    /// When it was added (ms since the epoch, Redis clock).
    pub added_ms: u64,
}

/// A live worker as [`Master::workers`](crate::Master::workers) lists it.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let master = redswarm::Master::new(&swarm, "streams")?;
/// for w in master.workers()? {
///     log::info!("{} on node {}: {} jobs (capacity {:?})", w.id, w.node, w.load, w.capacity);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker id.
    pub id: String,
    /// The redswarm node (handle) it runs on.
    pub node: String,
    /// Jobs it holds.
    pub load: u32,
    /// Most jobs it takes; `None` for no limit.
    pub capacity: Option<u32>,
    /// Its membership lease deadline (ms since the epoch, Redis clock).
    pub deadline_ms: u64,
    /// When it joined (ms since the epoch, Redis clock).
    pub joined_ms: u64,
}

/// A message on a worker's channel (published by the scripts).
#[derive(Debug, Deserialize)]
pub(crate) struct WorkerMessage {
    pub(crate) op: String,
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) payload: String,
    #[serde(default)]
    pub(crate) reason: String,
}

/// Reads a script reply's `i`-th element as a string.
pub(crate) fn text(reply: &[Value], i: usize, key: &str) -> Result<String> {
    let v = reply
        .get(i)
        .ok_or_else(|| Error::corrupt(key, format!("script reply has no element {i}")))?;
    redis::from_redis_value_ref::<String>(v)
        .map_err(|e| Error::corrupt(key, format!("script reply element {i}: {e}")))
}

/// Reads a script reply's `i`-th element as an integer.
pub(crate) fn int(reply: &[Value], i: usize, key: &str) -> Result<i64> {
    let v = reply
        .get(i)
        .ok_or_else(|| Error::corrupt(key, format!("script reply has no element {i}")))?;
    redis::from_redis_value_ref::<i64>(v)
        .map_err(|e| Error::corrupt(key, format!("script reply element {i}: {e}")))
}

/// A fencing token as stored (a decimal string); `None` for "".
pub(crate) fn token(raw: &str, key: &str) -> Result<Option<u64>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|e| Error::corrupt(key, format!("fencing token {raw:?}: {e}")))
}

/// Parses [`Master::jobs`](crate::Master::jobs)'s script reply.
pub(crate) fn parse_jobs(
    flat: Vec<String>,
    job_key: impl Fn(&str) -> String,
) -> Result<Vec<JobInfo>> {
    flat.chunks(5)
        .map(|c| {
            let [id, payload, worker, tok, added] = c else {
                return Err(Error::corrupt("(cluster jobs)", "truncated job listing"));
            };
            let key = job_key(id);
            Ok(JobInfo {
                payload: serde_json::from_str(payload)
                    .map_err(|e| Error::corrupt(&key, format!("payload is not JSON: {e}")))?,
                worker: (!worker.is_empty()).then(|| worker.clone()),
                token: token(tok, &key)?,
                added_ms: added.parse().unwrap_or(0),
                id: id.clone(),
            })
        })
        .collect()
}

/// Parses [`Master::workers`](crate::Master::workers)'s script reply.
pub(crate) fn parse_workers(flat: Vec<Value>, zset: &str) -> Result<Vec<WorkerInfo>> {
    flat.chunks(6)
        .map(|c| {
            if c.len() != 6 {
                return Err(Error::corrupt(zset, "truncated worker listing"));
            }
            let capacity = text(c, 3, zset)?
                .parse::<u32>()
                .map_err(|e| Error::corrupt(zset, format!("capacity: {e}")))?;
            Ok(WorkerInfo {
                id: text(c, 0, zset)?,
                deadline_ms: text(c, 1, zset)?
                    .parse::<f64>()
                    .map(|d| d as u64)
                    .map_err(|e| Error::corrupt(zset, format!("deadline: {e}")))?,
                node: text(c, 2, zset)?,
                capacity: (capacity > 0).then_some(capacity),
                joined_ms: text(c, 4, zset)?.parse().unwrap_or(0),
                load: u32::try_from(int(c, 5, zset)?).unwrap_or(u32::MAX),
            })
        })
        .collect()
}
