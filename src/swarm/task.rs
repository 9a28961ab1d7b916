//! Task records, options and events.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::check_ttl;

/// Default [`TaskOptions::max_lost_runs`].
pub const DEFAULT_MAX_LOST_RUNS: u32 = 10;

/// Default [`TaskOptions::max_backoff`]: one hour.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Largest [`TaskOptions::max_backoff`] accepted: 365 days (keeps every
/// run-at time an exact integer in Redis's Lua numbers).
pub const MAX_BACKOFF_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn saturating_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Per-task options for [`Queue::push_with`](crate::Queue::push_with).
///
/// ```
/// use std::time::Duration;
/// let opts = redswarm::TaskOptions::new()
///     .priority(10)
///     .delay(Duration::from_secs(5))
///     .max_attempts(5)
///     .max_lost_runs(20)
///     .timeout(Duration::from_secs(60))
///     .backoff(Duration::from_millis(500))
///     .max_backoff(Duration::from_secs(60));
/// assert_eq!(opts.get_max_attempts(), 5);
/// ```
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub(crate) priority: u8,
    pub(crate) delay: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_lost_runs: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            priority: 0,
            delay: Duration::ZERO,
            max_attempts: 3,
            max_lost_runs: DEFAULT_MAX_LOST_RUNS,
            timeout: None,
            backoff: Duration::from_secs(1),
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl TaskOptions {
    /// Defaults: priority 0, no delay, 3 attempts, 10 lost runs, no
    /// timeout, 1 s backoff capped at 1 h.
    ///
    /// ```
    /// assert_eq!(redswarm::TaskOptions::new().get_max_attempts(), 3);
    /// ```
    pub fn new() -> TaskOptions {
        TaskOptions::default()
    }

    /// Priority 0..=255; higher runs first (then arrival order).
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().priority(200);
    /// ```
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }

    /// Run no earlier than `d` from now (Redis clock; at most
    /// [`crate::MAX_TTL`], checked when pushed).
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().delay(std::time::Duration::from_secs(60));
    /// ```
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Handler failures (an `Err`, a panic or a timeout) before the task
    /// ends `failed` ([`FailedBy::Handler`]). Runs lost with their worker
    /// (a crash, a pause or cut past the lease, a Redis outage) do not
    /// count here; see [`TaskOptions::max_lost_runs`]. A hand-back at
    /// shutdown counts nowhere.
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().max_attempts(1);
    /// ```
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Runs lost with their worker (its lease expired: the worker died,
    /// hung, or was paused or cut off past the lease) before the task ends
    /// `failed` ([`FailedBy::LostRuns`]). The guard against a poison task
    /// that kills every worker it touches; larger than `max_attempts` so
    /// that outages do not fail healthy tasks. Default 10.
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().max_lost_runs(50);
    /// ```
    pub fn max_lost_runs(mut self, n: u32) -> Self {
        self.max_lost_runs = n;
        self
    }

    /// The handler is told to stop (and the attempt fails) after this long
    /// (at most [`crate::MAX_TTL`], checked when pushed).
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().timeout(std::time::Duration::from_secs(30));
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Base delay before a retry after a handler failure; doubles with
    /// each failure, up to [`TaskOptions::max_backoff`]. The actual wait is
    /// drawn between half and all of that (jitter, so that tasks failing
    /// together do not retry together).
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().backoff(std::time::Duration::from_millis(100));
    /// ```
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }

    /// The most a retry waits, however many failures came before
    /// (default 1 h; at most [`MAX_BACKOFF_LIMIT`]).
    ///
    /// ```
    /// let o = redswarm::TaskOptions::new().max_backoff(std::time::Duration::from_secs(60));
    /// ```
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// The configured attempt limit.
    ///
    /// ```
    /// assert_eq!(redswarm::TaskOptions::new().max_attempts(2).get_max_attempts(), 2);
    /// ```
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::invalid("max attempts", "must be at least 1"));
        }
        if self.max_lost_runs == 0 {
            return Err(Error::invalid("max lost runs", "must be at least 1"));
        }
        if self.max_backoff.is_zero() || self.max_backoff > MAX_BACKOFF_LIMIT {
            return Err(Error::invalid(
                "max backoff",
                format!(
                    "{:?} is outside 1 ms ..= {MAX_BACKOFF_LIMIT:?}",
                    self.max_backoff
                ),
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("task timeout", "must be greater than zero"));
        }
        // They go to Redis as milliseconds added to its clock.
        check_ttl("task delay", self.delay)?;
        if let Some(t) = self.timeout {
            check_ttl("task timeout", t)?;
        }
        check_ttl("task backoff", self.backoff)?;
        Ok(())
    }
}

