//! Job clusters (assemblage's seed): long-lived jobs — a stream to follow,
//! a connection to hold, a shard to own — spread over live workers, moved
//! when a worker dies or leaves, kept while no master is up.
//!
//! - [`Master`]: add, delete and list jobs and workers. Any number may run;
//!   exactly one at a time holds the *master seat* (a lease the heartbeat
//!   renews) and assigns; the others stand by and take the seat when it is
//!   freed (at once) or its lease lapses. Adding and deleting work through
//!   any master, even while none holds the seat.
//! - [`ClusterWorker`]: joins with a membership lease and receives
//!   [`ClusterEvent`]s — `Added(job)`, `Deleted { id, token, reason }`,
//!   `Closed` — for the jobs assigned to it. [`Job::delete`] deletes its own
//!   job; [`ClusterWorker::terminate`] hands every job back at once.
//!
//! How it works: every change is one script (`src/scripts/cluster_*.lua`)
//! on the cluster's keys (one hash tag, see [`keys`](crate::keys)). An added
//! job waits in the pending set; the active master's sweep removes workers
//! whose lease lapsed (their jobs back to pending), then gives each pending
//! job, in arrival order, to the least-loaded live worker with room, with a
//! fresh fencing token, and publishes `add` on that worker's channel. The
//! master sweeps when woken (a job added or deleted, a worker joined or
//! left) and at the earliest worker lease deadline — not on a short poll —
//! and at least every `recheck`. A worker turns its channel's messages into
//! events and reconciles with Redis every `reconcile` interval and after a
//! pub/sub reconnect, so a lost message costs at most one interval.
//!
//! Timing (with the defaults: heartbeat 1 s, worker lease 3 s, master lease
//! 3 s):
//! - a dead worker's jobs are reassigned within its lease after its last
//!   renewal, plus one sweep (the master wakes at that deadline): ≤ 3 s,
//!   well within 5 s — if a master is active. If the active master dies at
//!   the same time, add the master lease for a standby to take over;
//! - a worker cut off from Redis is told (`Deleted` with
//!   [`DeleteReason::LeaseLost`] for each job) at its lease's local
//!   deadline, `lease − min(heartbeat/2, lease/4)` after its last renewal
//!   was sent — before the lease can lapse in Redis and the job go to
//!   someone else. So a job runs on two live workers only as long as the
//!   first takes to stop after that event (and during a rebalancing move),
//!   and the fencing token tells the two apart;
//! - a worker that lost its lease joins again on its own (unless
//!   [`ClusterWorkerOptions::rejoin`] is off) and gets jobs like a new one;
//! - with no master active, workers keep their jobs and nothing is
//!   reassigned; added jobs wait and are assigned when a master takes the
//!   seat.

mod master;
mod records;
mod worker;

pub use master::{Master, MasterOptions};
pub use records::{DeleteReason, JobId, JobInfo, WorkerInfo};
pub use worker::{ClusterEvent, ClusterWorker, ClusterWorkerOptions, Job};
