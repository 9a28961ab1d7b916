//! The store layer: a pool of blocking Redis connections with timeouts that
//! are actually applied, and the facts every feature needs (config, keys,
//! node id).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo};

use crate::connection::{Connection, NodeAddr};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::sentinel::SentinelSource;

/// Opens connections for the pool with a bounded connect and the
/// configured read/write timeouts (r2d2's stock manager for `redis::Client`
/// connects with no timeout at all).
#[derive(Clone, Debug)]
pub(crate) struct ConnectionManager {
    target: Target,
    connect_timeout: Duration,
    command_timeout: Duration,
}

/// What a new connection goes to.
#[derive(Clone, Debug)]
enum Target {
    /// The one server of the URL.
    Direct(Box<redis::Client>),
    /// Whichever node the sentinels name as primary at connect time.
    Sentinel(Arc<SentinelSource>),
    /// A Redis Cluster, routed by slot.
    #[cfg(feature = "cluster")]
    Cluster(Arc<crate::redis_cluster::ClusterSource>),
}

impl ConnectionManager {
    /// Opens one routed connection outside the pool.
    pub(crate) fn open(&self) -> redis::RedisResult<Connection> {
        self.open_within(self.connect_timeout)
    }

    /// Opens one routed connection outside the pool (the heartbeat uses
    /// this), within `connect_timeout`.
    pub(crate) fn open_within(&self, connect_timeout: Duration) -> redis::RedisResult<Connection> {
        #[cfg(feature = "cluster")]
        if let Target::Cluster(source) = &self.target {
            // The client's own connect timeout applies per node.
            let _ = connect_timeout;
            return source
                .connect(self.command_timeout)
                .map(Connection::cluster);
        }
        self.open_node(None, connect_timeout)
            .map(|(c, _)| Connection::single(c))
    }

    /// Opens a plain connection to one node: on a single server that
    /// server; on a cluster the primary serving `key`'s slot now, or with no
    /// key the first seed node that answers (classic pub/sub reaches every
    /// node). The second value names the node, for commands that must reach
    /// the same one later (`CLIENT UNBLOCK`).
    pub(crate) fn open_node(
        &self,
        key: Option<&str>,
        connect_timeout: Duration,
    ) -> redis::RedisResult<(redis::Connection, NodeAddr)> {
        let (conn, node) = match &self.target {
            Target::Direct(client) => (
                client.get_connection_with_timeout(connect_timeout)?,
                NodeAddr::default(),
            ),
            Target::Sentinel(source) => (
                source.connect(connect_timeout, self.command_timeout)?,
                NodeAddr::default(),
            ),
            #[cfg(feature = "cluster")]
            Target::Cluster(source) => {
                return match key {
                    Some(key) => {
                        source.open_for_key(key.as_bytes(), connect_timeout, self.command_timeout)
                    }
                    None => source.open_any(connect_timeout, self.command_timeout),
                }
            }
        };
        let _ = key;
        // get_connection_with_timeout resets the socket timeouts: set them again.
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        Ok((conn, node))
    }

    /// Every primary of a cluster (`SCAN` must visit each); an empty list
    /// on a single server.
    pub(crate) fn primaries(&self) -> redis::RedisResult<Vec<NodeAddr>> {
        match &self.target {
            #[cfg(feature = "cluster")]
            Target::Cluster(source) => source.primaries(self.connect_timeout, self.command_timeout),
            _ => Ok(Vec::new()),
        }
    }

    /// True when connections go to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        match &self.target {
            #[cfg(feature = "cluster")]
            Target::Cluster(_) => true,
            _ => false,
        }
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> redis::RedisResult<Connection> {
        self.open_within(self.connect_timeout)
    }

    fn is_valid(&self, conn: &mut Connection) -> redis::RedisResult<()> {
        redis::cmd("PING").query::<()>(conn)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        !conn.is_open()
    }
}

/// A connection borrowed from the handle's pool; it goes back to the pool
/// when dropped. Use it wherever redis-rs wants a connection (`&mut *conn`).
/// It derefs to [`Connection`], a single server's or a Redis Cluster's.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let mut conn: redswarm::PooledConnection = swarm.connection()?;
/// let n: i64 = redis::cmd("DBSIZE").query(&mut *conn)?;
/// # Ok(()) }
/// ```
pub struct PooledConnection(r2d2::PooledConnection<ConnectionManager>);

impl std::ops::Deref for PooledConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

/// `template` (scheme, credentials, db, TLS and TCP settings) with
/// `host:port` as its address.
pub(crate) fn info_at(template: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let mut addr = template.addr().clone();
    match &mut addr {
        ConnectionAddr::Tcp(h, p) => {
            *h = host.to_string();
            *p = port;
        }
        ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            *h = host.to_string();
            *p = port;
        }
        // Templates come from redis(s)+sentinel/cluster URLs: always TCP.
        _ => {}
    }
    template.clone().set_addr(addr)
}

/// What every component shares: config, key names, node id and the pool.
pub(crate) struct Store {
    pub(crate) config: Config,
    pub(crate) keys: Keys,
    pub(crate) node_id: String,
    /// Opens connections outside the pool, for the threads that must not
    /// wait behind pool users (pub/sub, heartbeat).
    pub(crate) dedicated: ConnectionManager,
    pool: RwLock<r2d2::Pool<ConnectionManager>>,
}

