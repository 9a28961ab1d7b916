//! Small helpers with no better home: random ids, host facts, time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A duration in whole milliseconds, at least 1 (Redis rejects PX 0).
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
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
}
