//! Small helpers with no better home: random ids, host facts, time.
//!
//! Time arithmetic on caller input never panics here: a wait of
//! `Duration::MAX` becomes a [`Deadline`] that never passes, conversions to
//! milliseconds saturate instead of wrapping, and TTLs sent to Redis are
//! checked against [`MAX_TTL`] first.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// A random 128-bit id as 32 lowercase hex digits (owner tokens, node ids,
/// permit ids, ping nonces), from the operating system's random source.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        log::error!("no OS randomness ({e}); ids fall back to time, pid and a counter");
        bytes = fallback_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh owner token (lock) or permit id (semaphore) of node `node`:
/// `<node>:<random hex>`. Scripts only compare tokens, so the prefix costs
/// nothing there; it lets an operator see which node holds what (node ids
/// contain no `:`, see [`crate::keys::validate_node_id`]).
pub(crate) fn owner_token(node: &str) -> String {
    format!("{node}:{}", random_id())
}

/// The node that made `token` with [`owner_token`], if it has that form.
pub(crate) fn token_node(token: &str) -> Option<&str> {
    token
        .split_once(':')
        .map(|(node, _)| node)
        .filter(|n| !n.is_empty())
}

/// Unique (not unpredictable) bytes for a system without a random source:
/// the time, the pid and a counter. (Not `RandomState`: std seeds it from
/// the same source and gives up when that fails.)
fn fallback_bytes() -> [u8; 16] {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&nanos.to_be_bytes());
    out[8..12].copy_from_slice(&std::process::id().to_be_bytes());
    out[12..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    out
}

/// This host's name, best effort.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A duration in whole milliseconds, at least 1 (Redis rejects PX 0);
/// saturates at `u64::MAX` instead of wrapping (2^64 ms + 5 ms must not
/// become 5 ms). TTLs are checked with [`check_ttl`] before they get here.
pub(crate) fn millis(d: Duration) -> u64 {
    whole_millis(d).max(1)
}

/// A duration in whole milliseconds (0 stays 0), saturating at `u64::MAX`.
pub(crate) fn whole_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The longest TTL, lease, delay or timeout redswarm sends to Redis:
/// 2^40 ms (about 34.8 years).
///
/// Longer values are refused with [`Error::InvalidInput`] naming the
/// argument rather than silently shortened. The bound keeps three things
/// exact: `now_ms + ttl` computed by the Lua scripts (doubles, exact below
/// 2^53), the `PX`/`PEXPIRE` argument Redis accepts, and the local lease
/// deadline (`Instant + ttl`, which on some platforms counts nanoseconds
/// in a `u64`).
///
/// ```
/// assert_eq!(redswarm::MAX_TTL, std::time::Duration::from_millis(1 << 40));
/// ```
pub const MAX_TTL: Duration = Duration::from_millis(1 << 40);

/// Checks that `ttl` (a TTL, lease, delay or timeout that goes to Redis as
/// milliseconds) is at most [`MAX_TTL`]; `what` names the argument.
pub(crate) fn check_ttl(what: &'static str, ttl: Duration) -> Result<()> {
    if ttl > MAX_TTL {
        return Err(Error::invalid(
            what,
            format!(
                "{ttl:?} is longer than the limit of {} ms (redswarm::MAX_TTL)",
                MAX_TTL.as_millis()
            ),
        ));
    }
    Ok(())
}

/// `now + d`, or `None` when that is past what `Instant` can represent
/// (for example `d == Duration::MAX`): "never".
pub(crate) fn deadline_after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The end of a wait on the monotonic clock, or never: built from a
/// caller's wait without overflowing, so `Duration::MAX` waits forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `wait` from now (never, if that cannot be represented).
    pub(crate) fn after(wait: Duration) -> Deadline {
        Deadline(deadline_after(Instant::now(), wait))
    }

    /// The instant, or `None` for never.
    pub(crate) fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Whether the deadline has passed (never, for an endless wait).
    pub(crate) fn has_passed(self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }

    /// Time left (zero once passed), or `None` for never.
    pub(crate) fn remaining(self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// How long to sleep before looking again: the time left, at most `cap`.
    pub(crate) fn nap(self, cap: Duration) -> Duration {
        self.remaining().map_or(cap, |left| left.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturate_instead_of_wrapping() {
        // 2^64 ms + 5 ms used to become 5 ms.
        let huge = Duration::from_millis(u64::MAX) + Duration::from_millis(5);
        assert_eq!(millis(huge), u64::MAX);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(whole_millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(whole_millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(3)), 3000);
    }

    #[test]
    fn ttls_above_the_limit_are_refused_by_name() {
        assert!(check_ttl("ttl", MAX_TTL).is_ok());
        assert!(check_ttl("ttl", Duration::from_secs(30)).is_ok());
        for bad in [
            MAX_TTL + Duration::from_millis(1),
            Duration::from_millis(u64::MAX) + Duration::from_millis(5),
            Duration::MAX,
        ] {
            match check_ttl("lease", bad) {
                Err(Error::InvalidInput { what, .. }) => assert_eq!(what, "lease"),
                other => panic!("{bad:?}: expected InvalidInput, got {other:?}"),
            }
        }
        // The bound keeps Lua's `now_ms + ttl` exact (doubles: below 2^53).
        let now_ms: u64 = 1 << 42; // year ~2109
        assert!(now_ms + whole_millis(MAX_TTL) < 1 << 53);
        // ... and the local lease deadline representable.
        assert!(Instant::now().checked_add(MAX_TTL).is_some());
    }

    #[test]
    fn endless_waits_saturate() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::MAX), None);
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            Some(now + Duration::from_secs(1))
        );
        let never = Deadline::after(Duration::MAX);
        assert!(!never.has_passed());
        assert_eq!(never.remaining(), None);
        assert_eq!(never.instant(), None);
        assert_eq!(
            never.nap(Duration::from_millis(7)),
            Duration::from_millis(7)
        );
        let soon = Deadline::after(Duration::from_secs(60));
        assert!(!soon.has_passed());
        assert!(soon.nap(Duration::from_secs(3600)) <= Duration::from_secs(60));
        assert!(soon.instant().is_some());
        let past = Deadline::after(Duration::ZERO);
        assert!(past.has_passed());
        assert_eq!(past.nap(Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn ids_are_unique_and_hex() {
        let a = super::random_id();
        let b = super::random_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        let f = super::fallback_bytes();
        assert_ne!(f, super::fallback_bytes());
    }

    #[test]
    fn owner_tokens_name_their_node() {
        let t = super::owner_token("worker-7.example");
        assert_eq!(super::token_node(&t), Some("worker-7.example"));
        assert_ne!(t, super::owner_token("worker-7.example"));
        assert_eq!(super::token_node("0123abcd"), None);
        assert_eq!(super::token_node(":x"), None);
    }
}
