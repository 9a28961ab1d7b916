//! The task queue: push, inspect, cancel, re-queue, delete, events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use crate::runtime::Runtime;
use crate::scripts::{invoke, lua_script, query_pipeline};
use crate::subscriber::{SubEvent, Subscription};
use crate::swarm::task::{saturating_millis, TaskEvent, TaskInfo, TaskOptions};
use crate::util::{random_id, Deadline};

lua_script!(pub(crate) QUEUE_PUSH, "queue_push.lua", with "queue_lib.lua");
lua_script!(pub(crate) QUEUE_STEP, "queue_step.lua", with "queue_lib.lua");
lua_script!(pub(crate) QUEUE_UNCLAIM, "queue_unclaim.lua", with "queue_lib.lua");
lua_script!(pub(crate) QUEUE_REAP, "queue_reap.lua", with "queue_lib.lua");
lua_script!(QUEUE_CANCEL, "queue_cancel.lua", with "queue_lib.lua");
lua_script!(QUEUE_REQUEUE_FAILED, "queue_requeue_failed.lua", with "queue_lib.lua");
lua_script!(QUEUE_DELETE, "queue_delete.lua", with "queue_lib.lua");

/// Runs a queue script; a `CORRUPT <key>\t<reason>` error reply (a script
/// found a queue key of the wrong type and wrote nothing) becomes
/// [`Error::CorruptData`] naming the key.
pub(crate) fn queue_invoke<T: redis::FromRedisValue>(
    inv: &redis::ScriptInvocation<'_>,
    conn: &mut dyn redis::ConnectionLike,
) -> Result<T> {
    invoke(inv, conn).map_err(corrupt_reply)
}

/// Maps a script's `CORRUPT` error reply to [`Error::CorruptData`].
pub(crate) fn corrupt_reply(e: Error) -> Error {
    match &e {
        Error::Redis(re) if re.code() == Some("CORRUPT") => {
            let detail = re.detail().unwrap_or_default();
            match detail.split_once('\t') {
                Some((key, reason)) => Error::corrupt(key, reason),
                None => Error::corrupt(detail, "rejected by a queue script"),
            }
        }
        _ => e,
    }
}

/// Longest delay, timeout or backoff stored with a task, in ms (2^53 − 1,
/// some 285,000 years): the largest integer Redis's Lua numbers hold
/// exactly. Longer ones are stored as this, which means the same: never.
const MAX_TASK_MILLIS: u64 = (1 << 53) - 1;

/// A task duration in whole ms, saturating at [`MAX_TASK_MILLIS`].
fn task_millis(d: Duration) -> u64 {
    saturating_millis(d).min(MAX_TASK_MILLIS)
}

/// Tasks pushed by one script call (a batch also stops at
/// [`MAX_DATA_BYTES`] of payload, so one call stays a bounded amount of work).
const PUSH_BATCH: usize = 1000;

/// Largest task payload accepted (JSON bytes).
const MAX_DATA_BYTES: usize = 4 << 20;

/// A named task queue; create with [`Redswarm::queue`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use std::time::Duration;
/// let q = swarm.queue("thumbnails")?;
/// let id = q.push(&serde_json::json!({"image": "cat.png"}))?;
/// let urgent = q.push_with(&"resize", &redswarm::TaskOptions::new().priority(9).max_attempts(5))?;
/// let later = q.push_with(&"report", &redswarm::TaskOptions::new().delay(Duration::from_secs(60)))?;
/// log::info!("{:?}", q.counts()?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Queue {
    pub(crate) swarm: Runtime,
    pub(crate) name: Arc<str>,
    /// Shared: every running task's context holds a clone of its queue.
    pub(crate) keys: Arc<QueueKeys>,
    pub(crate) keep_ended: u64,
    pub(crate) keep_ended_for: Duration,
}

/// Task counts per set.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let c = swarm.queue("q")?.counts()?;
/// log::info!("{} ready, {} running", c.ready, c.running);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Ready to run.
    pub ready: u64,
    /// Waiting for their run-at (delay or retry backoff).
    pub delayed: u64,
    /// Claimed, under lease.
    pub running: u64,
    /// Ended ok or cancelled (within retention).
    pub ended: u64,
    /// Ended failed.
    pub failed: u64,
}

impl QueueCounts {
    /// Tasks not yet ended.
    ///
    /// ```
    /// let c = redswarm::QueueCounts { ready: 1, delayed: 2, running: 3, ended: 4, failed: 5 };
    /// assert_eq!(c.pending(), 6);
    /// ```
    pub fn pending(&self) -> u64 {
        self.ready + self.delayed + self.running
    }
}

