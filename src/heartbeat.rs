//! The heartbeat: one thread per handle that renews this node's membership
//! and every lease registered with it, in one pipelined round trip per beat
//! (one `lease_renew` script call per cluster slot).
//!
//! Self-fencing (DESIGN rule 6): each lease remembers when its last
//! successful renewal was *sent* (monotonic clock). Its holder must consider
//! it lost once `ttl - safety` has passed since then, whatever Redis says
//! later; a beat whose renewal fails marks the lease lost early if the next
//! beat would come too late. Holders learn it through
//! [`Lease::is_lost`](crate::lease::Lease) and a channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use redis::Value;

use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseRegistry, LeaseState, LeaseTarget};
use crate::peer::{ping_all, PeerAddr, PeerIdentity};
use crate::scripts::{lua_script, query_pipeline};
use crate::store::Store;
use crate::util::millis;

lua_script!(NODE_BEAT, "node_beat.lua");
lua_script!(NODE_LIST, "node_list.lua");
lua_script!(NODE_LEAVE, "node_leave.lua");
lua_script!(LEASE_RENEW, "lease_renew.lua");

/// The peer list is re-read from Redis every this many beats.
const PEER_REFRESH_BEATS: u64 = 5;

/// Most leases renewed by one script call.
const LEASES_PER_CALL: usize = 256;

/// This node's view of its connection to Redis.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// match swarm.health() {
///     redswarm::Health::Healthy => {}
///     redswarm::Health::LostRedis { since } => log::warn!("no Redis since {since:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The last heartbeat reached Redis.
    Healthy,
    /// Heartbeats have failed since this time.
    LostRedis {
        /// When the first failed beat happened.
        since: SystemTime,
    },
}

/// Whether this node may keep doing leased work (the swarm's partition rule).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// if swarm.partition_state().may_work() { /* keep going */ }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionState {
    /// Redis is reachable.
    Connected,
    /// Redis is unreachable but at least `partition_percentage` of the known
    /// peers answered pings: the outage is Redis's, not ours; keep going.
    RedisLostPeersOk {
        /// Peers that answered.
        answered: usize,
        /// Peers known.
        known: usize,
    },
    /// Redis is unreachable and too few peers answered (or none are
    /// known): this node is cut off and must stop leased work.
    Partitioned {
        /// Peers that answered.
        answered: usize,
        /// Peers known.
        known: usize,
    },
}

impl PartitionState {
    /// True unless [`PartitionState::Partitioned`].
    ///
    /// ```
    /// assert!(redswarm::PartitionState::Connected.may_work());
    /// ```
    pub fn may_work(&self) -> bool {
        !matches!(self, PartitionState::Partitioned { .. })
    }
}

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

struct Shared {
    store: Arc<Store>,
    instance: String,
    started_ms: u64,
    peer_addr: Option<String>,
    identity: PeerIdentity,
    /// Ids and peer-ping addresses of the other live nodes, as last read from Redis.
    peers: Mutex<Vec<PeerAddr>>,
    beats: AtomicU64,
    partition: Arc<Mutex<PartitionState>>,
    partition_watchers: Mutex<Vec<Sender<PartitionState>>>,
    leases: Arc<LeaseRegistry>,
    next_lease: AtomicU64,
    health: Mutex<Health>,
    health_watchers: Mutex<Vec<Sender<Health>>>,
}

