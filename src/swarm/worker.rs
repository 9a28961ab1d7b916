//! Swarm workers: N handler threads; a pump thread whose every round trip
//! (one `queue_step` script) settles the outcomes the handlers reported,
//! reaps expired leases and claims a task for each idle thread; a waker
//! thread that blocks on the queue's wake-up list for the pump; and a
//! supervisor that tells tasks to stop when they are cancelled, time out,
//! lose their lease or the node is cut off.
//!
//! Outages are not the task's fault, and a worker does not let them turn
//! into failed or twice-run tasks:
//! - a round trip whose reply was lost is sent again with the same claim
//!   token and reports: it returns the same grants and the reports' first
//!   answers (or, when the worker stops, the claims are handed back by
//!   token), so nothing is left to a lease;
//! - a result is reported until Redis takes it or proves the claim stale
//!   (the report is fenced, so retrying is safe); the task's lease stays
//!   registered meanwhile;
//! - without peers to ask, losing Redis is no verdict: running tasks keep
//!   going until their lease's local deadline (self-fencing), and a Redis
//!   restart shorter than the lease costs nothing.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::connection::NodeAddr;
use crate::error::{Error, Result};
use crate::grant::validate_ttl;
use crate::health::PartitionState;
use crate::lease::{Lease, LeaseTarget};
use crate::subscriber::SubEvent;
use crate::swarm::claim::{step, token_ttl_ms, unclaim, ClaimedTask, FinishReply, Report};
use crate::swarm::context::{StopReason, StopSignal, TaskContext};
use crate::swarm::queue::Queue;
use crate::threadpool::ThreadPool;
use crate::util::{check_ttl, deadline_after, panic_message, random_id};

/// How much longer than the grace period [`SwarmWorker::shutdown`] may take:
/// half of it for stopped handlers to return and report, the rest for
/// handing back what still runs. Handlers that ignore their stop signal are
/// not waited for beyond it.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// How many finished attempts [`SwarmWorker::finished`] keeps unread; older
/// ones are dropped to make room, so an unread channel costs no memory
/// growth.
pub const FINISHED_KEEP: usize = 1024;

/// The longest an idle worker blocks on the wake-up list with nothing due:
/// a safety net for wake-ups lost with a Redis restart that lost data.
const IDLE_WAIT_CAP: Duration = Duration::from_secs(60);

/// Reports settled by one round trip at most (one script stays a bounded
/// amount of work even after an outage let reports pile up).
const MAX_REPORTS_PER_STEP: usize = 256;

/// `cancel` messages for tasks this worker does not (yet) know are kept
/// this long: the message can overtake the claim's reply.
const EARLY_CANCEL_KEEP: Duration = Duration::from_secs(5);

/// How a finished task was reported.
///
/// ```
/// let h = redswarm::FinishedHow::Completed;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishedHow {
    /// Ended ok.
    Completed,
    /// The attempt failed; it will be retried.
    Retrying(String),
    /// Ended failed.
    Failed(String),
    /// Ended cancelled.
    Cancelled,
    /// Handed back to the queue (shutdown, lost lease, cut off).
    HandedBack,
    /// Redis refused the report: the claim was stale (another attempt owns
    /// the task now) — the fencing token at work.
    Rejected,
    /// Not reported: the worker shut down before Redis could take the
    /// report; the task is re-run after its lease expires.
    Abandoned(String),
}

/// One finished attempt, as seen by this worker.
///
/// ```no_run
/// # fn demo(worker: &redswarm::SwarmWorker) {
/// for f in worker.finished().try_iter() {
///     log::info!("done {} {} {}", f.id, f.attempt, f.fencing_token);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Task id.
    pub id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Fencing token of this attempt's claim.
    pub fencing_token: u64,
    /// How it was reported.
    pub how: FinishedHow,
}

/// Worker settings.
///
/// ```
/// use std::time::Duration;
/// let opts = redswarm::WorkerOptions::new().threads(8).lease(Duration::from_secs(30)).grace(Duration::from_secs(10));
/// ```
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    threads: usize,
    /// None: three heartbeats of the handle.
    lease: Option<Duration>,
    grace: Duration,
    reap_every: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            threads: 4,
            lease: None,
            grace: Duration::from_secs(10),
            reap_every: Duration::from_secs(5),
        }
    }
}

impl WorkerOptions {
    /// The lease (set by [`SwarmWorker::start`] when left to its default).
    fn effective_lease(&self) -> Duration {
        self.lease.unwrap_or(Duration::from_secs(3))
    }

    /// The most handler threads one worker may have (each has its own
    /// stack; a typo like 100000 must fail, not exhaust the process).
    ///
    /// ```
    /// assert_eq!(redswarm::WorkerOptions::MAX_THREADS, 1024);
    /// ```
    pub const MAX_THREADS: usize = ThreadPool::MAX_THREADS;

    /// Defaults: 4 threads, a lease of three heartbeats (3 s with the
    /// default 1 s [`crate::Config::heartbeat_interval`]), 10 s grace, an idle worker reaps
    /// at least every 5 s while tasks run elsewhere.
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new();
    /// ```
    pub fn new() -> WorkerOptions {
        WorkerOptions::default()
    }

