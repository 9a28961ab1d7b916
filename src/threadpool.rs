//! A fixed pool of N threads fed by a bounded queue.
//!
//! A job that panics fails alone: the panic is caught and logged, and the
//! thread goes on with the next job (the jobs report their own outcomes:
//! a task handler's panic is caught inside and reported as its failure).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::util::panic_message;

/// Busy-thread count and the condvar `wait_idle` sleeps on.
type BusyCount = (Mutex<usize>, Condvar);

/// A queued job. It is handed the busy count so it can mark its thread idle
/// *before* it hands its result over: whoever holds the result then sees the
/// thread idle, with no window where `idle()` lags behind `join()`.
type Job = Box<dyn FnOnce(&BusyCount) + Send + 'static>;

fn mark_idle(busy: &BusyCount) {
    let mut n = busy.0.lock();
    *n = n.saturating_sub(1);
    busy.1.notify_all();
}

/// A fixed-size thread pool with a bounded job queue.
pub struct ThreadPool {
    name: String,
    size: usize,
    sender: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    busy: Arc<BusyCount>,
}

impl ThreadPool {
    /// Most threads one pool may have (each has its own stack; a typo like
    /// 100000 must fail, not exhaust the process).
    pub const MAX_THREADS: usize = 1024;

    /// Largest job queue of one pool (the queue's slots are allocated up
    /// front).
    pub const MAX_QUEUE_CAPACITY: usize = 1 << 16;

    /// Starts `threads` threads (1 to [`ThreadPool::MAX_THREADS`]) named
    /// `<name>-<i>` with a queue of `queue_capacity` jobs (at most
    /// [`ThreadPool::MAX_QUEUE_CAPACITY`]; `execute` blocks while it is
    /// full).
    pub fn new(name: &str, threads: usize, queue_capacity: usize) -> Result<ThreadPool> {
        if threads == 0 {
            return Err(Error::invalid("thread count", "must be at least 1"));
        }
        // Checked before anything is allocated or spawned.
        if threads > Self::MAX_THREADS {
            return Err(Error::invalid(
                "thread count",
                format!(
                    "{threads} is above the limit of {} (ThreadPool::MAX_THREADS)",
                    Self::MAX_THREADS
                ),
            ));
        }
        if queue_capacity > Self::MAX_QUEUE_CAPACITY {
            return Err(Error::invalid(
                "queue capacity",
                format!(
                    "{queue_capacity} is above the limit of {} (ThreadPool::MAX_QUEUE_CAPACITY)",
                    Self::MAX_QUEUE_CAPACITY
                ),
            ));
        }
        let (tx, rx) = bounded::<Job>(queue_capacity);
        let busy: Arc<BusyCount> = Arc::new((Mutex::new(0usize), Condvar::new()));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let busy = busy.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        *busy.0.lock() += 1;
                        job(&busy);
                    }
                })
                .map_err(|e| Error::invalid("thread pool", format!("cannot spawn thread: {e}")))?;
            handles.push(handle);
        }
        Ok(ThreadPool {
            name: name.to_string(),
            size: threads,
            sender: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
            busy,
        })
    }

    /// Number of threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Threads not running a job right now (jobs queued but not started
    /// are not counted).
    pub fn idle(&self) -> usize {
        self.size.saturating_sub(*self.busy.0.lock())
    }

    /// Queues `job`; blocks while the queue is full. Fails with
    /// [`Error::ShutDown`] after [`ThreadPool::join`].
    pub fn execute<F>(&self, job: F) -> Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let sender = self.sender.lock().clone().ok_or(Error::ShutDown)?;
        let pool_name = self.name.clone();
        let wrapped: Job = Box::new(move |busy| {
            // A panic fails this job alone; the thread lives on.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(job)) {
                let msg = panic_message(payload.as_ref());
                log::error!("job on thread pool `{pool_name}` panicked: {msg}");
            }
            mark_idle(busy);
        });
        sender.send(wrapped).map_err(|_| Error::ShutDown)
    }

    /// Stops taking jobs, lets the queued ones finish, and joins every
    /// thread. Idempotent.
    pub fn join(&self) {
        self.sender.lock().take();
        let handles: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for h in handles {
            if h.join().is_err() {
                log::error!("a thread of pool `{}` died", self.name);
            }
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_until(d: Duration, mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f()
    }

    #[test]
    fn thread_pool_survives_panicking_jobs() {
        let pool = ThreadPool::new("t", 2, 8).unwrap();
        for _ in 0..4 {
            pool.execute(|| panic!("job failed on purpose")).unwrap();
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..10u32 {
            let tx = tx.clone();
            pool.execute(move || tx.send(i * 2).unwrap()).unwrap();
        }
        let sum: u32 = (0..10)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .sum();
        assert_eq!(sum, 90, "both threads outlived the panics");
        assert!(wait_until(Duration::from_secs(5), || pool.idle() == 2));
        pool.join();
        assert!(matches!(pool.execute(|| ()), Err(Error::ShutDown)));
    }

    #[test]
    fn thread_pool_bounds_are_invalid_input() {
        for (threads, queue) in [
            (ThreadPool::MAX_THREADS + 1, 1),
            (usize::MAX, 1),
            (1, ThreadPool::MAX_QUEUE_CAPACITY + 1),
            (1, usize::MAX),
            (0, 1),
        ] {
            assert!(
                matches!(
                    ThreadPool::new("t", threads, queue),
                    Err(Error::InvalidInput { .. })
                ),
                "{threads} threads, queue {queue}"
            );
        }
    }
}
