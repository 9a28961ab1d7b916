//! Masters of a job cluster: add, delete and list jobs from any of them;
//! one at a time (the holder of the master seat, a lease the heartbeat
//! renews) assigns jobs to workers and reaps dead workers, the others stand
//! by and take the seat when it is freed or lapses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, Receiver, Sender};
use parking_lot::Mutex;
use redis::Value;
use serde::Serialize;

use crate::cluster::records::{
    check_interval, check_lease, default_lease, int, parse_jobs, parse_workers, run, text, JobId,
    JobInfo, WorkerInfo, CLUSTER_ADD, CLUSTER_DELETE, CLUSTER_ELECT, CLUSTER_JOBS, CLUSTER_OPEN,
    CLUSTER_RESIGN, CLUSTER_SWEEP, CLUSTER_WORKERS,
};
use crate::error::{Error, Result};
use crate::grant::once_more_if_lost;
use crate::handle::Redswarm;
use crate::keys::{validate_name, ClusterKeys};
use crate::lease::{Lease, LeaseLost, LeaseTarget};
use crate::runtime::Runtime;
use crate::subscriber::{SubEvent, Subscription};
use crate::util::{millis, random_id};

/// Most workers reaped, jobs assigned and jobs moved per sweep script; a
/// sweep that hits a limit runs again at once.
const SWEEP_BATCH: usize = 200;
/// Longest a standby sleeps without trying for the seat.
const MAX_STANDBY_NAP: Duration = Duration::from_secs(3600);
/// Woken this long after a deadline, so Redis's clock has surely passed it.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);

/// Settings of a [`Master`].
///
/// ```
/// use std::time::Duration;
/// let opts = redswarm::MasterOptions::new()
///     .lease(Duration::from_secs(5))
///     .rebalance(true)
///     .max_payload_bytes(16 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct MasterOptions {
    lease: Option<Duration>,
    assign: bool,
    rebalance: bool,
    recheck: Option<Duration>,
    max_payload_bytes: usize,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            lease: None,
            assign: true,
            rebalance: false,
            recheck: None,
            max_payload_bytes: 64 * 1024,
        }
    }
}

impl MasterOptions {
    /// Defaults: stands for the master seat with a 3 s lease (at least three
    /// heartbeats), no rebalancing, 64 KiB payloads, re-check every
    /// `wait_recheck`.
    ///
    /// ```
    /// let o = redswarm::MasterOptions::new();
    /// ```
    pub fn new() -> MasterOptions {
        MasterOptions::default()
    }

    /// Lease of the master seat, renewed by the heartbeat while this master
    /// is active. If the active master dies, a standby takes over within
    /// this time (at once when it stops cleanly).
    ///
    /// ```
    /// let o = redswarm::MasterOptions::new().lease(std::time::Duration::from_secs(10));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Whether this master stands for the seat and assigns jobs when it
    /// holds it (default true). With `false` it only adds, deletes and
    /// lists — a client of the cluster that never assigns.
    ///
    /// ```
    /// let submit_only = redswarm::MasterOptions::new().assign(false);
    /// ```
    pub fn assign(mut self, on: bool) -> Self {
        self.assign = on;
        self
    }

    /// Rebalance when a worker joins (default off): while this master is
    /// active, after a join it moves jobs from the most to the least loaded
    /// worker until their loads differ by at most one — no more moves than
    /// that. A moved job's old worker gets
    /// [`Deleted`](crate::ClusterEvent::Deleted) with
    /// [`DeleteReason::Rebalanced`](crate::DeleteReason::Rebalanced) at the
    /// same moment the new one gets `Added` (with a higher fencing token):
    /// for a short while both may still be working on it.
    ///
    /// ```
    /// let o = redswarm::MasterOptions::new().rebalance(true);
    /// ```
    pub fn rebalance(mut self, on: bool) -> Self {
        self.rebalance = on;
        self
    }

