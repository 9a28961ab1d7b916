//! The store layer: a pool of blocking Redis connections with timeouts that
//! are actually applied, and the facts every feature needs (config, keys,
//! node id).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::io::tcp::TcpSettings;
use redis::{ConnectionLike, IntoConnectionInfo};

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
}

impl ConnectionManager {
    /// Opens one connection outside the pool (the pub/sub thread uses this).
    pub(crate) fn open(&self) -> redis::RedisResult<redis::Connection> {
        self.open_within(self.connect_timeout)
    }

    /// Like [`ConnectionManager::open`] with a tighter connect bound.
    pub(crate) fn open_within(
        &self,
        connect_timeout: Duration,
    ) -> redis::RedisResult<redis::Connection> {
        let conn = match &self.target {
            Target::Direct(client) => client.get_connection_with_timeout(connect_timeout)?,
            Target::Sentinel(source) => source.connect(connect_timeout, self.command_timeout)?,
        };
        // get_connection_with_timeout resets the socket timeouts: set them again.
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        Ok(conn)
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = redis::Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        self.open()
    }

    fn is_valid(&self, conn: &mut redis::Connection) -> redis::RedisResult<()> {
        redis::cmd("PING").query::<()>(conn)
    }

    fn has_broken(&self, conn: &mut redis::Connection) -> bool {
        !conn.is_open()
    }
}

/// A connection borrowed from the handle's pool; it goes back to the pool
/// when dropped. Use it wherever redis-rs wants a connection (`&mut *conn`).
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
    type Target = redis::Connection;
    fn deref(&self) -> &redis::Connection {
        &self.0
    }
}

impl std::ops::DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut redis::Connection {
        &mut self.0
    }
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
        let mut probe = manager.open().map_err(|source| Error::Connect {
            url: url.clone(),
            source,
        })?;
        let info: String =
            redis::cmd("INFO")
                .arg("server")
                .query(&mut probe)
                .map_err(|source| Error::Connect {
                    url: url.clone(),
                    source,
                })?;
        check_version(&url, &info)?;

        // Seed nothing: the first caller connects (the probe proved it works).
        drop(probe);
        let pool = new_pool(&config, manager.clone());
        Ok(Arc::new(Store {
            keys: Keys::new(config.namespace.clone()),
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
    let url = match &config.sentinel {
        Some(s) => s.node_url.as_str(),
        None => config.url.as_str(),
    };
    let info = url
        .into_connection_info()
        .map_err(mask)?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
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