/// The heartbeat thread and the lease registry.
pub(crate) struct Heartbeat {
    shared: Arc<Shared>,
    stop: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Heartbeat {
    /// Registers the node with a first beat (failing if another live
    /// process uses the same node id) and starts the thread.
    pub(crate) fn start(store: Arc<Store>, peer_addr: Option<String>) -> Result<Heartbeat> {
        let shared = Arc::new(Shared {
            identity: PeerIdentity {
                namespace: store.config.namespace.clone(),
                node_id: store.node_id.clone(),
                secret: store.config.peer_secret.clone(),
            },
            peers: Mutex::new(Vec::new()),
            beats: AtomicU64::new(0),
            partition: Arc::new(Mutex::new(PartitionState::Connected)),
            partition_watchers: Mutex::new(Vec::new()),
            instance: crate::util::random_id(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            store,
            peer_addr,
            leases: Arc::new(Mutex::new(HashMap::new())),
            next_lease: AtomicU64::new(1),
            health: Mutex::new(Health::Healthy),
            health_watchers: Mutex::new(Vec::new()),
        });
        // The heartbeat has its own connection: a busy pool must never
        // delay lease renewal.
        let mut conn = shared
            .store
            .dedicated
            .open()
            .map_err(|source| Error::Connect {
                url: shared.store.config.masked_url(),
                source,
            })?;
        let mut pipe = redis::pipe();
        pipe.invoke_script(&node_beat(&shared, true));
        let reply: Vec<i64> = query_pipeline(&pipe, &[&NODE_BEAT], &mut conn)?;
        if reply.first() == Some(&-1) {
            return Err(Error::config(
                "node_id",
                format!(
                    "node id `{}` is in use by another live process",
                    shared.store.node_id
                ),
            ));
        }
        let (stop, stop_rx) = unbounded();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("redswarm-heartbeat".into())
            .spawn(move || run(thread_shared, stop_rx, Some(conn)))
            .map_err(|e| Error::Pool(format!("cannot spawn heartbeat thread: {e}")))?;
        Ok(Heartbeat {
            shared,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn lease_state(
        &self,
        id: u64,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
        tolerate_outage: bool,
    ) -> Arc<LeaseState> {
        Arc::new(LeaseState::new(
            id,
            what,
            target,
            ttl,
            self.shared.store.config.heartbeat_interval,
            acquired,
            tolerate_outage.then(|| self.shared.partition.clone()),
        ))
    }

    /// Starts renewing `target` every beat with `ttl`.
    pub(crate) fn register(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
        tolerate_outage: bool,
    ) -> Lease {
        let id = self.shared.next_lease.fetch_add(1, Ordering::Relaxed);
        let state = self.lease_state(id, what, target, ttl, acquired, tolerate_outage);
        self.shared.leases.lock().insert(id, state.clone());
        Lease::new(state, Arc::downgrade(&self.shared.leases))
    }

    /// A lease that is tracked for its local deadline but never renewed
    /// (no auto-extension): it still tells its holder when time is up.
    pub(crate) fn unrenewed(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        Lease::new(
            self.lease_state(0, what, target, ttl, acquired, false),
            Weak::new(),
        )
    }

    pub(crate) fn health(&self) -> Health {
        *self.shared.health.lock()
    }

    pub(crate) fn watch_health(&self) -> Receiver<Health> {
        let (tx, rx) = bounded(64);
        self.shared.health_watchers.lock().push(tx);
        rx
    }

    pub(crate) fn partition_state(&self) -> PartitionState {
        *self.shared.partition.lock()
    }

    pub(crate) fn watch_partition(&self) -> Receiver<PartitionState> {
        let (tx, rx) = bounded(64);
        self.shared.partition_watchers.lock().push(tx);
        rx
    }

    /// The peer addresses this node would ping now.
    pub(crate) fn known_peers(&self) -> Vec<String> {
        self.shared
            .peers
            .lock()
            .iter()
            .map(|p| p.addr.clone())
            .collect()
    }

    pub(crate) fn nodes(&self, alive: bool) -> Result<Vec<NodeInfo>> {
        let keys = &self.shared.store.keys;
        let mut conn = self.shared.store.conn()?;
        let prefix = keys.node_info("");
        let reply: Vec<Value> = crate::scripts::invoke(
            NODE_LIST
                .prepare()
                .key(keys.nodes())
                .arg(if alive { "1" } else { "0" })
                .arg(prefix),
            &mut *conn,
        )?;
        let key = keys.nodes();
        reply
            .into_iter()
            .skip(1)
            .map(|v| parse_node(&key, v))
            .collect()
    }

    /// Stops the thread and removes this node from the membership set.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                log::error!("heartbeat thread panicked");
            }
            let keys = &self.shared.store.keys;
            let node = &self.shared.store.node_id;
            let r = self.shared.store.conn().and_then(|mut c| {
                crate::scripts::invoke::<i64>(
                    NODE_LEAVE
                        .prepare()
                        .key(keys.nodes())
                        .key(keys.node_info(node))
                        .arg(node)
                        .arg(&self.shared.instance),
                    &mut *c,
                )
            });
            if let Err(e) = r {
                log::debug!("could not deregister node {node}: {e}");
            }
        }
    }
}

fn node_beat(shared: &Shared, first: bool) -> redis::ScriptInvocation<'static> {
    let store = &shared.store;
    let mut inv = NODE_BEAT.prepare();
    inv.key(store.keys.nodes())
        .key(store.keys.node_info(&store.node_id))
        .arg(&store.node_id)
        .arg(millis(store.config.node_ttl))
        .arg(&shared.instance)
        .arg(if first { "1" } else { "0" })
        .arg("host")
        .arg(crate::util::hostname())
        .arg("pid")
        .arg(std::process::id())
        .arg("started")
        .arg(shared.started_ms);
    if let Some(addr) = &shared.peer_addr {
        inv.arg("peer").arg(addr);
    }
    inv
}

fn run(shared: Arc<Shared>, stop: Receiver<()>, mut conn: Option<redis::Connection>) {
    let interval = shared.store.config.heartbeat_interval;
    loop {
        let started = Instant::now();
        beat(&shared, started, &mut conn);
        let left = interval.saturating_sub(started.elapsed());
        match stop.recv_timeout(left) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

fn beat(shared: &Shared, sent: Instant, conn: &mut Option<redis::Connection>) {
    let leases: Vec<Arc<LeaseState>> = shared
        .leases
        .lock()
        .values()
        .filter(|l| l.lost.lock().is_none())
        .cloned()
        .collect();
    // Group by cluster slot: one script call may only touch one slot.
    let mut groups: HashMap<&str, Vec<&Arc<LeaseState>>> = HashMap::new();
    for l in &leases {
        groups.entry(l.target.slot()).or_default().push(l);
    }
    let mut pipe = redis::pipe();
    pipe.invoke_script(&node_beat(shared, false));
    // Refresh the peer list every few beats (the first beat included), so a
    // node that loses Redis knows whom to ask.
    let refresh_peers = shared.beats.fetch_add(1, Ordering::Relaxed) % PEER_REFRESH_BEATS == 0;
    if refresh_peers {
        let keys = &shared.store.keys;
        pipe.invoke_script(
            NODE_LIST
                .prepare()
                .key(keys.nodes())
                .arg("1")
                .arg(keys.node_info("")),
        );
    }
    let mut batches: Vec<Vec<&Arc<LeaseState>>> = Vec::new();
    for group in groups.into_values() {
        for chunk in group.chunks(LEASES_PER_CALL) {
            pipe.invoke_script(&renew_invocation(chunk));
            batches.push(chunk.to_vec());
        }
    }
    if conn.is_none() {
        // Reconnect within one interval so a dead server cannot stall the beat.
        let cfg = &shared.store.config;
        match shared
            .store
            .dedicated
            .open_within(cfg.connect_timeout.min(cfg.heartbeat_interval))
        {
            Ok(c) => *conn = Some(c),
            Err(e) => log::debug!("heartbeat reconnect failed: {e}"),
        }
    }
    let outcome = match conn.as_mut() {
        Some(c) => query_pipeline::<Vec<Value>>(&pipe, &[&NODE_BEAT, &NODE_LIST, &LEASE_RENEW], c),
        None => Err(Error::Pool("heartbeat has no connection to Redis".into())),
    };
    if outcome.is_err() {
        *conn = None;
    }
    match outcome {
        Ok(replies) => {
            if matches!(*shared.health.lock(), Health::LostRedis { .. }) {
                shared.store.renew_pool();
            }
            let mut replies = replies.into_iter().skip(1);
            if refresh_peers {
                if let Some(list) = replies.next() {
                    update_peers(shared, list);
                }
            }
            for (batch, reply) in batches.iter().zip(replies) {
                let flags: Vec<i64> = redis::from_redis_value(reply).unwrap_or_default();
                for (i, lease) in batch.iter().enumerate() {
                    if flags.get(i) == Some(&1) {
                        let mut last = lease.last_ok.lock();
                        if sent > *last {
                            *last = sent;
                        }
                    } else {
                        lease.mark_lost("expired or taken over (renewal refused by Redis)");
                    }
                }
            }
            // Renewals are recorded before the state turns Connected, so an
            // outage-tolerant lease is judged by its fresh renewal time.
            set_partition(shared, PartitionState::Connected);
            set_health(shared, Health::Healthy);
        }
        Err(e) => {
            log::warn!("heartbeat failed: {e}");
            let since = match *shared.health.lock() {
                Health::LostRedis { since } => since,
                Health::Healthy => SystemTime::now(),
            };
            // The verdict first, so whoever sees the health change also
            // sees a partition state that accounts for it.
            set_partition(shared, judge_partition(shared));
            set_health(shared, Health::LostRedis { since });
            // Fence early: if the next beat could come after the local
            // deadline, the holder must stop now.
            let next = Instant::now() + shared.store.config.heartbeat_interval;
            for lease in &leases {
                if lease.deadline_applies() && next >= lease.local_deadline() {
                    lease.mark_lost("could not be renewed: Redis unreachable");
                }
            }
        }
    }
}

/// Pings the known peers: may this node keep working without Redis?
fn judge_partition(shared: &Shared) -> PartitionState {
    let peers = shared.peers.lock().clone();
    let known = peers.len();
    if known == 0 {
        return PartitionState::Partitioned {
            answered: 0,
            known: 0,
        };
    }
    let answered = ping_all(&peers, &shared.identity, shared.store.config.peer_timeout);
    let needed = shared.store.config.partition_percentage as usize;
    if answered * 100 >= needed * known {
        PartitionState::RedisLostPeersOk { answered, known }
    } else {
        PartitionState::Partitioned { answered, known }
    }
}

fn update_peers(shared: &Shared, list: Value) {
    let key = shared.store.keys.nodes();
    let Ok(entries) = redis::from_redis_value::<Vec<Value>>(list) else {
        log::debug!("peer refresh: unexpected node list reply");
        return;
    };
    let peers: Vec<PeerAddr> = entries
        .into_iter()
        .skip(1)
        .filter_map(|v| parse_node(&key, v).ok())
        .filter(|n| n.id != shared.store.node_id)
        .filter_map(|n| n.peer_addr.map(|addr| PeerAddr { id: n.id, addr }))
        .collect();
    *shared.peers.lock() = peers;
}

fn set_partition(shared: &Shared, state: PartitionState) {
    let mut current = shared.partition.lock();
    if *current == state {
        return;
    }
    match state {
        PartitionState::Connected => log::info!("partition state: connected"),
        PartitionState::RedisLostPeersOk { answered, known } => {
            log::warn!("Redis unreachable, {answered}/{known} peers answer: keep working")
        }
        PartitionState::Partitioned { answered, known } => {
            log::warn!(
                "Redis unreachable, {answered}/{known} peers answer: partitioned, stopping work"
            )
        }
    }
    *current = state;
    drop(current);
    shared.partition_watchers.lock().retain(|w| {
        !matches!(
            w.try_send(state),
            Err(crossbeam_channel::TrySendError::Disconnected(_))
        )
    });
}

fn renew_invocation(batch: &[&Arc<LeaseState>]) -> redis::ScriptInvocation<'static> {
    let mut inv = LEASE_RENEW.prepare();
    inv.arg(batch.len());
    for lease in batch {
        let ttl = millis(*lease.ttl.lock());
        match &lease.target {
            LeaseTarget::Key { key, token } => {
                inv.key(key).arg("key").arg(ttl).arg(token);
            }
            LeaseTarget::Member { zset, member } => {
                inv.key(zset).arg("member").arg(ttl).arg(member);
            }
            LeaseTarget::Guarded {
                zset,
                member,
                hash,
                field,
                token,
            } => {
                inv.key(zset)
                    .key(hash)
                    .arg("guarded")
                    .arg(ttl)
                    .arg(member)
                    .arg(field)
                    .arg(token);
            }
        }
    }
    inv
}

fn set_health(shared: &Shared, health: Health) {
    let mut current = shared.health.lock();
    if *current == health {
        return;
    }
    match health {
        Health::Healthy => log::info!("heartbeat reaches Redis again"),
        Health::LostRedis { .. } => log::warn!("heartbeat lost Redis"),
    }
    *current = health;
    shared.health_watchers.lock().retain(|w| {
        !matches!(
            w.try_send(health),
            Err(crossbeam_channel::TrySendError::Disconnected(_))
        )
    });
}

fn parse_node(key: &str, v: Value) -> Result<NodeInfo> {
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