    /// Handler threads, and exactly the most tasks claimed at once: 1 to
    /// [`WorkerOptions::MAX_THREADS`], checked
    /// by [`SwarmWorker::start`] ([`Error::InvalidConfig`] for `threads`).
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new().threads(16);
    /// ```
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Task lease, renewed every heartbeat while the task runs; a dead
    /// worker's tasks are re-queued this long after it stopped renewing
    /// (by any worker of the queue: busy ones reap in every round trip,
    /// idle ones wake at the earliest lease deadline). At least three
    /// heartbeats, at most [`crate::MAX_TTL`]; default three heartbeats.
    /// A longer lease rides out longer Redis outages without re-running
    /// tasks; a shorter one fails over sooner.
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new().lease(std::time::Duration::from_secs(10));
    /// ```
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = Some(d);
        self
    }

    /// How long shutdown lets running tasks finish before telling them to
    /// stop and handing them back to the queue; shutdown returns within
    /// this plus [`SHUTDOWN_MARGIN`] (`Duration::MAX`: as long as they take).
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new().grace(std::time::Duration::from_secs(5));
    /// ```
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// How often this worker also re-queues expired leases (self-healing
    /// without a monitor). An idle worker wakes for it only while some
    /// task of the queue runs, when that task's lease could have ended.
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new().reap_every(std::time::Duration::from_secs(2));
    /// ```
    pub fn reap_every(mut self, d: Duration) -> Self {
        self.reap_every = d;
        self
    }
}

type Handler = dyn Fn(&TaskContext) -> std::result::Result<serde_json::Value, String> + Send + Sync;

struct Running {
    attempt: u32,
    fence: u64,
    started: Instant,
    timeout: Option<Duration>,
    stop: Arc<StopSignal>,
    control: Sender<String>,
    lease: Lease,
    /// The handler returned; its outcome is being reported.
    finishing: bool,
}

#[derive(Default)]
struct Tasks {
    /// Claimed tasks by id, from the claim until their report is settled:
    /// never more than `threads`.
    map: HashMap<String, Running>,
    /// `cancel` messages for ids not in `map` (yet), with when they came.
    early_cancels: HashMap<String, Instant>,
}