    /// Longest the active master sleeps between sweeps when nothing wakes
    /// it (default: the config's `wait_recheck`). It normally wakes on
    /// messages (a job added, a worker joined or left) and at the earliest
    /// worker lease deadline; this bounds the cost of a lost message.
    ///
    /// ```
    /// let o = redswarm::MasterOptions::new().recheck(std::time::Duration::from_secs(2));
    /// ```
    pub fn recheck(mut self, every: Duration) -> Self {
        self.recheck = Some(every);
        self
    }

    /// Largest payload accepted, in bytes of JSON (default 64 KiB). Each
    /// assignment carries the payload to its worker.
    ///
    /// ```
    /// let o = redswarm::MasterOptions::new().max_payload_bytes(1024);
    /// ```
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }
}

struct Inner {
    swarm: Runtime,
    cluster: String,
    keys: ClusterKeys,
    token: String,
    lease: Duration,
    recheck: Duration,
    rebalance: bool,
    max_payload_bytes: usize,
    active: AtomicBool,
}

/// A master of job cluster `cluster_id`: adds, deletes and lists jobs, and
/// (unless [`MasterOptions::assign`] is off) stands for the master seat —
/// exactly one master at a time assigns jobs to workers. See the
/// [module docs](crate::cluster).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let master = redswarm::Master::new(&swarm, "streams")?;
/// let id = master.add_job(&serde_json::json!({"follow": "orders"}))?;
/// master.add_job_with_id("fx-feed", &"EURUSD")?; // idempotent
/// log::info!("{:?}", master.jobs()?);
/// master.delete_job(&id)?;
/// # Ok(()) }
/// ```
pub struct Master {
    inner: Arc<Inner>,
    stop: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("cluster", &self.inner.cluster)
            .field("id", &self.inner.token)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Master {
    /// A master of `cluster_id` with the default [`MasterOptions`]: creates
    /// the cluster if no master did before, and stands for the seat.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let master = redswarm::Master::new(&swarm, "streams")?;
    /// # Ok(()) }
    /// ```
    pub fn new(swarm: &Redswarm, cluster_id: &str) -> Result<Master> {
        Master::with_options(swarm, cluster_id, MasterOptions::new())
    }

    /// A master with options.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let submit_only = redswarm::Master::with_options(
    ///     &swarm, "streams", redswarm::MasterOptions::new().assign(false))?;
    /// # Ok(()) }
    /// ```
    pub fn with_options(swarm: &Redswarm, cluster_id: &str, opts: MasterOptions) -> Result<Master> {
        let swarm = swarm.runtime();
        let keys = swarm.keys().cluster(cluster_id)?;
        let cfg = swarm.config();
        let lease = opts.lease.unwrap_or_else(|| default_lease(swarm));
        check_lease(swarm, "master lease", lease)?;
        let recheck = opts.recheck.unwrap_or_else(|| cfg.wait_recheck());
        check_interval("master recheck interval", recheck)?;
        if opts.max_payload_bytes == 0 {
            return Err(Error::invalid(
                "max payload bytes",
                "must be greater than zero",
            ));
        }
        let inner = Arc::new(Inner {
            swarm: swarm.clone(),
            cluster: cluster_id.to_string(),
            token: random_id(),
            lease,
            recheck,
            rebalance: opts.rebalance,
            max_payload_bytes: opts.max_payload_bytes,
            active: AtomicBool::new(false),
            keys,
        });
        {
            let mut conn = swarm.conn()?;
            let _: i64 = run(CLUSTER_OPEN.prepare().key(&inner.keys.meta), &mut *conn)?;
        }
        let (stop, stop_rx) = bounded::<()>(1);
        let thread = if opts.assign {
            // Subscribed before the first election: nothing published after
            // it can be missed.
            let wake = swarm.subscribe(&inner.keys.wake)?;
            let assigner = Assigner {
                inner: inner.clone(),
                wake,
                stop: stop_rx,
                seat: None,
            };
            Some(
                std::thread::Builder::new()
                    .name(format!("cluster-master-{cluster_id}"))
                    .spawn(move || assigner.run())
                    .map_err(|e| Error::Pool(format!("cannot spawn master thread: {e}")))?,
            )
        } else {
            None
        };
        log::info!(
            "master {} of cluster `{cluster_id}` started{}",
            inner.token,
            if opts.assign { "" } else { " (submit only)" }
        );
        Ok(Master {
            inner,
            stop,
            thread: Mutex::new(thread),
        })
    }

    /// This master's id (the token it holds the seat with).
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) { log::info!("I am {}", m.id()); }
    /// ```
    pub fn id(&self) -> &str {
        &self.inner.token
    }

