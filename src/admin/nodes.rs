//! Node rows: membership, where each node answers pings, and what it
//! holds (locks, permits, running tasks, cluster jobs).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{clusters, left_ms, locks, scan_names, semaphores, wrong_type, MAX_LISTED};
use crate::error::Result;
use crate::handle::Redswarm;
use crate::keys::Family;
use crate::membership::NodeInfo;

/// Whether a node's membership lease is live, as Redis sees it.
///
/// A node cut off from Redis cannot say so there: it shows as
/// [`NodeState::Lapsed`] once its lease runs out, like a dead one. Its own
/// view is [`Redswarm::partition_state`].
///
/// ```
/// assert_eq!(serde_json::to_string(&redswarm::admin::NodeState::Live).unwrap(), "\"live\"");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Beating: its lease is live.
    Live,
    /// Its lease ran out recently (crashed, hung, or cut off from Redis).
    Lapsed,
}

/// What one node holds now.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for n in redswarm::admin::nodes(&swarm)? {
///     println!("{}: locks {:?}, {} tasks", n.id, n.holds.locks, n.holds.running_tasks);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Holdings {
    /// Names of the locks it holds.
    pub locks: Vec<String>,
    /// Names of the semaphores it holds a permit of (once per permit).
    pub permits: Vec<String>,
    /// Tasks it is running (over every queue).
    pub running_tasks: u64,
    /// Cluster jobs assigned to its cluster workers.
    pub cluster_jobs: u64,
}

/// A node as [`nodes`] sees it.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for n in redswarm::admin::nodes(&swarm)? {
///     println!("{} on {} pid {}: {:?}", n.id, n.host, n.pid, n.state);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time (ms since the epoch, the node's clock).
    pub started_ms: u64,
    /// Time since it started (ms; Redis's clock minus the node's start
    /// time, so only as good as the two clocks agree).
    pub uptime_ms: u64,
    /// Where its peer-ping listener answers, if it has one.
    pub peer_addr: Option<String>,
    /// Live or lapsed.
    pub state: NodeState,
    /// Membership lease left (ms; negative: lapsed that long ago).
    pub lease_left_ms: i64,
    /// True for the node of the handle that made the listing.
    pub is_self: bool,
    /// What it holds.
    pub holds: Holdings,
}

/// Live nodes, then recently lapsed ones (kept for ten node TTLs), each
/// by id, with what they hold. Reads every lock, semaphore, running set and
/// cluster of the namespace (see the module docs for the cost).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let live = redswarm::admin::nodes(&swarm)?
///     .into_iter()
///     .filter(|n| n.state == redswarm::admin::NodeState::Live)
///     .count();
/// # Ok(()) }
/// ```
pub fn nodes(swarm: &Redswarm) -> Result<Vec<NodeStatus>> {
    let now = swarm.redis_time_ms()?;
    let mut holds: BTreeMap<String, Holdings> = BTreeMap::new();
    for l in locks(swarm)? {
        if let Some(node) = l.holder_node {
            holds.entry(node).or_default().locks.push(l.name);
        }
    }
    for s in semaphores(swarm)? {
        for p in s.permits {
            if let Some(node) = p.node {
                holds.entry(node).or_default().permits.push(s.name.clone());
            }
        }
    }
    for (node, n) in running_per_node(swarm)? {
        holds.entry(node).or_default().running_tasks += n;
    }
    for c in clusters(swarm)? {
        for w in c.workers {
            if let Some(node) = w.node {
                holds.entry(node).or_default().cluster_jobs += w.jobs;
            }
        }
    }
    let mut live = swarm.live_nodes()?;
    let mut lapsed = swarm.dead_nodes()?;
    live.sort_by(|a, b| a.id.cmp(&b.id));
    lapsed.sort_by(|a, b| a.id.cmp(&b.id));
    let row = |n: NodeInfo, state: NodeState| NodeStatus {
        uptime_ms: now.saturating_sub(n.started_ms),
        lease_left_ms: left_ms(n.deadline_ms, now),
        is_self: n.id == swarm.node_id(),
        holds: holds.get(&n.id).cloned().unwrap_or_default(),
        state,
        id: n.id,
        host: n.host,
        pid: n.pid,
        started_ms: n.started_ms,
        peer_addr: n.peer_addr,
    };
    Ok(live
        .into_iter()
        .map(|n| row(n, NodeState::Live))
        .chain(lapsed.into_iter().map(|n| row(n, NodeState::Lapsed)))
        .collect())
}

/// Running tasks per worker node, over every queue (the first
/// [`MAX_LISTED`] of each running set). Unreadable queues and records are
/// skipped: the queue listing reports them.
fn running_per_node(swarm: &Redswarm) -> Result<BTreeMap<String, u64>> {
    let rt = swarm.runtime();
    let mut per_node = BTreeMap::new();
    let mut conn = rt.conn()?;
    for name in scan_names(rt, Family::Queue)? {
        let k = rt.keys().queue(&name)?;
        if wrong_type(&mut conn, &[(&k.running, "zset")])?.is_some() {
            continue;
        }
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&k.running)
            .arg(0)
            .arg(MAX_LISTED - 1)
            .query(&mut *conn)?;
        if ids.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for id in &ids {
            pipe.hget(k.task(id), "worker");
        }
        let workers: Vec<redis::RedisResult<Option<String>>> = pipe.query(&mut *conn)?;
        for worker in workers.into_iter().flatten().flatten() {
            *per_node.entry(worker).or_insert(0) += 1;
        }
    }
    Ok(per_node)
}
