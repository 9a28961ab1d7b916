//! The connection type every pooled and heartbeat connection has: one
//! server (a plain URL or the primary Sentinel names) or a Redis Cluster
//! (`redis+cluster://`, feature `cluster`), behind one `ConnectionLike`.
//!
//! Why a type of our own and not `Box<dyn ConnectionLike>`: a few
//! operations are not in the trait and differ by kind — socket timeouts,
//! and sending a keyless command such as `WAIT` to the node that holds a
//! given key (on a cluster the router would pick a random node).

use std::time::Duration;

use redis::{ConnectionLike, RedisResult, Value};

/// A connection to Redis: a single server, or a Redis Cluster routed by
/// slot. It implements [`redis::ConnectionLike`], so every redis-rs command,
/// pipeline and script runs on it:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// use redis::ConnectionLike; // for is_open()
/// let mut conn = swarm.connection()?;
/// let _: () = redis::cmd("SET").arg("{app}:greeting").arg("hi").query(&mut *conn)?;
/// assert!(!conn.is_cluster() || conn.is_open());
/// # Ok(()) }
/// ```
///
/// On a cluster a command is routed by its first key (a script by
/// `KEYS[1]`), and a pipeline goes whole to the node of its first command's
/// key: keep a pipeline's keys on one hash tag.
pub struct Connection(Inner);

enum Inner {
    Single(redis::Connection),
    /// Boxed: a `ClusterConnection` is several times the size of a plain
    /// one (clippy::large_enum_variant).
    #[cfg(feature = "cluster")]
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Connection {
    pub(crate) fn single(conn: redis::Connection) -> Connection {
        Connection(Inner::Single(conn))
    }

    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(conn: redis::cluster::ClusterConnection) -> Connection {
        Connection(Inner::Cluster(Box::new(conn)))
    }

    /// True when this connection routes over a Redis Cluster.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// println!("cluster: {}", swarm.connection()?.is_cluster());
    /// # Ok(()) }
    /// ```
    pub fn is_cluster(&self) -> bool {
        match &self.0 {
            Inner::Single(_) => false,
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => true,
        }
    }

    /// Sets the read timeout of the socket(s) (on a cluster, of every node
    /// connection). `None` blocks forever: redswarm never does that.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let conn = swarm.connection()?;
    /// conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    /// # Ok(()) }
    /// ```
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match &self.0 {
            Inner::Single(c) => c.set_read_timeout(timeout),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.set_read_timeout(timeout),
        }
    }

    /// Sets the write timeout of the socket(s).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let conn = swarm.connection()?;
    /// conn.set_write_timeout(Some(std::time::Duration::from_secs(2)))?;
    /// # Ok(()) }
    /// ```
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match &self.0 {
            Inner::Single(c) => c.set_write_timeout(timeout),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.set_write_timeout(timeout),
        }
    }

    /// Runs a keyless command (`WAIT`, `TIME`, ...) on the node that serves
    /// `key` — on a single server simply on it.
    pub(crate) fn query_at_key<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> RedisResult<T> {
        match &mut self.0 {
            Inner::Single(c) => {
                let _ = key;
                cmd.query(c)
            }
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let value = c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
    }

    /// On a cluster, sends `cmds` as one pipeline split by slot: one
    /// round trip per node, to every node at once (redis-rs's cluster
    /// pipeline). Any failed command fails the whole call. `None` on a
    /// single server, where an ordinary pipeline does this.
    pub(crate) fn per_node_pipeline(
        &mut self,
        cmds: Vec<redis::Cmd>,
    ) -> Option<RedisResult<Vec<Value>>> {
        match &mut self.0 {
            Inner::Single(_) => {
                let _ = cmds;
                None
            }
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                Some(pipe.query(c))
            }
        }
    }

    /// Runs `cmd` on the node at `host:port` (a cluster node; on a single
    /// server, the server itself).
    pub(crate) fn query_at_node<T: redis::FromRedisValue>(
        &mut self,
        node: &NodeAddr,
        cmd: &redis::Cmd,
    ) -> RedisResult<T> {
        match &mut self.0 {
            Inner::Single(c) => {
                let _ = node;
                cmd.query(c)
            }
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let value = c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: node.host.clone(),
                        port: node.port,
                    }),
                )?;
                redis::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

/// A node's address as the cluster announces it (`CLUSTER SLOTS`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeAddr {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match &mut self.0 {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match &mut self.0 {
            Inner::Single(c) => c.req_command(cmd),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        // redis-rs's cluster connection says no, which makes every
        // `Pipeline::query` fail, yet its `req_packed_commands` sends a
        // pipeline whole to the node of the first command's key. redswarm's
        // pipelines keep their keys on one hash tag, so that is right.
        true
    }

    fn check_connection(&mut self) -> bool {
        match &mut self.0 {
            Inner::Single(c) => c.check_connection(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match &self.0 {
            Inner::Single(c) => c.is_open(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(c) => c.is_open(),
        }
    }
}
