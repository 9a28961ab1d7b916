//! Shared test support: a throwaway `redis-server` per test and a tiny
//! in-process TCP fault proxy. Included by every integration test file with
//! `mod support;`; each file uses only part of it.
#![allow(dead_code)]

mod fault_proxy;
mod redis_server;

#[allow(unused_imports)]
pub use fault_proxy::FaultProxy;
#[allow(unused_imports)]
pub use redis_server::RedisServer;

use std::time::{Duration, Instant};

/// Calls `f` every 10 ms until it returns true or `deadline` passes.
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Logging for tests (`RUST_LOG=debug cargo test`); safe to call often.
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}
