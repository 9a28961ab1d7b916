//! Job cluster rows: jobs, pending jobs, the master's lease, jobs per
//! worker.

use std::collections::HashMap;

use serde::Serialize;

use super::{left_ms, scan_names, score_ms, time_ms, wrong_type, RedisTime, Scored, MAX_LISTED};
use crate::error::Result;
use crate::handle::Redswarm;
use crate::keys::Family;

/// One worker of a job cluster.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for c in redswarm::admin::clusters(&swarm)? {
///     for w in &c.workers { println!("{}/{}: {} jobs", c.name, w.id, w.jobs); }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterWorkerStatus {
    /// Worker id.
    pub id: String,
    /// Node it runs on, as it registered.
    pub node: Option<String>,
    /// Most jobs it takes (0: no limit).
    pub capacity: u64,
    /// Jobs assigned to it now.
    pub jobs: u64,
    /// Membership lease left (ms; negative: lapsed, not yet reaped).
    pub lease_left_ms: i64,
}

/// A job cluster as [`clusters`] sees it.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for c in redswarm::admin::clusters(&swarm)? {
///     println!("{}: {} jobs, {} pending, master: {}", c.name, c.jobs, c.pending, c.master_lease_left_ms.is_some());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// Cluster id.
    pub name: String,
    /// Jobs in the cluster.
    pub jobs: u64,
    /// Jobs waiting for a worker.
    pub pending: u64,
    /// Lease left of the active master (ms), `None` when no master is up.
    pub master_lease_left_ms: Option<i64>,
    /// Its workers (at most [`MAX_LISTED`]), by lease deadline.
    pub workers: Vec<ClusterWorkerStatus>,
    /// Why the cluster could not be read, if so.
    pub problem: Option<String>,
}

/// Every job cluster of the namespace (at most [`MAX_LISTED`], by name).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let clusters = redswarm::admin::clusters(&swarm)?;
/// # Ok(()) }
/// ```
pub fn clusters(swarm: &Redswarm) -> Result<Vec<ClusterStatus>> {
    let rt = swarm.runtime();
    let names = scan_names(rt, Family::Cluster)?;
    let mut conn = rt.conn()?;
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let k = rt.keys().cluster(&name)?;
        let mut row = ClusterStatus {
            name,
            jobs: 0,
            pending: 0,
            master_lease_left_ms: None,
            workers: Vec::new(),
            problem: None,
        };
        if let Some(p) = wrong_type(
            &mut conn,
            &[
                (&k.jobs, "zset"),
                (&k.pending, "zset"),
                (&k.workers, "zset"),
                (&k.master, "string"),
            ],
        )? {
            row.problem = Some(p);
            rows.push(row);
            continue;
        }
        let (time, jobs, pending, master_ttl, workers): (RedisTime, u64, u64, i64, Scored) =
            redis::pipe()
                .cmd("TIME")
                .zcard(&k.jobs)
                .zcard(&k.pending)
                .pttl(&k.master)
                .cmd("ZRANGE")
                .arg(&k.workers)
                .arg(0)
                .arg(MAX_LISTED - 1)
                .arg("WITHSCORES")
                .query(&mut *conn)?;
        let now = time_ms(time);
        row.jobs = jobs;
        row.pending = pending;
        // PTTL: -2 no key, -1 no expiry (not something redswarm writes).
        row.master_lease_left_ms = (master_ttl >= 0).then_some(master_ttl);
        if master_ttl == -1 {
            row.problem = Some(format!("`{}` has no TTL: nothing will expire it", k.master));
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (w, _) in &workers {
            pipe.hgetall(k.worker(w)).hlen(k.worker_jobs(w));
        }
        let details: Vec<redis::RedisResult<redis::Value>> = if workers.is_empty() {
            Vec::new()
        } else {
            pipe.query(&mut *conn)?
        };
        let mut details = details.into_iter();
        for (id, deadline) in workers {
            let record = details.next();
            let jobs = details.next();
            let record: Option<HashMap<String, String>> = match record {
                Some(Ok(v)) => redis::from_redis_value(v).ok(),
                _ => None,
            };
            let jobs: Option<u64> = match jobs {
                Some(Ok(v)) => redis::from_redis_value(v).ok(),
                _ => None,
            };
            if record.is_none() || jobs.is_none() {
                row.problem = Some(format!(
                    "worker `{id}`: `{}` or `{}` is not a hash",
                    k.worker(&id),
                    k.worker_jobs(&id)
                ));
            }
            let record = record.unwrap_or_default();
            row.workers.push(ClusterWorkerStatus {
                node: record.get("node").cloned(),
                capacity: record
                    .get("capacity")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
                jobs: jobs.unwrap_or(0),
                lease_left_ms: left_ms(score_ms(deadline), now),
                id,
            });
        }
        rows.push(row);
    }
    Ok(rows)
}