    /// The cluster id.
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) { assert_eq!(m.cluster_id(), "streams"); }
    /// ```
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster
    }

    /// True while this master holds the seat (is the one assigning).
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) { if m.is_active() { log::info!("assigning"); } }
    /// ```
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// The id of the master holding the seat now, as Redis says.
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) -> redswarm::Result<()> {
    /// match m.active_master()? {
    ///     Some(id) => log::info!("master {id} assigns"),
    ///     None => log::warn!("no master is active: new jobs wait"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn active_master(&self) -> Result<Option<String>> {
        let mut conn = self.inner.swarm.conn()?;
        let v: Value = redis::cmd("GET")
            .arg(&self.inner.keys.master)
            .query(&mut *conn)?;
        match v {
            Value::Nil => Ok(None),
            other => redis::from_redis_value(other)
                .map(Some)
                .map_err(|e| Error::corrupt(&self.inner.keys.master, format!("master seat: {e}"))),
        }
    }

    /// Adds a job with a random id and returns the id. It is assigned to
    /// the least-loaded live worker by the active master (at once if one is
    /// active; when one becomes active otherwise).
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) -> redswarm::Result<()> {
    /// let id = m.add_job(&serde_json::json!({"stream": "orders"}))?;
    /// # Ok(()) }
    /// ```
    pub fn add_job<T: Serialize + ?Sized>(&self, payload: &T) -> Result<JobId> {
        let id = random_id();
        // A lost reply is asked about once more under the same id (the add
        // is idempotent per id), so a retry cannot add the job twice. If
        // that fails too, whether it was added is unknown: a caller that
        // must never add twice uses `add_job_with_id` with an id of its own.
        once_more_if_lost(|| self.add_job_with_id(&id, payload))?;
        Ok(id)
    }

    /// Adds a job under `id`. Idempotent: returns `true` when added, `false`
    /// when a job with this id and the same payload already exists (a retry
    /// after a lost reply changes nothing); a different payload under an
    /// existing id is [`Error::InvalidInput`].
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) -> redswarm::Result<()> {
    /// assert!(m.add_job_with_id("shard-7", &7)?);
    /// assert!(!m.add_job_with_id("shard-7", &7)?);
    /// # Ok(()) }
    /// ```
    pub fn add_job_with_id<T: Serialize + ?Sized>(&self, id: &str, payload: &T) -> Result<bool> {
        validate_name("job id", id)?;
        let payload = serde_json::to_string(payload)?;
        if payload.len() > self.inner.max_payload_bytes {
            return Err(Error::TooLarge {
                what: "job payload",
                size: payload.len(),
                limit: self.inner.max_payload_bytes,
            });
        }
        let k = &self.inner.keys;
        let mut conn = self.inner.swarm.conn()?;
        let added: i64 = run(
            CLUSTER_ADD
                .prepare()
                .key(&k.jobs)
                .key(&k.pending)
                .key(&k.seq)
                .key(k.job(id))
                .arg(id)
                .arg(&payload)
                .arg(&k.wake),
            &mut *conn,
        )?;
        match added {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(Error::invalid(
                "job id",
                format!(
                    "job `{id}` already exists in cluster `{}` with another payload",
                    self.inner.cluster
                ),
            )),
        }
    }

    /// Deletes job `id`; its worker (if any) gets
    /// [`Deleted`](crate::ClusterEvent::Deleted) with
    /// [`DeleteReason::Deleted`](crate::DeleteReason::Deleted). Applied even
    /// while no master is active. An unknown id (or one already deleted) is
    /// [`Error::NotFound`].
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) -> redswarm::Result<()> {
    /// m.delete_job("shard-7")?;
    /// # Ok(()) }
    /// ```
    pub fn delete_job(&self, id: &str) -> Result<()> {
        validate_name("job id", id)?;
        match delete(&self.inner.swarm, &self.inner.keys, id, None)? {
            Deleted::Yes => Ok(()),
            Deleted::NoSuchJob | Deleted::Stale => Err(Error::NotFound {
                what: "job",
                id: id.to_string(),
            }),
        }
    }

    /// Every job, in the order they were added, with its assignment.
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) -> redswarm::Result<()> {
    /// let waiting = m.jobs()?.iter().filter(|j| j.worker.is_none()).count();
    /// # Ok(()) }
    /// ```
    pub fn jobs(&self) -> Result<Vec<JobInfo>> {
        let k = &self.inner.keys;
        let mut conn = self.inner.swarm.conn()?;
        let flat: Vec<String> = run(
            CLUSTER_JOBS.prepare().key(&k.jobs).arg(k.job_prefix()),
            &mut *conn,
        )?;
        parse_jobs(flat, |id| k.job(id))
    }

    /// The live workers (membership lease not lapsed) with their load.
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Master) -> redswarm::Result<()> {
    /// let total: u32 = m.workers()?.iter().map(|w| w.load).sum();
    /// # Ok(()) }
    /// ```
    pub fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let k = &self.inner.keys;
        let mut conn = self.inner.swarm.conn()?;
        let flat: Vec<Value> = run(
            CLUSTER_WORKERS
                .prepare()
                .key(&k.workers)
                .arg(k.worker_prefix()),
            &mut *conn,
        )?;
        parse_workers(flat, &k.workers)
    }

    /// Stops standing for the seat; if this master held it, it steps down
    /// at once and a standby takes over without waiting for the lease.
    /// Adding, deleting and listing keep working. Idempotent; dropping the
    /// master does the same.
    ///
    /// ```no_run
    /// # fn demo(m: redswarm::Master) { m.stop(); }
    /// ```
    pub fn stop(&self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                log::error!("master thread of cluster `{}` panicked", self.inner.cluster);
            }
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the delete script did.
pub(crate) enum Deleted {
    Yes,
    NoSuchJob,
    /// The job is no longer assigned under the caller's token.
    Stale,
}