impl Store {
    /// Builds the client and pool, and checks that Redis answers and is new
    /// enough before anything else starts (fail fast, clear error).
    pub(crate) fn open(config: Config, node_id: String) -> Result<Arc<Store>> {
        let url = config.masked_url();
        let manager = ConnectionManager {
            target: make_target(&config)?,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
        };
        let mut probe = manager
            .open_within(config.connect_timeout)
            .map_err(|source| Error::Connect {
                url: url.clone(),
                source,
            })?;
        let keys = Keys::new(config.namespace.clone());
        // On a cluster: the node of the membership key (any would do; a
        // routed INFO would ask every node and merge the replies).
        let info: String = probe
            .query_at_key(&keys.nodes(), redis::cmd("INFO").arg("server"))
            .map_err(|source| Error::Connect {
                url: url.clone(),
                source,
            })?;
        check_version(&url, &info)?;

        // Seed nothing: the first caller connects (the probe proved it works).
        drop(probe);
        let pool = new_pool(&config, manager.clone());
        Ok(Arc::new(Store {
            keys,
            node_id,
            dedicated: manager,
            pool: RwLock::new(pool),
            config,
        }))
    }

    /// Replaces the pool with a fresh one. Called when Redis comes back
    /// after an outage: every idle connection of the old pool is dead (the
    /// server restarted or dropped it), and handing them out would fail each
    /// caller once. Connections checked out of the old pool finish their
    /// work and are closed on return.
    pub(crate) fn renew_pool(&self) {
        let fresh = new_pool(&self.config, self.dedicated.clone());
        *self.pool.write() = fresh;
        log::info!("connection pool renewed after Redis came back");
    }

    /// `PUBLISH`es `payload` on `channel`. On a cluster classic pub/sub
    /// reaches every node from any node: it goes to the node of the
    /// channel's slot, and when that node cannot be reached, to the first
    /// other primary that answers.
    pub(crate) fn publish(&self, channel: &str, payload: &[u8]) -> Result<u64> {
        let mut conn = self.conn()?;
        let cmd = {
            let mut c = redis::cmd("PUBLISH");
            c.arg(channel).arg(payload);
            c
        };
        let first = conn.query_at_key(channel, &cmd);
        match first {
            Err(e)
                if self.dedicated.is_cluster()
                    && (e.is_io_error() || e.is_connection_refusal()) =>
            {
                for node in self.dedicated.primaries()? {
                    if let Ok(n) = conn.query_at_node(&node, &cmd) {
                        return Ok(n);
                    }
                }
                Err(e.into())
            }
            other => Ok(other?),
        }
    }

    /// True when node `node_id`'s membership has not lapsed (its deadline
    /// in `{ns:nodes}` is ahead of that node's clock).
    pub(crate) fn node_is_live(&self, node_id: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let nodes = self.keys.nodes();
        let (deadline, (secs, micros)): (Option<f64>, (u64, u64)) = redis::pipe()
            .zscore(&nodes, node_id)
            .cmd("TIME")
            .query(&mut *conn)?;
        let now_ms = secs.saturating_mul(1000).saturating_add(micros / 1000) as f64;
        Ok(deadline.is_some_and(|d| d > now_ms))
    }

    /// Borrows a pooled connection, waiting at most `pool_timeout`.
    pub(crate) fn conn(&self) -> Result<PooledConnection> {
        let pool = self.pool.read().clone();
        pool.get().map(PooledConnection).map_err(|e| {
            let state = pool.state();
            if state.connections >= self.config.pool_size && state.idle_connections == 0 {
                Error::PoolExhausted {
                    waited: self.config.pool_timeout,
                    size: self.config.pool_size,
                }
            } else {
                Error::Pool(e.to_string())
            }
        })
    }
}

fn new_pool(config: &Config, manager: ConnectionManager) -> r2d2::Pool<ConnectionManager> {
    r2d2::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        // No PING per checkout: broken connections are discarded on return
        // (`has_broken`) and the whole pool is renewed after an outage.
        .test_on_check_out(false)
        .connection_timeout(config.pool_timeout)
        // No reaper job: r2d2's fixed-rate reaper keeps its worker threads
        // alive for up to 30 s after the pool is dropped.
        .idle_timeout(None)
        .max_lifetime(None)
        .build_unchecked(manager)
}

fn make_target(config: &Config) -> Result<Target> {
    let mask = |e: redis::RedisError| Error::config("url", format!("{}: {e}", config.masked_url()));
    let url = match (&config.sentinel, &config.cluster) {
        (Some(s), _) => s.node_url.as_str(),
        (None, Some(c)) => c.node_url.as_str(),
        (None, None) => config.url.as_str(),
    };
    let info = url
        .into_connection_info()
        .map_err(mask)?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    #[cfg(feature = "cluster")]
    if let Some(settings) = &config.cluster {
        let source = crate::redis_cluster::ClusterSource::new(
            settings.clone(),
            info,
            config.tls.clone(),
            config.connect_timeout,
            config.command_timeout,
        )
        .map_err(mask)?;
        return Ok(Target::Cluster(Arc::new(source)));
    }
    match &config.sentinel {
        Some(s) => Ok(Target::Sentinel(Arc::new(SentinelSource::new(
            s.clone(),
            info,
            config.tls.clone(),
        )))),
        None => Ok(Target::Direct(Box::new(
            crate::tls::client(info, &config.tls).map_err(mask)?,
        ))),
    }
}

/// Parses `redis_version:` out of `INFO server` and insists on >= 6.2.
fn check_version(url: &str, info: &str) -> Result<()> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("unknown");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if (major, minor) < (6, 2) {
        return Err(Error::UnsupportedRedis {
            url: url.to_string(),
            found: version.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_gate() {
        assert!(super::check_version("u", "# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(super::check_version("u", "redis_version:6.2.0\r\n").is_ok());
        assert!(super::check_version("u", "redis_version:6.0.9\r\n").is_err());
        assert!(super::check_version("u", "nothing").is_err());
    }
}
