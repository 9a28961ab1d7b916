//! Shared integration-test support: a throwaway `redis-server` per test
//! ([`RedisServer`]), a throwaway Redis Cluster ([`RedisCluster`]), the
//! feature suites' backend chooser ([`TestRedis`]: a server per test, or
//! with `REDSWARM_TEST_BACKEND=cluster` one shared cluster, or with
//! `REDSWARM_TEST_BACKEND=sentinel` one shared Sentinel set-up), the
//! watchdog that cleans up after the shared ones ([`Watchdog`]), a tiny
//! in-process TCP fault proxy ([`FaultProxy`]) and small helpers. Every
//! integration test file includes it with `mod support;` and uses only
//! part of it.
#![allow(dead_code)]

mod backend;
mod fault_proxy;
mod redis_cluster;
mod redis_server;
mod sentinel;
mod tls_pki;
mod watchdog;

#[allow(unused_imports)]
pub use backend::{
    backend_kind, cluster_backend, sentinel_backend, BackendKind, Target, TestConn, TestRedis,
    BACKEND_VAR,
};
#[allow(unused_imports)]
pub use fault_proxy::FaultProxy;
#[allow(unused_imports)]
pub use redis_cluster::RedisCluster;
#[allow(unused_imports)]
pub use redis_server::{Builder as RedisServerBuilder, RedisServer, TlsFiles};
#[allow(unused_imports)]
pub use sentinel::SentinelSet;
#[allow(unused_imports)]
pub use tls_pki::TestPki;
#[allow(unused_imports)]
pub use watchdog::Watchdog;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An example binary of this crate: `target/<profile>/examples/<name>`,
/// built by `cargo test` (which builds the examples before the tests).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example binary {} not built (run through `cargo test`)",
        path.display()
    );
    path
}

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

/// A command that runs this test binary again with only the test `role`, so
/// a test can kill or stop a second process (the role test does nothing
/// unless the parent sets the variables it reads). Output is discarded
/// unless the caller sets `stdout` again.
pub fn child_role(role: &str) -> std::process::Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", role, "--nocapture", "--test-threads=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// How many clients of `server` are subscribed to `channel` (`PUBSUB
/// NUMSUB`), asked again after a failed query (CI saw an EINTR in such a
/// check).
pub fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let ask = || {
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query::<(String, i64)>(&mut server.conn())
    };
    let (_, n) = ask().or_else(|_| ask()).unwrap();
    n
}
