//! Chunk tracker rows: the figures of `Tracker::stats`, read without
//! opening a tracker (which would start its sweeper).

use serde::Serialize;

use super::{scan_names, wrong_type};
use crate::error::Result;
use crate::handle::Redswarm;
use crate::keys::Family;

/// A chunk tracker as [`trackers`] sees it.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for t in redswarm::admin::trackers(&swarm)? {
///     println!("{}: {} released, {} processing", t.name, t.released, t.processing);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackerStatus {
    /// Tracker name.
    pub name: String,
    /// Tasks released and waiting for a consumer.
    pub released: u64,
    /// Tasks a consumer is processing now.
    pub processing: u64,
    /// Chunk locks held now.
    pub locked: u64,
    /// Tasks completed (ever; a counter).
    pub completed: u64,
    /// Tasks failed after their last attempt (ever; a counter).
    pub failed: u64,
    /// Why the tracker could not be read, if so.
    pub problem: Option<String>,
}

/// Every chunk tracker of the namespace (at most
/// [`MAX_LISTED`](super::MAX_LISTED), by name).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let trackers = redswarm::admin::trackers(&swarm)?;
/// # Ok(()) }
/// ```
pub fn trackers(swarm: &Redswarm) -> Result<Vec<TrackerStatus>> {
    let rt = swarm.runtime();
    let names = scan_names(rt, Family::Tracker)?;
    let mut conn = rt.conn()?;
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let k = rt.keys().tracker(&name)?;
        let mut row = TrackerStatus {
            name,
            released: 0,
            processing: 0,
            locked: 0,
            completed: 0,
            failed: 0,
            problem: None,
        };
        if let Some(p) = wrong_type(
            &mut conn,
            &[
                (&k.released, "list"),
                (&k.processing, "zset"),
                (&k.locks, "zset"),
                (&k.stats, "hash"),
            ],
        )? {
            row.problem = Some(p);
            rows.push(row);
            continue;
        }
        let (released, processing, locked, counters): (u64, u64, u64, Vec<Option<String>>) =
            redis::pipe()
                .llen(&k.released)
                .zcard(&k.processing)
                .zcard(&k.locks)
                .cmd("HMGET")
                .arg(&k.stats)
                .arg("completed")
                .arg("failed")
                .query(&mut *conn)?;
        row.released = released;
        row.processing = processing;
        row.locked = locked;
        let mut counter = |i: usize, field: &str| -> u64 {
            match counters.get(i).cloned().flatten() {
                None => 0,
                Some(v) => v.parse().unwrap_or_else(|_| {
                    row.problem = Some(format!(
                        "`{}` field `{field}` is not a number: {v:?}",
                        k.stats
                    ));
                    0
                }),
            }
        };
        let completed = counter(0, "completed");
        let failed = counter(1, "failed");
        row.completed = completed;
        row.failed = failed;
        rows.push(row);
    }
    Ok(rows)
}
