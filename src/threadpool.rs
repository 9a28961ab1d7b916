//! A fixed pool of N threads fed by a bounded queue.
//!
//! A job that panics fails alone: the panic is caught and logged, and the
//! thread goes on with the next job (the jobs report their own outcomes:
//! a task handler's panic is caught inside and reported as its failure).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::util::panic_message;

/// A queued job.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue the threads take jobs from. A mutex and two condvars rather
/// than a channel: an idle thread sleeps until `notify_one` picks it, with
/// no spinning or yielding (many idle threads on few cores would otherwise
/// burn the CPU the jobs need).
struct Queue {
    state: Mutex<State>,
    /// Signalled when a job is queued or the pool closes.
    not_empty: Condvar,
    /// Signalled when a job is taken (`execute` waits on a full queue).
    not_full: Condvar,
    capacity: usize,
}

struct State {
    jobs: VecDeque<Job>,
    busy: usize,
    closed: bool,
}

/// A fixed-size thread pool with a bounded job queue.
pub struct ThreadPool {
    name: Arc<str>,
    size: usize,
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ThreadPool {
    /// Most threads one pool may have (each has its own stack; a typo like
    /// 100000 must fail, not exhaust the process).
    pub const MAX_THREADS: usize = 1024;

    /// Largest job queue of one pool.
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
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(queue_capacity.min(1024)),
                busy: 0,
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity: queue_capacity.max(1),
        });
        let name: Arc<str> = Arc::from(name);
        let pool = ThreadPool {
            name: name.clone(),
            size: threads,
            queue: queue.clone(),
            threads: Mutex::new(Vec::with_capacity(threads)),
        };
        for i in 0..threads {
            let (queue, name) = (queue.clone(), name.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || run_jobs(&queue, &name))
                .map_err(|e| Error::invalid("thread pool", format!("cannot spawn thread: {e}")))?;
            pool.threads.lock().push(handle);
        }
        Ok(pool)
    }

    /// Number of threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Threads not running a job right now (jobs queued but not started
    /// are not counted).
    pub fn idle(&self) -> usize {
        self.size.saturating_sub(self.queue.state.lock().busy)
    }

    /// Queues `job`; blocks while the queue is full. Fails with
    /// [`Error::ShutDown`] after [`ThreadPool::join`].
    pub fn execute<F>(&self, job: F) -> Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let mut state = self.queue.state.lock();
        loop {
            if state.closed {
                return Err(Error::ShutDown);
            }
            if state.jobs.len() < self.queue.capacity {
                break;
            }
            self.queue.not_full.wait(&mut state);
        }
        state.jobs.push_back(Box::new(job));
        drop(state);
        self.queue.not_empty.notify_one();
        Ok(())
    }

    /// Stops taking jobs, lets the queued ones finish, and joins every
    /// thread. Idempotent.
    pub fn join(&self) {
        self.queue.state.lock().closed = true;
        self.queue.not_empty.notify_all();
        self.queue.not_full.notify_all();
        let handles: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for h in handles {
            if h.join().is_err() {
                log::error!("a thread of pool `{}` died", self.name);
            }
        }
    }
}

/// A pool thread: takes jobs until the pool is closed and drained. A job
/// that panics fails alone: the thread goes on with the next one.
fn run_jobs(queue: &Queue, name: &str) {
    let mut state = queue.state.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            state.busy += 1;
            drop(state);
            queue.not_full.notify_one();
            if let Err(payload) = catch_unwind(AssertUnwindSafe(job)) {
                let msg = panic_message(payload.as_ref());
                log::error!("job on thread pool `{name}` panicked: {msg}");
            }
            state = queue.state.lock();
            state.busy -= 1;
            continue;
        }
        if state.closed {
            return;
        }
        queue.not_empty.wait(&mut state);
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
