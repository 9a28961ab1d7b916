//! # redswarm
//!
//! Synchronous coordination of work across processes and hosts through
//! Redis: distributed locks and semaphores, fan-out of in-flight work, paired
//! primary/backup workers, a chunk tracker, job clusters, and a
//! self-healing task swarm. No async runtime:
//! blocking connections from an r2d2 pool, a fixed thread pool, a pub/sub
//! thread and a heartbeat thread, with results and events delivered over
//! crossbeam channels.
//!
//! Start with [`Redswarm::connect`]:
//!
//! ```no_run
//! # fn main() -> redswarm::Result<()> {
//! let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
//! log::info!("node {} is up", swarm.node_id());
//! # Ok(()) }
//! ```
//!
//! Layers point one way: the **store** ([`Config`], [`keys`], scripts,
//! [`Error`]) under the **runtime** core (the pool, the pub/sub
//! [`Subscription`]s, the heartbeat with its leases, the peer mesh) under
//! the features, with [`Redswarm`] a thin facade on top.
#![deny(missing_docs)]

mod acl;
pub mod admin;
pub mod cluster;
mod config;
mod connection;
mod error;
mod fanout;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod grant;
mod handle;
mod health;
mod heartbeat;
pub mod keys;
mod lease;
mod lock;
mod membership;
mod multilock;
mod paired;
mod peer;
mod redis_cluster;
mod runtime;
mod scripts;
mod semaphore;
mod sentinel;
mod store;
mod subscriber;
pub mod swarm;
mod threadpool;
mod tls;
mod tracker;
mod util;
#[cfg(feature = "web")]
pub mod web;

pub use acl::{acl_rules, ACL_COMMANDS};
pub use cluster::{
    ClusterEvent, ClusterWorker, ClusterWorkerOptions, DeleteReason, Job, JobId, JobInfo, Master,
    MasterOptions, WorkerInfo,
};
pub use config::{Config, ConfigBuilder};
pub use connection::Connection;
pub use error::{Error, Result};
pub use fanout::{Completer, Fanout, FanoutError, Push, Waited, Waiter};
pub use handle::Redswarm;
pub use health::{Health, PartitionState};
pub use lease::LeaseLost;
pub use lock::{LockGuard, LockOptions};
pub use membership::NodeInfo;
pub use multilock::{MultiLockGuard, MultiLockOptions};
pub use paired::{Paired, PairedJob, PairedOutcome, PairedRun, PairedTask};
pub use semaphore::{Permit, Semaphore};
pub use store::PooledConnection;
pub use subscriber::{Message, SubEvent, Subscription};
pub use swarm::{
    decode_events, EventKind, FailedBy, Finished, FinishedHow, Monitor, MonitorStats, Queue,
    QueueCounts, StopReason, SwarmWorker, TaskContext, TaskEvent, TaskInfo, TaskOptions,
    TaskOutcome, TaskSet, TaskState, WorkerOptions,
};
pub use tracker::{
    ChunkLock, CloseOptions, Closed, Consumer, Consuming, DoneOutcome, Released, TrackedTask,
    Tracker, TrackerOptions, TrackerStats, TrackerTaskState, Unlocked,
};
pub use util::MAX_TTL;

/// The README's code blocks, compiled as doc tests so that they cannot
/// drift from the API (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
