//! The administrative writes: re-queue one failed task, purge ended or
//! failed tasks. Each step is one script that only touches tasks that are
//! over, so none can disturb a task a worker holds (see the scripts'
//! headers).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::validate_name;
use crate::scripts::{invoke, lua_script};
use crate::swarm::Queue;

lua_script!(QUEUE_RETRY, "queue_retry.lua", with "queue_lib.lua");
lua_script!(QUEUE_PURGE, "queue_purge.lua");

/// Tasks one purge script call deletes at most (each call is one atomic
/// step; a purge makes as many as it needs).
const PURGE_BATCH: usize = 500;

/// What [`retry_task`] did.
///
/// ```
/// assert_eq!(serde_json::to_string(&redswarm::admin::RetryOutcome::NotFailed).unwrap(), "\"not_failed\"");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOutcome {
    /// It was failed and is queued again, due at once.
    Requeued,
    /// It is not a failed task (queued, running, or ended otherwise):
    /// nothing was changed.
    NotFailed,
    /// No such task.
    Missing,
}

/// Gives one failed task a fresh start (attempts, failures and lost runs
/// back to zero, due at once), like
/// [`Queue::requeue_failed`](crate::Queue::requeue_failed) for one id.
/// [`Error::CorruptData`] if the record or a queue key has the wrong type
/// (nothing is changed then).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use redswarm::admin::{retry_task, RetryOutcome};
/// if retry_task(&swarm.queue("mail")?, "some-id")? == RetryOutcome::Missing {
///     log::warn!("no such task");
/// }
/// # Ok(()) }
/// ```
pub fn retry_task(queue: &Queue, id: &str) -> Result<RetryOutcome> {
    validate_name("task id", id)?;
    let k = &queue.keys;
    let mut conn = queue.swarm.conn()?;
    let outcome: String = invoke(
        QUEUE_RETRY
            .prepare()
            .key(k.task(id))
            .key(&k.failed)
            .key(&k.delayed)
            .key(&k.marker)
            .arg(id)
            .arg(&k.events),
        &mut *conn,
    )?;
    match outcome.as_str() {
        "requeued" => Ok(RetryOutcome::Requeued),
        "not_failed" => Ok(RetryOutcome::NotFailed),
        "missing" => Ok(RetryOutcome::Missing),
        other => Err(Error::corrupt(
            k.task(id),
            format!("retry script answered {other:?}"),
        )),
    }
}

/// Which set [`purge`] empties.
///
/// ```
/// let set = redswarm::admin::PurgeSet::Failed;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PurgeSet {
    /// Tasks that ended `ok` or `cancelled`.
    Ended,
    /// Tasks that ended `failed`.
    Failed,
}

/// Deletes the tasks of `set` that had ended when the call started (ids and
/// records), in atomic batches of a few hundred; tasks ending meanwhile
/// stay. Returns how many were deleted. A task whose record is live (it
/// should not be in the set) is not deleted; its stale id is dropped from
/// the set. [`Error::CorruptData`] if the set has the wrong type.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let n = redswarm::admin::purge(&swarm.queue("mail")?, redswarm::admin::PurgeSet::Ended)?;
/// log::info!("deleted {n} ended tasks");
/// # Ok(()) }
/// ```
pub fn purge(queue: &Queue, set: PurgeSet) -> Result<u64> {
    let k = &queue.keys;
    let key = match set {
        PurgeSet::Ended => &k.ended,
        PurgeSet::Failed => &k.failed,
    };
    let cutoff = queue.swarm.redis_time_ms()?;
    let mut conn = queue.swarm.conn()?;
    let mut total = 0;
    loop {
        let (deleted, stale, _left): (u64, u64, u64) = invoke(
            QUEUE_PURGE
                .prepare()
                .key(key)
                .arg(k.task_prefix())
                .arg(PURGE_BATCH)
                .arg(cutoff),
            &mut *conn,
        )?;
        total += deleted;
        if stale > 0 {
            log::warn!(
                "queue `{}`: dropped {stale} stale ids from `{key}` (their tasks are live)",
                queue.name
            );
        }
        // Every id a batch looks at leaves the set, so this ends.
        if deleted + stale < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}
