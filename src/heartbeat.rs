//! The heartbeat: this node's membership and the renewal of every lease it
//! holds, on a schedule that nothing outside can stall (DESIGN rule 10).
//!
//! Three threads, so that no network wait can delay a deadline:
//! - the **scheduler** (`redswarm-heartbeat`) never touches the network. It
//!   starts a beat every `heartbeat_interval`, gives each beat an overall
//!   deadline on the monotonic clock, and fires `lost()` for every lease —
//!   renewed or not — at its local deadline (see [`crate::lease`]);
//! - the **beat I/O** thread (`redswarm-beat-io`) owns the heartbeat's own
//!   connection and sends one script call per beat (`heartbeat.lua`: the
//!   membership, every lease and, every few beats, the peer list — one reply,
//!   so one read timeout bounds it). A beat that misses its deadline counts as
//!   failed at once; its connection is dropped when the late reply comes;
//!   while that thread is still stuck, the next beats fail without waiting;
//! - the **pinger** (see [`crate::peer`]) pings the peers after a failed beat
//!   and reports a verdict the scheduler applies when it comes.
//!
//! Self-fencing (DESIGN rule 6): a lease counts as renewed from the moment its
//! successful renewal was *handed to* the I/O thread, so its local deadline
//! `sent + ttl - safety` always lies before Redis's `executed + ttl`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use redis::Value;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::health::{Health, PartitionState};
use crate::lease::{Lease, LeaseRegistry, LeaseState, LeaseTarget};
use crate::membership::{parse_node, NodeInfo};
use crate::peer::{PeerAddr, PeerIdentity, PeerPoll, Pinger};
use crate::scripts::lua_script;
use crate::store::Store;
use crate::util::millis;

lua_script!(HEARTBEAT, "heartbeat.lua");
lua_script!(NODE_LEAVE, "node_leave.lua");

/// The peer list is re-read from Redis every this many beats.
const PEER_REFRESH_BEATS: u64 = 5;

struct Shared {
    store: Arc<Store>,
    instance: String,
    started_ms: u64,
    peer_addr: Option<String>,
    /// Whether our last beat reached Redis: what our peer listener tells
    /// nodes that ping us.
    reaches_redis: Arc<AtomicBool>,
    beats: AtomicU64,
    partition: Arc<Mutex<PartitionState>>,
    partition_watchers: Mutex<Vec<Sender<PartitionState>>>,
    leases: Arc<LeaseRegistry>,
    health: Mutex<Health>,
    health_watchers: Mutex<Vec<Sender<Health>>>,
}

