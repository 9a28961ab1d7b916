//! Swarm workers: N threads, a fetch loop that claims a task only when a
//! thread is free, and a supervisor that tells tasks to stop when they are
//! cancelled, time out, lose their lease or the node is partitioned.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use redis::Value;

use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseTarget};
use crate::lock::validate_ttl;
use crate::scripts::invoke;
use crate::subscriber::SubEvent;
use crate::swarm::context::{StopReason, StopSignal, TaskContext};
use crate::swarm::queue::{Queue, QUEUE_CLAIM, QUEUE_FINISH};
use crate::threadpool::ThreadPool;
use crate::util::{check_ttl, millis, panic_message, Deadline};

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
    /// Handed back to the queue (shutdown).
    HandedBack,
    /// Redis refused the report: the claim was stale (another attempt owns
    /// the task now) — the fencing token at work.
    Rejected,
    /// Not reported: the lease was lost or Redis was unreachable; the task
    /// is re-run after its lease expires.
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
    lease: Duration,
    grace: Duration,
    reap_every: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            threads: 4,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            reap_every: Duration::from_secs(5),
        }
    }
}

impl WorkerOptions {
    /// Defaults: 4 threads, 30 s lease, 10 s grace, reap every 5 s.
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new();
    /// ```
    pub fn new() -> WorkerOptions {
        WorkerOptions::default()
    }

    /// Handler threads (and the most tasks run at once): 1 to
    /// [`ThreadPool::MAX_THREADS`](crate::ThreadPool::MAX_THREADS), checked
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
    /// worker's tasks are re-queued this long after it stopped renewing.
    /// At least three heartbeats, at most [`crate::MAX_TTL`].
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new().lease(std::time::Duration::from_secs(10));
    /// ```
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How long shutdown lets running tasks finish before handing them
    /// back to the queue (`Duration::MAX`: as long as they take).
    ///
    /// ```
    /// let o = redswarm::WorkerOptions::new().grace(std::time::Duration::from_secs(5));
    /// ```
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// How often this worker also re-queues expired leases (self-healing
    /// without a monitor).
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
}

struct Shared {
    queue: Queue,
    opts: WorkerOptions,
    handler: Box<Handler>,
    running: Mutex<HashMap<String, Running>>,
    stopping: AtomicBool,
    finished_tx: Sender<Finished>,
    finished_rx: Receiver<Finished>,
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
    pool: Arc<ThreadPool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_tx: Sender<()>,
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
        check_ttl("worker lease", opts.lease)?;
        validate_ttl(&queue.swarm, opts.lease, true)?;
        let pool = Arc::new(ThreadPool::new(
            &format!("swarm-{}", queue.name),
            opts.threads,
            opts.threads,
        )?);
        let (finished_tx, finished_rx) = unbounded();
        let shared = Arc::new(Shared {
            queue: queue.clone(),
            opts,
            handler: Box::new(handler),
            running: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            finished_tx,
            finished_rx,
        });
        // Control messages for any task of this queue: one pattern
        // subscription per worker, routed to the running task by id.
        let control = queue
            .swarm
            .psubscribe(&format!("{}*:control", queue.keys.task_prefix()))?;
        let (stop_tx, stop_rx) = bounded::<()>(2);
        let fetch = {
            let (shared, pool, stop_rx) = (shared.clone(), pool.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .name(format!("swarm-fetch-{}", queue.name))
                .spawn(move || fetch_loop(shared, pool, stop_rx))
                .map_err(|e| Error::invalid("worker", format!("cannot spawn thread: {e}")))?
        };
        let supervisor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("swarm-supervisor-{}", queue.name))
                .spawn(move || supervise(shared, control, stop_rx))
                .map_err(|e| Error::invalid("worker", format!("cannot spawn thread: {e}")))?
        };
        log::info!(
            "worker on queue `{}` started: {} threads, lease {:?}",
            queue.name,
            shared.opts.threads,
            shared.opts.lease
        );
        Ok(SwarmWorker {
            shared,
            pool,
            threads: Mutex::new(vec![fetch, supervisor]),
            stop_tx,
        })
    }

    /// Every attempt this worker finished, as it finishes.
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::SwarmWorker) {
    /// while let Ok(f) = w.finished().recv() { log::info!("{f:?}"); }
    /// # }
    /// ```
    pub fn finished(&self) -> Receiver<Finished> {
        self.shared.finished_rx.clone()
    }

    /// Tasks running right now.
    ///
    /// ```no_run
    /// # fn demo(w: &redswarm::SwarmWorker) { log::info!("{}", w.running()); }
    /// ```
    pub fn running(&self) -> usize {
        self.shared.running.lock().len()
    }

    /// Graceful shutdown: stop fetching, let running tasks finish within
    /// the grace period, then tell the rest to stop and hand them back to
    /// the queue at once (no waiting for lease expiry). Returns how many
    /// were handed back. Waits for handlers to return.
    ///
    /// ```no_run
    /// # fn demo(w: redswarm::SwarmWorker) { let handed_back = w.shutdown(); }
    /// ```
    pub fn shutdown(&self) -> usize {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return 0;
        }
        let _ = self.stop_tx.try_send(());
        let _ = self.stop_tx.try_send(());
        // Saturating: a grace of Duration::MAX waits as long as tasks run.
        let deadline = Deadline::after(self.shared.opts.grace);
        while !deadline.has_passed() && !self.shared.running.lock().is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left: Vec<(String, u64, Arc<StopSignal>)> = self
            .shared
            .running
            .lock()
            .iter()
            .map(|(id, r)| (id.clone(), r.fence, r.stop.clone()))
            .collect();
        let mut handed_back = 0;
        for (id, fence, stop) in left {
            stop.stop(StopReason::ShuttingDown);
            match finish(&self.shared.queue, &id, fence, "handback", "") {
                Ok(Some(_)) => {
                    handed_back += 1;
                    log::info!("task {id} handed back to the queue");
                }
                Ok(None) => {}
                Err(e) => log::warn!(
                    "task {id} not handed back ({e}); it is re-queued when its lease expires"
                ),
            }
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        self.pool.join();
        log::info!("worker on queue `{}` stopped", self.shared.queue.name);
        handed_back
    }
}