struct Shared {
    queue: Queue,
    opts: WorkerOptions,
    handler: Box<Handler>,
    tasks: Mutex<Tasks>,
    /// Notified whenever a task leaves `tasks.map`.
    slot_freed: Condvar,
    stopping: AtomicBool,
    /// Disconnected when shutdown starts: wakes the fetch loop's sleeps.
    shutdown_rx: Receiver<()>,
    /// Reports still failing after this give up (set by shutdown).
    give_up_at: Mutex<Option<Instant>>,
    /// Tasks handed back by their own threads during shutdown.
    handed_back: AtomicUsize,
    /// Outcomes the handler threads reported, for the pump to settle.
    reports_tx: Sender<Report>,
    reports_rx: Receiver<Report>,
    finished_tx: Sender<Finished>,
    finished_rx: Receiver<Finished>,
    /// `CLIENT ID` of the blocking connection, to unblock it. A copy of
    /// `wait_conn`'s id: that mutex is held for the whole `BLPOP`, so
    /// shutdown could not read it there.
    fetch_client: Mutex<Option<(i64, NodeAddr)>>,
    /// The one connection that blocks on the wake-up list: used by the
    /// pump while nothing runs, else by the waker thread (never both).
    wait_conn: Mutex<Option<WaitConnection>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Keeps the latest [`FINISHED_KEEP`] reports: when the channel is full,
    /// the oldest unread one makes room.
    fn publish_finished(&self, mut f: Finished) {
        loop {
            match self.finished_tx.try_send(f) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    let _ = self.finished_rx.try_recv();
                    f = back;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// A swarm worker; see the [module docs](crate::swarm).
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let queue = swarm.queue("thumbnails")?;
/// let worker = redswarm::SwarmWorker::start(&queue, redswarm::WorkerOptions::new().threads(8), |ctx| {
///     ctx.progress(serde_json::json!({"phase": "resizing"}));
///     Ok(serde_json::json!({"ok": true}))
/// })?;
/// // ... until asked to stop:
/// let report = worker.shutdown();
/// # Ok(()) }
/// ```
pub struct SwarmWorker {
    shared: Arc<Shared>,
    pool: Mutex<Option<Arc<ThreadPool>>>,
    fetch: Mutex<Option<JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    shutdown_tx: Mutex<Option<Sender<()>>>,
    supervisor_stop: Sender<()>,
}

impl SwarmWorker {
    /// Starts the worker: its thread pool, fetch loop and supervisor.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let queue = swarm.queue("q")?;
    /// let w = redswarm::SwarmWorker::start(&queue, redswarm::WorkerOptions::new(), |_ctx| Ok(serde_json::Value::Null))?;
    /// # Ok(()) }
    /// ```
    pub fn start<H>(queue: &Queue, opts: WorkerOptions, handler: H) -> Result<SwarmWorker>
    where
        H: Fn(&TaskContext) -> std::result::Result<serde_json::Value, String>
            + Send
            + Sync
            + 'static,
    {
        // Checked before anything is allocated, spawned or sent to Redis.
        if opts.threads == 0 {
            return Err(Error::config("threads", "must be at least 1"));
        }
        if opts.threads > ThreadPool::MAX_THREADS {
            return Err(Error::config(
                "threads",
                format!(
                    "{} is above the limit of {} (ThreadPool::MAX_THREADS)",
                    opts.threads,
                    ThreadPool::MAX_THREADS
                ),
            ));
        }
        let mut opts = opts;
        let lease = opts
            .lease
            .unwrap_or_else(|| queue.swarm.config().min_renewable_ttl());
        check_ttl("worker lease", lease)?;
        validate_ttl(&queue.swarm, lease, true)?;
        opts.lease = Some(lease);
        let pool = Arc::new(ThreadPool::new(
            &format!("swarm-{}", queue.name),
            opts.threads,
            opts.threads,
        )?);
        let (finished_tx, finished_rx) = bounded(FINISHED_KEEP);
        let (shutdown_tx, shutdown_rx) = bounded::<()>(1);
        let (reports_tx, reports_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            queue: queue.clone(),
            opts,
            handler: Box::new(handler),
            tasks: Mutex::new(Tasks::default()),
            slot_freed: Condvar::new(),
            stopping: AtomicBool::new(false),
            shutdown_rx,
            give_up_at: Mutex::new(None),
            handed_back: AtomicUsize::new(0),
            reports_tx,
            reports_rx,
            finished_tx,
            finished_rx,
            fetch_client: Mutex::new(None),
            wait_conn: Mutex::new(None),
        });
        // Control messages for any task of this queue: one pattern
        // subscription per worker, routed to the running task by id.
        let control = queue
            .swarm
            .psubscribe(&format!("{}*:control", queue.keys.task_prefix()))?;
        let (supervisor_stop, supervisor_stop_rx) = bounded::<()>(1);
        let fetch = {
            let (shared, pool) = (shared.clone(), pool.clone());
            std::thread::Builder::new()
                .name(format!("swarm-pump-{}", queue.name))
                .spawn(move || pump(shared, pool))
                .map_err(|e| Error::invalid("worker", format!("cannot spawn thread: {e}")))?
        };
        let supervisor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("swarm-supervisor-{}", queue.name))
                .spawn(move || supervise(shared, control, supervisor_stop_rx))
                .map_err(|e| Error::invalid("worker", format!("cannot spawn thread: {e}")))?
        };
        log::info!(
            "worker on queue `{}` started: {} threads, lease {:?}",
            queue.name,
            shared.opts.threads,
            shared.opts.effective_lease()
        );
        Ok(SwarmWorker {
            shared,
            pool: Mutex::new(Some(pool)),
            fetch: Mutex::new(Some(fetch)),
            supervisor: Mutex::new(Some(supervisor)),
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            supervisor_stop,
        })
    }

