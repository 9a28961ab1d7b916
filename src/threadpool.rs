//! A fixed pool of N threads fed by a bounded queue.
//!
//! A job that panics fails alone: the panic is caught, logged, and handed to
//! whoever waits on the job's [`JobHandle`] as [`Error::Panicked`]; the
//! thread goes on with the next job.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::util::{panic_message, Deadline};

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
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = redswarm::ThreadPool::new("demo", 2, 16)?;
/// let job = pool.execute(|| 6 * 7)?;
/// assert_eq!(job.join()?, 42);
/// let bad = pool.execute(|| -> u8 { panic!("boom") })?;
/// assert!(bad.join().is_err());
/// assert_eq!(pool.execute(|| 1)?.join()?, 1); // still alive
/// pool.join();
/// # Ok(()) }
/// ```
pub struct ThreadPool {
    name: String,
    size: usize,
    sender: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    busy: Arc<BusyCount>,
}

/// The outcome of one job submitted to a [`ThreadPool`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = redswarm::ThreadPool::new("demo", 1, 1)?;
/// let h = pool.execute(|| "done")?;
/// assert_eq!(h.join()?, "done");
/// # Ok(()) }
/// ```
pub struct JobHandle<T> {
    rx: Receiver<Result<T>>,
}

impl<T> JobHandle<T> {
    /// Waits for the job; a panic in it comes back as [`Error::Panicked`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = redswarm::ThreadPool::new("demo", 1, 1)?;
    /// assert_eq!(pool.execute(|| 1)?.join()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn join(self) -> Result<T> {
        self.rx.recv().unwrap_or(Err(Error::ShutDown))
    }

    /// Waits at most `timeout`; `None` if the job is still running.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = redswarm::ThreadPool::new("demo", 1, 1)?;
    /// let h = pool.execute(|| 1)?;
    /// assert_eq!(h.join_timeout(std::time::Duration::from_secs(5)).ok_or("still running")??, 1);
    /// # Ok(()) }
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Option<Result<T>> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Err(Error::ShutDown)),
        }
    }
}

impl ThreadPool {
    /// Most threads one pool may have (each has its own stack; a typo like
    /// 100000 must fail, not exhaust the process).
    ///
    /// ```
    /// let n = redswarm::ThreadPool::MAX_THREADS + 1;
    /// assert!(redswarm::ThreadPool::new("x", n, 1).is_err());
    /// ```
    pub const MAX_THREADS: usize = 1024;

    /// Largest job queue of one pool (the queue's slots are allocated up
    /// front).
    ///
    /// ```
    /// let n = redswarm::ThreadPool::MAX_QUEUE_CAPACITY + 1;
    /// assert!(redswarm::ThreadPool::new("x", 1, n).is_err());
    /// ```
    pub const MAX_QUEUE_CAPACITY: usize = 1 << 16;

    /// Starts `threads` threads (1 to [`ThreadPool::MAX_THREADS`]) named
    /// `<name>-<i>` with a queue of `queue_capacity` jobs (at most
    /// [`ThreadPool::MAX_QUEUE_CAPACITY`]; `execute` blocks while it is
    /// full).
    ///
    /// ```
    /// assert!(redswarm::ThreadPool::new("x", 0, 1).is_err());
    /// ```
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
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(redswarm::ThreadPool::new("x", 3, 1)?.size(), 3);
    /// # Ok(()) }
    /// ```
    pub fn size(&self) -> usize {
        self.size
    }

    /// Threads not running a job right now (jobs queued but not started
    /// are not counted).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(redswarm::ThreadPool::new("x", 2, 1)?.idle(), 2);
    /// # Ok(()) }
    /// ```
    pub fn idle(&self) -> usize {
        self.size.saturating_sub(*self.busy.0.lock())
    }

    /// Blocks until at least one thread is idle or `timeout` passes
    /// (`Duration::MAX` waits as long as it takes);
    /// returns whether one is idle.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = redswarm::ThreadPool::new("x", 1, 1)?;
    /// assert!(pool.wait_idle(std::time::Duration::from_millis(10)));
    /// # Ok(()) }
    /// ```
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        // Saturating: a timeout of Duration::MAX waits as long as it takes.
        let deadline = Deadline::after(timeout);
        let mut busy = self.busy.0.lock();
        while *busy >= self.size {
            match deadline.instant() {
                Some(at) => {
                    if self.busy.1.wait_until(&mut busy, at).timed_out() {
                        return *busy < self.size;
                    }
                }
                None => self.busy.1.wait(&mut busy),
            }
        }
        true
    }

    /// Queues `job`; blocks while the queue is full. Fails with
    /// [`Error::ShutDown`] after [`ThreadPool::join`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = redswarm::ThreadPool::new("x", 1, 4)?;
    /// let h = pool.execute(|| 2 + 2)?;
    /// assert_eq!(h.join()?, 4);
    /// # Ok(()) }
    /// ```
    pub fn execute<F, T>(&self, job: F) -> Result<JobHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let sender = self.sender.lock().clone().ok_or(Error::ShutDown)?;
        let (tx, rx) = bounded(1);
        let pool_name = self.name.clone();
        let wrapped: Job = Box::new(move |busy| {
            let outcome = catch_unwind(AssertUnwindSafe(job)).map_err(|payload| {
                let msg = panic_message(payload.as_ref());
                log::error!("job on thread pool `{pool_name}` panicked: {msg}");
                Error::Panicked(msg)
            });
            mark_idle(busy);
            // The waiter may have given up; that is fine.
            let _ = tx.send(outcome);
        });
        sender.send(wrapped).map_err(|_| Error::ShutDown)?;
        Ok(JobHandle { rx })
    }

    /// Stops taking jobs, lets the queued ones finish, and joins every
    /// thread. Idempotent.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = redswarm::ThreadPool::new("x", 2, 4)?;
    /// pool.join();
    /// assert!(pool.execute(|| ()).is_err());
    /// # Ok(()) }
    /// ```
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