impl Drop for SwarmWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Claims tasks while threads are free; blocks on the queue's wake-up list
/// (never polls) with a bounded timeout so delayed tasks coming due and
/// shutdown are noticed.
fn fetch_loop(shared: Arc<Shared>, pool: Arc<ThreadPool>, stop: Receiver<()>) {
    let queue = &shared.queue;
    let cfg = queue.swarm.config().clone();
    let mut blocking: Option<redis::Connection> = None;
    let mut last_reap = Instant::now();
    let mut backoff = cfg.reconnect_min;
    while !shared.stopping.load(Ordering::SeqCst) {
        if !queue.swarm.partition_state().may_work() {
            // Cut off: start nothing (the supervisor stops what runs).
            if stop.recv_timeout(cfg.heartbeat_interval).is_ok() {
                break;
            }
            continue;
        }
        if !pool.wait_idle(Duration::from_millis(200)) {
            continue;
        }
        if last_reap.elapsed() >= shared.opts.reap_every {
            last_reap = Instant::now();
            if let Err(e) = queue.reap_expired(100) {
                log::debug!("opportunistic reap failed: {e}");
            }
        }
        match claim(&shared) {
            Ok(Claimed::Task(task)) => {
                backoff = cfg.reconnect_min;
                start_task(&shared, &pool, task);
            }
            Ok(Claimed::Nothing { next_delayed }) => {
                backoff = cfg.reconnect_min;
                let mut wait = Duration::from_millis(500);
                if let Some(d) = next_delayed {
                    wait = wait.min(d.max(Duration::from_millis(1)));
                }
                block_for_work(&shared, &mut blocking, wait);
            }
            Err(e) => {
                log::warn!("claim on queue `{}` failed: {e}", queue.name);
                if stop.recv_timeout(backoff).is_ok() {
                    break;
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
            }
        }
    }
}

/// Blocks on the wake-up list for at most `wait` (BLPOP on a connection of
/// its own, so the pool is not tied up).
fn block_for_work(shared: &Shared, conn: &mut Option<redis::Connection>, wait: Duration) {
    let store = shared.queue.swarm.store();
    if conn.is_none() {
        match store.dedicated.open() {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                log::debug!("fetch connection: {e}");
                std::thread::sleep(wait);
                return;
            }
        }
    }
    let Some(c) = conn.as_mut() else { return };
    let secs = wait.as_secs_f64().max(0.01);
    let _ = c.set_read_timeout(Some(wait + store.config.command_timeout));
    let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
        .arg(&shared.queue.keys.marker)
        .arg(format!("{secs:.3}"))
        .query(c);
    if let Err(e) = r {
        log::debug!("wait for work: {e}");
        *conn = None;
    }
}

