//! The backend of the feature suites: a throwaway `redis-server` per test
//! (the default), or — with `REDSWARM_TEST_BACKEND=cluster` and the cargo
//! feature `cluster` — one 3-primary Redis Cluster shared by every test of
//! the test binary, or — with `REDSWARM_TEST_BACKEND=sentinel` — one
//! Sentinel set-up (primary, replica, three sentinels; [`SentinelSet`])
//! shared likewise, each test in its own namespace.
//!
//! The shared cluster or Sentinel set is started by the first test that
//! asks for it and lives in a `static`, so it is never dropped: its
//! processes are started under a watchdog ([`RedisCluster::start_watched`],
//! [`SentinelSet::start_watched`]) that kills them and removes their
//! directories once the test binary has exited, however it exited.

use std::time::Duration;

use redis::{ConnectionLike, RedisResult, Value};

use super::{RedisServer, SentinelSet};

/// The environment variable that selects the backend: unset or `single`
/// for a server per test, `cluster` for the shared Redis Cluster,
/// `sentinel` for the shared Sentinel set-up.
pub const BACKEND_VAR: &str = "REDSWARM_TEST_BACKEND";

/// The backends [`BACKEND_VAR`] chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// A `redis-server` per test.
    Single,
    /// One 3-primary Redis Cluster per test binary.
    Cluster,
    /// One primary + replica + three sentinels per test binary.
    Sentinel,
}

/// This run's backend, from [`BACKEND_VAR`]. Panics on an unknown value,
/// and on `cluster` when the crate is built without the `cluster` feature
/// (a cluster pass that silently ran on one server would prove nothing).
pub fn backend_kind() -> BackendKind {
    match std::env::var(BACKEND_VAR).ok().as_deref() {
        None | Some("") | Some("single") => BackendKind::Single,
        Some("sentinel") => BackendKind::Sentinel,
        #[cfg(feature = "cluster")]
        Some("cluster") => BackendKind::Cluster,
        #[cfg(not(feature = "cluster"))]
        Some("cluster") => panic!(
            "{BACKEND_VAR}=cluster needs the cargo feature `cluster` \
             (cargo test --features cli,cluster)"
        ),
        Some(other) => {
            panic!("{BACKEND_VAR}={other:?}: expected `single`, `cluster` or `sentinel`")
        }
    }
}

/// True when this run's tests use the shared Redis Cluster
/// (`REDSWARM_TEST_BACKEND=cluster`); panics like [`backend_kind`].
pub fn cluster_backend() -> bool {
    backend_kind() == BackendKind::Cluster
}

/// True when this run's tests use the shared Sentinel set-up
/// (`REDSWARM_TEST_BACKEND=sentinel`); panics like [`backend_kind`].
pub fn sentinel_backend() -> bool {
    backend_kind() == BackendKind::Sentinel
}

/// Where a feature test's Redis is: its own [`RedisServer`], or the shared
/// cluster or Sentinel set of this test binary.
pub struct TestRedis {
    backend: Backend,
}

enum Backend {
    Single(RedisServer),
    #[cfg(feature = "cluster")]
    Cluster(&'static super::RedisCluster),
    Sentinel(&'static SentinelSet),
}

fn shared_sentinel_set() -> &'static SentinelSet {
    static SET: std::sync::OnceLock<SentinelSet> = std::sync::OnceLock::new();
    SET.get_or_init(SentinelSet::start_watched)
}

#[cfg(feature = "cluster")]
fn shared_cluster() -> &'static super::RedisCluster {
    static CLUSTER: std::sync::OnceLock<super::RedisCluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| super::RedisCluster::start_watched(3))
}

impl TestRedis {
    /// A fresh `RedisServer`, or (cluster or sentinel backend) the shared
    /// cluster or Sentinel set, started on first use. Tests on a shared
    /// backend must keep to their own namespace and never assume they have
    /// the keyspace to themselves.
    pub fn start() -> TestRedis {
        let backend = match backend_kind() {
            BackendKind::Single => Backend::Single(RedisServer::start()),
            #[cfg(feature = "cluster")]
            BackendKind::Cluster => Backend::Cluster(shared_cluster()),
            #[cfg(not(feature = "cluster"))]
            BackendKind::Cluster => unreachable!("backend_kind() refuses it"),
            BackendKind::Sentinel => Backend::Sentinel(shared_sentinel_set()),
        };
        TestRedis { backend }
    }

    /// True on the cluster backend.
    pub fn is_cluster(&self) -> bool {
        match &self.backend {
            Backend::Single(_) | Backend::Sentinel(_) => false,
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => true,
        }
    }