/// Deletes job `id`, only if it is assigned under `token` when one is given
/// (a worker deleting its own job).
pub(crate) fn delete(
    swarm: &Runtime,
    keys: &ClusterKeys,
    id: &str,
    token: Option<u64>,
) -> Result<Deleted> {
    let mut conn = swarm.conn()?;
    let n: i64 = run(
        CLUSTER_DELETE
            .prepare()
            .key(&keys.jobs)
            .key(&keys.pending)
            .key(keys.job(id))
            .arg(id)
            .arg(token.map(|t| t.to_string()).unwrap_or_default())
            .arg(keys.worker_prefix())
            .arg(&keys.wake),
        &mut *conn,
    )?;
    Ok(match n {
        1 => Deleted::Yes,
        0 => Deleted::NoSuchJob,
        _ => Deleted::Stale,
    })
}

/// What one sweep said.
struct Sweep {
    reaped: i64,
    assigned: i64,
    moved: i64,
    /// Until the earliest live worker's lease deadline.
    next_deadline: Option<Duration>,
    more: bool,
}

/// The thread of a master that stands for the seat.
struct Assigner {
    inner: Arc<Inner>,
    wake: Subscription,
    stop: Receiver<()>,
    /// The seat's lease and its loss notice, while we hold it.
    seat: Option<(Lease, Receiver<LeaseLost>)>,
}

