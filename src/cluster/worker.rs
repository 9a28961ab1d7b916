//! Workers of a job cluster: receive `Added` / `Deleted` events for the
//! jobs assigned to them, keep a membership lease the heartbeat renews, and
//! stop their jobs themselves when that lease is lost.
//!
//! Two threads per worker, so that no network wait can delay self-fencing:
//! - the **driver** (`cluster-worker-…`) turns the worker's pub/sub messages
//!   into events, reconciles with Redis every `reconcile` interval (and
//!   after a pub/sub reconnect), and rejoins after a lost lease;
//! - the **fence** thread (`cluster-fence-…`) does no I/O: it waits for the
//!   lease's loss notice — which the heartbeat fires at the lease's local
//!   deadline, before Redis can let the lease lapse — and emits
//!   `Deleted { reason: LeaseLost }` for every job at once.
//!
//! Both change the worker's local job table under one lock and emit events
//! while holding it, so events about one job are always in order. Every
//! assignment carries a fencing token larger than any before it (one counter
//! per cluster); the table keeps the token per job, which is how late or
//! duplicate messages are recognised and dropped.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use redis::Value;
use serde::de::DeserializeOwned;

use crate::cluster::master::{delete, Deleted};
use crate::cluster::records::{
    check_interval, check_lease, default_lease, int, run, text, token, DeleteReason, JobId,
    WorkerMessage, CLUSTER_JOIN, CLUSTER_LEAVE, CLUSTER_SYNC,
};
use crate::error::{Error, Result};
use crate::handle::Redswarm;
use crate::keys::ClusterKeys;
use crate::lease::{Lease, LeaseLost, LeaseTarget};
use crate::runtime::Runtime;
use crate::subscriber::{SubEvent, Subscription};
use crate::util::{millis, random_id};

/// Settings of a [`ClusterWorker`].
///
/// ```
/// use std::time::Duration;
/// let opts = redswarm::ClusterWorkerOptions::new()
///     .capacity(50)
///     .lease(Duration::from_secs(3))
///     .reconcile(Duration::from_secs(1));
/// ```
#[derive(Clone, Debug)]
pub struct ClusterWorkerOptions {
    capacity: Option<u32>,
    lease: Option<Duration>,
    reconcile: Option<Duration>,
    rejoin: bool,
    require_existing: bool,
}

impl Default for ClusterWorkerOptions {
    fn default() -> Self {
        ClusterWorkerOptions {
            capacity: None,
            lease: None,
            reconcile: None,
            rejoin: true,
            require_existing: false,
        }
    }
}

impl ClusterWorkerOptions {
    /// Defaults: no capacity limit, 3 s membership lease (at least three
    /// heartbeats), reconcile every `wait_recheck`, rejoin after a lost
    /// lease, join clusters no master has created yet.
    ///
    /// ```
    /// let o = redswarm::ClusterWorkerOptions::new();
    /// ```
    pub fn new() -> ClusterWorkerOptions {
        ClusterWorkerOptions::default()
    }

    /// The most jobs this worker holds at once (default: no limit). Jobs
    /// beyond every worker's capacity wait until room frees up.
    ///
    /// ```
    /// let o = redswarm::ClusterWorkerOptions::new().capacity(10);
    /// ```
    pub fn capacity(mut self, jobs: u32) -> Self {
        self.capacity = Some(jobs);
        self
    }

    /// The membership lease, renewed by the heartbeat. When the worker dies
    /// its jobs are reassigned about this long after its last renewal (plus
    /// one sweep of the active master); when it is cut off it is told
    /// ([`DeleteReason::LeaseLost`]) before the lease can lapse in Redis.
    ///
    /// ```
    /// let o = redswarm::ClusterWorkerOptions::new().lease(std::time::Duration::from_secs(5));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How often the worker compares its jobs with Redis (default: the
    /// config's `wait_recheck`): the longest a lost pub/sub message can
    /// leave it out of step. It also reconciles after every pub/sub
    /// reconnect.
    ///
    /// ```
    /// let o = redswarm::ClusterWorkerOptions::new().reconcile(std::time::Duration::from_millis(500));
    /// ```
    pub fn reconcile(mut self, every: Duration) -> Self {
        self.reconcile = Some(every);
        self
    }

