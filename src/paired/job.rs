//! [`PairedJob`]: a granted attempt of a paired task, its lease and its
//! one report.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::Value;
use serde::de::DeserializeOwned;

use super::{PairedTask, Reply, PAIRED_REPORT};
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseLost, LeaseTarget};
use crate::scripts::invoke;
use crate::util::millis;

/// Longest failure reason stored (longer ones are cut at a char boundary).
const MAX_REASON_BYTES: usize = 4096;
/// Pause between report retries while Redis is unreachable.
const REPORT_RETRY: Duration = Duration::from_millis(50);

/// This participant's attempt at a paired task: do the work, then call
/// [`PairedJob::succeeded`] or [`PairedJob::failed`]. Dropping it without a
/// report reports a failure, so a backup takes over at once.
///
/// The heartbeat renews the attempt's lease while the job lives; if it
/// cannot (Redis unreachable, this node cut off), [`PairedJob::lost`] fires
/// before a backup can take over, and the work should stop. Pass
/// [`PairedJob::fencing_token`] to whatever the work writes to, so a stale
/// attempt (paused past its lease) is rejected there too.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// if let redswarm::PairedOutcome::Won(job) = swarm.paired("push:42", &"to: a@example.com".to_string())? {
///     assert_eq!(job.attempt(), 1);
///     match send(job.payload(), job.fencing_token()) {
///         Ok(()) => job.succeeded()?,
///         Err(e) => job.failed(&e)?,
///     }
/// }
/// # fn send(_: &str, _: u64) -> Result<(), String> { Ok(()) }
/// # Ok(()) }
/// ```
pub struct PairedJob<T> {
    grant: Grant,
    payload: T,
}

/// The attempt without its payload: lease, tokens and the report.
struct Grant {
    task: PairedTask,
    token: String,
    attempt: u32,
    fence: u64,
    lease: Option<Lease>,
    reported: bool,
}

impl<T> std::fmt::Debug for PairedJob<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairedJob")
            .field("task", &self.grant.task.label())
            .field("attempt", &self.grant.attempt)
            .field("fencing_token", &self.grant.fence)
            .finish()
    }
}

impl<T: DeserializeOwned> PairedJob<T> {
    /// Takes up a grant the join script gave `token`; its lease counts from
    /// `sent` (before the script call was sent).
    pub(super) fn grant(
        task: &PairedTask,
        token: String,
        attempt: u32,
        fence: u64,
        payload: &[u8],
        sent: Instant,
    ) -> Result<PairedJob<T>> {
        let target = match (&task.keys.field, &task.keys.leases) {
            (Some(field), Some(zset)) => LeaseTarget::Guarded {
                zset: zset.clone(),
                member: field.clone(),
                hash: task.keys.owner.clone(),
                field: field.clone(),
                token: token.clone(),
            },
            _ => LeaseTarget::Key {
                key: task.keys.owner.clone(),
                token: token.clone(),
            },
        };
        let lease = task.swarm().lease(
            format!("{} (attempt {attempt})", task.label()),
            target,
            task.opts.lease,
            sent,
        );
        let mut grant = Grant {
            task: task.clone(),
            token,
            attempt,
            fence,
            lease: Some(lease),
            reported: false,
        };
        match serde_json::from_slice::<T>(payload) {
            Ok(payload) => Ok(PairedJob { grant, payload }),
            Err(e) => {
                // We hold the task but cannot read it: give it back as
                // failed so a participant that can goes on.
                let why = format!("the stored payload is not the expected JSON: {e}");
                if let Err(report) = grant.report(false, &why) {
                    log::warn!("{}: could not give it back: {report}", task.label());
                }
                Err(Error::corrupt(&task.keys.record, why))
            }
        }
    }
}

