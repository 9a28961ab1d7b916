//! A participant standing by on a paired task: subscribed to the task's
//! events first, then joining; between joins it sleeps until a report is
//! published, the pub/sub connection comes back, or the holder's lease (as
//! read from Redis) would lapse — bounded by `wait_recheck`. Used by the
//! blocking form directly and by the handle's waiting thread.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Joined, PairedJob, PairedOutcome, PairedTask};
use crate::error::{Error, Result};
use crate::health::PartitionState;
use crate::runtime::Runtime;
use crate::subscriber::{SubEvent, Subscription};
use crate::util::random_id;

/// Re-join this long after the holder's lease would lapse, so the lapse
/// has happened in Redis by then.
const LAPSE_MARGIN: Duration = Duration::from_millis(5);

pub(super) struct Standby<T> {
    task: PairedTask,
    /// Ours for every join of this participant: a grant whose reply was
    /// lost is handed back on the next join.
    token: String,
    payload: Vec<u8>,
    sub: Subscription,
    /// `None`: stand by for ever.
    deadline: Option<Instant>,
    next_check: Instant,
    /// The subscription's channel closed (the handle shut down).
    closed: bool,
    _payload: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Standby<T> {
    pub(super) fn start(task: PairedTask, payload: Vec<u8>) -> Result<Standby<T>> {
        // Subscribed (confirmed by Redis) before the first join: a report
        // published after the join reaches us, one published before it is
        // in the record the join reads.
        let sub = task.swarm().subscribe(&task.keys.events)?;
        let now = Instant::now();
        Ok(Standby {
            // A wait too long to add is a wait for ever.
            deadline: now.checked_add(task.opts.wait),
            task,
            token: random_id(),
            payload,
            sub,
            next_check: now,
            closed: false,
            _payload: PhantomData,
        })
    }

    /// One join: the outcome, or `None` to stand by until
    /// [`Standby::next_check`] (or an event).
    pub(super) fn step(&mut self) -> Result<Option<PairedOutcome<T>>> {
        let swarm = self.task.swarm().clone();
        if self.closed || swarm.is_shut_down() {
            return Err(Error::ShutDown);
        }
        if let Some(state) = cut_off(&swarm) {
            return Err(self.partitioned(state, None));
        }
        let recheck = swarm.config().wait_recheck();
        let sent = Instant::now();
        let nap = match self.task.join(&self.token, &self.payload) {
            Ok(Joined::Granted {
                took_over,
                attempt,
                fence,
                payload,
            }) => {
                let job = PairedJob::grant(
                    &self.task,
                    self.token.clone(),
                    attempt,
                    fence,
                    &payload,
                    sent,
                )?;
                if took_over {
                    log::info!("{}: taking over as attempt {attempt}", self.task.label());
                    return Ok(Some(PairedOutcome::TookOver(job)));
                }
                return Ok(Some(PairedOutcome::Won(job)));
            }
            Ok(Joined::Done { attempt }) => return Ok(Some(PairedOutcome::DoneByPeer { attempt })),
            Ok(Joined::Failed { attempts, reason }) => {
                return Ok(Some(PairedOutcome::Failed { attempts, reason }))
            }
            Ok(Joined::Wait { left }) => left.map_or(recheck, |l| (l + LAPSE_MARGIN).min(recheck)),
            Err(e) if e.is_unavailable() => {
                // Our own node cut off (and peers to tell us so): stop
                // rather than take over blind later. Without peers it is a
                // Redis outage to wait out.
                if let Some(state) = cut_off(&swarm) {
                    return Err(self.partitioned(state, Some(&e)));
                }
                log::debug!("{}: join failed ({e}); standing by", self.task.label());
                recheck
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let mut next = now.checked_add(nap).unwrap_or(now);
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                return Err(Error::Timeout {
                    what: self.task.label(),
                    waited: self.task.opts.wait,
                });
            }
            next = next.min(deadline);
        }
        self.next_check = next;
        Ok(None)
    }

    /// Blocks until an event (a report, a reconnect) or the next check.
    pub(super) fn sleep(&mut self) {
        let left = self.next_check.saturating_duration_since(Instant::now());
        match self.sub.recv_timeout(left) {
            Ok(SubEvent::Message(_) | SubEvent::Reconnected) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.closed = true,
        }
    }

    /// The events the waiting thread selects on.
    pub(super) fn events(&self) -> &Receiver<SubEvent> {
        self.sub.receiver()
    }

    /// When the next join is due.
    pub(super) fn next_check(&self) -> Instant {
        self.next_check
    }

    /// An event arrived (the waiting thread's form of [`Standby::sleep`]):
    /// consume what is queued and make the next join due now.
    pub(super) fn woken(&mut self) {
        loop {
            match self.sub.receiver().try_recv() {
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.next_check = Instant::now();
    }

    fn partitioned(&self, state: PartitionState, cause: Option<&Error>) -> Error {
        let cause = cause.map(|e| format!(": {e}")).unwrap_or_default();
        Error::Partitioned(format!(
            "{} ({state:?}): stopped standing by instead of taking over blind{cause}",
            self.task.label()
        ))
    }
}

/// This node's partition state if it is cut off from Redis *and* has
/// peers that could have vouched for it; with no peers known a missed
/// beat is a Redis outage to wait out.
fn cut_off(swarm: &Runtime) -> Option<PartitionState> {
    let state = swarm.partition_state();
    (matches!(state, PartitionState::Partitioned { .. }) && !swarm.known_peers().is_empty())
        .then_some(state)
}
