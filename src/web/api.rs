//! The JSON API: the rows of [`crate::admin`] as JSON, the overview the
//! page draws from, and the one action (retry a failed task).

use serde::Serialize;
use serde_json::Value;

use super::progress::ProgressBoard;
use super::WebOptions;
use crate::admin::{self, QueueStatus, RetryOutcome, TaskRow};
use crate::error::Result;
use crate::handle::Redswarm;

/// Largest `?limit=` (and [`WebOptions::list_limit`]).
pub(crate) const MAX_LIST: usize = 1000;

/// A failed or running task with the queue it belongs to (the overview
/// lists them across queues).
#[derive(Serialize)]
struct QueuedRow {
    queue: String,
    #[serde(flatten)]
    row: TaskRow,
    /// Latest progress the handler published (running tasks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Value>,
    /// How long ago that progress arrived, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress_age_ms: Option<u64>,
}

/// Everything the page shows, read in one request.
#[derive(Serialize)]
struct Overview {
    namespace: String,
    /// Redis's clock when the overview was read (ms).
    now_ms: u64,
    refresh_ms: u64,
    actions_allowed: bool,
    totals: Totals,
    nodes: Vec<admin::NodeStatus>,
    queues: Vec<QueueStatus>,
    running: Vec<QueuedRow>,
    failed: Vec<QueuedRow>,
    locks: Vec<admin::LockStatus>,
    semaphores: Vec<admin::SemaphoreStatus>,
    clusters: Vec<admin::ClusterStatus>,
    trackers: Vec<admin::TrackerStatus>,
}

/// Sums over all queues (and live nodes), for the page's summary cards.
#[derive(Serialize, Default)]
struct Totals {
    live_nodes: u64,
    ready: u64,
    delayed: u64,
    running: u64,
    ended: u64,
    failed: u64,
    ended_last_minute: u64,
    failed_last_minute: u64,
}

fn json(value: impl Serialize) -> Result<Value> {
    Ok(serde_json::to_value(value)?)
}

pub(crate) fn overview(
    swarm: &Redswarm,
    options: &WebOptions,
    board: &ProgressBoard,
) -> Result<Value> {
    let now_ms = swarm.redis_time_ms()?;
    let nodes = admin::nodes(swarm)?;
    let queues = admin::queues(swarm)?;
    let mut totals = Totals {
        live_nodes: nodes
            .iter()
            .filter(|n| n.state == admin::NodeState::Live)
            .count() as u64,
        ..Totals::default()
    };
    let (mut running, mut failed) = (Vec::new(), Vec::new());
    for q in &queues {
        totals.ready += q.counts.ready;
        totals.delayed += q.counts.delayed;
        totals.running += q.counts.running;
        totals.ended += q.counts.ended;
        totals.failed += q.counts.failed;
        totals.ended_last_minute += q.ended_last_minute;
        totals.failed_last_minute += q.failed_last_minute;
        if q.problem.is_some() {
            // Its keys are of the wrong type: the row says so; listing
            // its tasks would only fail.
            continue;
        }
        let queue = swarm.queue(&q.name)?;
        if q.counts.running > 0 {
            let rows = admin::running_tasks(&queue, options.list_limit)?;
            if rows.len() as u64 >= q.counts.running {
                let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                board.retain(&q.name, &ids);
            }
            running.extend(
                rows.into_iter()
                    .map(|row| with_progress(&q.name, row, board)),
            );
        } else {
            board.retain(&q.name, &[]);
        }
        if q.counts.failed > 0 {
            failed.extend(
                admin::failed_tasks(&queue, options.list_limit)?
                    .into_iter()
                    .map(|row| plain(&q.name, row)),
            );
        }
    }
    // Most recent failures first across queues; running by lease deadline.
    failed.sort_by_key(|r| std::cmp::Reverse(r.row.at_ms));
    failed.truncate(options.list_limit);
    running.sort_by_key(|r| r.row.at_ms);
    running.truncate(options.list_limit);
    json(Overview {
        namespace: swarm.config().namespace().to_string(),
        now_ms,
        refresh_ms: u64::try_from(options.refresh.as_millis()).unwrap_or(u64::MAX),
        actions_allowed: options.allow_actions,
        totals,
        nodes,
        queues,
        running,
        failed,
        locks: admin::locks(swarm)?,
        semaphores: admin::semaphores(swarm)?,
        clusters: admin::clusters(swarm)?,
        trackers: admin::trackers(swarm)?,
    })
}

fn plain(queue: &str, row: TaskRow) -> QueuedRow {
    QueuedRow {
        queue: queue.to_string(),
        row,
        progress: None,
        progress_age_ms: None,
    }
}

fn with_progress(queue: &str, row: TaskRow, board: &ProgressBoard) -> QueuedRow {
    let report = board.get(queue, &row.id);
    let mut out = plain(queue, row);
    if let Some(r) = report {
        out.progress = Some(r.data);
        out.progress_age_ms =
            Some(u64::try_from(r.received.elapsed().as_millis()).unwrap_or(u64::MAX));
    }
    out
}

pub(crate) fn nodes(swarm: &Redswarm) -> Result<Value> {
    json(admin::nodes(swarm)?)
}

pub(crate) fn queues(swarm: &Redswarm) -> Result<Value> {
    json(admin::queues(swarm)?)
}

pub(crate) fn queue(swarm: &Redswarm, name: &str) -> Result<Value> {
    json(admin::queue_status(&swarm.queue(name)?)?)
}

pub(crate) fn failed(swarm: &Redswarm, name: &str, limit: usize) -> Result<Value> {
    json(admin::failed_tasks(&swarm.queue(name)?, limit)?)
}

pub(crate) fn running(
    swarm: &Redswarm,
    name: &str,
    limit: usize,
    board: &ProgressBoard,
) -> Result<Value> {
    let rows = admin::running_tasks(&swarm.queue(name)?, limit)?;
    json(
        rows.into_iter()
            .map(|row| with_progress(name, row, board))
            .collect::<Vec<_>>(),
    )
}

pub(crate) fn locks(swarm: &Redswarm) -> Result<Value> {
    json(admin::locks(swarm)?)
}

pub(crate) fn semaphores(swarm: &Redswarm) -> Result<Value> {
    json(admin::semaphores(swarm)?)
}

pub(crate) fn clusters(swarm: &Redswarm) -> Result<Value> {
    json(admin::clusters(swarm)?)
}

pub(crate) fn trackers(swarm: &Redswarm) -> Result<Value> {
    json(admin::trackers(swarm)?)
}

/// Re-queues one failed task through the same fenced script as
/// `redswarm retry`: 200 when re-queued, 404 for no such task, 409 for a
/// task that is not failed (nothing changed then).
pub(crate) fn retry(swarm: &Redswarm, name: &str, id: &str) -> Result<(u16, Value)> {
    let queue = swarm.queue(name)?;
    let outcome = admin::retry_task(&queue, id)?;
    log::info!("status server: retry of task {id} in queue {name}: {outcome:?}");
    let status = match outcome {
        RetryOutcome::Requeued => 200,
        RetryOutcome::Missing => 404,
        RetryOutcome::NotFailed => 409,
    };
    let body = serde_json::json!({ "queue": name, "task": id, "outcome": outcome });
    Ok((status, body))
}
