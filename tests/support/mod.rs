//! Shared integration-test support: a throwaway `redis-server` per test
//! ([`RedisServer`]), a tiny in-process TCP fault proxy ([`FaultProxy`]) and
//! small helpers. Every integration test file includes it with
//! `mod support;` and uses only part of it.
#![allow(dead_code)]

mod fault_proxy;
mod redis_server;

#[allow(unused_imports)]
pub use fault_proxy::FaultProxy;
#[allow(unused_imports)]
pub use redis_server::{Builder as RedisServerBuilder, RedisServer};

use std::time::{Duration, Instant};

/// Calls `f` about every 10 ms until it returns true (→ true) or `deadline`
/// has passed (→ false). `f` is always called at least once, and once more
/// at the deadline.
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(10)));
    }
}

/// Test logging through `env_logger` (`RUST_LOG=debug cargo test`); safe to
/// call any number of times from any test.
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}