    /// Whether the worker joins again after losing its lease (default
    /// true). With `false` it closes instead: `Deleted` for each job, then
    /// [`ClusterEvent::Closed`], as the seed's workers did.
    ///
    /// ```
    /// let o = redswarm::ClusterWorkerOptions::new().rejoin(false);
    /// ```
    pub fn rejoin(mut self, on: bool) -> Self {
        self.rejoin = on;
        self
    }

    /// Refuse to join a cluster that no [`Master`](crate::Master) has
    /// created ([`Error::NotFound`]) instead of waiting for one (default
    /// false: a worker may start before the masters, as in the seed).
    ///
    /// ```
    /// let o = redswarm::ClusterWorkerOptions::new().require_existing(true);
    /// ```
    pub fn require_existing(mut self, on: bool) -> Self {
        self.require_existing = on;
        self
    }
}

/// What a [`ClusterWorker`] is told.
///
/// ```no_run
/// # fn demo(worker: &redswarm::ClusterWorker) {
/// use redswarm::ClusterEvent;
/// for event in worker.events() {
///     match event {
///         ClusterEvent::Added(job) => log::info!("start {} (token {})", job.id(), job.token()),
///         ClusterEvent::Deleted { id, reason, .. } => log::info!("stop {id}: {reason}"),
///         ClusterEvent::Closed => break,
///     }
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub enum ClusterEvent {
    /// A job is now this worker's: start it.
    Added(Job),
    /// A job is no longer this worker's: stop whatever it does for it now.
    Deleted {
        /// The job id.
        id: JobId,
        /// The fencing token of the assignment that ended.
        token: u64,
        /// Why.
        reason: DeleteReason,
    },
    /// The worker is closed (terminated, lost its lease with rejoin off, or
    /// its [`Redswarm`] handle was shut down); no more events follow.
    Closed,
}

/// A job assigned to this worker, with the fencing token of the
/// assignment: hand the token to whatever the job writes to, so a stale
/// holder (after a pause or a partition) can be refused.
///
/// ```no_run
/// # fn demo(job: redswarm::Job) -> redswarm::Result<()> {
/// let stream: String = job.payload()?;
/// log::info!("following {stream} as job {} with token {}", job.id(), job.token());
/// job.delete()?; // done with it for good
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Job {
    id: JobId,
    token: u64,
    payload: String,
    core: Weak<Core>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("payload", &self.payload)
            .finish()
    }
}

impl Job {
    /// The job id.
    ///
    /// ```no_run
    /// # fn demo(job: &redswarm::Job) { log::info!("{}", job.id()); }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fencing token of this assignment (larger than every token given
    /// before it in this cluster).
    ///
    /// ```no_run
    /// # fn demo(job: &redswarm::Job) { assert!(job.token() > 0); }
    /// ```
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The payload, decoded.
    ///
    /// ```no_run
    /// # fn demo(job: &redswarm::Job) -> redswarm::Result<()> {
    /// let v: serde_json::Value = job.payload()?;
    /// # Ok(()) }
    /// ```
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload).map_err(|e| {
            let key = self
                .core
                .upgrade()
                .map(|c| c.keys.job(&self.id))
                .unwrap_or_else(|| self.id.clone());
            Error::corrupt(key, format!("payload does not decode: {e}"))
        })
    }

    /// The payload as the JSON text the master stored.
    ///
    /// ```no_run
    /// # fn demo(job: &redswarm::Job) { log::info!("{}", job.payload_json()); }
    /// ```
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// Deletes this job from the cluster (the seed's `job.deleteJob`), if
    /// it is still assigned to this worker under this token; the worker then
    /// gets `Deleted` with [`DeleteReason::Deleted`]. Applied even while no
    /// master is active. [`Error::LeaseLost`] when the job has moved on,
    /// [`Error::NotFound`] when it is gone already, [`Error::Terminated`]
    /// after the worker terminated.
    ///
    /// ```no_run
    /// # fn demo(job: redswarm::Job) -> redswarm::Result<()> {
    /// job.delete()?;
    /// # Ok(()) }
    /// ```
    pub fn delete(&self) -> Result<()> {
        let core = self.core.upgrade().ok_or_else(|| Error::Terminated {
            what: "cluster worker".into(),
        })?;
        core.check_open()?;
        match delete(&core.swarm, &core.keys, &self.id, Some(self.token))? {
            Deleted::Yes => {
                // The worker's own message may be lost; tell the driver too
                // (the token makes the second notice a no-op).
                let _ = core.commands.send(Command::Deleted {
                    id: self.id.clone(),
                    token: self.token,
                });
                Ok(())
            }
            Deleted::NoSuchJob => Err(Error::NotFound {
                what: "job",
                id: self.id.clone(),
            }),
            Deleted::Stale => Err(Error::LeaseLost {
                what: format!("job `{}` (token {})", self.id, self.token),
                reason: "it is no longer assigned to this worker under this token".into(),
            }),
        }
    }
}