struct ClaimedTask {
    id: String,
    fence: u64,
    attempt: u32,
    timeout: Option<Duration>,
    data: serde_json::Value,
    sent: Instant,
}

enum Claimed {
    Task(ClaimedTask),
    Nothing { next_delayed: Option<Duration> },
}

fn claim(shared: &Shared) -> Result<Claimed> {
    let q = &shared.queue;
    let mut conn = q.swarm.conn()?;
    let sent = Instant::now();
    let reply: Vec<Value> = invoke(
        QUEUE_CLAIM
            .prepare()
            .key(&q.keys.ready)
            .key(&q.keys.delayed)
            .key(&q.keys.running)
            .key(&q.keys.marker)
            .arg(q.keys.task_prefix())
            .arg(q.swarm.node_id())
            .arg(millis(shared.opts.lease))
            .arg(&q.keys.events),
        &mut *conn,
    )?;
    let corrupt = |why: String| Error::corrupt(&q.keys.running, format!("claim reply: {why}"));
    let get = |i: usize| -> Option<&Value> { reply.get(i).filter(|v| !matches!(v, Value::Nil)) };
    let next_delayed = get(6)
        .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
        .and_then(|n| u64::try_from(n).ok())
        .map(Duration::from_millis);
    let Some(id) = get(0) else {
        return Ok(Claimed::Nothing { next_delayed });
    };
    let s = |v: Option<&Value>, what: &str| -> Result<String> {
        v.ok_or_else(|| corrupt(format!("missing {what}")))
            .and_then(|v| {
                redis::from_redis_value_ref::<String>(v).map_err(|e| corrupt(e.to_string()))
            })
    };
    let id = s(Some(id), "id")?;
    let fence: u64 = s(get(1), "fence")?
        .parse()
        .map_err(|e| corrupt(format!("fence: {e}")))?;
    let attempt: u32 = s(get(2), "attempts")?
        .parse()
        .map_err(|e| corrupt(format!("attempts: {e}")))?;
    let timeout_ms: u64 = s(get(4), "timeout")?.parse().unwrap_or(0);
    let data =
        serde_json::from_str(&s(get(5), "data")?).map_err(|e| corrupt(format!("data: {e}")))?;
    Ok(Claimed::Task(ClaimedTask {
        id,
        fence,
        attempt,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        data,
        sent,
    }))
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
        shared.opts.lease,
        task.sent,
    );
    let stop = StopSignal::new();
    let (control_tx, control_rx) = bounded(64);
    shared.running.lock().insert(
        task.id.clone(),
        Running {
            attempt: task.attempt,
            fence: task.fence,
            started: Instant::now(),
            timeout: task.timeout,
            stop: stop.clone(),
            control: control_tx,
            lease,
        },
    );
    let ctx = TaskContext {
        id: task.id.clone(),
        data: task.data,
        attempt: task.attempt,
        fence: task.fence,
        queue: q.clone(),
        stop,
        control: control_rx,
    };
    let job_shared = shared.clone();
    if let Err(e) = pool.execute(move || run_task(job_shared, ctx)) {
        // Only after shutdown; the claim is handed back.
        log::warn!("task {} not started: {e}", task.id);
        shared.running.lock().remove(&task.id);
        let _ = finish(q, &task.id, task.fence, "handback", "");
    }
}

