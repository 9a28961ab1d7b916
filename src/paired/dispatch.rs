//! The handle's paired-task runtime: one waiting thread that stands by on
//! every task joined through [`PairedTask::receiver`](super::PairedTask::receiver)
//! or [`PairedTask::spawn`](super::PairedTask::spawn) (so many tasks in
//! flight do not need a thread each), and the thread pool that runs the
//! work of `spawn`.
//!
//! The waiting thread starts with the first task that must stand by and
//! ends a little after the last one is delivered; it holds no handle while
//! idle, so it never keeps a dropped handle alive.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Select, Sender, TryRecvError};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::standby::Standby;
use super::{PairedJob, PairedOutcome, PairedRun};
use crate::error::Result;
use crate::runtime::Runtime;
use crate::subscriber::SubEvent;
use crate::threadpool::ThreadPool;
use crate::util::panic_message;

/// How long the waiting thread lingers with nothing to wait for.
const IDLE_EXIT: Duration = Duration::from_secs(2);
/// Queue length of the work pool (`spawn` blocks while it is full).
const POOL_QUEUE: usize = 1024;

/// Where an outcome goes once known.
pub(super) type Deliver<T> = Box<dyn FnOnce(Result<PairedOutcome<T>>) + Send>;

/// A participant the waiting thread stands by for, its payload type erased.
trait Pending: Send {
    fn events(&self) -> &Receiver<SubEvent>;
    fn next_check(&self) -> Instant;
    fn woken(&mut self);
    /// Joins again; true once the outcome was delivered.
    fn recheck(&mut self) -> bool;
}

struct Waiting<T> {
    standby: Standby<T>,
    deliver: Option<Deliver<T>>,
}

impl<T> Pending for Waiting<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    fn events(&self) -> &Receiver<SubEvent> {
        self.standby.events()
    }

    fn next_check(&self) -> Instant {
        self.standby.next_check()
    }

    fn woken(&mut self) {
        self.standby.woken();
    }

    fn recheck(&mut self) -> bool {
        let outcome = match self.standby.step() {
            Ok(None) => return false,
            Ok(Some(outcome)) => Ok(outcome),
            Err(e) => Err(e),
        };
        if let Some(deliver) = self.deliver.take() {
            deliver(outcome);
        }
        true
    }
}

type Inbox = Arc<Mutex<Option<Sender<Box<dyn Pending>>>>>;

/// Per-handle state of the paired feature (lives in the handle).
#[derive(Default)]
pub(crate) struct PairedRuntime {
    /// The running waiting thread's inbox, if one runs.
    inbox: Inbox,
    pool: Mutex<Option<Arc<ThreadPool>>>,
}

impl PairedRuntime {
    /// Hands `standby` to the waiting thread (starting it if needed);
    /// `deliver` gets the outcome.
    pub(super) fn add<T>(&self, standby: Standby<T>, deliver: Deliver<T>)
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut entry: Box<dyn Pending> = Box::new(Waiting {
            standby,
            deliver: Some(deliver),
        });
        let mut slot = self.inbox.lock();
        if let Some(tx) = slot.as_ref() {
            match tx.send(entry) {
                Ok(()) => return,
                // The thread has just gone: start another.
                Err(e) => entry = e.0,
            }
        }
        let (tx, rx) = unbounded();
        let _ = tx.send(entry);
        let inbox = self.inbox.clone();
        let spawned = std::thread::Builder::new()
            .name("redswarm-paired-wait".into())
            .spawn(move || wait_loop(rx, inbox));
        match spawned {
            Ok(_) => *slot = Some(tx),
            Err(e) => {
                log::error!("cannot spawn the paired waiting thread: {e}");
                // The entry went down with the closure; its receiver sees
                // the channel close.
            }
        }
    }

    /// The work pool, started on first use (as many threads as the
    /// connection pool has connections).
    pub(super) fn pool(&self, swarm: &Runtime) -> Result<Arc<ThreadPool>> {
        let mut pool = self.pool.lock();
        if let Some(p) = pool.as_ref() {
            return Ok(p.clone());
        }
        let threads = usize::try_from(swarm.config().pool_size())
            .unwrap_or(1)
            .max(1);
        let p = Arc::new(ThreadPool::new("redswarm-paired", threads, POOL_QUEUE)?);
        *pool = Some(p.clone());
        Ok(p)
    }
}

impl Drop for PairedRuntime {
    fn drop(&mut self) {
        // The last handle clone may be dropped by a job on the pool itself;
        // joining the pool from one of its threads would deadlock, so a
        // short-lived thread of its own joins it.
        if let Some(pool) = self.pool.get_mut().take() {
            let joined = std::thread::Builder::new()
                .name("redswarm-paired-join".into())
                .spawn(move || drop(pool));
            if let Err(e) = joined {
                log::warn!("cannot join the paired work pool: {e}");
            }
        }
    }
}

/// The waiting thread: selects over every entry's events and the inbox,
/// re-joins an entry when an event arrives or its check is due, and ends
/// after `IDLE_EXIT` with nothing to do.
fn wait_loop(inbox: Receiver<Box<dyn Pending>>, slot: Inbox) {
    let mut entries: Vec<Box<dyn Pending>> = Vec::new();
    let mut inbox_open = true;
    loop {
        while let Ok(e) = inbox.try_recv() {
            entries.push(e);
        }
        if entries.is_empty() {
            if inbox_open {
                if let Ok(e) = inbox.recv_timeout(IDLE_EXIT) {
                    entries.push(e);
                    continue;
                }
            }
            // Leave under the lock, and only with nothing queued: `add`
            // sends under the same lock, so no entry is stranded.
            let mut s = slot.lock();
            if inbox.is_empty() {
                *s = None;
                return;
            }
            continue;
        }
        let earliest = entries
            .iter()
            .map(|e| e.next_check())
            .min()
            .unwrap_or_else(Instant::now);
        let timeout = earliest.saturating_duration_since(Instant::now());
        let ready = {
            let mut sel = Select::new();
            let offset = usize::from(inbox_open);
            if inbox_open {
                sel.recv(&inbox);
            }
            for e in &entries {
                sel.recv(e.events());
            }
            sel.ready_timeout(timeout)
                .ok()
                .map(|i| i.checked_sub(offset))
        };
        match ready {
            // The inbox: new entries (taken at the top) or its end.
            Some(None) => match inbox.try_recv() {
                Ok(e) => entries.push(e),
                Err(TryRecvError::Disconnected) => inbox_open = false,
                Err(TryRecvError::Empty) => {}
            },
            Some(Some(i)) => {
                if let Some(e) = entries.get_mut(i) {
                    e.woken();
                }
            }
            None => {}
        }
        let now = Instant::now();
        entries.retain_mut(|e| !(e.next_check() <= now && e.recheck()));
    }
}

/// Runs `work` for `job` on a pool thread, reports its result and tells
/// `reply`.
pub(super) fn run_work<T, F>(job: PairedJob<T>, work: F, reply: Sender<Result<PairedRun>>)
where
    F: FnOnce(&PairedJob<T>) -> std::result::Result<(), String>,
{
    let (attempt, took_over) = (job.attempt(), job.is_takeover());
    let result = catch_unwind(AssertUnwindSafe(|| work(&job)))
        .unwrap_or_else(|panic| Err(format!("the work panicked: {}", panic_message(&*panic))));
    let reported = match &result {
        Ok(()) => job.succeeded(),
        Err(why) => job.failed(why),
    };
    let _ = reply.send(reported.map(|()| PairedRun::Ran {
        attempt,
        took_over,
        result,
    }));
}