/// Requests to the driver thread.
enum Command {
    /// The fence thread fenced: join again.
    Rejoin,
    /// [`Job::delete`] deleted this assignment.
    Deleted {
        id: JobId,
        token: u64,
    },
    Stop,
}

/// The worker's view of what it holds.
struct Local {
    /// A member under `session` (false while rejoining, and once closed).
    joined: bool,
    closed: bool,
    /// Bumped whenever the table is emptied by fencing or terminating: a
    /// reconcile or lease from before is stale.
    generation: u64,
    session: String,
    /// Every assignment this worker has not seen yet has a larger token
    /// (the fencing counter at the last join or reconcile): older `add`
    /// messages are late and were overtaken.
    floor: u64,
    jobs: HashMap<JobId, u64>,
}

struct Core {
    swarm: Runtime,
    cluster: String,
    keys: ClusterKeys,
    id: String,
    capacity: u32,
    lease: Duration,
    reconcile: Duration,
    rejoin: bool,
    require_existing: bool,
    state: Mutex<Local>,
    events: Sender<ClusterEvent>,
    commands: Sender<Command>,
}

/// A member of a job cluster; see the [module docs](crate::cluster).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use redswarm::{ClusterEvent, ClusterWorker, ClusterWorkerOptions};
/// let worker = ClusterWorker::join(&swarm, "streams", ClusterWorkerOptions::new().capacity(20))?;
/// for event in worker.events() {
///     match event {
///         ClusterEvent::Added(job) => { /* start following job.payload::<String>()? */ }
///         ClusterEvent::Deleted { id, .. } => { /* stop it */ }
///         ClusterEvent::Closed => break,
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ClusterWorker {
    core: Arc<Core>,
    events: Receiver<ClusterEvent>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterWorker")
            .field("cluster", &self.core.cluster)
            .field("id", &self.core.id)
            .finish()
    }
}

impl ClusterWorker {
    /// Joins cluster `cluster_id`: registers with a membership lease and
    /// starts receiving events. Jobs come once a master is active (a
    /// cluster no master created yet is fine unless
    /// [`ClusterWorkerOptions::require_existing`] is set).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let w = redswarm::ClusterWorker::join(&swarm, "streams", redswarm::ClusterWorkerOptions::new())?;
    /// # Ok(()) }
    /// ```
    pub fn join(
        swarm: &Redswarm,
        cluster_id: &str,
        opts: ClusterWorkerOptions,
    ) -> Result<ClusterWorker> {
        let swarm = swarm.runtime();
        let keys = swarm.keys().cluster(cluster_id)?;
        let cfg = swarm.config();
        let lease = opts.lease.unwrap_or_else(|| default_lease(swarm));
        check_lease(swarm, "worker lease", lease)?;
        let reconcile = opts.reconcile.unwrap_or_else(|| cfg.wait_recheck());
        check_interval("worker reconcile interval", reconcile)?;
        if opts.capacity == Some(0) {
            return Err(Error::invalid("worker capacity", "must be at least 1"));
        }
        let (events_tx, events) = unbounded();
        let (commands, command_rx) = unbounded();
        let id = random_id();
        let core = Arc::new(Core {
            swarm: swarm.clone(),
            cluster: cluster_id.to_string(),
            capacity: opts.capacity.unwrap_or(0),
            lease,
            reconcile,
            rejoin: opts.rejoin,
            require_existing: opts.require_existing,
            state: Mutex::new(Local {
                joined: false,
                closed: false,
                generation: 0,
                session: String::new(),
                floor: 0,
                jobs: HashMap::new(),
            }),
            events: events_tx,
            commands,
            keys,
            id,
        });
        // Subscribed (confirmed by Redis) before joining: no assignment
        // made after the join can be missed.
        let sub = swarm.subscribe(&core.keys.worker_events(&core.id))?;
        let (lease, generation) = core.join(&random_id())?;
        let (watch, watch_rx) = unbounded();
        let fence = {
            let core = core.clone();
            std::thread::Builder::new()
                .name(format!("cluster-fence-{cluster_id}"))
                .spawn(move || run_fence(core, watch_rx))
                .map_err(|e| Error::Pool(format!("cannot spawn cluster fence thread: {e}")))?
        };
        let driver = Driver {
            core: core.clone(),
            sub,
            commands: command_rx,
            watch,
            lease: None,
        };
        let driver = driver.install(lease, generation);
        let driver = std::thread::Builder::new()
            .name(format!("cluster-worker-{cluster_id}"))
            .spawn(move || driver.run())
            .map_err(|e| Error::Pool(format!("cannot spawn cluster worker thread: {e}")))?;
        log::info!(
            "worker {} joined cluster `{cluster_id}` (capacity {}, lease {:?})",
            core.id,
            opts.capacity
                .map_or_else(|| "unlimited".to_string(), |c| c.to_string()),
            core.lease,
        );
        Ok(ClusterWorker {
            core,
            events,
            threads: Mutex::new(vec![driver, fence]),
        })
    }

