//! Monitors: re-queue tasks whose workers died, report dead nodes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::swarm::queue::Queue;

/// Running totals of a [`Monitor`].
///
/// ```
/// let s = redswarm::MonitorStats::default();
/// assert_eq!(s.requeued, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// Tasks put back in the queue after their lease expired.
    pub requeued: u64,
    /// Tasks failed by a sweep: they lost `max_lost_runs` runs with their
    /// workers, or their record was unusable.
    pub failed: u64,
    /// Sweeps done.
    pub sweeps: u64,
    /// Nodes seen dying (their membership lapsed without a clean leave).
    pub dead_nodes: u64,
}

/// Sweeps a queue for expired task leases every `interval` (see
/// [`Queue::reap_expired`]); stops sweeping while this node is partitioned. Any number may run: each sweep is one
/// atomic script, so two monitors never re-queue one task twice.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let queue = swarm.queue("q")?;
/// let monitor = redswarm::Monitor::start(&queue, std::time::Duration::from_secs(1))?;
/// log::info!("{:?}", monitor.stats());
/// monitor.stop();
/// # Ok(()) }
/// ```
pub struct Monitor {
    stats: Arc<Stats>,
    stop: Sender<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Stats {
    requeued: AtomicU64,
    failed: AtomicU64,
    sweeps: AtomicU64,
    dead_nodes: AtomicU64,
}

/// Most tasks handled per script call; a sweep repeats while batches are full.
const BATCH: usize = 200;

impl Monitor {
    /// Starts the sweeping thread.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let m = redswarm::Monitor::start(&swarm.queue("q")?, std::time::Duration::from_millis(500))?;
    /// # Ok(()) }
    /// ```
    pub fn start(queue: &Queue, interval: Duration) -> Result<Monitor> {
        if interval.is_zero() {
            return Err(Error::invalid(
                "monitor interval",
                "must be greater than zero",
            ));
        }
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = bounded::<()>(1);
        let (q, st) = (queue.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("swarm-monitor-{}", queue.name()))
            .spawn(move || {
                let mut known_dead: HashSet<String> = HashSet::new();
                loop {
                    if stop_rx.recv_timeout(interval).is_ok() {
                        return;
                    }
                    if !q.swarm().partition_state().may_work() {
                        log::debug!("monitor: partitioned, not sweeping");
                        continue;
                    }
                    st.sweeps.fetch_add(1, Ordering::Relaxed);
                    // Dead nodes: their tasks' leases lapse too; this sweep or a
                    // later one re-queues them. Report each death once.
                    if let Ok(dead) = q.swarm().nodes(false) {
                        for node in dead {
                            if known_dead.insert(node.id.clone()) {
                                st.dead_nodes.fetch_add(1, Ordering::Relaxed);
                                log::warn!(
                                    "node {} (pid {} on {}) died: its membership lapsed",
                                    node.id,
                                    node.pid,
                                    node.host
                                );
                            }
                        }
                    }
                    loop {
                        match q.reap_expired(BATCH) {
                            Ok((r, f)) => {
                                st.requeued.fetch_add(r, Ordering::Relaxed);
                                st.failed.fetch_add(f, Ordering::Relaxed);
                                if ((r + f) as usize) < BATCH {
                                    break;
                                }
                            }
                            Err(e) => {
                                log::warn!("monitor sweep of `{}` failed: {e}", q.name());
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::invalid("monitor", format!("cannot spawn thread: {e}")))?;
        Ok(Monitor {
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Totals so far.
    ///
    /// ```no_run
    /// # fn demo(m: &redswarm::Monitor) { log::info!("{:?}", m.stats()); }
    /// ```
    pub fn stats(&self) -> MonitorStats {
        MonitorStats {
            requeued: self.stats.requeued.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            sweeps: self.stats.sweeps.load(Ordering::Relaxed),
            dead_nodes: self.stats.dead_nodes.load(Ordering::Relaxed),
        }
    }

    /// Stops and joins the thread. Idempotent.
    ///
    /// ```no_run
    /// # fn demo(m: redswarm::Monitor) { m.stop(); }
    /// ```
    pub fn stop(&self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}
