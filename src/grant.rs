//! What every fenced grant shares — locks, semaphore permits, fan-out
//! leadership, paired tasks, task leases: TTL checks, retrying a grant whose
//! reply was lost, dating a grant's lease, and the waiting loop woken by
//! release messages. Features use it; it uses only the runtime core.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::health::PartitionState;
use crate::runtime::Runtime;
use crate::subscriber::SubEvent;
use crate::util::{check_ttl, Deadline};

/// Checks a lease TTL: not zero, at most [`crate::MAX_TTL`], and long
/// enough to be auto-renewed.
pub(crate) fn validate_ttl(swarm: &Runtime, ttl: Duration, auto_extend: bool) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::invalid("ttl", "must be at least 1 ms"));
    }
    check_ttl("ttl", ttl)?;
    let min = swarm.config().min_renewable_ttl();
    if auto_extend && ttl < min {
        return Err(Error::invalid(
            "ttl",
            format!(
                "{ttl:?} is below {min:?} (3 heartbeat intervals); an auto-extended lease could expire between two renewals"
            ),
        ));
    }
    Ok(())
}

/// Runs one grant call; if its reply was lost (Redis unreachable, a timeout
/// or a dropped connection: the script may have run), runs it once more. The
/// grant scripts are idempotent for their token, so the second call returns
/// the grant the first one made, if any.
pub(crate) fn once_more_if_lost<T>(mut call: impl FnMut() -> Result<T>) -> Result<T> {
    match call() {
        Err(e) if e.is_unavailable() => {
            log::debug!("grant call failed ({e}); asking once more with the same token");
            call()
        }
        other => other,
    }
}

/// The instant to judge a grant's lease from: a call sent at `sent` found
/// the grant with `left_ms` of its `ttl` left (all of it when new; less when
/// a retry found the grant its lost first call made). Redis's expiry is no
/// earlier than `sent + left`, so the lease counts as started `ttl - left`
/// before `sent`.
pub(crate) fn grant_start(sent: Instant, ttl: Duration, left_ms: i64) -> Instant {
    let left = u64::try_from(left_ms)
        .map(Duration::from_millis)
        .unwrap_or(ttl)
        .min(ttl);
    // Only fails within `ttl` of boot, where the monotonic clock starts.
    sent.checked_sub(ttl - left).unwrap_or(sent)
}

/// The waiting loop shared by locks and semaphores: subscribe to the
/// release `channel` first (confirmed by Redis, so a release between an
/// attempt and the sleep cannot be missed), then alternate `attempt` and
/// sleeping until a release message, a reconnect, the holder's remaining
/// TTL (what `attempt` returns when busy) or `wait_recheck`. Redis blips
/// count as "busy" until `wait` runs out ([`Error::Timeout`]), unless this
/// node is partitioned ([`Error::Partitioned`]) by the verdict of its
/// peers. A node with no peers configured has nobody to ask: a missed beat
/// is a Redis outage to wait out, not a partition.
pub(crate) fn wait_for_grant<T>(
    swarm: &Runtime,
    channel: &str,
    wait: Duration,
    me: Option<&str>,
    what: impl Fn() -> String,
    mut attempt: impl FnMut() -> Result<std::result::Result<T, Option<Duration>>>,
) -> Result<T> {
    // Saturating: a wait of Duration::MAX waits forever.
    let deadline = Deadline::after(wait);
    let sub = swarm.subscribe(channel)?;
    loop {
        let holder_ttl = match attempt() {
            Ok(Ok(granted)) => return Ok(granted),
            Ok(Err(ttl)) => ttl,
            Err(e) if e.is_unavailable() => {
                // Cut off from Redis and from enough peers: waiting longer
                // cannot help; say so instead of timing out later.
                if let Some(state) = partitioned(swarm) {
                    return Err(Error::Partitioned(format!("{} ({state:?}): {e}", what())));
                }
                None
            }
            Err(e) => return Err(e),
        };
        if deadline.has_passed() {
            return Err(Error::Timeout {
                what: what(),
                waited: wait,
            });
        }
        let mut nap = deadline.nap(swarm.config().wait_recheck());
        if let Some(t) = holder_ttl {
            nap = nap.min(t.max(Duration::from_millis(1)));
        }
        wait_for_release(&sub, nap, me);
    }
}

/// The partition verdict a waiter acts on: [`PartitionState::Partitioned`]
/// only counts when this node has peers to judge by (a peer listener
/// configured, or peers known). Without any, the heartbeat's verdict after a
/// missed beat says nothing about a partition; the outage is waited out.
fn partitioned(swarm: &Runtime) -> Option<PartitionState> {
    let state = swarm.partition_state();
    if state.may_work() {
        return None;
    }
    let has_peers = swarm.config().peer_listen().is_some() || !swarm.known_peers().is_empty();
    has_peers.then_some(state)
}

/// Sleeps until a release message that concerns us, a reconnect, or `nap`.
/// In fair mode a release naming another waiter is not for us.
pub(crate) fn wait_for_release(sub: &crate::Subscription, nap: Duration, me: Option<&str>) {
    let until = Deadline::after(nap);
    loop {
        let left = until.nap(nap);
        match sub.recv_timeout(left) {
            Ok(SubEvent::Message(m)) => match (me, m.payload_str()) {
                (Some(me), Some(head)) if !head.is_empty() && head != me => continue,
                _ => return,
            },
            Ok(SubEvent::Reconnected) => return,
            Err(_) => return,
        }
    }
}