/// How a task ended.
///
/// ```
/// assert_eq!(redswarm::TaskOutcome::Ok, redswarm::TaskOutcome::Ok);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Completed.
    Ok,
    /// Failed on its last attempt.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// What ended a failed task.
///
/// ```
/// let f = redswarm::FailedBy::LostRuns;
/// assert_ne!(f, redswarm::FailedBy::Handler);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedBy {
    /// Its handler failed (or timed out) `max_attempts` times.
    Handler,
    /// It lost `max_lost_runs` runs with their workers: a task that kills
    /// (or hangs) every worker it touches.
    LostRuns,
    /// Its record in Redis was unusable (a field of the wrong form); the
    /// error names the key and the field.
    CorruptData,
}

/// Where a task is.
///
/// ```
/// let s = redswarm::TaskState::Queued;
/// assert!(!s.is_end());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Ready, delayed or backing off.
    Queued,
    /// Claimed by a worker, under lease.
    Running,
    /// Over.
    End(TaskOutcome),
}

impl TaskState {
    /// True for [`TaskState::End`].
    ///
    /// ```
    /// assert!(redswarm::TaskState::End(redswarm::TaskOutcome::Ok).is_end());
    /// ```
    pub fn is_end(&self) -> bool {
        matches!(self, TaskState::End(_))
    }
}

/// A task record as stored in Redis.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let q = swarm.queue("jobs")?;
/// let id = q.push(&serde_json::json!({"ms": 10}))?;
/// let task = q.get(&id)?.ok_or("missing")?;
/// log::info!("{:?} after {} attempts", task.state, task.attempts);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TaskInfo {
    /// Task id.
    pub id: String,
    /// State.
    pub state: TaskState,
    /// The payload.
    pub data: serde_json::Value,
    /// Priority.
    pub priority: u8,
    /// Runs started so far (counted at claim; a hand-back gives its run
    /// back).
    pub attempts: u32,
    /// Handler failures and timeouts so far; the task fails when they
    /// reach `max_attempts`.
    pub failures: u32,
    /// Handler failure limit ([`TaskOptions::max_attempts`]).
    pub max_attempts: u32,
    /// Runs lost with their worker so far (its lease expired); the task
    /// fails when they reach `max_lost_runs`.
    pub lost_runs: u32,
    /// Lost-run limit ([`TaskOptions::max_lost_runs`]).
    pub max_lost_runs: u32,
    /// For a failed task: which limit or problem ended it.
    pub failed_by: Option<FailedBy>,
    /// Fencing token of the latest claim: each claim's is higher than
    /// every earlier one's, also across a Redis restart that lost data
    /// (never below the Redis server time in µs).
    pub fencing_token: u64,
    /// Node of the latest claim.
    pub worker: Option<String>,
    /// Created (ms, Redis clock).
    pub created_ms: u64,
    /// Latest claim (ms).
    pub started_ms: Option<u64>,
    /// Latest change (ms).
    pub updated_ms: u64,
    /// End (ms).
    pub ended_ms: Option<u64>,
    /// When a delayed or backing-off task becomes ready (ms).
    pub run_at_ms: Option<u64>,
    /// Error of the latest failed attempt.
    pub error: Option<String>,
    /// Result of a completed task.
    pub result: Option<serde_json::Value>,
}