    /// The attempts this worker finished, as they finish. The channel keeps
    /// the latest [`FINISHED_KEEP`] unread ones (older ones make room), so
    /// a worker nobody reads from does not grow; every clone reads the same
    /// channel.
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::SwarmWorker) {
    /// while let Ok(f) = w.finished().recv() { log::info!("{f:?}"); }
    /// # }
    /// ```
    pub fn finished(&self) -> Receiver<Finished> {
        self.shared.finished_rx.clone()
    }

    /// Tasks this worker holds right now: running, or finished with their
    /// outcome waiting for the next round trip to settle it. Running ones
    /// never outnumber [`WorkerOptions::threads`]; a finished one frees its
    /// thread at once.
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::SwarmWorker) { log::info!("{}", w.running()); }
    /// ```
    pub fn running(&self) -> usize {
        self.shared.tasks.lock().map.len()
    }

    /// Graceful shutdown: stop fetching, let running tasks finish within
    /// the grace period, then tell the rest to stop; they hand their tasks
    /// back to the queue at once (no waiting for lease expiry). Handlers
    /// that ignore the stop signal are not waited for: their tasks are
    /// handed back for them. Returns within the grace period plus
    /// [`SHUTDOWN_MARGIN`] (what Redis could not be told by then is left to
    /// the lease), with how many tasks were handed back.
    ///
    /// ```no_run
    /// # fn demo(w: redswarm::SwarmWorker) { let handed_back = w.shutdown(); }
    /// ```
    pub fn shutdown(&self) -> usize {
        let shared = &self.shared;
        if shared.stopping.swap(true, Ordering::SeqCst) {
            return 0;
        }
        // Saturating: a grace of Duration::MAX waits as long as tasks run
        // (a century stands for "never").
        let now = Instant::now();
        let grace_end = deadline_after(now, shared.opts.grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let hard_end = deadline_after(grace_end, SHUTDOWN_MARGIN).unwrap_or(grace_end);
        *shared.give_up_at.lock() = Some(hard_end);
        // Wake the fetch loop: its sleeps end, its blocking read is unblocked.
        self.shutdown_tx.lock().take();
        let fetch_client = shared.fetch_client.lock().clone();
        if let Some((id, node)) = fetch_client {
            let s = shared.clone();
            let _ = std::thread::Builder::new()
                .name("swarm-unblock".into())
                .spawn(move || unblock(&s, id, &node));
        }
        wait_for_tasks(shared, grace_end);
        for r in shared.tasks.lock().map.values() {
            r.stop.stop(StopReason::ShuttingDown);
        }
        // Stopped handlers hand their tasks back themselves.
        wait_for_tasks(
            shared,
            deadline_after(grace_end, SHUTDOWN_MARGIN / 2).unwrap_or(grace_end),
        );
        // The rest ignore the stop (or cannot report): hand them back here,
        // on a helper thread so that an unreachable Redis cannot hold this
        // call past its bound. Their late reports will be rejected as stale.
        let left: Vec<(String, u64)> = shared
            .tasks
            .lock()
            .map
            .iter()
            .filter(|(_, r)| !r.finishing)
            .map(|(id, r)| (id.clone(), r.fence))
            .collect();
        let mut handed_back = 0;
        if !left.is_empty() {
            let (tx, rx) = bounded(1);
            let q = shared.queue.clone();
            let lease = shared.opts.effective_lease();
            let spawned = std::thread::Builder::new()
                .name("swarm-handback".into())
                .spawn(move || {
                    let mut n = 0;
                    for (id, fence) in left {
                        if Instant::now() >= hard_end {
                            break;
                        }
                        let report = Report::new(&id, fence, 0, "handback", String::new());
                        let reply = step(&q, std::slice::from_ref(&report), 0, lease, &random_id())
                            .map(|mut s| s.finishes.pop());
                        match reply {
                            Ok(Some(FinishReply::Applied { .. })) => {
                                n += 1;
                                log::info!("task {id} handed back to the queue (its handler ignored the stop)");
                            }
                            Ok(_) => {}
                            Err(e) => log::warn!(
                                "task {id} not handed back ({e}); it is re-queued when its lease expires"
                            ),
                        }
                    }
                    let _ = tx.send(n);
                });
            if spawned.is_ok() {
                handed_back += rx
                    .recv_timeout(hard_end.saturating_duration_since(Instant::now()))
                    .unwrap_or(0);
            }
            // Their leases end here: nobody renews a task handed back.
            let mut tasks = shared.tasks.lock();
            tasks.map.retain(|_, r| r.finishing);
        }
        wait_for_tasks(shared, hard_end);
        let _ = self.supervisor_stop.try_send(());
        let fetch = self.fetch.lock().take();
        let supervisor = self.supervisor.lock().take();
        let mut all_joined = true;
        for t in [fetch, supervisor].into_iter().flatten() {
            while !t.is_finished() && Instant::now() < hard_end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                all_joined = false;
            }
        }
        if let Some(pool) = self.pool.lock().take() {
            if all_joined && shared.tasks.lock().map.is_empty() && pool.idle() == pool.size() {
                pool.join();
            } else {
                // A handler that ignores its stop holds a thread: join the
                // pool in the background instead of waiting for it here.
                let _ = std::thread::Builder::new()
                    .name("swarm-pool-join".into())
                    .spawn(move || drop(pool));
            }
        }
        handed_back += shared.handed_back.load(Ordering::SeqCst);
        log::info!("worker on queue `{}` stopped", shared.queue.name);
        handed_back
    }
}

impl Drop for SwarmWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until no task is claimed or `until` has passed.
fn wait_for_tasks(shared: &Shared, until: Instant) {
    let mut tasks = shared.tasks.lock();
    while !tasks.map.is_empty() {
        if shared.slot_freed.wait_until(&mut tasks, until).timed_out() {
            return;
        }
    }
}

/// Handler threads with nothing to run: a slot is taken at claim and
/// given back when the handler returns (its report is then settled by the
/// pump), so a worker never holds a task it has no thread for.
fn free_slots(shared: &Shared) -> usize {
    let busy = shared
        .tasks
        .lock()
        .map
        .values()
        .filter(|r| !r.finishing)
        .count();
    shared.opts.threads.saturating_sub(busy)
}

/// Whether the partition verdict says stop. Without peers to ask
/// (`known == 0`), losing Redis is no verdict: a mere Redis restart must not
/// make every worker drop its tasks. Leases then end by their local
/// deadline (self-fencing), which is what makes keeping them safe.
fn cut_off(state: PartitionState) -> bool {
    matches!(state, PartitionState::Partitioned { known, .. } if known > 0)
}