    /// The event channel (a crossbeam receiver; clones share the events).
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::ClusterWorker) {
    /// let events = w.events();
    /// crossbeam_channel::select! {
    ///     recv(events) -> e => log::info!("{e:?}"),
    ///     default(std::time::Duration::from_secs(1)) => {}
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> Receiver<ClusterEvent> {
        self.events.clone()
    }

    /// This worker's id (random per join).
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::ClusterWorker) { log::info!("worker {}", w.id()); }
    /// ```
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The jobs this worker holds now (as announced by its events), sorted.
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::ClusterWorker) { log::info!("{} jobs", w.jobs().len()); }
    /// ```
    pub fn jobs(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.core.state.lock().jobs.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Leaves the cluster: emits `Deleted` ([`DeleteReason::Terminated`])
    /// for every job, hands them all back for reassignment at once, then
    /// emits [`ClusterEvent::Closed`]. If Redis cannot be told, the error is
    /// returned (the worker is closed anyway) and the jobs move when its
    /// lease lapses. A second call is [`Error::Terminated`]. Dropping the
    /// worker does the same.
    ///
    /// ```no_run
    /// # fn demo(w: redswarm::ClusterWorker) -> redswarm::Result<()> {
    /// w.terminate()?;
    /// # Ok(()) }
    /// ```
    pub fn terminate(&self) -> Result<()> {
        let session = self.core.close_local(DeleteReason::Terminated)?;
        self.stop_threads();
        let k = &self.core.keys;
        let w = &self.core.id;
        let released = self.core.swarm.conn().and_then(|mut conn| {
            run::<i64>(
                CLUSTER_LEAVE
                    .prepare()
                    .key(&k.workers)
                    .key(&k.pending)
                    .key(k.worker(w))
                    .key(k.worker_jobs(w))
                    .arg(w)
                    .arg(&session)
                    .arg(k.job_prefix())
                    .arg(&k.wake),
                &mut *conn,
            )
        });
        self.core.emit(ClusterEvent::Closed);
        match released {
            Ok(n) => {
                log::info!(
                    "worker {w} left cluster `{}`; {} jobs handed back",
                    self.core.cluster,
                    n.max(0)
                );
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "worker {w} could not tell Redis it left ({e}); its jobs move when its lease lapses"
                );
                Err(e)
            }
        }
    }

    fn stop_threads(&self) {
        let _ = self.core.commands.send(Command::Stop);
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                log::error!("a thread of cluster worker {} panicked", self.core.id);
            }
        }
    }
}

impl Drop for ClusterWorker {
    fn drop(&mut self) {
        if self.core.state.lock().closed {
            self.stop_threads();
        } else if let Err(e) = self.terminate() {
            log::debug!("dropping cluster worker {}: {e}", self.core.id);
        }
    }
}

impl Core {
    fn what(&self) -> String {
        format!("worker {} of cluster `{}`", self.id, self.cluster)
    }

    fn check_open(&self) -> Result<()> {
        if self.state.lock().closed {
            return Err(Error::Terminated {
                what: format!("cluster worker {}", self.id),
            });
        }
        Ok(())
    }