/// The sets [`Queue::list`] can list.
///
/// ```
/// let s = redswarm::TaskSet::Failed;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskSet {
    /// Ready, in run order.
    Ready,
    /// Delayed, by run-at.
    Delayed,
    /// Running, by lease deadline.
    Running,
    /// Ended ok/cancelled, oldest first.
    Ended,
    /// Failed, oldest first.
    Failed,
}

impl Queue {
    pub(crate) fn new(swarm: &Runtime, name: &str) -> Result<Queue> {
        Ok(Queue {
            keys: Arc::new(swarm.keys().queue(name)?),
            swarm: swarm.clone(),
            name: Arc::from(name),
            keep_ended: 10_000,
            keep_ended_for: Duration::from_secs(24 * 3600),
        })
    }

    /// Retention of ended tasks: at most `count` (default 10,000) and none
    /// older than `age` (default 24 h); trimmed as tasks end. Failed tasks
    /// stay until re-queued or deleted.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let q = swarm.queue("q")?.retention(1000, std::time::Duration::from_secs(3600));
    /// # Ok(()) }
    /// ```
    pub fn retention(mut self, count: u64, age: Duration) -> Self {
        self.keep_ended = count;
        self.keep_ended_for = age;
        self
    }

    /// The queue's name.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.queue("q")?.name(), "q");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's Redis keys (for inspection and tooling; see the layout
    /// in [`crate::keys`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let task_hash = swarm.queue("q")?.keys().task("some-id");
    /// # Ok(()) }
    /// ```
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// Adds the queue-level keys most queue scripts take first, in the
    /// order `queue_keys()` in queue_lib.lua reads them.
    pub(crate) fn queue_keys<'a, 'b>(
        &self,
        inv: &'b mut redis::ScriptInvocation<'a>,
    ) -> &'b mut redis::ScriptInvocation<'a> {
        inv.key(&self.keys.ready)
            .key(&self.keys.delayed)
            .key(&self.keys.running)
            .key(&self.keys.marker)
            .key(&self.keys.failed)
            .key(&self.keys.ended)
    }

    /// The runtime this queue uses (for the worker and monitor).
    pub(crate) fn swarm(&self) -> &Runtime {
        &self.swarm
    }

    /// Pushes a task with default options; returns its id.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let id = swarm.queue("q")?.push(&42)?;
    /// # Ok(()) }
    /// ```
    pub fn push<T: Serialize + ?Sized>(&self, data: &T) -> Result<String> {
        self.push_with(data, &TaskOptions::default())
    }

    /// Pushes a task with options.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let id = swarm.queue("q")?.push_with(&"x", &redswarm::TaskOptions::new().priority(5))?;
    /// # Ok(()) }
    /// ```
    pub fn push_with<T: Serialize + ?Sized>(&self, data: &T, opts: &TaskOptions) -> Result<String> {
        let mut ids = self.push_many_with(std::slice::from_ref(&data), opts)?;
        ids.pop()
            .ok_or_else(|| Error::corrupt(&self.keys.base, "push returned no id"))
    }