/// The worker's one conversation with Redis about tasks: each round trip
/// (one `queue_step` call) settles every outcome the handler threads
/// reported since the last one, re-queues expired leases, and claims a task
/// for every idle thread. With nothing to claim it waits — never polls —
/// for a report, a wake-up from the queue's marker list (the waker thread
/// blocks on it), or the earliest delayed task or lease deadline.
fn pump(shared: Arc<Shared>, pool: Arc<ThreadPool>) {
    let queue = &shared.queue;
    let cfg = queue.swarm.config().clone();
    let waker = Waker::start(&shared);
    let mut waker_busy = false;
    let mut pending: Vec<Report> = Vec::new();
    let mut backoff = cfg.reconnect_min;
    let mut failures = 0u32;
    // A claim token is spent only by a grant. After a claim whose outcome is
    // unknown (its reply was lost; the request may even reach Redis later,
    // held up by the network) the same token is sent again: it returns the
    // same grants instead of more tasks.
    let mut token = random_id();
    let mut unconfirmed_since: Option<Instant> = None;
    let token_ttl = Duration::from_millis(token_ttl_ms(shared.opts.effective_lease()));
    // Nothing was left to claim: wait for a wake-up until then.
    let mut idle_until: Option<Instant> = None;
    loop {
        pending.extend(shared.reports_rx.try_iter());
        let stopping = shared.stopping();
        if stopping {
            let give_up = *shared.give_up_at.lock();
            if give_up.is_some_and(|at| Instant::now() >= at) {
                abandon(
                    &shared,
                    &mut pending,
                    "shutdown ended before Redis took the report",
                );
                break;
            }
            if pending.is_empty() && shared.tasks.lock().map.is_empty() {
                break;
            }
        }
        if unconfirmed_since.is_some_and(|t| t.elapsed() >= token_ttl) {
            // Redis has forgotten the token by now: nothing to recover.
            token = random_id();
            unconfirmed_since = None;
        }
        let cut = cut_off(queue.swarm.partition_state());
        // Cut off: start nothing (the supervisor stops what runs).
        let want = if stopping || cut {
            0
        } else {
            free_slots(&shared)
        };
        if idle_until.is_some_and(|t| Instant::now() >= t) {
            idle_until = None;
        }
        if pending.is_empty() && (want == 0 || idle_until.is_some()) {
            let mut timeout = if cut {
                cfg.heartbeat_interval
            } else {
                Duration::from_millis(200)
            };
            if let (Some(until), true) = (idle_until, want > 0) {
                let wait = until.saturating_duration_since(Instant::now());
                if !waker_busy && shared.tasks.lock().map.is_empty() {
                    // Nothing runs, so no report can come: block here and
                    // save the hand-off from the waker thread (the latency
                    // of a lone task).
                    block_for_work(&shared, wait);
                    idle_until = None;
                    continue;
                }
                if !waker_busy && waker.request(wait) {
                    waker_busy = true;
                }
                timeout = wait;
            }
            let shutdown = if stopping {
                crossbeam_channel::never()
            } else {
                shared.shutdown_rx.clone()
            };
            crossbeam_channel::select! {
                recv(shared.reports_rx) -> r => pending.extend(r.ok()),
                recv(waker.woken) -> _ => {
                    waker_busy = false;
                    idle_until = None;
                }
                recv(shutdown) -> _ => {}
                default(timeout) => {}
            }
            continue;
        }
        let batch = pending.len().min(MAX_REPORTS_PER_STEP);
        match step(
            queue,
            &pending[..batch],
            want,
            shared.opts.effective_lease(),
            &token,
        ) {
            Ok(stepped) => {
                backoff = cfg.reconnect_min;
                if failures > 0 && batch > 0 {
                    log::info!("{batch} report(s) settled after {failures} failed tries");
                }
                failures = 0;
                settle(&shared, pending.drain(..batch).collect(), stepped.finishes);
                if want == 0 {
                    continue;
                }
                if !stepped.grants.is_empty() || stepped.token_spent {
                    if unconfirmed_since.is_some() && !stepped.grants.is_empty() {
                        log::info!(
                            "{} claim(s) recovered after their reply was lost",
                            stepped.grants.len()
                        );
                    }
                    token = random_id();
                    unconfirmed_since = None;
                }
                let claimed = stepped.grants.len();
                for task in stepped.grants {
                    if shared.stopping() {
                        // Shutdown began while this claim was on its way:
                        // hand it back with the next round trip instead of
                        // starting it.
                        pending.push(Report::new(
                            &task.id,
                            task.fence,
                            task.attempt,
                            "handback",
                            String::new(),
                        ));
                    } else {
                        start_task(&shared, &pool, task);
                    }
                }
                if claimed < want && !stepped.token_spent {
                    // The queue has nothing more for now.
                    let mut wait = IDLE_WAIT_CAP;
                    if let Some(d) = stepped.next_delayed {
                        wait = wait.min(d);
                    }
                    if let Some(l) = stepped.next_lease {
                        // Wake to reap when a lease of the queue could end.
                        wait = wait.min((l + Duration::from_millis(1)).min(shared.opts.reap_every));
                    }
                    if unconfirmed_since.is_some() {
                        // A lost claim request may still reach Redis: look for
                        // its grant every beat rather than after a lease.
                        wait = wait.min(cfg.heartbeat_interval);
                    }
                    idle_until = Some(Instant::now() + wait.max(Duration::from_millis(1)));
                }
            }
            Err(e) => {
                failures += 1;
                if want > 0 && matches!(e, Error::Redis(_)) {
                    // Sent, but no answer: its claims may have been applied.
                    unconfirmed_since.get_or_insert_with(Instant::now);
                }
                if failures == 1 {
                    log::warn!(
                        "queue `{}`: round trip failed ({e}); retrying{}",
                        queue.name,
                        if pending.is_empty() {
                            ""
                        } else {
                            " until Redis takes the reports"
                        }
                    );
                } else {
                    log::debug!("queue `{}`: round trip failed again: {e}", queue.name);
                }
                let pause = if stopping {
                    std::thread::sleep(backoff);
                    continue;
                } else {
                    backoff
                };
                let _ = shared.shutdown_rx.recv_timeout(pause);
                backoff = (backoff * 2).min(cfg.reconnect_max);
            }
        }
    }
    drop(waker);
    if unconfirmed_since.is_some() {
        match unclaim(&shared.queue, shared.opts.effective_lease(), &token) {
            Ok(true) => log::info!("a claim whose reply was lost was handed back"),
            Ok(false) => {}
            Err(e) => log::warn!(
                "a claim whose reply was lost could not be handed back ({e}); its lease will end it"
            ),
        }
    }
}