impl Assigner {
    fn run(mut self) {
        let cfg = self.inner.swarm.config().clone();
        let mut backoff = cfg.reconnect_min;
        // When a standby next tries for the seat: when the holder's lease
        // runs out, when it resigns, or after `recheck` at the latest.
        let mut elect_at = Instant::now();
        loop {
            let mut wait = self.inner.recheck;
            if self.seat.as_ref().is_some_and(|(l, _)| l.is_lost()) {
                self.step_down("its lease was lost");
            }
            if self.seat.is_none() {
                if Instant::now() >= elect_at {
                    let next = match self.elect() {
                        Ok(None) => {
                            backoff = cfg.reconnect_min;
                            continue; // active now: sweep at once
                        }
                        Ok(Some(left)) => {
                            backoff = cfg.reconnect_min;
                            left.map_or(wait, |l| wait.min(l.saturating_add(DEADLINE_SLACK)))
                        }
                        Err(Error::ShutDown) => break, // the handle is gone
                        Err(e) => {
                            log::warn!("cluster `{}`: election failed: {e}", self.inner.cluster);
                            let b = backoff;
                            backoff = backoff.saturating_mul(2).min(cfg.reconnect_max);
                            b
                        }
                    };
                    // Capped, so even a `recheck` of Duration::MAX adds safely.
                    let now = Instant::now();
                    elect_at = now.checked_add(next.min(MAX_STANDBY_NAP)).unwrap_or(now);
                }
                wait = elect_at.saturating_duration_since(Instant::now());
            } else {
                // Take the wake-ups queued so far: this sweep covers them.
                self.wake.drain();
                match self.sweep() {
                    Ok(None) => {
                        self.step_down("another master holds the seat");
                        continue;
                    }
                    Ok(Some(s)) => {
                        backoff = cfg.reconnect_min;
                        if s.reaped + s.assigned + s.moved > 0 {
                            log::debug!(
                                "cluster `{}`: sweep reaped {} workers, assigned {} jobs, moved {}",
                                self.inner.cluster,
                                s.reaped,
                                s.assigned,
                                s.moved
                            );
                        }
                        if s.more {
                            continue;
                        }
                        if let Some(d) = s.next_deadline {
                            wait = wait.min(d.saturating_add(DEADLINE_SLACK));
                        }
                    }
                    Err(Error::ShutDown) => break,
                    Err(e) => {
                        log::warn!("cluster `{}`: sweep failed: {e}", self.inner.cluster);
                        wait = backoff;
                        backoff = backoff.saturating_mul(2).min(cfg.reconnect_max);
                    }
                }
            }
            let lost = self
                .seat
                .as_ref()
                .map(|(_, rx)| rx.clone())
                .unwrap_or_else(never);
            select! {
                recv(self.stop) -> _ => break,
                recv(self.wake.receiver()) -> event => {
                    // The active master sweeps on any wake-up. A standby only
                    // cares when the seat may be free: a resignation, or a
                    // reconnect (it may have missed one).
                    let seat_freed = match &event {
                        Ok(SubEvent::Message(m)) => m.payload == b"resign",
                        Ok(SubEvent::Reconnected) => true,
                        Err(_) => break, // the handle's pub/sub thread is gone
                    };
                    if seat_freed {
                        elect_at = Instant::now();
                    }
                }
                recv(lost) -> _ => {},
                default(wait) => {},
            }
        }
        self.resign();
    }

