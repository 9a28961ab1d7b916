//! The Rust side of the claim protocol (`queue_step`, `queue_unclaim`): one call each, their arguments by name and their replies
//! decoded and checked. The worker decides when to call them.

use std::time::{Duration, Instant};

use redis::Value;

use crate::error::{Error, Result};
use crate::swarm::queue::{queue_invoke, Queue, QUEUE_STEP, QUEUE_UNCLAIM};
use crate::swarm::task::saturating_millis;
use crate::util::millis;

/// Claim tokens are remembered in Redis for this many leases, so a claim
/// request held up by the network that long still finds its token.
const CLAIM_TOKEN_LEASES: u32 = 3;

/// How long the claim token is remembered in Redis (ms).
pub(crate) fn token_ttl_ms(lease: Duration) -> u64 {
    saturating_millis(lease.saturating_mul(CLAIM_TOKEN_LEASES)).max(1)
}

/// A task the step script handed to this worker.
pub(crate) struct ClaimedTask {
    pub(crate) id: String,
    pub(crate) fence: u64,
    pub(crate) attempt: u32,
    pub(crate) timeout: Option<Duration>,
    /// The payload, or why it is unusable.
    pub(crate) data: std::result::Result<serde_json::Value, String>,
    pub(crate) sent: Instant,
}

/// An outcome a handler thread reported, waiting to be settled in Redis.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) id: String,
    pub(crate) fence: u64,
    pub(crate) attempt: u32,
    /// `ok`, `failed`, `cancelled`, `handback` or `corrupt`.
    pub(crate) how: &'static str,
    /// The result (ok) or the error text.
    pub(crate) text: String,
    /// Backoff jitter, chosen once so a retried report says the same.
    jitter: f64,
}

impl Report {
    pub(crate) fn new(
        id: &str,
        fence: u64,
        attempt: u32,
        how: &'static str,
        text: String,
    ) -> Report {
        Report {
            id: id.to_string(),
            fence,
            attempt,
            how,
            text,
            jitter: jitter(),
        }
    }
}

/// What the step script answered.
pub(crate) struct Stepped {
    /// One per report, in order.
    pub(crate) finishes: Vec<FinishReply>,
    pub(crate) grants: Vec<ClaimedTask>,
    /// Until the earliest delayed task is due (when fewer than wanted were
    /// claimed).
    pub(crate) next_delayed: Option<Duration>,
    /// Until the earliest running lease of the queue ends (likewise).
    pub(crate) next_lease: Option<Duration>,
    /// The token belonged to an earlier claim that is over: claim with a
    /// new one.
    pub(crate) token_spent: bool,
}

/// How many expired leases each step re-queues at most.
const STEP_REAP_BATCH: usize = 20;

/// One round trip: settles `reports`, re-queues expired leases, and claims
/// up to `want` tasks under `token` (the same token after a lost reply
/// returns the same claims; with `want` 0 the token is not used).
pub(crate) fn step(
    q: &Queue,
    reports: &[Report],
    want: usize,
    lease: Duration,
    token: &str,
) -> Result<Stepped> {
    let mut conn = q.swarm.conn()?;
    let sent = Instant::now();
    let mut inv = QUEUE_STEP.prepare();
    q.queue_keys(&mut inv)
        .key(q.keys.claim(token))
        .arg(q.keys.task_prefix())
        .arg(q.swarm.node_id())
        .arg(millis(lease))
        .arg(&q.keys.events)
        .arg(token)
        .arg(token_ttl_ms(lease))
        .arg(want)
        .arg(q.keep_ended)
        .arg(millis(q.keep_ended_for))
        .arg(STEP_REAP_BATCH)
        .arg(reports.len());
    for r in reports {
        inv.arg(&r.id)
            .arg(r.fence)
            .arg(r.how)
            .arg(&r.text)
            .arg(format!("{:.6}", r.jitter));
    }
    let reply: Vec<Value> = queue_invoke(&inv, &mut *conn)?;
    drop(conn);
    decode_step(q, reports.len(), reply, sent)
}

fn decode_step(q: &Queue, nreports: usize, reply: Vec<Value>, sent: Instant) -> Result<Stepped> {
    let corrupt = |why: String| Error::corrupt(&q.keys.running, format!("step reply: {why}"));
    let mut it = reply.into_iter();
    let finishes = match it.next() {
        Some(Value::Array(items)) => items,
        Some(Value::Nil) | None if nreports == 0 => Vec::new(),
        other => return Err(corrupt(format!("finishes: {other:?}"))),
    };
    if finishes.len() != nreports {
        return Err(corrupt(format!(
            "{} answers to {nreports} reports",
            finishes.len()
        )));
    }
    let finishes = finishes
        .iter()
        .map(|f| decode_finish(f).ok_or_else(|| corrupt(format!("finish: {f:?}"))))
        .collect::<Result<Vec<_>>>()?;
    let grants = match it.next() {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let grants = grants
        .iter()
        .map(|g| decode_grant(q, g, sent).map_err(|e| corrupt(format!("grant: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let rest: Vec<Option<i64>> = it
        .map(|v| redis::from_redis_value_ref::<i64>(&v).ok())
        .collect();
    let at = |i: usize| rest.get(i).copied().flatten();
    let millis_at = |i: usize| {
        at(i)
            .and_then(|n| u64::try_from(n).ok())
            .map(Duration::from_millis)
    };
    let failed = at(3).unwrap_or(0);
    if failed > 0 {
        log::warn!(
            "queue `{}`: {failed} task(s) with unusable records moved to the failed set",
            q.name
        );
    }
    Ok(Stepped {
        finishes,
        grants,
        next_delayed: millis_at(0),
        next_lease: millis_at(1),
        token_spent: at(2).is_some_and(|n| n > 0),
    })
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Int(n) => Some(n.to_string()),
        Value::Nil => None,
        v => redis::from_redis_value_ref::<String>(v).ok(),
    }
}

fn decode_finish(v: &Value) -> Option<FinishReply> {
    let Value::Array(items) = v else { return None };
    let applied = redis::from_redis_value_ref::<i64>(items.first()?).ok()?;
    let what = value_text(items.get(1)?)?;
    Some(if applied == 1 {
        FinishReply::Applied {
            event: what,
            error: items.get(2).and_then(value_text).unwrap_or_default(),
        }
    } else {
        FinishReply::Stale(what)
    })
}

fn decode_grant(q: &Queue, v: &Value, sent: Instant) -> std::result::Result<ClaimedTask, String> {
    let Value::Array(items) = v else {
        return Err(format!("not an array: {v:?}"));
    };
    let text = |i: usize, what: &str| -> std::result::Result<String, String> {
        items
            .get(i)
            .and_then(value_text)
            .ok_or_else(|| format!("missing {what}"))
    };
    let number = |i: usize, what: &str| -> std::result::Result<u64, String> {
        text(i, what)?
            .parse::<u64>()
            .map_err(|e| format!("{what}: {e}"))
    };
    let id = text(0, "id")?;
    let fence = number(1, "fence")?;
    let attempt = u32::try_from(number(2, "attempts")?).map_err(|e| format!("attempts: {e}"))?;
    let timeout_ms = number(4, "timeout")?;
    let data = text(5, "data").and_then(|d| serde_json::from_str(&d).map_err(|e| e.to_string()));
    Ok(ClaimedTask {
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
    })
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