/// What Redis did with each report: the tasks leave the worker, their
/// leases end, and [`SwarmWorker::finished`] hears of them.
fn settle(shared: &Shared, reports: Vec<Report>, replies: Vec<FinishReply>) {
    if reports.is_empty() {
        return;
    }
    for (r, reply) in reports.into_iter().zip(replies) {
        let how = match reply {
            FinishReply::Applied { event, error } => match event.as_str() {
                "completed" => FinishedHow::Completed,
                "retrying" => FinishedHow::Retrying(error),
                "failed" => FinishedHow::Failed(error),
                "cancelled" => FinishedHow::Cancelled,
                _ => FinishedHow::HandedBack,
            },
            FinishReply::Stale(state) => {
                if r.how != "handback" {
                    log::warn!(
                        "task {} attempt {}: `{}` rejected (fencing token {} is stale; the task is {state} now)",
                        r.id,
                        r.attempt,
                        r.how,
                        r.fence
                    );
                }
                FinishedHow::Rejected
            }
        };
        if how == FinishedHow::HandedBack && shared.stopping() {
            shared.handed_back.fetch_add(1, Ordering::SeqCst);
        }
        shared.tasks.lock().map.remove(&r.id);
        shared.publish_finished(Finished {
            id: r.id,
            attempt: r.attempt,
            fencing_token: r.fence,
            how,
        });
    }
    shared.slot_freed.notify_all();
}

/// Reports Redis could not be told before shutdown's bound: their tasks'
/// leases end them (re-queued by whoever reaps).
fn abandon(shared: &Shared, pending: &mut Vec<Report>, why: &str) {
    for r in pending.drain(..) {
        log::warn!(
            "task {} attempt {}: `{}` not reported ({why}); its lease will end it",
            r.id,
            r.attempt,
            r.how
        );
        shared.tasks.lock().map.remove(&r.id);
        shared.publish_finished(Finished {
            id: r.id,
            attempt: r.attempt,
            fencing_token: r.fence,
            how: FinishedHow::Abandoned(why.to_string()),
        });
    }
    shared.slot_freed.notify_all();
}

/// The thread that blocks on the queue's wake-up list for the pump, so the
/// pump itself stays free to settle reports while the queue is empty.
struct Waker {
    requests: Sender<Duration>,
    woken: Receiver<()>,
}

impl Waker {
    fn start(shared: &Arc<Shared>) -> Waker {
        let (requests, requests_rx) = bounded::<Duration>(1);
        let (woken_tx, woken) = bounded::<()>(1);
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("swarm-waker-{}", shared.queue.name))
            .spawn(move || {
                for wait in requests_rx.iter() {
                    if shared.stopping() {
                        break;
                    }
                    block_for_work(&shared, wait);
                    let _ = woken_tx.try_send(());
                }
            });
        if let Err(e) = spawned {
            // The pump still wakes at every deadline and report: slower to
            // notice new work, never wrong.
            log::warn!("cannot spawn the waker thread ({e}); waking by timer only");
        }
        Waker { requests, woken }
    }

    /// Asks for a wait of up to `wait`; false if the waker is gone.
    fn request(&self, wait: Duration) -> bool {
        self.requests.try_send(wait).is_ok()
    }
}

/// `EINTR` as the OS words it: what a blocked socket read fails with after
/// the process was stopped and continued (SIGSTOP/SIGCONT) when the socket
/// has a timeout. redis-rs does not expose the error kind, only its text.
fn is_interrupted(e: &redis::RedisError) -> bool {
    // 4 is EINTR on Linux, macOS and the BSDs.
    let eintr = std::io::Error::from_raw_os_error(4).to_string();
    e.is_io_error() && e.to_string().contains(&eintr)
}