impl<T> PairedJob<T> {
    /// Which attempt this is: 1 for the race's winner, more after takeovers.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// assert_eq!(job.attempt(), 1);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.grant.attempt
    }

    /// True when this attempt took over from a failed or dead one.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// assert!(!job.is_takeover());
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn is_takeover(&self) -> bool {
        self.grant.attempt > 1
    }

    /// The attempt's fencing token: greater than every earlier attempt's of
    /// the same task, also across a Redis restart without persistence.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// assert!(job.fencing_token() > 0);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.grant.fence
    }

    /// The task id (for the hash form: the field).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// assert_eq!(job.task_id(), "t");
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn task_id(&self) -> &str {
        self.grant.task.id()
    }

    /// The payload stored by the participant that created the task.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// assert_eq!(*job.payload(), 1);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// Whether this attempt may still act as the task's holder: its lease
    /// was renewed in time and nothing found it taken over.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// if !job.is_held() { /* stop: a backup may take over */ }
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.grant.lease.as_ref().is_some_and(|l| !l.is_lost())
    }

    /// A channel that receives one [`LeaseLost`] when the attempt's lease
    /// is lost (renewal refused, or not possible in time).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// let lost = job.lost();
    /// crossbeam_channel::select! {
    ///     recv(lost) -> why => log::warn!("stop: {why:?}"),
    ///     default(std::time::Duration::from_millis(10)) => {}
    /// }
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> Receiver<LeaseLost> {
        crate::lease::loss_channel(self.grant.lease.as_ref(), || self.grant.task.label())
    }

    /// Reports success: the task is finished, every backup learns it
    /// ([`PairedOutcome::DoneByPeer`](super::PairedOutcome::DoneByPeer)) at
    /// once, and the record stays for the retention. Fails with
    /// [`Error::LeaseLost`] when a backup took over meanwhile (this attempt
    /// was paused or cut off past its lease): the report is rejected by the
    /// fencing token. Retried while Redis is unreachable and the lease holds.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// job.succeeded()?;
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn succeeded(mut self) -> Result<()> {
        self.grant.report(true, "")
    }

    /// Reports failure: a standing-by backup takes over at once (or, when
    /// the attempts are used up, every participant gets
    /// [`PairedOutcome::Failed`](super::PairedOutcome::Failed)). `reason`
    /// is kept in the record (cut at 4 KiB). Errors as for
    /// [`PairedJob::succeeded`].
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// # if let redswarm::PairedOutcome::Won(job) = swarm.paired("t", &1u8)? {
    /// job.failed("the push gateway said 503")?;
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn failed(mut self, reason: &str) -> Result<()> {
        self.grant.report(false, reason)
    }
}

impl Grant {
    fn report(&mut self, ok: bool, reason: &str) -> Result<()> {
        self.reported = true;
        let reason = cut(reason, MAX_REASON_BYTES);
        loop {
            match self.try_report(ok, reason) {
                // The report script is idempotent for our token, so a
                // retry after a lost reply is safe; past the lease a
                // backup may take over, so stop there.
                Err(e)
                    if e.is_unavailable() && self.lease.as_ref().is_some_and(|l| !l.is_lost()) =>
                {
                    log::debug!("{}: report failed ({e}); retrying", self.task.label());
                    std::thread::sleep(REPORT_RETRY);
                }
                other => {
                    // Stop renewing only now: a lapse while the report was
                    // retried would hand the task to a backup.
                    self.lease.take();
                    return other;
                }
            }
        }
    }

    fn try_report(&self, ok: bool, reason: &str) -> Result<()> {
        let task = &self.task;
        // Through the store, not the handle: a job may still report while
        // (or after) its handle shuts down.
        let mut conn = task.swarm().store().conn()?;
        let mut inv = task.prepare(&PAIRED_REPORT);
        inv.arg(&self.token)
            .arg(self.fence.to_string())
            .arg(if ok { "ok" } else { "fail" })
            .arg(reason)
            .arg(millis(task.opts.retention))
            .arg(&task.keys.events);
        let reply: Vec<Value> = invoke(&inv, &mut *conn)?;
        let r = Reply::new(&task.keys.record, "report", &reply);
        match r.text(0)?.as_str() {
            "done" | "open" | "failed" => Ok(()),
            "stale" => {
                let state = r.text(3)?;
                let reason = if state == "gone" {
                    "the task's record is gone (its retention ran out)".to_string()
                } else {
                    format!(
                        "attempt {} with fencing token {} holds it now ({state}); this report was rejected",
                        r.text(1)?,
                        r.text(2)?
                    )
                };
                Err(Error::LeaseLost {
                    what: format!(
                        "{} attempt {} (fencing token {})",
                        task.label(),
                        self.attempt,
                        self.fence
                    ),
                    reason,
                })
            }
            "corrupt" => Err(Error::corrupt(r.text(1)?, r.text(2)?)),
            other => Err(r.bad(&format!("unknown tag {other:?}"))),
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.reported {
            return;
        }
        log::info!(
            "{} attempt {}: dropped without a report; counting it as failed",
            self.task.label(),
            self.attempt
        );
        if let Err(e) = self.report(false, "the job was dropped without a report") {
            log::warn!(
                "{}: could not report the dropped attempt ({e}); a backup takes over when its lease lapses",
                self.task.label()
            );
        }
    }
}

/// `s` cut to at most `max` bytes at a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_are_cut_at_char_boundaries() {
        assert_eq!(super::cut("abc", 10), "abc");
        assert_eq!(super::cut("aé", 2), "a");
        assert_eq!(super::cut("aé", 3), "aé");
    }
}