    fn emit(&self, event: ClusterEvent) {
        // Unbounded: emitting never blocks, and a dropped receiver is fine.
        let _ = self.events.send(event);
    }

    /// Joins (or rejoins) under `session`; returns the membership lease and
    /// the generation it belongs to.
    fn join(&self, session: &str) -> Result<(Lease, u64)> {
        let k = &self.keys;
        let mut conn = self.swarm.conn()?;
        let sent = Instant::now();
        let reply: Vec<Value> = run(
            CLUSTER_JOIN
                .prepare()
                .key(&k.meta)
                .key(&k.workers)
                .key(&k.pending)
                .key(&k.fence)
                .key(k.worker(&self.id))
                .key(k.worker_jobs(&self.id))
                .arg(&self.id)
                .arg(session)
                .arg(millis(self.lease))
                .arg(self.capacity)
                .arg(self.swarm.node_id())
                .arg(k.job_prefix())
                .arg(&k.wake)
                .arg(if self.require_existing { "1" } else { "0" }),
            &mut *conn,
        )?;
        drop(conn);
        if text(&reply, 0, &k.workers)? == "nocluster" {
            return Err(Error::NotFound {
                what: "cluster",
                id: self.cluster.clone(),
            });
        }
        let floor = token(&text(&reply, 1, &k.fence)?, &k.fence)?.unwrap_or(0);
        let released = int(&reply, 2, &k.workers)?;
        if released > 0 {
            log::info!(
                "{}: {released} jobs of its previous session went back to the cluster",
                self.what()
            );
        }
        let lease = self.swarm.lease(
            self.what(),
            LeaseTarget::Guarded {
                zset: k.workers.clone(),
                member: self.id.clone(),
                hash: k.worker(&self.id),
                field: "session".into(),
                token: session.to_string(),
            },
            self.lease,
            sent,
        );
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Terminated { what: self.what() });
        }
        st.joined = true;
        st.session = session.to_string();
        st.floor = st.floor.max(floor);
        Ok((lease, st.generation))
    }

    /// Self-fencing: the lease of `generation` is lost, so every job stops
    /// now (no I/O here). Then rejoin, or close.
    fn fence(&self, generation: u64, reason: &str) {
        let mut st = self.state.lock();
        if st.closed || !st.joined || st.generation != generation {
            return;
        }
        log::warn!(
            "{}: membership lease lost ({reason}); stopping its {} jobs",
            self.what(),
            st.jobs.len()
        );
        st.joined = false;
        st.generation += 1;
        for (id, token) in st.jobs.drain() {
            self.emit(ClusterEvent::Deleted {
                id,
                token,
                reason: DeleteReason::LeaseLost,
            });
        }
        if self.rejoin {
            let _ = self.commands.send(Command::Rejoin);
        } else {
            st.closed = true;
            self.emit(ClusterEvent::Closed);
            let _ = self.commands.send(Command::Stop);
        }
    }

    /// Closes the local side: `Deleted` with `reason` for each job. Returns
    /// the session to leave with.
    fn close_local(&self, reason: DeleteReason) -> Result<String> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Terminated {
                what: format!("cluster worker {}", self.id),
            });
        }
        st.closed = true;
        st.joined = false;
        st.generation += 1;
        for (id, token) in st.jobs.drain() {
            self.emit(ClusterEvent::Deleted { id, token, reason });
        }
        Ok(st.session.clone())
    }

    /// Applies an `add`: ours now, unless the message is late.
    fn added(&self, st: &mut Local, id: JobId, token: u64, payload: String, core: &Arc<Core>) {
        if let Some(&held) = st.jobs.get(&id) {
            if held >= token {
                return; // the same assignment again, or an older one
            }
            // We missed its move away and back: the old run must stop.
            self.emit(ClusterEvent::Deleted {
                id: id.clone(),
                token: held,
                reason: DeleteReason::Rebalanced,
            });
        }
        st.jobs.insert(id.clone(), token);
        self.emit(ClusterEvent::Added(Job {
            id,
            token,
            payload,
            core: Arc::downgrade(core),
        }));
    }

    /// Applies a `delete` of the assignment under `token`.
    fn removed(&self, st: &mut Local, id: &str, token: u64, reason: DeleteReason) {
        if st.jobs.get(id) == Some(&token) {
            st.jobs.remove(id);
            self.emit(ClusterEvent::Deleted {
                id: id.to_string(),
                token,
                reason,
            });
        }
    }
}