/// The heartbeat's threads and the lease registry.
pub(crate) struct Heartbeat {
    shared: Arc<Shared>,
    pinger: Arc<Pinger>,
    stop: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Heartbeat {
    /// Registers the node with a first beat (failing if another live
    /// process uses the same node id) and starts the threads.
    pub(crate) fn start(
        store: Arc<Store>,
        peer_addr: Option<String>,
        reaches_redis: Arc<AtomicBool>,
    ) -> Result<Heartbeat> {
        let (leases, leases_changed) = LeaseRegistry::new();
        let identity = PeerIdentity {
            namespace: store.config.namespace.clone(),
            node_id: store.node_id.clone(),
            secret: store.config.peer_secret.clone(),
        };
        let shared = Arc::new(Shared {
            partition: Arc::new(Mutex::new(PartitionState::Connected)),
            partition_watchers: Mutex::new(Vec::new()),
            instance: crate::util::random_id(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            store,
            peer_addr,
            reaches_redis,
            beats: AtomicU64::new(0),
            leases,
            health: Mutex::new(Health::Healthy),
            health_watchers: Mutex::new(Vec::new()),
        });
        // The first beat runs here, synchronously: it refuses a live
        // namesake and proves the heartbeat's own connection works.
        let mut conn = shared
            .store
            .dedicated
            .open()
            .map_err(|source| Error::Connect {
                url: shared.store.config.masked_url(),
                source,
            })?;
        let first = BeatRequest::new(&shared, 0, true, true, Vec::new());
        let reply = run_calls(&first.calls, 0, &mut conn, Vec::new())?;
        let outcome = BeatOutcome::parse(&shared.store.keys.nodes(), &shared.store.node_id, reply);
        match outcome.membership {
            Membership::Renewed => {}
            Membership::Refused => {
                return Err(Error::config(
                    "node_id",
                    format!(
                        "node id `{}` is in use by another live process",
                        shared.store.node_id
                    ),
                ))
            }
            Membership::Corrupt(key) => {
                return Err(Error::corrupt(&key, "membership key holds the wrong type"))
            }
        }
        let pinger = Arc::new(Pinger::start(identity, shared.store.config.peer_timeout)?);
        if let Some(peers) = outcome.peers {
            pinger.set_peers(peers);
        }
        let io = BeatIo::start(shared.store.clone(), conn)?;
        let (stop, stop_rx) = bounded(1);
        let (thread_shared, thread_pinger) = (shared.clone(), pinger.clone());
        let thread = std::thread::Builder::new()
            .name("redswarm-heartbeat".into())
            .spawn(move || {
                Scheduler {
                    shared: thread_shared,
                    pinger: thread_pinger,
                    io,
                    in_flight: None,
                    next_beat: Instant::now(),
                    lost_since: None,
                    abandoned: None,
                }
                .run(stop_rx, leases_changed)
            })
            .map_err(|e| Error::Pool(format!("cannot spawn heartbeat thread: {e}")))?;
        Ok(Heartbeat {
            shared,
            pinger,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Registers a lease: renewed every beat when `renew`, and in every case
    /// fenced at its local deadline.
    pub(crate) fn register(
        &self,
        what: String,
        target: LeaseTarget,
        renew: bool,
        ttl: Duration,
        acquired: Instant,
        tolerate_outage: bool,
    ) -> Lease {
        let registry = &self.shared.leases;
        let state = Arc::new(LeaseState::new(
            registry.next_id(),
            what,
            target,
            renew,
            ttl,
            self.shared.store.config.heartbeat_interval,
            acquired,
            tolerate_outage.then(|| self.shared.partition.clone()),
        ));
        registry.insert(state.clone());
        Lease::new(state, Arc::downgrade(registry))
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
        self.pinger.known_addrs()
    }

    pub(crate) fn nodes(&self, alive: bool) -> Result<Vec<NodeInfo>> {
        crate::membership::nodes(&self.shared.store, alive)
    }

    /// Stops the threads and removes this node from the membership set.
    pub(crate) fn stop(&self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                log::error!("heartbeat thread panicked");
            }
            self.pinger.stop();
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

/// One beat as handed to the I/O thread.
struct BeatRequest {
    id: u64,
    /// One script call on one server. On a Redis Cluster one call per slot
    /// (a script may not touch two): the first renews the membership (and
    /// the leases on the membership key's slot), each other one the leases
    /// of its slot.
    calls: Vec<BeatCall>,
    /// The leases it renews; each call names its own by index.
    leases: Vec<Arc<LeaseState>>,
    /// When it was handed over: a renewal it confirms counts from here.
    sent: Instant,
    deadline: Instant,
}

struct BeatCall {
    invocation: redis::ScriptInvocation<'static>,
    /// Indices into `BeatRequest::leases`, in the call's order.
    leases: Vec<usize>,
}

impl BeatRequest {
    fn new(
        shared: &Shared,
        id: u64,
        first: bool,
        refresh_peers: bool,
        leases: Vec<Arc<LeaseState>>,
    ) -> BeatRequest {
        let store = &shared.store;
        let cfg = &store.config;
        let mut info: Vec<(&str, String)> = vec![
            ("host", crate::util::hostname()),
            ("pid", std::process::id().to_string()),
            ("started", shared.started_ms.to_string()),
        ];
        if let Some(addr) = &shared.peer_addr {
            info.push(("peer", addr.clone()));
        }
        let nodes_key = store.keys.nodes();
        let mut membership = HEARTBEAT.prepare();
        membership
            .key(&nodes_key)
            .key(store.keys.node_info(&store.node_id))
            .arg(&store.node_id)
            .arg(millis(cfg.node_ttl))
            .arg(&shared.instance)
            .arg(if first { "1" } else { "0" })
            .arg(if refresh_peers { "1" } else { "0" })
            .arg(store.keys.node_info(""))
            .arg(info.len());
        for (field, value) in &info {
            membership.arg(*field).arg(value);
        }
        // Which leases go with which call: all with the membership on one
        // server; by slot on a cluster.
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        let nodes_slot = crate::redis_cluster::key_slot(nodes_key.as_bytes());
        let by_slot = store.dedicated.is_cluster();
        groups.push((nodes_slot, Vec::new()));
        for (i, lease) in leases.iter().enumerate() {
            let slot = if by_slot {
                crate::redis_cluster::key_slot(lease.target.first_key().as_bytes())
            } else {
                nodes_slot
            };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let mut calls = Vec::with_capacity(groups.len());
        for (n, (_, members)) in groups.into_iter().enumerate() {
            let mut inv = if n == 0 {
                std::mem::replace(&mut membership, HEARTBEAT.prepare())
            } else {
                // Lease-only mode: no node id, no info pairs.
                let mut inv = HEARTBEAT.prepare();
                inv.arg("").arg(0).arg("").arg("0").arg("0").arg("").arg(0);
                inv
            };
            inv.arg(members.len());
            for &i in &members {
                push_lease(&mut inv, &leases[i]);
            }
            calls.push(BeatCall {
                invocation: inv,
                leases: members,
            });
        }
        let sent = Instant::now();
        BeatRequest {
            id,
            calls,
            leases,
            sent,
            // A beat must be over before the next is due; the command
            // timeout (<= the interval) is how long one reply may take.
            deadline: sent + cfg.heartbeat_interval.min(cfg.command_timeout),
        }
    }
}

/// Adds one lease's keys and arguments to a heartbeat call.
fn push_lease(inv: &mut redis::ScriptInvocation<'static>, lease: &LeaseState) {
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

/// What a beat did to one lease.
enum LeaseFlag {
    Renewed,
    /// Expired or not ours any more.
    Lost,
    /// Its key holds the wrong type.
    Corrupt(String),
    /// Its slot's call failed (a cluster node that did not answer): not
    /// renewed, not known to be lost; its local deadline applies.
    Unanswered,
}

/// The flag `beat_io` puts in for the leases of a call that failed.
const UNANSWERED: &str = "unanswered";

enum Membership {
    Renewed,
    /// Another live process holds this node id (first beat only).
    Refused,
    Corrupt(String),
}

/// What one beat's reply says.
pub(crate) struct BeatOutcome {
    membership: Membership,
    peers: Option<Vec<PeerAddr>>,
    /// Per lease, in the request's order.
    flags: Vec<LeaseFlag>,
}

impl BeatOutcome {
    /// Decodes a `heartbeat.lua` reply; `nodes_key` names the membership
    /// set in errors, `own_id` is left out of the peer list.
    pub(crate) fn parse(nodes_key: &str, own_id: &str, reply: Value) -> BeatOutcome {
        let corrupt = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8_lossy(b)
                .strip_prefix("corrupt:")
                .map(str::to_string),
            Value::SimpleString(s) => s.strip_prefix("corrupt:").map(str::to_string),
            _ => None,
        };
        let parts: Vec<Value> = redis::from_redis_value(reply).unwrap_or_default();
        let mut parts = parts.into_iter();
        let membership = match parts.next() {
            Some(Value::Int(-1)) => Membership::Refused,
            Some(Value::Int(_)) => Membership::Renewed,
            Some(other) => Membership::Corrupt(
                corrupt(&other).unwrap_or_else(|| format!("unexpected reply {other:?}")),
            ),
            None => Membership::Corrupt("empty heartbeat reply".into()),
        };
        let peers = match parts.next() {
            Some(list @ Value::Array(_)) => Some(peer_list(nodes_key, own_id, list)),
            _ => None,
        };
        let flags = match parts.next() {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Int(1) => LeaseFlag::Renewed,
                    Value::Int(_) => LeaseFlag::Lost,
                    Value::SimpleString(s) if s == UNANSWERED => LeaseFlag::Unanswered,
                    other => {
                        LeaseFlag::Corrupt(corrupt(other).unwrap_or_else(|| format!("{other:?}")))
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        BeatOutcome {
            membership,
            peers,
            flags,
        }
    }
}

/// The other live nodes' peer addresses (never this node's own).
fn peer_list(nodes_key: &str, own_id: &str, list: Value) -> Vec<PeerAddr> {
    let entries: Vec<Value> = redis::from_redis_value(list).unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|v| parse_node(nodes_key, v).ok())
        .filter(|n| n.id != own_id)
        .filter_map(|n| n.peer_addr.map(|addr| PeerAddr { id: n.id, addr }))
        .collect()
}

/// The thread that owns the heartbeat's connection and runs one beat at a
/// time; the scheduler hands beats over and waits for replies with a
/// deadline of its own.
struct BeatIo {
    requests: Sender<BeatRequest>,
    replies: Receiver<(BeatRequest, Result<Value>)>,
    thread: Option<JoinHandle<()>>,
}

impl BeatIo {
    fn start(store: Arc<Store>, conn: Connection) -> Result<BeatIo> {
        // One slot: the scheduler hands a beat over only while the thread
        // is free (it tracks the beats it gave up on), so nothing queues
        // behind a stuck one.
        let (requests, inbox) = bounded::<BeatRequest>(1);
        let (reply_tx, replies) = bounded(4);
        let thread = std::thread::Builder::new()
            .name("redswarm-beat-io".into())
            .spawn(move || {
                let mut conn = Some(conn);
                let mut pipeline_pause = 0;
                for request in inbox {
                    let result = beat_io(&store, &mut conn, &request, &mut pipeline_pause);
                    if Instant::now() > request.deadline {
                        // Too slow: the connection is suspect (a hung
                        // server or a blackhole). Start afresh next beat.
                        conn = None;
                    }
                    if result.is_err() {
                        conn = None;
                    }
                    if reply_tx.send((request, result)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Pool(format!("cannot spawn heartbeat I/O thread: {e}")))?;
        Ok(BeatIo {
            requests,
            replies,
            thread: Some(thread),
        })
    }
}

impl Drop for BeatIo {
    fn drop(&mut self) {
        // Closing the request channel ends the thread once its current beat
        // (bounded by the socket timeouts) is over; do not wait for it here,
        // a hung Redis must not hold up shutdown.
        let (closed, _) = bounded(0);
        self.requests = closed;
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Beats to go call by call after a per-node pipeline failed (a cluster
/// node down), before trying the pipeline again.
const PIPELINE_PAUSE_BEATS: u32 = 10;

fn beat_io(
    store: &Store,
    conn: &mut Option<Connection>,
    request: &BeatRequest,
    pipeline_pause: &mut u32,
) -> Result<Value> {
    let open = || {
        // Connect within one interval so a dead server cannot stall the
        // thread for long (the scheduler does not wait for it anyway).
        let cfg = &store.config;
        store
            .dedicated
            .open_within(cfg.connect_timeout.min(cfg.heartbeat_interval))
            .map_err(|source| Error::Connect {
                url: cfg.masked_url(),
                source,
            })
    };
    if conn.is_none() {
        *conn = Some(open()?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(Error::Pool("heartbeat has no connection to Redis".into()));
    };
    let calls = &request.calls;
    let mut piped: Vec<Option<Value>> = vec![None; calls.len()];
    // On a cluster the lease calls (after the membership's) go first as one
    // pipeline per node, all nodes at once; a call that fails there is sent
    // again on its own by `run_calls`.
    if *pipeline_pause > 0 {
        *pipeline_pause -= 1;
    } else if calls.len() > 2 {
        let cmds = calls[1..]
            .iter()
            .map(|c| redis::Cmd::invoke_script(&c.invocation))
            .collect();
        match c.per_node_pipeline(cmds) {
            Some(Ok(replies)) if replies.len() == calls.len() - 1 => {
                for (slot, reply) in piped[1..].iter_mut().zip(replies) {
                    if !matches!(reply, Value::ServerError(_)) {
                        *slot = Some(reply);
                    }
                }
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                // redis-rs gives up on the whole pipeline at the first node
                // that fails, leaving the replies of the others unread on
                // their sockets: this connection would hand them to the next
                // commands. Start afresh, and go call by call for a while.
                log::debug!("heartbeat: per-node pipeline failed ({e}); call by call");
                *pipeline_pause = PIPELINE_PAUSE_BEATS;
                *conn = None;
                *conn = Some(open()?);
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return Err(Error::Pool("heartbeat has no connection to Redis".into()));
    };
    run_calls(calls, request.leases.len(), c, piped)
}

/// Runs a beat's calls in order and merges their replies into one
/// `{membership, peers, flags}` reply in the request's lease order. The
/// first call (the membership) failing fails the beat; a later call failing
/// leaves its leases [`LeaseFlag::Unanswered`], so one unreachable cluster
/// node does not cost the leases on the others.
fn run_calls(
    calls: &[BeatCall],
    lease_count: usize,
    conn: &mut Connection,
    mut piped: Vec<Option<Value>>,
) -> Result<Value> {
    let unanswered = || Value::SimpleString(UNANSWERED.into());
    // A lease whose call gives no usable flag stays unanswered: its local
    // deadline applies (never a renewal nobody confirmed).
    let mut flags = vec![unanswered(); lease_count];
    let mut head = Vec::new();
    piped.resize(calls.len(), None);
    let mut failed: Vec<String> = Vec::new();
    for (n, call) in calls.iter().enumerate() {
        let result = match piped[n].take() {
            Some(reply) => Ok(reply),
            None => crate::scripts::invoke::<Value>(&call.invocation, conn),
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) if n == 0 => return Err(e),
            Err(e) => {
                failed.push(e.to_string());
                continue;
            }
        };
        let mut parts: Vec<Value> = redis::from_redis_value(reply).unwrap_or_default();
        match parts.get_mut(2) {
            Some(Value::Array(items)) if items.len() == call.leases.len() => {
                for (&i, flag) in call.leases.iter().zip(std::mem::take(items)) {
                    flags[i] = flag;
                }
            }
            // The membership call's reply is judged by `BeatOutcome`.
            _ if n == 0 => {}
            other => failed.push(format!("unexpected reply {other:?}")),
        }
        if n == 0 {
            parts.truncate(2);
            head = parts;
        }
    }
    if let Some(first) = failed.first() {
        // A cluster node that is down: its leases stay unanswered and lapse
        // by their local deadlines; the others were renewed.
        log::warn!(
            "heartbeat: {} of {} lease call(s) failed (first: {first}); \
             their leases are not renewed",
            failed.len(),
            calls.len() - 1
        );
    }
    head.push(Value::Array(flags));
    Ok(Value::Array(head))
}

struct Scheduler {
    shared: Arc<Shared>,
    pinger: Arc<Pinger>,
    io: BeatIo,
    in_flight: Option<(u64, Instant)>,
    next_beat: Instant,
    /// When the current outage's first beat failed.
    lost_since: Option<Instant>,
    /// A beat given up on whose reply has not come back: the I/O thread is
    /// still busy with it.
    abandoned: Option<u64>,
}

impl Scheduler {
    fn run(mut self, stop: Receiver<()>, leases_changed: Receiver<()>) {
        let interval = self.shared.store.config.heartbeat_interval;
        loop {
            let now = Instant::now();
            if let Some((id, deadline)) = self.in_flight {
                if now >= deadline {
                    self.in_flight = None;
                    self.abandoned = Some(id);
                    self.failed("no reply within the beat's deadline (Redis hung or unreachable)");
                }
            }
            if self.in_flight.is_none() && now >= self.next_beat {
                self.next_beat = now + interval;
                self.send_beat();
            }
            self.shared.leases.set_wake_at(None);
            let earliest_lease = self.shared.leases.fence(Instant::now());
            let mut wake_at = earliest_lease.unwrap_or(self.next_beat).min(self.next_beat);
            if let Some((_, deadline)) = self.in_flight {
                wake_at = wake_at.min(deadline);
            }
            self.shared.leases.set_wake_at(Some(wake_at));
            let timeout = wake_at.saturating_duration_since(Instant::now());
            let verdicts = self.pinger.results().clone();
            select! {
                recv(stop) -> _ => {
                    // The node deregisters once this returns: a beat still
                    // in flight would register it again after that (a
                    // handle shut down right after connecting, as a
                    // command-line tool does, left a live node behind).
                    // Wait for its reply, at most until its deadline.
                    if let Some((_, deadline)) = self.in_flight {
                        let _ = self.io.replies.recv_deadline(deadline);
                    }
                    return;
                }
                recv(self.io.replies) -> msg => match msg {
                    Ok((request, result)) => self.on_reply(request, result),
                    Err(_) => return,
                },
                recv(verdicts) -> poll => {
                    if let Ok(poll) = poll {
                        self.on_verdict(poll);
                    }
                },
                recv(leases_changed) -> _ => {},
                default(timeout) => {},
            }
        }
    }

    fn send_beat(&mut self) {
        if self.abandoned.is_some() {
            // The I/O thread is still stuck on a beat we gave up on.
            return self.failed("the previous beat is still stuck on the network");
        }
        let id = self.shared.beats.fetch_add(1, Ordering::Relaxed) + 1;
        let refresh = id % PEER_REFRESH_BEATS == 0;
        let request = BeatRequest::new(
            &self.shared,
            id,
            false,
            refresh,
            self.shared.leases.to_renew(),
        );
        let deadline = request.deadline;
        match self.io.requests.try_send(request) {
            Ok(()) => self.in_flight = Some((id, deadline)),
            Err(TrySendError::Full(_)) => {
                self.failed("the previous beat is still stuck on the network")
            }
            Err(TrySendError::Disconnected(_)) => self.failed("heartbeat I/O thread is gone"),
        }
    }

    fn on_reply(&mut self, request: BeatRequest, result: Result<Value>) {
        if self.abandoned == Some(request.id) {
            self.abandoned = None;
        }
        if self.in_flight.map(|(id, _)| id) != Some(request.id) {
            // A beat we already gave up on: whatever it renewed in Redis,
            // its holders were (or will be) fenced by their local deadline.
            log::debug!("late heartbeat reply ignored (beat {})", request.id);
            return;
        }
        self.in_flight = None;
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => return self.failed(&e.to_string()),
        };
        let outcome = BeatOutcome::parse(
            &self.shared.store.keys.nodes(),
            &self.shared.store.node_id,
            reply,
        );
        // Renewals first: an outage-tolerant lease is then judged by its
        // fresh renewal time when the state turns Connected.
        for (i, lease) in request.leases.iter().enumerate() {
            match outcome.flags.get(i) {
                Some(LeaseFlag::Renewed) => lease.renewed_at(request.sent),
                Some(LeaseFlag::Lost) => {
                    lease.mark_lost("expired or taken over (renewal refused by Redis)")
                }
                Some(LeaseFlag::Corrupt(key)) => {
                    log::error!("lease key {key} holds the wrong type; dropping that lease only");
                    lease.mark_lost(&format!("corrupt data at key {key}"));
                }
                Some(LeaseFlag::Unanswered) => {}
                None => lease.mark_lost("no renewal result for this lease"),
            }
        }
        if let Some(peers) = outcome.peers {
            self.pinger.set_peers(peers);
        }
        match outcome.membership {
            Membership::Renewed | Membership::Refused => {
                if matches!(*self.shared.health.lock(), Health::LostRedis { .. }) {
                    self.shared.store.renew_pool();
                }
                self.shared.reaches_redis.store(true, Ordering::SeqCst);
                self.lost_since = None;
                set_partition(&self.shared, PartitionState::Connected);
                set_health(&self.shared, Health::Healthy);
            }
            Membership::Corrupt(key) => {
                self.failed(&format!("membership key {key} holds the wrong type"));
            }
        }
    }

    /// A beat failed: Redis is unreachable (or hung) as far as we know.
    fn failed(&mut self, why: &str) {
        log::warn!("heartbeat failed: {why}");
        self.lost_since.get_or_insert_with(Instant::now);
        self.shared.reaches_redis.store(false, Ordering::SeqCst);
        let since = match *self.shared.health.lock() {
            Health::LostRedis { since } => since,
            Health::Healthy => SystemTime::now(),
        };
        if self.pinger.known_addrs().is_empty() {
            // Nobody to ask: the verdict is known now, and comes before the
            // health change so a watcher of either sees both.
            set_partition(
                &self.shared,
                PartitionState::Partitioned {
                    answered: 0,
                    known: 0,
                },
            );
        } else {
            // Ask the peers whether the outage is ours; the verdict comes
            // back on the pinger's channel (within the peer timeout).
            // Meanwhile every lease's local deadline applies as usual.
            self.pinger.poll();
        }
        set_health(&self.shared, Health::LostRedis { since });
    }

    fn on_verdict(&mut self, poll: PeerPoll) {
        if matches!(*self.shared.health.lock(), Health::Healthy) {
            return; // Redis came back meanwhile: the verdict is moot.
        }
        let cfg = &self.shared.store.config;
        let state = crate::peer::verdict(&poll, cfg.partition_percentage);
        // A peer that says it reaches Redis may just not have tried since
        // Redis died: its word counts once it has had a beat of its own
        // after our first failure. Until then the state stays as it is and
        // every lease's local deadline applies (the safe side); the next
        // failed beat asks again.
        let enough = poll.known > 0
            && poll.answered * 100 >= usize::from(cfg.partition_percentage) * poll.known;
        let settled = self
            .lost_since
            .is_some_and(|t| poll.at >= t + cfg.heartbeat_interval);
        if enough && poll.reaching_redis > 0 && !settled {
            log::debug!(
                "{} of {} answering peers still reach Redis; asking again next beat",
                poll.reaching_redis,
                poll.answered
            );
            return;
        }
        set_partition(&self.shared, state);
        // A Partitioned verdict ends outage tolerance: fence now.
        self.shared.leases.fence(Instant::now());
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        log::debug!(
            "heartbeat stopped ({} leases registered)",
            self.shared.leases.len()
        );
    }
}

fn set_partition(shared: &Shared, state: PartitionState) {
    let mut current = shared.partition.lock();
    if *current == state {
        return;
    }
    match state {
        PartitionState::Connected => log::info!("partition state: connected"),
        PartitionState::RedisLostPeersOk { answered, known } => {
            log::warn!(
                "Redis unreachable for all {answered}/{known} peers that answer: keep working"
            )
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
    drop(current);
    shared.health_watchers.lock().retain(|w| {
        !matches!(
            w.try_send(health),
            Err(crossbeam_channel::TrySendError::Disconnected(_))
        )
    });
}
