//! The operator's view: what is in Redis right now, read without joining
//! any work, plus the few administrative writes the `redswarm` tool needs.
//!
//! Every listing returns plain rows that are [`Serialize`](serde::Serialize),
//! so a command-line tool (`--json`) and a status web page share them.
//!
//! | call | rows |
//! |---|---|
//! | [`nodes`] | live and recently lapsed nodes, with what each holds |
//! | [`queues`] / [`queue_status`] | task counts per set, ended/failed in the last minute |
//! | [`failed_tasks`] / [`running_tasks`] | tasks of one set, with their record |
//! | [`locks`] | held locks: holder node, TTL left, fencing token, fair-mode waiters |
//! | [`semaphores`] | live permits per semaphore, with the same |
//! | [`clusters`] | job clusters: jobs, pending, master, jobs per worker |
//! | [`trackers`] | chunk trackers: released, processing, locked, counters |
//! | [`retry_task`] / [`purge`] | re-queue one failed task; delete ended/failed tasks in bounded batches |
//!
//! **Discovery** walks the keyspace with `SCAN` (never `KEYS`) using the
//! patterns of [`Keys::scan_pattern`](crate::keys::Keys::scan_pattern),
//! `COUNT` [`SCAN_COUNT`] per round trip, and stops at [`MAX_LISTED`]
//! names per listing (sorted by name; a capped listing holds the first
//! ones found, not the first by name). Its cost grows with the whole
//! keyspace, so it is for people and status pages, not for hot paths.
//!
//! **Corrupt data** (a key of the wrong type, an unreadable record) is
//! reported in its row's `problem`, never as an error of the whole
//! listing and never as a panic. Errors talking to Redis are errors.
//!
//! Times are milliseconds; "left" values are measured against Redis's clock
//! (negative: that long ago).
//!
//! ```no_run
//! # fn main() -> redswarm::Result<()> {
//! let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
//! for q in redswarm::admin::queues(&swarm)? {
//!     log::info!("{}: {} ready, {} failed in the last minute", q.name, q.counts.ready, q.failed_last_minute);
//! }
//! # Ok(()) }
//! ```

mod actions;
mod clusters;
mod locks;
mod nodes;
mod queues;
mod trackers;

pub use actions::{purge, retry_task, PurgeSet, RetryOutcome};
pub use clusters::{clusters, ClusterStatus, ClusterWorkerStatus};
pub use locks::{locks, semaphores, LockStatus, PermitStatus, SemaphoreStatus};
pub use nodes::{nodes, Holdings, NodeState, NodeStatus};
pub use queues::{
    failed_tasks, queue_status, queues, running_tasks, QueueStatus, TaskDetails, TaskRow,
};
pub use trackers::{trackers, TrackerStatus};

use std::collections::BTreeSet;

use crate::connection::NodeAddr;
use crate::error::Result;
use crate::keys::Family;
use crate::runtime::Runtime;
use crate::store::PooledConnection;

/// Most names one listing returns (the first ones by name).
pub const MAX_LISTED: usize = 1000;

/// Keys Redis looks at per `SCAN` round trip.
pub const SCAN_COUNT: usize = 1000;

/// How far back the per-minute figures look, in ms.
const MINUTE_MS: u64 = 60_000;

/// The names of every `family` thing in the namespace, sorted, at most
/// [`MAX_LISTED`]. Keys whose names are not UTF-8 or not valid names are
/// skipped (nothing redswarm builds looks like that).
fn scan_names(rt: &Runtime, family: Family) -> Result<Vec<String>> {
    let keys = rt.keys();
    let pattern = keys.scan_pattern(family);
    let mut conn = rt.conn()?;
    let mut names = BTreeSet::new();
    // SCAN sees one node's keys: on a cluster, visit every primary.
    let primaries = rt.store().dedicated.primaries()?;
    let nodes: Vec<NodeAddr> = if primaries.is_empty() {
        vec![NodeAddr::default()]
    } else {
        primaries
    };
    'nodes: for node in &nodes {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = conn.query_at_node(
                node,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT),
            )?;
            for raw in batch {
                if let Some(name) = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|k| keys.name_in_key(family, k))
                {
                    names.insert(name);
                }
            }
            // SCAN returns names in no order, so a capped listing holds the
            // first MAX_LISTED found (then sorted), not the first by name.
            if names.len() >= MAX_LISTED {
                break 'nodes;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if names.len() > MAX_LISTED {
        log::warn!(
            "admin listing of {}: more than {MAX_LISTED} found, showing {MAX_LISTED}",
            family.word()
        );
    }
    Ok(names.into_iter().take(MAX_LISTED).collect())
}

/// Checks that each key is absent or of the expected type (`TYPE`, one
/// round trip); returns the first mismatch as a sentence naming the key.
fn wrong_type(conn: &mut PooledConnection, expect: &[(&str, &str)]) -> Result<Option<String>> {
    let mut pipe = redis::pipe();
    for (key, _) in expect {
        pipe.cmd("TYPE").arg(*key);
    }
    let types: Vec<String> = pipe.query(&mut **conn)?;
    Ok(expect
        .iter()
        .zip(types)
        .find(|((_, want), got)| got != "none" && got != want)
        .map(|((key, want), got)| format!("`{key}` is a {got}, not a {want}")))
}

/// The reply of `TIME`: seconds and microseconds.
type RedisTime = (u64, u64);

/// A `ZRANGE .. WITHSCORES` reply.
type Scored = Vec<(String, f64)>;

/// A `TIME` reply in ms.
fn time_ms((secs, micros): RedisTime) -> u64 {
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// `deadline - now` as a signed number of ms.
fn left_ms(deadline: u64, now: u64) -> i64 {
    if deadline >= now {
        i64::try_from(deadline - now).unwrap_or(i64::MAX)
    } else {
        i64::try_from(now - deadline).map_or(i64::MIN, |d| -d)
    }
}

/// A Redis sorted-set score (a float in text) as whole ms.
fn score_ms(score: f64) -> u64 {
    if score.is_finite() && score > 0.0 {
        score as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_ms_is_signed_and_saturates() {
        assert_eq!(left_ms(1500, 1000), 500);
        assert_eq!(left_ms(1000, 1500), -500);
        assert_eq!(left_ms(u64::MAX, 0), i64::MAX);
        assert_eq!(score_ms(f64::NAN), 0);
        assert_eq!(score_ms(-3.0), 0);
        assert_eq!(score_ms(1234.9), 1234);
    }
}