/// The fence thread: waits on the current lease's loss notice; never does
/// I/O, so the notice is acted on the moment the heartbeat fires it.
fn run_fence(core: Arc<Core>, watch: Receiver<(u64, Receiver<LeaseLost>)>) {
    let mut current: Option<(u64, Receiver<LeaseLost>)> = None;
    loop {
        let lost = current
            .as_ref()
            .map(|(_, rx)| rx.clone())
            .unwrap_or_else(never);
        select! {
            recv(watch) -> w => match w {
                Ok(w) => current = Some(w),
                Err(_) => return, // the driver is gone
            },
            recv(lost) -> l => {
                if let (Ok(l), Some((generation, _))) = (l, current.take()) {
                    core.fence(generation, &l.reason);
                }
            }
        }
    }
}

/// The driver thread's state.
struct Driver {
    core: Arc<Core>,
    sub: Subscription,
    commands: Receiver<Command>,
    watch: Sender<(u64, Receiver<LeaseLost>)>,
    lease: Option<Lease>,
}

impl Driver {
    /// Holds `lease` (of `generation`) and has the fence thread watch it.
    fn install(mut self, lease: Lease, generation: u64) -> Driver {
        let (tx, rx) = bounded(1);
        lease.notify_on_loss(tx);
        let _ = self.watch.send((generation, rx));
        self.lease = Some(lease);
        self
    }

    fn run(mut self) {
        let cfg = self.core.swarm.config().clone();
        let mut backoff = cfg.reconnect_min;
        // Set while rejoining; kept across failed attempts so a retry after
        // a lost reply is the same join (DESIGN rule 11).
        let mut rejoin_session: Option<String> = None;
        let mut next_sync = Some(Instant::now());
        loop {
            let mut wait = None;
            if let Some(session) = rejoin_session.clone() {
                match self.core.join(&session) {
                    Ok((lease, generation)) => {
                        log::info!("{} joined again", self.core.what());
                        self = self.install(lease, generation);
                        rejoin_session = None;
                        backoff = cfg.reconnect_min;
                        next_sync = Some(Instant::now());
                    }
                    Err(Error::Terminated { .. }) => return,
                    Err(e) => {
                        log::debug!("{}: rejoin failed: {e}", self.core.what());
                        wait = Some(backoff);
                        backoff = backoff.saturating_mul(2).min(cfg.reconnect_max);
                    }
                }
            }
            if rejoin_session.is_none() && next_sync.is_some_and(|t| Instant::now() >= t) {
                match self.sync() {
                    Ok(()) => {
                        backoff = cfg.reconnect_min;
                        next_sync = Instant::now().checked_add(self.core.reconcile);
                    }
                    Err(Error::ShutDown) => return self.handle_gone(),
                    Err(e) => {
                        // Often a connection that died with the outage the
                        // reconnect just ended: try again soon, not after a
                        // whole reconcile interval.
                        log::debug!("{}: reconcile failed: {e}", self.core.what());
                        next_sync = Instant::now().checked_add(backoff);
                        backoff = backoff.saturating_mul(2).min(cfg.reconnect_max);
                    }
                }
            }
            let wait = wait.unwrap_or_else(|| match next_sync {
                Some(t) => t.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            });
            select! {
                recv(self.commands) -> c => match c {
                    Ok(Command::Rejoin) => {
                        self.lease = None;
                        rejoin_session = Some(random_id());
                    }
                    Ok(Command::Deleted { id, token }) => {
                        let mut st = self.core.state.lock();
                        self.core.removed(&mut st, &id, token, DeleteReason::Deleted);
                    }
                    Ok(Command::Stop) | Err(_) => return,
                },
                recv(self.sub.receiver()) -> m => match m {
                    Ok(SubEvent::Message(m)) => {
                        if self.on_message(&m.payload) {
                            next_sync = Some(Instant::now());
                        }
                    }
                    // Messages may have been lost while disconnected.
                    Ok(SubEvent::Reconnected) => next_sync = Some(Instant::now()),
                    Err(_) => return self.handle_gone(),
                },
                default(wait) => {},
            }
        }
    }

