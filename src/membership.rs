//! Membership: the live and lapsed nodes of a namespace, as the heartbeat
//! records them (`{ns:nodes}` by deadline, plus one info hash per node).

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;

use crate::error::{Error, Result};
use crate::scripts::lua_script;
use crate::store::Store;

lua_script!(NODE_LIST, "node_list.lua");

/// A node as recorded in the membership set.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// for node in swarm.live_nodes()? {
///     log::info!("{} on {} pid {}", node.id, node.host, node.pid);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time (ms since the epoch, host clock; informational).
    pub started_ms: u64,
    /// Address its peer-ping listener advertises, if any.
    pub peer_addr: Option<String>,
    /// Membership deadline (ms, Redis clock).
    pub deadline_ms: u64,
}

/// The nodes whose membership is live (`alive`) or lapsed.
pub(crate) fn nodes(store: &Arc<Store>, alive: bool) -> Result<Vec<NodeInfo>> {
    let keys = &store.keys;
    let mut conn = store.conn()?;
    let reply: Vec<Value> = crate::scripts::invoke(
        NODE_LIST
            .prepare()
            .key(keys.nodes())
            .arg(if alive { "1" } else { "0" })
            .arg(keys.node_info("")),
        &mut *conn,
    )?;
    let key = keys.nodes();
    reply
        .into_iter()
        .skip(1)
        .map(|v| parse_node(&key, v))
        .collect()
}

pub(crate) fn parse_node(key: &str, v: Value) -> Result<NodeInfo> {
    let bad = |why: &str| Error::corrupt(key, format!("node entry: {why}"));
    let (id, deadline, fields): (String, String, HashMap<String, String>) =
        redis::from_redis_value(v).map_err(|e| bad(&e.to_string()))?;
    Ok(NodeInfo {
        host: fields.get("host").cloned().unwrap_or_default(),
        pid: fields.get("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
        started_ms: fields
            .get("started")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        peer_addr: fields.get("peer").cloned(),
        deadline_ms: deadline
            .parse::<f64>()
            .map(|d| d as u64)
            .map_err(|e| bad(&e.to_string()))?,
        id,
    })
}
