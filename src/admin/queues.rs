//! Queue rows: counts and per-minute figures, and the tasks of one set.

use std::collections::HashMap;

use serde::Serialize;

use super::{scan_names, score_ms, time_ms, wrong_type, RedisTime, Scored, MINUTE_MS};
use crate::error::{Error, Result};
use crate::handle::Redswarm;
use crate::keys::Family;
use crate::swarm::{FailedBy, Queue, QueueCounts, TaskInfo, TaskOutcome, TaskState};

/// One queue as [`queues`] and [`queue_status`] see it.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let q = redswarm::admin::queue_status(&swarm.queue("mail")?)?;
/// println!("{} pending, {} ended in the last minute", q.counts.pending(), q.ended_last_minute);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// Queue name.
    pub name: String,
    /// Tasks per set (zero when `problem` is set).
    pub counts: QueueCounts,
    /// Tasks that ended `ok` or `cancelled` in the last 60 s (Redis clock;
    /// within the queue's retention of ended tasks).
    pub ended_last_minute: u64,
    /// Tasks that ended `failed` in the last 60 s.
    pub failed_last_minute: u64,
    /// Why the queue could not be read (a key of the wrong type), if so.
    pub problem: Option<String>,
}

/// Every queue of the namespace (at most [`MAX_LISTED`](super::MAX_LISTED),
/// by name), found by `SCAN`.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for q in redswarm::admin::queues(&swarm)? {
///     if let Some(p) = &q.problem { log::warn!("queue {}: {p}", q.name); }
/// }
/// # Ok(()) }
/// ```
pub fn queues(swarm: &Redswarm) -> Result<Vec<QueueStatus>> {
    scan_names(swarm.runtime(), Family::Queue)?
        .iter()
        .map(|name| queue_status(&swarm.queue(name)?))
        .collect()
}

/// One queue's counts and per-minute figures (zeros for a queue that does
/// not exist).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let status = redswarm::admin::queue_status(&swarm.queue("mail")?)?;
/// # Ok(()) }
/// ```
pub fn queue_status(queue: &Queue) -> Result<QueueStatus> {
    let k = &queue.keys;
    let mut status = QueueStatus {
        name: queue.name.clone(),
        counts: QueueCounts::default(),
        ended_last_minute: 0,
        failed_last_minute: 0,
        problem: None,
    };
    let mut conn = queue.swarm.conn()?;
    let sets = [&k.ready, &k.delayed, &k.running, &k.ended, &k.failed];
    let expect: Vec<(&str, &str)> = sets.iter().map(|s| (s.as_str(), "zset")).collect();
    if let Some(problem) = wrong_type(&mut conn, &expect)? {
        status.problem = Some(problem);
        return Ok(status);
    }
    let time: RedisTime = redis::cmd("TIME").query(&mut *conn)?;
    let since = time_ms(time).saturating_sub(MINUTE_MS);
    let (ready, delayed, running, ended, failed, ended_recent, failed_recent): (
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
    ) = redis::pipe()
        .zcard(&k.ready)
        .zcard(&k.delayed)
        .zcard(&k.running)
        .zcard(&k.ended)
        .zcard(&k.failed)
        .zcount(&k.ended, format!("({since}"), "+inf")
        .zcount(&k.failed, format!("({since}"), "+inf")
        .query(&mut *conn)?;
    status.counts = QueueCounts {
        ready,
        delayed,
        running,
        ended,
        failed,
    };
    status.ended_last_minute = ended_recent;
    status.failed_last_minute = failed_recent;
    Ok(status)
}

/// A task record in a form for tables and JSON (see
/// [`TaskInfo`] for the meaning of each field).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// if let Some(info) = swarm.queue("mail")?.get("some-id")? {
///     let details = redswarm::admin::TaskDetails::from(&info);
///     println!("{}", serde_json::to_string(&details)?);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskDetails {
    /// `queued`, `running`, `ok`, `failed` or `cancelled`.
    pub state: &'static str,
    /// Priority.
    pub priority: u8,
    /// Runs started.
    pub attempts: u32,
    /// Handler failures and timeouts.
    pub failures: u32,
    /// Handler failure limit.
    pub max_attempts: u32,
    /// Runs lost with their worker.
    pub lost_runs: u32,
    /// Lost-run limit.
    pub max_lost_runs: u32,
    /// For a failed task: `handler`, `lost_runs` or `corrupt_data`.
    pub failed_by: Option<&'static str>,
    /// Error of the latest failed attempt.
    pub error: Option<String>,
    /// Node of the latest claim.
    pub worker: Option<String>,
    /// Fencing token of the latest claim.
    pub fencing_token: u64,
    /// Created (ms, Redis clock).
    pub created_ms: u64,
    /// Latest claim (ms).
    pub started_ms: Option<u64>,
    /// Latest change (ms).
    pub updated_ms: u64,
    /// End (ms).
    pub ended_ms: Option<u64>,
    /// When a delayed task becomes ready (ms).
    pub run_at_ms: Option<u64>,
    /// The payload.
    pub data: serde_json::Value,
    /// Result of a completed task.
    pub result: Option<serde_json::Value>,
}