/// `CLIENT UNBLOCK`s the fetch thread's blocked `BLPOP` (its reply becomes
/// nil, which redis-rs skips if the read was given up).
fn unblock(shared: &Shared, client: i64, node: &NodeAddr) -> bool {
    let r = shared.queue.swarm.store().conn().and_then(|mut c| {
        // Client ids are per node: on a cluster, ask the node it is on.
        let n: i64 = c.query_at_node(node, redis::cmd("CLIENT").arg("UNBLOCK").arg(client))?;
        Ok(n)
    });
    match r {
        Ok(_) => true,
        Err(e) => {
            log::debug!("could not unblock the fetch connection: {e}");
            false
        }
    }
}

/// Blocks on the wake-up list for at most `wait` (BLPOP on a connection of
/// its own, so the pool is not tied up).
fn block_for_work(shared: &Shared, wait: Duration) {
    let store = shared.queue.swarm.store();
    let mut conn = shared.wait_conn.lock();
    if conn.is_none() {
        // On a cluster: a plain connection to the node of the marker's slot,
        // so its read timeout and `CLIENT UNBLOCK` apply to that node.
        let opened = store
            .dedicated
            .open_node(
                Some(&shared.queue.keys.marker),
                store.config.connect_timeout,
            )
            .and_then(|(mut c, node)| {
                let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c)?;
                Ok(WaitConnection { conn: c, id, node })
            });
        match opened {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                log::debug!("fetch connection: {e}");
                let pause = wait.min(store.config.reconnect_max);
                let _ = shared.shutdown_rx.recv_timeout(pause);
                return;
            }
        }
    }
    let Some(c) = conn.as_mut() else { return };
    // Shutdown unblocks whichever connection waits (the pump's or the
    // waker's); set before the check, so a shutdown that starts after the
    // check finds this id.
    *shared.fetch_client.lock() = Some((c.id, c.node.clone()));
    if shared.stopping() {
        return;
    }
    let secs = wait.as_secs_f64().max(0.01);
    let _ = c
        .conn
        .set_read_timeout(Some(wait + store.config.command_timeout));
    let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
        .arg(&shared.queue.keys.marker)
        .arg(format!("{secs:.3}"))
        .query(&mut c.conn);
    let Err(e) = r else { return };
    if shared.stopping() {
        return;
    }
    if is_interrupted(&e) {
        // The process was stopped and continued. The connection is fine:
        // end the BLPOP still blocked in Redis (a marker it would take
        // must not be lost with a reply nobody reads) and carry on.
        if unblock(shared, c.id, &c.node) {
            log::debug!("wait for work interrupted (SIGSTOP/SIGCONT?); retrying");
            return;
        }
    }
    log::debug!("wait for work: {e}");
    *conn = None;
}

/// A connection of its own for `BLPOP` (so the pool is not tied up), with
/// its `CLIENT ID` for `CLIENT UNBLOCK`.
struct WaitConnection {
    conn: redis::Connection,
    id: i64,
    /// The node it is connected to (a cluster node; unused on one server).
    node: NodeAddr,
}

fn start_task(shared: &Arc<Shared>, pool: &ThreadPool, task: ClaimedTask) {
    let q = &shared.queue;
    let lease = q.swarm.lease_tolerating_outage(
        format!("task {} of queue `{}`", task.id, q.name),
        LeaseTarget::Guarded {
            zset: q.keys.running.clone(),
            member: task.id.clone(),
            hash: q.keys.task(&task.id),
            field: "fence".into(),
            token: task.fence.to_string(),
        },
        shared.opts.effective_lease(),
        task.sent,
    );
    let stop = StopSignal::new();
    // Small: control messages are rare (a full channel drops and logs).
    let (control_tx, control_rx) = bounded(8);
    {
        let mut tasks = shared.tasks.lock();
        if tasks.early_cancels.remove(&task.id).is_some() {
            stop.stop(StopReason::Cancelled);
        }
        tasks.map.insert(
            task.id.clone(),
            Running {
                attempt: task.attempt,
                fence: task.fence,
                started: Instant::now(),
                timeout: task.timeout,
                stop: stop.clone(),
                control: control_tx,
                lease,
                finishing: false,
            },
        );
    }
    let ctx = TaskContext {
        id: task.id.clone(),
        data: task
            .data
            .as_ref()
            .cloned()
            .unwrap_or(serde_json::Value::Null),
        attempt: task.attempt,
        fence: task.fence,
        queue: q.clone(),
        stop,
        control: control_rx,
    };
    let unusable = task.data.err();
    let job_shared = shared.clone();
    if let Err(e) = pool.execute(move || run_task(job_shared, ctx, unusable)) {
        // Only after shutdown; the claim is handed back.
        log::warn!("task {} not started: {e}", task.id);
        if let Some(r) = shared.tasks.lock().map.get_mut(&task.id) {
            r.finishing = true;
            r.lease.ending();
        }
        let report = Report::new(
            &task.id,
            task.fence,
            task.attempt,
            "handback",
            String::new(),
        );
        let _ = shared.reports_tx.send(report);
    }
}