    /// True on the sentinel backend.
    pub fn is_sentinel(&self) -> bool {
        matches!(self.backend, Backend::Sentinel(_))
    }

    /// The URL for `Config::url`: `redis://...` of the server,
    /// `redis+cluster://...` with every node a seed, or
    /// `redis+sentinel://.../mymaster` with every sentinel.
    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Single(s) => s.url(),
            #[cfg(feature = "cluster")]
            Backend::Cluster(c) => c.url(),
            Backend::Sentinel(s) => s.url(),
        }
    }

    /// A connection for inspecting or tampering with keys from the test,
    /// whatever their slot (5 s timeouts). On the cluster it is routed by
    /// key and runs pipelines whose keys share a hash tag (see
    /// [`TestConn`]); on the Sentinel set it goes to the node the
    /// sentinels name as primary. Panics if it cannot connect.
    pub fn conn(&self) -> TestConn {
        match &self.backend {
            Backend::Single(s) => TestConn(ConnInner::Single(s.conn())),
            Backend::Sentinel(s) => TestConn(ConnInner::Single(sentinel_primary_conn(s))),
            #[cfg(feature = "cluster")]
            Backend::Cluster(c) => {
                let timeout = Duration::from_secs(5);
                let client = redis::cluster::ClusterClient::builder(c.urls())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()
                    .expect("cluster client for the test cluster");
                let conn = client
                    .get_connection()
                    .unwrap_or_else(|e| panic!("connect to the test cluster {}: {e}", c.url()));
                conn.set_read_timeout(Some(timeout))
                    .expect("set read timeout");
                conn.set_write_timeout(Some(timeout))
                    .expect("set write timeout");
                TestConn(ConnInner::Cluster(Box::new(conn)))
            }
        }
    }

    /// The single server, or `None` on the cluster and the Sentinel set.
    pub fn server(&self) -> Option<&RedisServer> {
        match &self.backend {
            Backend::Single(s) => Some(s),
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => None,
            Backend::Sentinel(_) => None,
        }
    }
}

/// A plain connection (5 s timeouts) to the node the sentinels of `set`
/// currently name as primary.
fn sentinel_primary_conn(set: &SentinelSet) -> redis::Connection {
    let port = set
        .primary_port()
        .unwrap_or_else(|| panic!("no sentinel of {} names a primary", set.url()));
    let url = format!("redis://127.0.0.1:{port}/");
    let timeout = Duration::from_secs(5);
    let conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(timeout))
        .unwrap_or_else(|e| panic!("connect to the sentinels' primary {url}: {e}"));
    conn.set_read_timeout(Some(timeout))
        .expect("set read timeout");
    conn.set_write_timeout(Some(timeout))
        .expect("set write timeout");
    conn
}

/// What the suites' helpers take, so one helper serves the tests on
/// [`TestRedis`] and those that stay on their own [`RedisServer`] (they
/// kill, pause or restart it, or put a fault proxy in front of it).
pub trait Target {
    /// The URL for `Config::url`.
    fn url(&self) -> String;
    /// A connection for inspecting keys from the test.
    fn conn(&self) -> TestConn;
}

impl Target for TestRedis {
    fn url(&self) -> String {
        TestRedis::url(self)
    }
    fn conn(&self) -> TestConn {
        TestRedis::conn(self)
    }
}

impl Target for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn conn(&self) -> TestConn {
        TestConn(ConnInner::Single(RedisServer::conn(self)))
    }
}

/// A test's connection to its [`TestRedis`]: a plain connection, or a
/// routed `ClusterConnection`. Unlike the bare `ClusterConnection` it runs
/// pipelines (redis-rs's says it cannot, yet sends a pipeline whole to the
/// node of the first command's key), so a test's pipeline must keep its
/// keys on one hash tag — as redswarm's own keys of one object do.
pub struct TestConn(ConnInner);

enum ConnInner {
    Single(redis::Connection),
    #[cfg(feature = "cluster")]
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl TestConn {
    /// Sets the read timeout of the socket(s).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match &self.0 {
            ConnInner::Single(c) => c.set_read_timeout(timeout),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.set_read_timeout(timeout),
        }
    }
}

impl ConnectionLike for TestConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match &mut self.0 {
            ConnInner::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match &mut self.0 {
            ConnInner::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match &mut self.0 {
            ConnInner::Single(c) => c.req_command(cmd),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            ConnInner::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        true
    }

    fn check_connection(&mut self) -> bool {
        match &mut self.0 {
            ConnInner::Single(c) => c.check_connection(),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match &self.0 {
            ConnInner::Single(c) => c.is_open(),
            #[cfg(feature = "cluster")]
            ConnInner::Cluster(c) => c.is_open(),
        }
    }
}