    /// One election attempt: `Ok(None)` when we hold the seat now, else
    /// how long the current holder's lease has left (if known).
    fn elect(&mut self) -> Result<Option<Option<Duration>>> {
        let inner = &self.inner;
        let mut conn = inner.swarm.conn()?;
        let sent = Instant::now();
        let reply: Vec<Value> = run(
            CLUSTER_ELECT
                .prepare()
                .key(&inner.keys.master)
                .arg(&inner.token)
                .arg(millis(inner.lease)),
            &mut *conn,
        )?;
        match text(&reply, 0, &inner.keys.master)?.as_str() {
            "active" => {
                let lease = inner.swarm.lease(
                    format!("master seat of cluster `{}`", inner.cluster),
                    LeaseTarget::Key {
                        key: inner.keys.master.clone(),
                        token: inner.token.clone(),
                    },
                    inner.lease,
                    sent,
                );
                let (tx, rx) = bounded(1);
                lease.notify_on_loss(tx);
                self.seat = Some((lease, rx));
                inner.active.store(true, Ordering::SeqCst);
                log::info!(
                    "master {} is now the active master of cluster `{}`",
                    inner.token,
                    inner.cluster
                );
                Ok(None)
            }
            _ => {
                let left = int(&reply, 1, &inner.keys.master).unwrap_or(-1);
                Ok(Some(u64::try_from(left).ok().map(Duration::from_millis)))
            }
        }
    }

    /// One sweep; `Ok(None)` when the seat is not ours any more.
    fn sweep(&self) -> Result<Option<Sweep>> {
        let inner = &self.inner;
        let k = &inner.keys;
        let mut conn = inner.swarm.conn()?;
        let reply: Vec<Value> = run(
            CLUSTER_SWEEP
                .prepare()
                .key(&k.master)
                .key(&k.meta)
                .key(&k.pending)
                .key(&k.workers)
                .key(&k.fence)
                .arg(&inner.token)
                .arg(k.job_prefix())
                .arg(k.worker_prefix())
                .arg(SWEEP_BATCH)
                .arg(if inner.rebalance { "1" } else { "0" }),
            &mut *conn,
        )?;
        if text(&reply, 0, &k.master)? != "active" {
            return Ok(None);
        }
        let reaped = int(&reply, 1, &k.workers)?;
        if reaped > 0 {
            log::warn!(
                "cluster `{}`: {reaped} workers' leases lapsed; their jobs are reassigned",
                inner.cluster
            );
        }
        Ok(Some(Sweep {
            reaped,
            assigned: int(&reply, 2, &k.pending)?,
            moved: int(&reply, 3, &k.pending)?,
            next_deadline: u64::try_from(int(&reply, 4, &k.workers)?)
                .ok()
                .map(Duration::from_millis),
            more: int(&reply, 5, &k.pending)? == 1,
        }))
    }

    fn step_down(&mut self, why: &str) {
        if self.seat.take().is_some() {
            self.inner.active.store(false, Ordering::SeqCst);
            log::warn!(
                "master {} of cluster `{}` stands by: {why}",
                self.inner.token,
                self.inner.cluster
            );
        }
    }

    /// Frees the seat if we hold it, so a standby takes over at once.
    fn resign(&mut self) {
        let Some((lease, _)) = self.seat.take() else {
            return;
        };
        drop(lease); // stop renewing; the script checks the token anyway
        self.inner.active.store(false, Ordering::SeqCst);
        let inner = &self.inner;
        let r = inner.swarm.conn().and_then(|mut c| {
            run::<i64>(
                CLUSTER_RESIGN
                    .prepare()
                    .key(&inner.keys.master)
                    .arg(&inner.token)
                    .arg(&inner.keys.wake),
                &mut *c,
            )
        });
        match r {
            Ok(_) => log::info!(
                "master {} of cluster `{}` stepped down",
                inner.token,
                inner.cluster
            ),
            Err(e) => log::log!(
                if matches!(e, Error::ShutDown) { log::Level::Debug } else { log::Level::Warn },
                "master {} of cluster `{}` could not step down ({e}); a standby takes over when the seat's lease lapses",
                inner.token,
                inner.cluster
            ),
        }
    }
}
