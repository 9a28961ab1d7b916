//! The task swarm: a reliable task queue, workers on a thread pool,
//! monitors that heal what dead workers leave behind, task events and
//! control over pub/sub, and partition awareness (task-swarm's seed).
//!
//! - [`Queue`]: push tasks (priority, delay, attempts, timeout, backoff),
//!   inspect, cancel, re-queue failed ones, delete, subscribe to events.
//! - [`SwarmWorker`]: N threads; a task is claimed only when a thread is
//!   free, by one script that moves it into the running set with a lease
//!   and a fresh fencing token. The heartbeat renews the leases of all
//!   running tasks in one batched call per beat.
//! - [`Monitor`]: re-queues tasks whose lease ran out (dead, hung or cut-off
//!   workers). Workers do the same opportunistically, so a deployment
//!   without a monitor still heals.
//!
//! Delivery is at-least-once: a task that was pushed is, until it ends, in
//! exactly one of the ready, delayed or running sets (each transition is one
//! script that checks everything it reads before its first write), so a
//! crash at any instruction loses nothing. A task runs twice only when its
//! worker lost its lease while still running it (paused, cut off, or slower
//! than its lease without renewals); every claim's fencing token is higher
//! than the ones before (also across a Redis restart that lost data), and
//! the stale run's completion is rejected by it.
//!
//! Outages are not the task's fault. Handler failures (and timeouts) count
//! against [`TaskOptions::max_attempts`]; runs lost with their worker count
//! against the separate, larger [`TaskOptions::max_lost_runs`] (the guard
//! against a task that kills every worker it touches), and
//! [`TaskInfo::failed_by`] says which one ended a failed task. A claim whose
//! reply was lost is recovered by its token; a finished result is reported
//! until Redis takes it; a worker without peers to ask keeps its tasks
//! through a Redis restart shorter than the lease. Cancellation is state in
//! Redis that every transition honours, not only a message.

mod claim;
mod context;
mod monitor;
mod queue;
pub(crate) mod task;
mod worker;

pub use context::{StopReason, TaskContext};
pub use monitor::{Monitor, MonitorStats};
pub use queue::{decode_events, EventStream, Queue, QueueCounts, TaskSet};
pub use task::{
    EventKind, FailedBy, TaskEvent, TaskInfo, TaskOptions, TaskOutcome, TaskState,
    DEFAULT_MAX_BACKOFF, DEFAULT_MAX_LOST_RUNS, MAX_BACKOFF_LIMIT,
};
pub use worker::{
    Finished, FinishedHow, SwarmWorker, WorkerOptions, FINISHED_KEEP, SHUTDOWN_MARGIN,
};