fn run_task(shared: Arc<Shared>, ctx: TaskContext) {
    let outcome = catch_unwind(AssertUnwindSafe(|| (shared.handler)(&ctx)))
        .unwrap_or_else(|p| Err(format!("handler panicked: {}", panic_message(p.as_ref()))));
    let running = shared.running.lock().remove(&ctx.id);
    let lease_lost = running.as_ref().is_none_or(|r| r.lease.is_lost());
    let how = match (ctx.stop_reason(), &outcome) {
        (Some(StopReason::ShuttingDown), _) => None, // already handed back
        (Some(StopReason::Cancelled), _) => Some(("cancelled", String::new())),
        (Some(StopReason::TimedOut), _) => Some(("failed", "timed out".to_string())),
        (Some(StopReason::LeaseLost | StopReason::Partitioned), Err(_)) => None,
        (_, Ok(v)) => Some(("ok", v.to_string())),
        (_, Err(e)) => Some(("failed", e.clone())),
    };
    let finished_how = match how {
        None => FinishedHow::Abandoned(format!("{:?}", ctx.stop_reason())),
        Some((how, text)) => match finish(&shared.queue, &ctx.id, ctx.fence, how, &text) {
            Ok(Some(event)) => match event.as_str() {
                "completed" => FinishedHow::Completed,
                "retrying" => FinishedHow::Retrying(text),
                "failed" => FinishedHow::Failed(text),
                "cancelled" => FinishedHow::Cancelled,
                _ => FinishedHow::HandedBack,
            },
            Ok(None) => {
                log::warn!(
                    "task {} attempt {}: completion rejected (fencing token {} is stale{})",
                    ctx.id,
                    ctx.attempt,
                    ctx.fence,
                    if lease_lost { ", lease was lost" } else { "" }
                );
                FinishedHow::Rejected
            }
            Err(e) => FinishedHow::Abandoned(e.to_string()),
        },
    };
    let _ = shared.finished_tx.send(Finished {
        id: ctx.id.clone(),
        attempt: ctx.attempt,
        fencing_token: ctx.fence,
        how: finished_how,
    });
}

/// Runs the finish script; `Ok(Some(event))` when applied, `Ok(None)` when
/// the claim was stale.
fn finish(queue: &Queue, id: &str, fence: u64, how: &str, text: &str) -> Result<Option<String>> {
    let mut conn = queue.swarm.store().conn()?;
    let (applied, what): (i64, String) = invoke(
        QUEUE_FINISH
            .prepare()
            .key(queue.keys.task(id))
            .key(&queue.keys.running)
            .key(&queue.keys.ended)
            .key(&queue.keys.failed)
            .key(&queue.keys.delayed)
            .key(&queue.keys.marker)
            .arg(id)
            .arg(fence)
            .arg(how)
            .arg(text)
            .arg(&queue.keys.events)
            .arg(queue.keep_ended)
            .arg(millis(queue.keep_ended_for))
            .arg(queue.keys.task_prefix()),
        &mut *conn,
    )?;
    Ok((applied == 1).then_some(what))
}

/// Tells running tasks to stop when a control message, a timeout, a lost
/// lease or a partition says so.
fn supervise(shared: Arc<Shared>, control: crate::Subscription, stop: Receiver<()>) {
    let prefix = shared.queue.keys.task_prefix();
    let tick = Duration::from_millis(50);
    loop {
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(control.receiver()) -> msg => {
                if let Ok(SubEvent::Message(m)) = msg {
                    let id = m.channel.strip_prefix(&prefix).and_then(|r| r.strip_suffix(":control"));
                    if let (Some(id), Some(message)) = (id, m.payload_str()) {
                        if let Some(r) = shared.running.lock().get(id) {
                            if message == "cancel" {
                                log::info!("task {id}: cancel requested");
                                r.stop.stop(StopReason::Cancelled);
                            } else if r.control.try_send(message.to_string()).is_err() {
                                log::warn!("task {id}: control message {message:?} dropped (handler not reading)");
                            }
                        }
                    }
                }
            }
            default(tick) => {}
        }
        let may_work = shared.queue.swarm.partition_state().may_work();
        for (id, r) in shared.running.lock().iter() {
            if !may_work {
                r.stop.stop(StopReason::Partitioned);
            } else if r.lease.is_lost() {
                log::warn!(
                    "task {id} attempt {}: lease lost, telling it to stop",
                    r.attempt
                );
                r.stop.stop(StopReason::LeaseLost);
            } else if r.timeout.is_some_and(|t| r.started.elapsed() >= t) {
                r.stop.stop(StopReason::TimedOut);
            }
        }
    }
}