    /// The handle was shut down, and with it the heartbeat that renews the
    /// lease: the jobs must stop, and the worker is closed.
    fn handle_gone(&self) {
        if self.core.close_local(DeleteReason::LeaseLost).is_ok() {
            log::warn!(
                "{}: the redswarm handle was shut down; closed",
                self.core.what()
            );
            self.core.emit(ClusterEvent::Closed);
        }
    }

    /// Applies one message; true when it asks for a reconcile now.
    fn on_message(&self, payload: &[u8]) -> bool {
        let core = &self.core;
        let msg: WorkerMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{}: unreadable message ignored: {e}", core.what());
                return false;
            }
        };
        let channel = core.keys.worker_events(&core.id);
        let parsed = match token(&msg.token, &channel) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("{}: {e}", core.what());
                return false;
            }
        };
        match (msg.op.as_str(), parsed) {
            ("add", Some(t)) => {
                let mut st = core.state.lock();
                if st.joined && t > st.floor {
                    core.added(&mut st, msg.id, t, msg.payload, core);
                }
                false
            }
            ("delete", Some(t)) => {
                let reason = match msg.reason.as_str() {
                    "rebalanced" => DeleteReason::Rebalanced,
                    _ => DeleteReason::Deleted,
                };
                let mut st = core.state.lock();
                core.removed(&mut st, &msg.id, t, reason);
                false
            }
            // A master found this worker's lease lapsed. Perhaps an older
            // session's: the reconcile decides.
            ("reaped", _) => true,
            (op, _) => {
                log::warn!("{}: unknown message {op:?} ignored", core.what());
                false
            }
        }
    }

    /// Reconciles the job table with Redis (one read-only script).
    fn sync(&self) -> Result<()> {
        let core = &self.core;
        let k = &core.keys;
        let (generation, session, held) = {
            let st = core.state.lock();
            if !st.joined {
                return Ok(());
            }
            let held: Vec<(JobId, u64)> = st.jobs.iter().map(|(i, t)| (i.clone(), *t)).collect();
            (st.generation, st.session.clone(), held)
        };
        let mut inv = CLUSTER_SYNC.prepare();
        inv.key(&k.workers)
            .key(k.worker(&core.id))
            .key(k.worker_jobs(&core.id))
            .key(&k.fence)
            .arg(&core.id)
            .arg(&session)
            .arg(k.job_prefix());
        for (id, t) in &held {
            inv.arg(id).arg(t.to_string());
        }
        let reply: Vec<Value> = {
            let mut conn = core.swarm.conn()?;
            run(&inv, &mut *conn)?
        };
        let jobs_key = k.worker_jobs(&core.id);
        if text(&reply, 0, &jobs_key)? == "gone" {
            let st = core.state.lock();
            if st.generation == generation {
                drop(st);
                if let Some(lease) = &self.lease {
                    lease.mark_lost(
                        "this worker's membership is gone from Redis (reaped, or Redis lost it)",
                    );
                }
            }
            return Ok(());
        }
        let floor = token(&text(&reply, 1, &k.fence)?, &k.fence)?.unwrap_or(0);
        let strings = |i: usize| -> Result<Vec<String>> {
            match reply.get(i) {
                Some(v) => redis::from_redis_value_ref(v)
                    .map_err(|e| Error::corrupt(&jobs_key, format!("reconcile reply: {e}"))),
                None => Err(Error::corrupt(&jobs_key, "reconcile reply is short")),
            }
        };
        let new = strings(2)?;
        let lost = strings(3)?;
        let mut st = core.state.lock();
        if st.generation != generation || !st.joined {
            return Ok(()); // fenced or closed meanwhile: this view is stale
        }
        st.floor = st.floor.max(floor);
        for pair in lost.chunks(2) {
            if let [id, reason] = pair {
                if let Some(&t) = st.jobs.get(id) {
                    let reason = if reason == "rebalanced" {
                        DeleteReason::Rebalanced
                    } else {
                        DeleteReason::Deleted
                    };
                    core.removed(&mut st, id, t, reason);
                }
            }
        }
        for triple in new.chunks(3) {
            if let [id, t, payload] = triple {
                if let Some(t) = token(t, &jobs_key)? {
                    core.added(&mut st, id.clone(), t, payload.clone(), core);
                }
            }
        }
        Ok(())
    }
}