impl From<&TaskInfo> for TaskDetails {
    fn from(t: &TaskInfo) -> TaskDetails {
        TaskDetails {
            state: match t.state {
                TaskState::Queued => "queued",
                TaskState::Running => "running",
                TaskState::End(TaskOutcome::Ok) => "ok",
                TaskState::End(TaskOutcome::Failed) => "failed",
                TaskState::End(TaskOutcome::Cancelled) => "cancelled",
            },
            priority: t.priority,
            attempts: t.attempts,
            failures: t.failures,
            max_attempts: t.max_attempts,
            lost_runs: t.lost_runs,
            max_lost_runs: t.max_lost_runs,
            failed_by: t.failed_by.map(|f| match f {
                FailedBy::Handler => "handler",
                FailedBy::LostRuns => "lost_runs",
                FailedBy::CorruptData => "corrupt_data",
            }),
            error: t.error.clone(),
            worker: t.worker.clone(),
            fencing_token: t.fencing_token,
            created_ms: t.created_ms,
            started_ms: t.started_ms,
            updated_ms: t.updated_ms,
            ended_ms: t.ended_ms,
            run_at_ms: t.run_at_ms,
            data: t.data.clone(),
            result: t.result.clone(),
        }
    }
}

/// One task of a set listed by [`failed_tasks`] or [`running_tasks`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for row in redswarm::admin::failed_tasks(&swarm.queue("mail")?, 20)? {
///     match (&row.task, &row.problem) {
///         (Some(t), _) => println!("{}: {:?} after {} attempts", row.id, t.error, t.attempts),
///         (None, Some(p)) => println!("{}: {p}", row.id),
///         (None, None) => println!("{}: record gone", row.id),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRow {
    /// Task id.
    pub id: String,
    /// The set's score: when it ended (failed set, ms) or when its lease
    /// runs out (running set, ms; Redis clock).
    pub at_ms: u64,
    /// The record, if it exists and is readable.
    pub task: Option<TaskDetails>,
    /// Why the record could not be read, if so.
    pub problem: Option<String>,
}

/// Up to `limit` failed tasks, the most recent failure first.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let rows = redswarm::admin::failed_tasks(&swarm.queue("mail")?, 50)?;
/// # Ok(()) }
/// ```
pub fn failed_tasks(queue: &Queue, limit: usize) -> Result<Vec<TaskRow>> {
    task_rows(queue, &queue.keys.failed, true, limit)
}

/// Up to `limit` running tasks, the nearest lease deadline first. Progress
/// is not listed: handlers publish it as events (see `redswarm watch`), it
/// is not stored with the task.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for row in redswarm::admin::running_tasks(&swarm.queue("mail")?, 50)? {
///     println!("{} on {:?}", row.id, row.task.and_then(|t| t.worker));
/// }
/// # Ok(()) }
/// ```
pub fn running_tasks(queue: &Queue, limit: usize) -> Result<Vec<TaskRow>> {
    task_rows(queue, &queue.keys.running, false, limit)
}

fn task_rows(queue: &Queue, set: &str, newest_first: bool, limit: usize) -> Result<Vec<TaskRow>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut conn = queue.swarm.conn()?;
    if let Some(problem) = wrong_type(&mut conn, &[(set, "zset")])? {
        return Err(Error::corrupt(set, problem));
    }
    let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
    let ids: Scored = redis::cmd(if newest_first { "ZREVRANGE" } else { "ZRANGE" })
        .arg(set)
        .arg(0)
        .arg(stop)
        .arg("WITHSCORES")
        .query(&mut *conn)?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (id, _) in &ids {
        pipe.cmd("HGETALL").arg(queue.keys.task(id));
    }
    let records: Vec<redis::RedisResult<HashMap<String, String>>> = if ids.is_empty() {
        Vec::new()
    } else {
        pipe.query(&mut *conn)?
    };
    Ok(ids
        .into_iter()
        .zip(records)
        .map(|((id, score), record)| {
            let key = queue.keys.task(&id);
            let (task, problem) = match record {
                Ok(h) if h.is_empty() => (None, None),
                Ok(h) => match TaskInfo::from_hash(&key, h) {
                    Ok(info) => (Some(TaskDetails::from(&info)), None),
                    Err(e) => (None, Some(e.to_string())),
                },
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    (None, Some(format!("`{key}` is not a task hash")))
                }
                Err(e) => (None, Some(format!("`{key}`: {e}"))),
            };
            TaskRow {
                id,
                at_ms: score_ms(score),
                task,
                problem,
            }
        })
        .collect())
}