    /// Pushes many tasks in one round trip (one script call per batch of
    /// up to 1,000).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let ids = swarm.queue("q")?.push_many(&[1, 2, 3])?;
    /// assert_eq!(ids.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn push_many<T: Serialize>(&self, items: &[T]) -> Result<Vec<String>> {
        self.push_many_with(items, &TaskOptions::default())
    }

    /// [`Queue::push_many`] with options for every task.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let ids = swarm.queue("q")?.push_many_with(&[1, 2], &redswarm::TaskOptions::new().max_attempts(1))?;
    /// # Ok(()) }
    /// ```
    pub fn push_many_with<T: Serialize>(
        &self,
        items: &[T],
        opts: &TaskOptions,
    ) -> Result<Vec<String>> {
        opts.validate()?;
        let mut batches: Vec<Vec<(String, String)>> = Vec::new();
        let mut batch_bytes = 0;
        for item in items {
            let data = serde_json::to_string(item)?;
            if data.len() > MAX_DATA_BYTES {
                return Err(Error::TooLarge {
                    what: "task data",
                    size: data.len(),
                    limit: MAX_DATA_BYTES,
                });
            }
            let full = batches
                .last()
                .is_none_or(|b| b.len() >= PUSH_BATCH || batch_bytes + data.len() > MAX_DATA_BYTES);
            if full {
                batches.push(Vec::new());
                batch_bytes = 0;
            }
            batch_bytes += data.len();
            if let Some(b) = batches.last_mut() {
                b.push((random_id(), data));
            }
        }
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let delay_ms = if opts.delay.is_zero() {
            0
        } else {
            task_millis(opts.delay).max(1)
        };
        let timeout_ms = opts.timeout.map(|t| task_millis(t).max(1)).unwrap_or(0);
        let mut pipe = redis::pipe();
        for batch in &batches {
            let mut inv = QUEUE_PUSH.prepare();
            inv.key(&self.keys.ready)
                .key(&self.keys.delayed)
                .key(&self.keys.marker)
                .key(&self.keys.seq)
                .arg(self.keys.task_prefix())
                .arg(&self.keys.events)
                .arg(opts.priority)
                .arg(delay_ms)
                .arg(opts.max_attempts)
                .arg(timeout_ms)
                .arg(task_millis(opts.backoff))
                .arg(opts.max_lost_runs)
                .arg(task_millis(opts.max_backoff));
            for (id, data) in batch {
                inv.arg(id).arg(data);
            }
            pipe.invoke_script(&inv);
        }
        let mut conn = self.swarm.conn()?;
        let _: Vec<i64> =
            query_pipeline(&pipe, &[&QUEUE_PUSH], &mut *conn).map_err(corrupt_reply)?;
        Ok(batches.into_iter().flatten().map(|(id, _)| id).collect())
    }

    /// Task counts per set.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let c = swarm.queue("q")?.counts()?;
    /// # Ok(()) }
    /// ```
    pub fn counts(&self) -> Result<QueueCounts> {
        let mut conn = self.swarm.conn()?;
        let (ready, delayed, running, ended, failed): (u64, u64, u64, u64, u64) = redis::pipe()
            .zcard(&self.keys.ready)
            .zcard(&self.keys.delayed)
            .zcard(&self.keys.running)
            .zcard(&self.keys.ended)
            .zcard(&self.keys.failed)
            .query(&mut *conn)?;
        Ok(QueueCounts {
            ready,
            delayed,
            running,
            ended,
            failed,
        })
    }

    /// Up to `limit` task ids of one set, in its order.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let failed = swarm.queue("q")?.list(redswarm::TaskSet::Failed, 100)?;
    /// # Ok(()) }
    /// ```
    pub fn list(&self, set: TaskSet, limit: usize) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = match set {
            TaskSet::Ready => &self.keys.ready,
            TaskSet::Delayed => &self.keys.delayed,
            TaskSet::Running => &self.keys.running,
            TaskSet::Ended => &self.keys.ended,
            TaskSet::Failed => &self.keys.failed,
        };
        let mut conn = self.swarm.conn()?;
        Ok(redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(i64::try_from(limit).unwrap_or(i64::MAX) - 1)
            .query(&mut *conn)?)
    }

    /// One task's record, if it exists.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let t = swarm.queue("q")?.get("some-id")?;
    /// # Ok(()) }
    /// ```
    pub fn get(&self, id: &str) -> Result<Option<TaskInfo>> {
        crate::keys::validate_name("task id", id)?;
        let key = self.keys.task(id);
        let mut conn = self.swarm.conn()?;
        let h: HashMap<String, String> = match redis::cmd("HGETALL").arg(&key).query(&mut *conn) {
            Ok(h) => h,
            Err(e) if e.code() == Some("WRONGTYPE") => {
                return Err(Error::corrupt(&key, "is not a task hash"))
            }
            Err(e) => return Err(e.into()),
        };
        if h.is_empty() {
            return Ok(None);
        }
        TaskInfo::from_hash(&key, h).map(Some)
    }

    /// Cancels a task: a queued one ends `cancelled` at once. A running one
    /// is marked in Redis and sent `cancel`; it ends `cancelled` when its
    /// handler stops. The mark is what counts (the message only makes it
    /// quicker): a worker that missed the message still finds it, and a
    /// failure, a hand-back or a lost lease of a task marked so ends it
    /// `cancelled` instead of running it again (a run that completes ends
    /// `ok`). Returns `"cancelled"`, `"signalled"` (running; a subscriber
    /// heard the message), `"unheard"` (running, but nobody listens on its
    /// control channel — its worker is gone or cut off from pub/sub; the
    /// mark still ends the task cancelled when its run ends or its lease
    /// lapses), `"ended"` (already over) or `"missing"`;
    /// [`Error::CorruptData`] if the record is unusable. On a Redis Cluster a
    /// `PUBLISH` counts only one node's subscribers, so there `"signalled"`
    /// means the task's worker node is live (its membership has not lapsed:
    /// a worker killed less than `node_ttl` ago still counts).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if swarm.queue("q")?.cancel("some-id")? == "unheard" {
    ///     log::warn!("no worker heard the cancel");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self, id: &str) -> Result<String> {
        crate::keys::validate_name("task id", id)?;
        let mut conn = self.swarm.conn()?;
        let outcome: String = queue_invoke(
            QUEUE_CANCEL
                .prepare()
                .key(self.keys.task(id))
                .key(&self.keys.ready)
                .key(&self.keys.delayed)
                .key(&self.keys.ended)
                .arg(id)
                .arg(&self.keys.events),
            &mut *conn,
        )?;
        drop(conn);
        if outcome == "unheard" && self.worker_is_live(id)? {
            return Ok("signalled".into());
        }
        Ok(outcome)
    }

    /// On a Redis Cluster, whether task `id`'s worker node is live. There a
    /// script's `PUBLISH` counts only the subscribers of the node it ran on,
    /// while the message reaches every node (and a worker listens with a
    /// pattern, which `PUBSUB NUMSUB` does not count), so a live worker
    /// node stands for "heard". Always false on one server, where the
    /// count is exact.
    fn worker_is_live(&self, id: &str) -> Result<bool> {
        let store = self.swarm.store();
        if !store.dedicated.is_cluster() {
            return Ok(false);
        }
        let mut conn = self.swarm.conn()?;
        let worker: Option<String> = redis::cmd("HGET")
            .arg(self.keys.task(id))
            .arg("worker")
            .query(&mut *conn)
            .map_err(crate::scripts::script_error)?;
        drop(conn);
        match worker {
            Some(node) if !node.is_empty() => store.node_is_live(&node),
            _ => Ok(false),
        }
    }

    /// Sends a control message (`cancel`, or your own) to a running task.
    /// Returns how many subscribers received it: `0` means nobody heard it
    /// (the task is not running, or its worker is gone or cut off from
    /// pub/sub) and the message is lost. On a Redis Cluster, where
    /// `PUBLISH` counts one node's subscribers only, it is 1 when the
    /// task's worker node is live (see [`Queue::cancel`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if swarm.queue("q")?.control("some-id", "pause")? == 0 {
    ///     log::warn!("nobody heard the pause");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn control(&self, id: &str, message: &str) -> Result<u64> {
        crate::keys::validate_name("task id", id)?;
        let channel = self.keys.task_control(id);
        let heard = self.swarm.publish(&channel, message)?;
        if heard == 0 && self.worker_is_live(id)? {
            // A cluster: see `worker_is_live`.
            return Ok(1);
        }
        Ok(heard)
    }

    /// Gives up to `max` failed tasks a fresh start: attempts, handler
    /// failures and lost runs back to zero, due at once.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let n = swarm.queue("q")?.requeue_failed(100)?;
    /// # Ok(()) }
    /// ```
    pub fn requeue_failed(&self, max: usize) -> Result<u64> {
        if max == 0 {
            return Ok(0);
        }
        let mut conn = self.swarm.conn()?;
        queue_invoke(
            QUEUE_REQUEUE_FAILED
                .prepare()
                .key(&self.keys.failed)
                .key(&self.keys.delayed)
                .key(&self.keys.marker)
                .arg(self.keys.task_prefix())
                .arg(max)
                .arg(&self.keys.events),
            &mut *conn,
        )
    }

    /// Deletes a task from every set; a worker running it will find its
    /// completion rejected. Returns whether it existed.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// swarm.queue("q")?.delete("some-id")?;
    /// # Ok(()) }
    /// ```
    pub fn delete(&self, id: &str) -> Result<bool> {
        crate::keys::validate_name("task id", id)?;
        let mut conn = self.swarm.conn()?;
        let n: i64 = queue_invoke(
            QUEUE_DELETE
                .prepare()
                .key(self.keys.task(id))
                .key(&self.keys.ready)
                .key(&self.keys.delayed)
                .key(&self.keys.running)
                .key(&self.keys.ended)
                .key(&self.keys.failed)
                .arg(id),
            &mut *conn,
        )?;
        Ok(n == 1)
    }

    /// Re-queues up to `batch` tasks whose lease ran out. Such a run was
    /// lost with its worker, which is not the task's failure: it counts
    /// toward [`TaskOptions::max_lost_runs`], not `max_attempts`, and only a
    /// task that lost that many runs ends failed (a task whose cancellation
    /// was requested ends cancelled; an unusable record ends failed as
    /// corrupt). Returns (re-queued, failed); [`Error::CorruptData`] if a
    /// queue key has the wrong type (nothing is changed then).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let (requeued, failed) = swarm.queue("q")?.reap_expired(100)?;
    /// # Ok(()) }
    /// ```
    pub fn reap_expired(&self, batch: usize) -> Result<(u64, u64)> {
        let mut conn = self.swarm.conn()?;
        let mut inv = QUEUE_REAP.prepare();
        self.queue_keys(&mut inv)
            .arg(self.keys.task_prefix())
            .arg(batch.max(1))
            .arg(&self.keys.events);
        let (requeued, failed): (u64, u64) = queue_invoke(&inv, &mut *conn)?;
        if requeued + failed > 0 {
            log::info!(
                "queue `{}`: re-queued {requeued}, failed {failed} expired tasks",
                self.name
            );
        }
        Ok((requeued, failed))
    }

    /// Every event of the queue, from any process.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let events = swarm.queue("q")?.events()?;
    /// while let Some(e) = events.next_event(std::time::Duration::from_secs(1)) { log::info!("{e:?}"); }
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> Result<EventStream> {
        Ok(EventStream {
            sub: self.swarm.subscribe(&self.keys.events)?,
            task: None,
            ready: Mutex::new(VecDeque::new()),
        })
    }

    /// The events of one task: the queue's channel, filtered here (events
    /// are published once per transition, to the queue's channel only).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let events = swarm.queue("q")?.task_events("some-id")?;
    /// # Ok(()) }
    /// ```
    pub fn task_events(&self, id: &str) -> Result<EventStream> {
        crate::keys::validate_name("task id", id)?;
        Ok(EventStream {
            sub: self.swarm.subscribe(&self.keys.events)?,
            task: Some(id.to_string()),
            ready: Mutex::new(VecDeque::new()),
        })
    }
}