/// Runs the handler (unless the record is unusable) and reports the
/// outcome until Redis takes it.
fn run_task(shared: Arc<Shared>, ctx: TaskContext, unusable: Option<String>) {
    let (how, text) = match unusable {
        Some(why) => {
            log::warn!("task {}: {why}", ctx.id);
            ("corrupt", why)
        }
        None => {
            let outcome =
                catch_unwind(AssertUnwindSafe(|| (shared.handler)(&ctx))).unwrap_or_else(|p| {
                    Err(format!("handler panicked: {}", panic_message(p.as_ref())))
                });
            match (ctx.stop_reason(), outcome) {
                (Some(StopReason::Cancelled), _) => ("cancelled", String::new()),
                (Some(StopReason::TimedOut), _) => ("failed", "timed out".to_string()),
                // Stopped for a reason that is not the task's: it goes back
                // to the queue at once if the claim is still ours (fenced).
                (
                    Some(
                        StopReason::ShuttingDown | StopReason::LeaseLost | StopReason::Partitioned,
                    ),
                    Err(_),
                ) => ("handback", String::new()),
                (_, Ok(v)) => ("ok", v.to_string()),
                (_, Err(e)) => ("failed", e),
            }
        }
    };
    if let Some(r) = shared.tasks.lock().map.get_mut(&ctx.id) {
        // The lease stays registered until the report lands; a renewal
        // refused because the report landed first is no news.
        r.finishing = true;
        r.lease.ending();
    }
    // The pump settles it with the next round trip (its lease stays
    // registered until then); this thread is free for the next task now.
    let report = Report::new(&ctx.id, ctx.fence, ctx.attempt, how, text);
    let _ = shared.reports_tx.send(report);
}

/// Looks up `cancel_requested` of the running tasks in Redis: the fallback
/// for `cancel` messages this worker missed (pub/sub is lossy).
fn recheck_cancels(shared: &Shared) {
    let ids: Vec<String> = shared
        .tasks
        .lock()
        .map
        .iter()
        .filter(|(_, r)| !r.finishing)
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hget(shared.queue.keys.task(id), "cancel_requested");
    }
    let flags: Result<Vec<Option<String>>> = shared
        .queue
        .swarm
        .store()
        .conn()
        .and_then(|mut c| Ok(pipe.query(&mut *c)?));
    match flags {
        Ok(flags) => {
            let tasks = shared.tasks.lock();
            for (id, flag) in ids.iter().zip(flags) {
                if let (Some(_), Some(r)) = (flag, tasks.map.get(id)) {
                    if r.stop.reason().is_none() {
                        log::info!("task {id}: cancellation found in Redis");
                    }
                    r.stop.stop(StopReason::Cancelled);
                }
            }
        }
        Err(e) => log::debug!("cancellation re-check failed: {e}"),
    }
}

/// Tells running tasks to stop when a control message, a timeout, a lost
/// lease or a partition verdict says so.
fn supervise(shared: Arc<Shared>, control: crate::Subscription, stop: Receiver<()>) {
    let prefix = shared.queue.keys.task_prefix();
    let tick = Duration::from_millis(50);
    let recheck_every = shared.queue.swarm.config().wait_recheck;
    let mut last_recheck = Instant::now();
    loop {
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(control.receiver()) -> msg => match msg {
                Ok(SubEvent::Message(m)) => {
                    let id = m.channel.strip_prefix(&prefix).and_then(|r| r.strip_suffix(":control"));
                    if let (Some(id), Some(message)) = (id, m.payload_str()) {
                        let mut tasks = shared.tasks.lock();
                        match tasks.map.get(id) {
                            Some(r) if message == "cancel" => {
                                log::info!("task {id}: cancel requested");
                                r.stop.stop(StopReason::Cancelled);
                            }
                            Some(r) if r.control.try_send(message.to_string()).is_err() => {
                                log::warn!("task {id}: control message {message:?} dropped (handler not reading)");
                            }
                            Some(_) => {}
                            None if message == "cancel" => {
                                // Possibly a task whose claim reply is still
                                // on its way here.
                                tasks.early_cancels.insert(id.to_string(), Instant::now());
                            }
                            None => {}
                        }
                    }
                }
                Ok(SubEvent::Reconnected) => {
                    // Messages may have been missed meanwhile.
                    recheck_cancels(&shared);
                    last_recheck = Instant::now();
                }
                Err(_) => std::thread::sleep(tick),
            },
            default(tick) => {}
        }
        if last_recheck.elapsed() >= recheck_every {
            recheck_cancels(&shared);
            last_recheck = Instant::now();
        }
        let cut = cut_off(shared.queue.swarm.partition_state());
        let mut tasks = shared.tasks.lock();
        tasks
            .early_cancels
            .retain(|_, at| at.elapsed() < EARLY_CANCEL_KEEP);
        for (id, r) in tasks.map.iter() {
            if r.finishing {
                continue;
            }
            if cut {
                r.stop.stop(StopReason::Partitioned);
            } else if r.lease.is_lost() {
                if r.stop.reason().is_none() {
                    log::warn!(
                        "task {id} attempt {}: lease lost, telling it to stop",
                        r.attempt
                    );
                }
                r.stop.stop(StopReason::LeaseLost);
            } else if r.timeout.is_some_and(|t| r.started.elapsed() >= t) {
                r.stop.stop(StopReason::TimedOut);
            }
        }
    }
}