impl TaskInfo {
    pub(crate) fn from_hash(key: &str, h: HashMap<String, String>) -> Result<TaskInfo> {
        let corrupt = |why: String| Error::corrupt(key, why);
        let num = |f: &str| -> Result<u64> {
            h.get(f)
                .ok_or_else(|| corrupt(format!("missing field `{f}`")))?
                .parse::<u64>()
                .map_err(|e| corrupt(format!("field `{f}`: {e}")))
        };
        let opt_num = |f: &str| h.get(f).and_then(|v| v.parse::<u64>().ok());
        // Counters a later version added: absent on older records.
        let count = |f: &str, default: u64| -> Result<u32> {
            let n = match h.get(f) {
                None => default,
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|e| corrupt(format!("field `{f}`: {e}")))?,
            };
            u32::try_from(n).map_err(|e| corrupt(format!("field `{f}`: {e}")))
        };
        let failed_by = match h.get("failed_by").map(String::as_str) {
            None => None,
            Some("handler") => Some(FailedBy::Handler),
            Some("lost") => Some(FailedBy::LostRuns),
            Some("corrupt") => Some(FailedBy::CorruptData),
            Some(other) => return Err(corrupt(format!("field `failed_by` is {other:?}"))),
        };
        let state = match (
            h.get("state").map(String::as_str),
            h.get("outcome").map(String::as_str),
        ) {
            (Some("queued"), _) => TaskState::Queued,
            (Some("running"), _) => TaskState::Running,
            (Some("end"), Some("ok")) => TaskState::End(TaskOutcome::Ok),
            (Some("end"), Some("failed")) => TaskState::End(TaskOutcome::Failed),
            (Some("end"), Some("cancelled")) => TaskState::End(TaskOutcome::Cancelled),
            (s, o) => return Err(corrupt(format!("unknown state {s:?}/{o:?}"))),
        };
        let data = h
            .get("data")
            .map(|d| serde_json::from_str(d))
            .transpose()
            .map_err(|e| corrupt(format!("data is not JSON: {e}")))?
            .unwrap_or(serde_json::Value::Null);
        let result = h
            .get("result")
            .map(|d| serde_json::from_str(d).unwrap_or(serde_json::Value::String(d.clone())));
        Ok(TaskInfo {
            // The key ends with the id (records need not repeat it).
            id: h
                .get("id")
                .cloned()
                .or_else(|| key.rsplit_once(":task:").map(|(_, id)| id.to_string()))
                .unwrap_or_default(),
            state,
            data,
            priority: u8::try_from(num("priority")?).map_err(|e| corrupt(e.to_string()))?,
            attempts: count("attempts", 0)?,
            failures: count("failures", 0)?,
            max_attempts: u32::try_from(num("max_attempts")?)
                .map_err(|e| corrupt(e.to_string()))?,
            lost_runs: count("lost", 0)?,
            max_lost_runs: count("max_lost", u64::from(DEFAULT_MAX_LOST_RUNS))?,
            failed_by,
            fencing_token: num("fence")?,
            worker: h.get("worker").cloned(),
            created_ms: num("created")?,
            started_ms: opt_num("started"),
            updated_ms: match h.get("updated") {
                Some(_) => num("updated")?,
                None => num("created")?,
            },
            ended_ms: opt_num("ended"),
            run_at_ms: opt_num("run_at"),
            error: h.get("error").cloned(),
            result,
        })
    }
}

/// Kinds of task events.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let e: redswarm::EventKind = serde_json::from_str("\"completed\"")?;
/// assert_eq!(e, redswarm::EventKind::Completed);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Pushed.
    Queued,
    /// Claimed by a worker.
    Started,
    /// Published by the handler with [`TaskContext::progress`](crate::TaskContext::progress).
    Progress,
    /// Ended ok.
    Completed,
    /// Ended failed (last attempt).
    Failed,
    /// An attempt failed; it will run again after its backoff.
    Retrying,
    /// Cancelled.
    Cancelled,
    /// Put back in the queue (lease expired, or handed back at shutdown).
    Requeued,
    /// An event this version does not know.
    #[serde(other)]
    Unknown,
}

/// One task event (JSON on the task's and the queue's event channels).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let e: redswarm::TaskEvent = serde_json::from_str(r#"{"task":"t1","event":"progress","data":{"pct":50}}"#)?;
/// assert_eq!(e.kind, redswarm::EventKind::Progress);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Task id.
    pub task: String,
    /// What happened.
    #[serde(rename = "event")]
    pub kind: EventKind,
    /// Attempt number (started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Worker node (started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Error text (failed, retrying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Progress payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}
