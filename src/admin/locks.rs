//! Lock and semaphore rows: who holds what, for how long, with which
//! fencing token, and how many fair-mode waiters queue behind.
//!
//! The holder node is read from the owner token (`<node>:<random>`, see
//! `util::owner_token`); a token of another form (a older redswarm) shows
//! no node.

use std::collections::HashMap;

use serde::Serialize;

use super::{left_ms, scan_names, score_ms, time_ms, wrong_type, RedisTime, Scored};
use crate::error::Result;
use crate::handle::Redswarm;
use crate::keys::Family;
use crate::util::token_node;

/// A held lock as [`locks`] sees it.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for l in redswarm::admin::locks(&swarm)? {
///     println!("{} held by {:?}, token {:?}", l.name, l.holder_node, l.fencing_token);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockStatus {
    /// Lock name.
    pub name: String,
    /// Node of the holder (`None`: free by now, or a token without a node).
    pub holder_node: Option<String>,
    /// TTL left (ms); `None` when the lock was released meanwhile (or the
    /// key has no TTL, which `problem` then reports).
    pub ttl_left_ms: Option<i64>,
    /// The holder's fencing token (the counter's value while it is held).
    pub fencing_token: Option<u64>,
    /// Waiters in the fair-mode queue (plain waiters wait on pub/sub and
    /// are not recorded).
    pub waiters: u64,
    /// Why the lock could not be read, if so.
    pub problem: Option<String>,
}

/// Every held lock of the namespace (at most
/// [`MAX_LISTED`](super::MAX_LISTED), by name).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let held = redswarm::admin::locks(&swarm)?.len();
/// # Ok(()) }
/// ```
pub fn locks(swarm: &Redswarm) -> Result<Vec<LockStatus>> {
    let rt = swarm.runtime();
    let names = scan_names(rt, Family::Lock)?;
    let mut conn = rt.conn()?;
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let k = rt.keys().lock(&name)?;
        let mut row = LockStatus {
            name,
            holder_node: None,
            ttl_left_ms: None,
            fencing_token: None,
            waiters: 0,
            problem: None,
        };
        if let Some(p) = wrong_type(
            &mut conn,
            &[
                (&k.owner, "string"),
                (&k.fence, "string"),
                (&k.queue, "zset"),
            ],
        )? {
            row.problem = Some(p);
            rows.push(row);
            continue;
        }
        let (owner, pttl, fence, waiters): (Option<String>, i64, Option<String>, u64) =
            redis::pipe()
                .get(&k.owner)
                .pttl(&k.owner)
                .get(&k.fence)
                .zcard(&k.queue)
                .query(&mut *conn)?;
        row.waiters = waiters;
        if let Some(owner) = owner {
            row.holder_node = token_node(&owner).map(str::to_string);
            // PTTL: -1 no expiry (redswarm always sets one), -2 gone.
            row.ttl_left_ms = (pttl >= 0).then_some(pttl);
            match fence.map(|f| f.parse::<u64>()) {
                Some(Ok(f)) => row.fencing_token = Some(f),
                Some(Err(_)) => row.problem = Some(format!("`{}` is not a whole number", k.fence)),
                None => {}
            }
            if pttl == -1 {
                row.problem = Some(format!("`{}` has no TTL: nothing will expire it", k.owner));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// One live permit of a semaphore.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for s in redswarm::admin::semaphores(&swarm)? {
///     for p in &s.permits { println!("{}: {:?} for {} ms", s.name, p.node, p.ttl_left_ms); }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PermitStatus {
    /// Node of the holder, if the permit id names one.
    pub node: Option<String>,
    /// Lease left (ms, Redis clock).
    pub ttl_left_ms: i64,
    /// The permit's fencing token, if recorded.
    pub fencing_token: Option<u64>,
}

/// A semaphore as [`semaphores`] sees it.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for s in redswarm::admin::semaphores(&swarm)? {
///     println!("{}: {} permits held, {} waiting", s.name, s.permits.len(), s.waiters);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SemaphoreStatus {
    /// Semaphore name.
    pub name: String,
    /// Live permits, the soonest to expire first (the limit itself is
    /// not stored: each caller passes it).
    pub permits: Vec<PermitStatus>,
    /// Permits whose lease ran out but that no acquire has swept yet.
    pub expired: u64,
    /// Waiters in the fair-mode queue.
    pub waiters: u64,
    /// Why the semaphore could not be read, if so.
    pub problem: Option<String>,
}

/// Every semaphore with permits recorded (at most
/// [`MAX_LISTED`](super::MAX_LISTED), by name).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let sems = redswarm::admin::semaphores(&swarm)?;
/// # Ok(()) }
/// ```
pub fn semaphores(swarm: &Redswarm) -> Result<Vec<SemaphoreStatus>> {
    let rt = swarm.runtime();
    let names = scan_names(rt, Family::Semaphore)?;
    let mut conn = rt.conn()?;
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let k = rt.keys().semaphore(&name)?;
        let mut row = SemaphoreStatus {
            name,
            permits: Vec::new(),
            expired: 0,
            waiters: 0,
            problem: None,
        };
        if let Some(p) = wrong_type(
            &mut conn,
            &[
                (&k.holders, "zset"),
                (&k.grants, "hash"),
                (&k.queue, "zset"),
            ],
        )? {
            row.problem = Some(p);
            rows.push(row);
            continue;
        }
        let (time, holders, grants, waiters): (RedisTime, Scored, HashMap<String, String>, u64) =
            redis::pipe()
                .cmd("TIME")
                .cmd("ZRANGE")
                .arg(&k.holders)
                .arg(0)
                .arg(super::MAX_LISTED - 1)
                .arg("WITHSCORES")
                .hgetall(&k.grants)
                .zcard(&k.queue)
                .query(&mut *conn)?;
        let now = time_ms(time);
        row.waiters = waiters;
        for (id, deadline) in holders {
            let deadline = score_ms(deadline);
            if deadline <= now {
                row.expired += 1;
                continue;
            }
            row.permits.push(PermitStatus {
                node: token_node(&id).map(str::to_string),
                ttl_left_ms: left_ms(deadline, now),
                fencing_token: grants.get(&id).and_then(|f| f.parse().ok()),
            });
        }
        rows.push(row);
    }
    Ok(rows)
}
