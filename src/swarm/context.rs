//! What a task handler sees: its task, progress events, control messages
//! and the signal to stop.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::error::Result;
use crate::swarm::queue::Queue;

/// Why a running task is told to stop.
///
/// ```
/// let r = redswarm::StopReason::Cancelled;
/// assert_ne!(r, redswarm::StopReason::TimedOut);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A `cancel` control message arrived.
    Cancelled,
    /// The task ran past its timeout.
    TimedOut,
    /// Its lease could not be renewed in time or was taken over: another
    /// worker may run it now.
    LeaseLost,
    /// This node lost Redis and too few peers answer.
    Partitioned,
    /// The worker is shutting down and the grace period is over.
    ShuttingDown,
}

pub(crate) struct StopSignal {
    reason: Mutex<Option<StopReason>>,
    tx: Sender<StopReason>,
    rx: Receiver<StopReason>,
}

impl StopSignal {
    pub(crate) fn new() -> Arc<StopSignal> {
        let (tx, rx) = bounded(1);
        Arc::new(StopSignal {
            reason: Mutex::new(None),
            tx,
            rx,
        })
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        *self.reason.lock()
    }

    pub(crate) fn stop(&self, why: StopReason) {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some(why);
            let _ = self.tx.try_send(why);
        }
    }
}

/// What a handler gets with its task.
///
/// ```no_run
/// # fn handler(ctx: &redswarm::TaskContext) -> Result<serde_json::Value, String> {
/// let ms = ctx.data()["ms"].as_u64().unwrap_or(100);
/// for step in 0..10 {
///     if !ctx.sleep(std::time::Duration::from_millis(ms / 10)) {
///         return Err(format!("stopped: {:?}", ctx.stop_reason()));
///     }
///     ctx.progress(serde_json::json!({ "step": step }));
/// }
/// Ok(serde_json::json!({ "slept_ms": ms }))
/// # }
/// ```
pub struct TaskContext {
    pub(crate) id: String,
    pub(crate) data: serde_json::Value,
    pub(crate) attempt: u32,
    pub(crate) fence: u64,
    pub(crate) queue: Queue,
    pub(crate) stop: Arc<StopSignal>,
    pub(crate) control: Receiver<String>,
}

impl TaskContext {
    /// Task id.
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { let id = ctx.id(); }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The payload.
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { let v = &ctx.data()["key"]; }
    /// ```
    pub fn data(&self) -> &serde_json::Value {
        &self.data
    }

    /// The payload as `T`.
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { let n: u32 = ctx.data_as().unwrap(); }
    /// ```
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_value(self.data.clone())?)
    }

    /// This attempt's number (1 for the first run).
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { assert!(ctx.attempt() >= 1); }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The claim's fencing token: higher than every earlier claim of this
    /// task. Pass it to the systems the handler writes to.
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { let token = ctx.fencing_token(); }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Publishes a `progress` event with `data` on the queue's event
    /// channel (best effort; [`crate::Queue::task_events`] sees it too).
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { ctx.progress(serde_json::json!({"pct": 50})); }
    /// ```
    pub fn progress(&self, data: serde_json::Value) {
        let event = crate::swarm::TaskEvent {
            task: self.id.clone(),
            kind: crate::swarm::EventKind::Progress,
            attempt: Some(self.attempt),
            node: None,
            error: None,
            data: Some(data),
        };
        let Ok(payload) = serde_json::to_string(&[event]) else {
            return;
        };
        let r = self.queue.swarm.publish(&self.queue.keys.events, payload);
        if let Err(e) = r {
            log::debug!("progress event of task {} not published: {e}", self.id);
        }
    }

    /// True once the task should stop (cancelled, timed out, lease lost,
    /// partitioned, shutting down).
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { if ctx.is_cancelled() { return; } }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.stop.reason.lock().is_some()
    }

    /// Why the task should stop, if it should.
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { log::info!("{:?}", ctx.stop_reason()); }
    /// ```
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.stop.reason.lock()
    }

    /// A channel that receives the [`StopReason`] (for `select!`).
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { let stop = ctx.stop_receiver(); }
    /// ```
    pub fn stop_receiver(&self) -> Receiver<StopReason> {
        self.stop.rx.clone()
    }

    /// Control messages other than `cancel` sent to this task with
    /// [`Queue::control`] (for example your own `pause` / `resume`).
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) {
    /// if let Ok(msg) = ctx.control_receiver().try_recv() { log::info!("got {msg}"); }
    /// # }
    /// ```
    pub fn control_receiver(&self) -> &Receiver<String> {
        &self.control
    }

    /// Sleeps `d` unless told to stop first; returns false if stopped.
    ///
    /// ```no_run
    /// # fn h(ctx: &redswarm::TaskContext) { if !ctx.sleep(std::time::Duration::from_secs(1)) { return; } }
    /// ```
    pub fn sleep(&self, d: Duration) -> bool {
        if self.is_cancelled() {
            return false;
        }
        match self.stop.rx.recv_timeout(d) {
            Ok(why) => {
                // Put it back for other readers.
                let _ = self.stop.tx.try_send(why);
                false
            }
            Err(_) => !self.is_cancelled(),
        }
    }
}