/// A subscription to task events; see [`Queue::events`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let events = swarm.queue("q")?.events()?;
/// let first = events.next_event(std::time::Duration::from_secs(5));
/// # Ok(()) }
/// ```
pub struct EventStream {
    sub: Subscription,
    /// Only this task's events (from [`Queue::task_events`]).
    task: Option<String>,
    /// Events of a message that carried several, not yet returned.
    ready: Mutex<VecDeque<TaskEvent>>,
}

impl EventStream {
    /// The next event within `timeout` (`Duration::MAX`: however long it
    /// takes; malformed messages are skipped and
    /// logged; a pub/sub reconnect is not an event).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let events = swarm.queue("q")?.events()?;
    /// let e = events.next_event(std::time::Duration::from_millis(100));
    /// # Ok(()) }
    /// ```
    pub fn next_event(&self, timeout: Duration) -> Option<TaskEvent> {
        // Saturating: a timeout of Duration::MAX waits for the next event.
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(e) = self.ready.lock().pop_front() {
                return Some(e);
            }
            let left = deadline.remaining().unwrap_or(Duration::MAX);
            match self.sub.recv_timeout(left) {
                Ok(SubEvent::Message(m)) => match decode_events(&m.payload) {
                    Ok(events) => {
                        let wanted = events
                            .into_iter()
                            .filter(|e| self.task.as_ref().is_none_or(|t| *t == e.task));
                        self.ready.lock().extend(wanted);
                    }
                    Err(e) => log::debug!("skipping a malformed task event on {}: {e}", m.channel),
                },
                Ok(SubEvent::Reconnected) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The raw subscription (for `select!`); each payload is a JSON array
    /// of [`TaskEvent`]s of the whole queue (see [`decode_events`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # let events = swarm.queue("q")?.events()?;
    /// let rx = events.subscription().receiver();
    /// # Ok(()) }
    /// ```
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}

/// Decodes one message of a queue's event channel: a JSON array of
/// [`TaskEvent`]s (a script that moves many tasks publishes them at once),
/// or a single event object.
///
/// ```
/// let events = redswarm::decode_events(br#"[{"task":"a","event":"completed"}]"#).unwrap();
/// assert_eq!(events[0].task, "a");
/// ```
pub fn decode_events(payload: &[u8]) -> serde_json::Result<Vec<TaskEvent>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Message {
        Many(Vec<TaskEvent>),
        One(TaskEvent),
    }
    Ok(match serde_json::from_slice(payload)? {
        Message::Many(v) => v,
        Message::One(e) => vec![e],
    })
}
