//! The Rust side of the claim protocol (`queue_claim`, `queue_unclaim`,
//! `queue_finish`): one call each, their arguments by name and their replies
//! decoded and checked. The worker decides when to call them.

use std::time::{Duration, Instant};

use redis::Value;

use crate::error::{Error, Result};
use crate::swarm::queue::{queue_invoke, Queue, QUEUE_CLAIM, QUEUE_FINISH, QUEUE_UNCLAIM};
use crate::swarm::task::saturating_millis;
use crate::util::millis;

/// Claim tokens are remembered in Redis for this many leases, so a claim
/// request held up by the network that long still finds its token.
const CLAIM_TOKEN_LEASES: u32 = 3;

/// A task the claim script handed to this worker.
pub(crate) struct ClaimedTask {
    pub(crate) id: String,
    pub(crate) fence: u64,
    pub(crate) attempt: u32,
    pub(crate) timeout: Option<Duration>,
    /// The payload, or why it is unusable.
    pub(crate) data: std::result::Result<serde_json::Value, String>,
    pub(crate) sent: Instant,
}

/// What one claim call found.
pub(crate) enum Claimed {
    Task(ClaimedTask),
    Nothing {
        next_delayed: Option<Duration>,
        next_lease: Option<Duration>,
    },
    /// The token belonged to an earlier claim that is over: claim again.
    Spent,
}

/// How long the claim token is remembered in Redis (ms).
pub(crate) fn token_ttl_ms(lease: Duration) -> u64 {
    saturating_millis(lease.saturating_mul(CLAIM_TOKEN_LEASES)).max(1)
}

/// Claims the next due task under `token` (the same token after a lost
/// reply returns the same claim).
pub(crate) fn claim(q: &Queue, lease: Duration, token: &str) -> Result<Claimed> {
    let mut conn = q.swarm.conn()?;
    let sent = Instant::now();
    let reply: Vec<Value> = queue_invoke(
        QUEUE_CLAIM
            .prepare()
            .key(&q.keys.ready)
            .key(&q.keys.delayed)
            .key(&q.keys.running)
            .key(&q.keys.marker)
            .key(q.keys.claim(token))
            .key(&q.keys.failed)
            .key(&q.keys.ended)
            .arg(q.keys.task_prefix())
            .arg(q.swarm.node_id())
            .arg(millis(lease))
            .arg(&q.keys.events)
            .arg(token)
            .arg(token_ttl_ms(lease)),
        &mut *conn,
    )?;
    let corrupt = |why: String| Error::corrupt(&q.keys.running, format!("claim reply: {why}"));
    let get = |i: usize| -> Option<&Value> { reply.get(i).filter(|v| !matches!(v, Value::Nil)) };
    let text = |i: usize, what: &str| -> Result<String> {
        let v = get(i).ok_or_else(|| corrupt(format!("missing {what}")))?;
        match v {
            Value::Int(n) => Ok(n.to_string()),
            v => redis::from_redis_value_ref::<String>(v)
                .map_err(|e| corrupt(format!("{what}: {e}"))),
        }
    };
    let count_at = |i: usize| -> Option<u64> { text(i, "count").ok()?.parse().ok() };
    let millis_at = |i: usize| count_at(i).map(Duration::from_millis);
    let failed = count_at(9).unwrap_or(0);
    if failed > 0 {
        log::warn!(
            "queue `{}`: {failed} task(s) with unusable records moved to the failed set",
            q.name
        );
    }
    if get(0).is_none() {
        if count_at(8).is_some_and(|spent| spent > 0) {
            return Ok(Claimed::Spent);
        }
        return Ok(Claimed::Nothing {
            next_delayed: millis_at(6),
            next_lease: millis_at(7),
        });
    }
    let id = text(0, "id")?;
    let fence: u64 = text(1, "fence")?
        .parse()
        .map_err(|e| corrupt(format!("fence: {e}")))?;
    let attempt: u32 = text(2, "attempts")?
        .parse()
        .map_err(|e| corrupt(format!("attempts: {e}")))?;
    let timeout_ms: u64 = text(4, "timeout")?
        .parse()
        .map_err(|e| corrupt(format!("timeout: {e}")))?;
    let data = text(5, "data")
        .and_then(|d| serde_json::from_str(&d).map_err(|e| corrupt(format!("data: {e}"))));
    Ok(Claimed::Task(ClaimedTask {
        data: data.map_err(|_| {
            format!(
                "corrupt data at `{}`: field `data` is not JSON",
                q.keys.task(&id)
            )
        }),
        id,
        fence,
        attempt,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        sent,
    }))
}

/// Hands back the claim made under `token` if it happened (its reply was
/// lost); spends the token either way.
pub(crate) fn unclaim(q: &Queue, lease: Duration, token: &str) -> Result<bool> {
    let mut conn = q.swarm.store().conn()?;
    let n: i64 = queue_invoke(
        QUEUE_UNCLAIM
            .prepare()
            .key(q.keys.claim(token))
            .key(&q.keys.running)
            .key(&q.keys.delayed)
            .key(&q.keys.marker)
            .key(&q.keys.ended)
            .arg(q.keys.task_prefix())
            .arg(token)
            .arg(token_ttl_ms(lease))
            .arg(&q.keys.events),
        &mut *conn,
    )?;
    Ok(n == 1)
}

/// What the finish script answered.
pub(crate) enum FinishReply {
    /// Applied (now or by an earlier try of the same report): the event,
    /// and the error text for a failure.
    Applied { event: String, error: String },
    /// The claim is stale: the task's current state.
    Stale(String),
}

/// A fraction in [0, 1) for backoff jitter, from the OS's random source.
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs the finish script once (fenced: a retry of the same report gets
/// the same answer).
pub(crate) fn finish(
    queue: &Queue,
    id: &str,
    fence: u64,
    how: &str,
    text: &str,
) -> Result<FinishReply> {
    let mut conn = queue.swarm.store().conn()?;
    let reply: Vec<Value> = queue_invoke(
        QUEUE_FINISH
            .prepare()
            .key(queue.keys.task(id))
            .key(&queue.keys.running)
            .key(&queue.keys.ended)
            .key(&queue.keys.failed)
            .key(&queue.keys.delayed)
            .key(&queue.keys.marker)
            .arg(id)
            .arg(fence)
            .arg(how)
            .arg(text)
            .arg(&queue.keys.events)
            .arg(queue.keep_ended)
            .arg(millis(queue.keep_ended_for))
            .arg(queue.keys.task_prefix())
            .arg(format!("{:.6}", jitter())),
        &mut *conn,
    )?;
    let corrupt = |why: &str| Error::corrupt(queue.keys.task(id), format!("finish reply: {why}"));
    let text_at = |i: usize| -> Option<String> {
        reply
            .get(i)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    let applied = reply
        .first()
        .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
        .ok_or_else(|| corrupt("no status"))?;
    let what = text_at(1).ok_or_else(|| corrupt("no event"))?;
    Ok(if applied == 1 {
        FinishReply::Applied {
            event: what,
            error: text_at(2).unwrap_or_default(),
        }
    } else {
        FinishReply::Stale(what)
    })
}
