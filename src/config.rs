//! Configuration: a builder, `from_url` and `from_env`, validated as a whole.
//!
//! Timing rules checked by [`ConfigBuilder::build`] (DESIGN rule 6, self-fencing):
//! - `node_ttl >= 3 * heartbeat_interval`: a node survives two missed beats.
//! - `command_timeout <= heartbeat_interval`: a hung renewal is given up on
//!   before the next beat is due, so lease loss is noticed in time.
//! - the peer ping timeout is below the heartbeat interval, so a node that
//!   lost Redis learns whether it is partitioned before its leases expire.
//!
//! Bounds checked before anything is allocated or Redis is contacted:
//! `pool_size` ≤ [`Config::MAX_POOL_SIZE`], every duration ≤
//! [`Config::MAX_DURATION`], namespace and node id in `[A-Za-z0-9._-]`
//! (see [`keys::validate_namespace`](crate::keys::validate_namespace)).
//!
//! `Debug` of [`Config`] and [`ConfigBuilder`] never shows the Redis
//! password or the peer secret.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::redis_cluster::ClusterSettings;
use crate::sentinel::SentinelSettings;
use crate::tls::{PemSource, TlsSettings};

/// Validated settings of a [`Redswarm`](crate::Redswarm) handle.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let config = redswarm::Config::builder()
///     .url("redis://127.0.0.1:6379/")
///     .namespace("myapp")
///     .pool_size(8)
///     .heartbeat_interval(Duration::from_millis(500))
///     .build()
///     ?;
/// assert_eq!(config.namespace(), "myapp");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) pool_size: u32,
    pub(crate) pool_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) node_id: Option<String>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) node_ttl: Duration,
    pub(crate) wait_recheck: Duration,
    pub(crate) subscription_linger: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) peer_listen: Option<SocketAddr>,
    pub(crate) peer_advertise: Option<String>,
    pub(crate) peer_secret: Option<String>,
    pub(crate) peer_timeout: Duration,
    pub(crate) partition_percentage: u8,
    pub(crate) tls: TlsSettings,
    pub(crate) sentinel: Option<SentinelSettings>,
    pub(crate) cluster: Option<ClusterSettings>,
}

/// Secrets are shown as `***`: the password in the URL (see
/// [`Config::masked_url`]) and the peer secret.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &mask_url(&self.url))
            .field("namespace", &self.namespace)
            .field("pool_size", &self.pool_size)
            .field("pool_timeout", &self.pool_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("node_id", &self.node_id)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("node_ttl", &self.node_ttl)
            .field("wait_recheck", &self.wait_recheck)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("peer_listen", &self.peer_listen)
            .field("peer_advertise", &self.peer_advertise)
            .field("peer_secret", &self.peer_secret.as_ref().map(|_| "***"))
            .field("peer_timeout", &self.peer_timeout)
            .field("partition_percentage", &self.partition_percentage)
            .field("tls", &self.tls)
            .field(
                "sentinel",
                &self
                    .sentinel
                    .as_ref()
                    .map(|s| (&s.master_name, &s.sentinels)),
            )
            .field("cluster", &self.cluster.as_ref().map(|c| &c.seeds))
            .finish()
    }
}

impl Config {
    /// Largest accepted `pool_size`. r2d2 reserves room for every
    /// connection up front, so an absurd size would abort the process
    /// instead of failing.
    ///
    /// ```
    /// let err = redswarm::Config::builder()
    ///     .pool_size(redswarm::Config::MAX_POOL_SIZE + 1)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("pool_size"));
    /// ```
    pub const MAX_POOL_SIZE: u32 = 1024;

    /// Longest accepted value of every duration in the config (timeouts,
    /// intervals, `node_ttl`): 24 hours. Keeps the arithmetic derived from
    /// them (`3 × heartbeat_interval`, backoff doubling, deadlines) far from
    /// overflow.
    ///
    /// ```
    /// let err = redswarm::Config::builder()
    ///     .pool_timeout(std::time::Duration::MAX)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("pool_timeout"));
    /// ```
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

    /// Starts a builder with the defaults (`redis://127.0.0.1:6379/`,
    /// namespace `redswarm`, pool of 16, heartbeat 1 s, node TTL 10 s).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = redswarm::Config::builder().build()?;
    /// assert_eq!(config.pool_size(), 16);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Defaults with the given Redis URL (`redis://`, `rediss://`,
    /// `redis+unix://`; user, password and db in the URL).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = redswarm::Config::from_url("redis://:secret@127.0.0.1:6380/2")?;
    /// assert!(redswarm::Config::from_url("http://nope").is_err());
    /// # Ok(()) }
    /// ```
    pub fn from_url(url: &str) -> Result<Config> {
        Config::builder().url(url).build()
    }

    /// Reads `REDIS_URL` (default `redis://127.0.0.1:6379/`),
    /// `REDSWARM_NAMESPACE`, `REDSWARM_POOL_SIZE`, `REDSWARM_NODE_ID`,
    /// `REDSWARM_PEER_LISTEN` (ip:port), `REDSWARM_PEER_SECRET`,
    /// `REDSWARM_PARTITION_PERCENTAGE`, and for `rediss://` URLs
    /// `REDSWARM_TLS_CA` (CA file), `REDSWARM_TLS_CERT` with
    /// `REDSWARM_TLS_KEY` (client certificate and key files) and
    /// `REDSWARM_TLS_SKIP_HOSTNAME_CHECK` (`1`/`true`); the rest are
    /// defaults.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = redswarm::Config::from_env()?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Config> {
        Config::builder_from_env()?.build()
    }

    /// Like [`Config::from_env`] but returns the builder so a program can
    /// override more settings before building.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = redswarm::Config::builder_from_env()?.pool_size(4).build()?;
    /// assert_eq!(config.pool_size(), 4);
    /// # Ok(()) }
    /// ```
    pub fn builder_from_env() -> Result<ConfigBuilder> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut b = Config::builder();
        if let Some(url) = var("REDIS_URL") {
            b = b.url(url);
        }
        if let Some(ns) = var("REDSWARM_NAMESPACE") {
            b = b.namespace(ns);
        }
        if let Some(n) = var("REDSWARM_POOL_SIZE") {
            let n = n.parse::<u32>().map_err(|e| {
                Error::config("pool_size", format!("REDSWARM_POOL_SIZE={n:?}: {e}"))
            })?;
            b = b.pool_size(n);
        }
        if let Some(id) = var("REDSWARM_NODE_ID") {
            b = b.node_id(id);
        }
        if let Some(addr) = var("REDSWARM_PEER_LISTEN") {
            let addr = addr.parse::<SocketAddr>().map_err(|e| {
                Error::config("peer_listen", format!("REDSWARM_PEER_LISTEN={addr:?}: {e}"))
            })?;
            b = b.peer_listen(addr);
        }
        if let Some(secret) = var("REDSWARM_PEER_SECRET") {
            b = b.peer_secret(secret);
        }
        if let Some(p) = var("REDSWARM_PARTITION_PERCENTAGE") {
            let p = p.parse::<u8>().map_err(|e| {
                Error::config(
                    "partition_percentage",
                    format!("REDSWARM_PARTITION_PERCENTAGE={p:?}: {e}"),
                )
            })?;
            b = b.partition_percentage(p);
        }
        if let Some(ca) = var("REDSWARM_TLS_CA") {
            b = b.tls_ca_file(ca);
        }
        match (var("REDSWARM_TLS_CERT"), var("REDSWARM_TLS_KEY")) {
            (Some(cert), Some(key)) => b = b.tls_client_cert_files(cert, key),
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::config(
                    "tls_client_cert",
                    "REDSWARM_TLS_CERT is set but REDSWARM_TLS_KEY is not",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "tls_client_cert",
                    "REDSWARM_TLS_KEY is set but REDSWARM_TLS_CERT is not",
                ))
            }
        }
        if let Some(v) = var("REDSWARM_TLS_SKIP_HOSTNAME_CHECK") {
            let on = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => {
                    return Err(Error::config(
                        "tls_skip_hostname_check",
                        format!(
                        "REDSWARM_TLS_SKIP_HOSTNAME_CHECK={v:?}: expected 1/true/yes or 0/false/no"
                    ),
                    ))
                }
            };
            b = b.tls_skip_hostname_check(on);
        }
        Ok(b)
    }

    /// The Redis URL.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert!(c.url().starts_with("redis://"));
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::from_url("redis://:hunter2@localhost/")?;
    /// assert!(!c.masked_url().contains("hunter2"));
    /// # Ok(()) }
    /// ```
    pub fn masked_url(&self) -> String {
        mask_url(&self.url)
    }

    /// The key namespace (prefix of every key and channel).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.namespace(), "redswarm");
    /// # Ok(()) }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Maximum pooled connections.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.pool_size(), 16);
    /// # Ok(()) }
    /// ```
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// Interval of the heartbeat thread (membership and lease renewal).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.heartbeat_interval(), std::time::Duration::from_secs(1));
    /// # Ok(()) }
    /// ```
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How long this node's membership lives without a heartbeat.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.node_ttl(), std::time::Duration::from_secs(10));
    /// # Ok(()) }
    /// ```
    pub fn node_ttl(&self) -> Duration {
        self.node_ttl
    }

    /// Read/write timeout of every Redis command.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert!(c.command_timeout() <= c.heartbeat_interval());
    /// # Ok(()) }
    /// ```
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Longest a blocked waiter sleeps before re-checking state on its own
    /// (pub/sub is lossy; this bounds the cost of a lost wake-up).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.wait_recheck(), std::time::Duration::from_secs(1));
    /// # Ok(()) }
    /// ```
    pub fn wait_recheck(&self) -> Duration {
        self.wait_recheck
    }

    /// How long a channel stays subscribed in Redis after its last local
    /// [`Subscription`](crate::Subscription) was dropped (default 1 s), so
    /// that subscribing again at once (a handle locking the same name in a
    /// loop) costs no SUBSCRIBE round trip.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.subscription_linger(), std::time::Duration::from_secs(1));
    /// # Ok(()) }
    /// ```
    pub fn subscription_linger(&self) -> Duration {
        self.subscription_linger
    }

    /// The smallest lease TTL that auto-renewal can keep alive safely:
    /// three heartbeat intervals.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.min_renewable_ttl(), std::time::Duration::from_secs(3));
    /// # Ok(()) }
    /// ```
    pub fn min_renewable_ttl(&self) -> Duration {
        self.heartbeat_interval * 3
    }

    /// The configured node id, if one was set (otherwise a random one is
    /// generated per handle).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().node_id("n1").build()?;
    /// assert_eq!(c.node_id(), Some("n1"));
    /// # Ok(()) }
    /// ```
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Address the peer-ping listener binds, if any.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert!(c.peer_listen().is_none());
    /// # Ok(()) }
    /// ```
    pub fn peer_listen(&self) -> Option<SocketAddr> {
        self.peer_listen
    }

    /// Minimum percentage of known peers that must answer pings for a node
    /// that lost Redis to keep working (default 60).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let c = redswarm::Config::builder().build()?;
    /// assert_eq!(c.partition_percentage(), 60);
    /// # Ok(()) }
    /// ```
    pub fn partition_percentage(&self) -> u8 {
        self.partition_percentage
    }
}

/// Builder for [`Config`]; every setter is optional.
///
/// ```
/// let err = redswarm::Config::builder().namespace("").build().unwrap_err();
/// assert!(err.to_string().contains("namespace"));
/// ```
#[derive(Clone)]
pub struct ConfigBuilder {
    c: Config,
    /// Unless set, derived from the heartbeat: min(1 s, heartbeat).
    command_timeout: Option<Duration>,
    /// Unless set, derived from the heartbeat: min(300 ms, heartbeat / 3).
    peer_timeout: Option<Duration>,
    /// Master name and sentinel addresses given to [`ConfigBuilder::sentinel`].
    sentinel: Option<(String, Vec<String>)>,
    /// Seed addresses given to [`ConfigBuilder::cluster`].
    cluster: Option<Vec<String>>,
}

/// Redacted like [`Config`]'s: no password, no peer secret.
impl std::fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("config", &self.c)
            .field("command_timeout", &self.command_timeout)
            .field("peer_timeout", &self.peer_timeout)
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            c: Config {
                url: "redis://127.0.0.1:6379/".into(),
                namespace: "redswarm".into(),
                pool_size: 16,
                pool_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                command_timeout: Duration::from_secs(1),
                node_id: None,
                heartbeat_interval: Duration::from_secs(1),
                node_ttl: Duration::from_secs(10),
                wait_recheck: Duration::from_secs(1),
                subscription_linger: Duration::from_secs(1),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_secs(2),
                peer_listen: None,
                peer_advertise: None,
                peer_secret: None,
                peer_timeout: Duration::from_millis(300),
                partition_percentage: 60,
                tls: TlsSettings::default(),
                sentinel: None,
                cluster: None,
            },
            sentinel: None,
            cluster: None,
            command_timeout: None,
            peer_timeout: None,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.c.$name = value;
            self
        }
    };
}

impl ConfigBuilder {
    /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for
    /// TLS, `redis+unix:///path`, or
    /// `redis+sentinel://[user:password@]host:port[,host:port]/master[/db]`
    /// (see [`ConfigBuilder::sentinel`]), or
    /// `redis+cluster://[user:password@]host:port[,host:port]` (see
    /// [`ConfigBuilder::cluster`])).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().url("rediss://example.com:6380/").build()?;
    /// # Ok(()) }
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.c.url = url.into();
        self
    }

    /// Namespace prefixed to every key and channel (default `redswarm`):
    /// 1 to 64 characters from `[A-Za-z0-9._-]` (no `:`, so no two
    /// namespaces can produce the same key; use `.` or `-` to structure it).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().namespace("billing").build()?;
    /// # Ok(()) }
    /// ```
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.c.namespace = ns.into();
        self
    }

    /// Fixed node id for this handle's heartbeat (default: random per
    /// handle): 1 to 128 characters from `[A-Za-z0-9._-]` (it travels in
    /// keys and in the space-separated peer wire format). Two live handles
    /// must never share one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().node_id("worker-7").build()?;
    /// # Ok(()) }
    /// ```
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.c.node_id = Some(id.into());
        self
    }

    /// Address other nodes can dial for peer pings, if it differs from
    /// `peer_listen` (for example behind NAT). `host:port`. Without it, an
    /// unspecified `peer_listen` (`0.0.0.0`, `::`) is advertised as the
    /// address of the local interface that routes to Redis, and
    /// [`Redswarm::connect`](crate::Redswarm::connect) fails with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming
    /// `peer_advertise` if there is none.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().peer_advertise("10.0.0.5:7400").build()?;
    /// # Ok(()) }
    /// ```
    pub fn peer_advertise(mut self, addr: impl Into<String>) -> Self {
        self.c.peer_advertise = Some(addr.into());
        self
    }

    /// Shared secret every peer ping must carry.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().peer_secret("s3cret").build()?;
    /// # Ok(()) }
    /// ```
    pub fn peer_secret(mut self, secret: impl Into<String>) -> Self {
        self.c.peer_secret = Some(secret.into());
        self
    }

    /// Address to listen on for peer pings (enables partition awareness).
    /// Set [`peer_secret`](ConfigBuilder::peer_secret) too when it is not
    /// a loopback address (the listener warns otherwise).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().peer_listen("127.0.0.1:0".parse()?).build()?;
    /// # Ok(()) }
    /// ```
    pub fn peer_listen(mut self, addr: SocketAddr) -> Self {
        self.c.peer_listen = Some(addr);
        self
    }

    setter!(
        /// Maximum pooled connections (default 16, at most
        /// [`Config::MAX_POOL_SIZE`]).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().pool_size(4).build()?;
        /// # Ok(()) }
        /// ```
        pool_size: u32
    );
    setter!(
        /// How long taking a connection from the pool may wait (default 5 s).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().pool_timeout(std::time::Duration::from_secs(1)).build()?;
        /// # Ok(()) }
        /// ```
        pool_timeout: Duration
    );
    setter!(
        /// Bound on TCP connect plus handshake (default 2 s).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().connect_timeout(std::time::Duration::from_secs(1)).build()?;
        /// # Ok(()) }
        /// ```
        connect_timeout: Duration
    );
    /// Read/write timeout of every command (default: 1 s, or the heartbeat
    /// interval if that is shorter; at most the heartbeat interval).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().command_timeout(std::time::Duration::from_millis(500)).build()?;
    /// # Ok(()) }
    /// ```
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = Some(d);
        self
    }
    setter!(
        /// Heartbeat period (default 1 s): membership and every auto-renewed
        /// lease are renewed once per beat.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().heartbeat_interval(std::time::Duration::from_millis(500)).build()?;
        /// # Ok(()) }
        /// ```
        heartbeat_interval: Duration
    );
    setter!(
        /// Membership lease of this node (default 10 s; at least three
        /// heartbeats).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().node_ttl(std::time::Duration::from_secs(30)).build()?;
        /// # Ok(()) }
        /// ```
        node_ttl: Duration
    );
    setter!(
        /// Fallback re-check period of blocked waiters (default 1 s).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().wait_recheck(std::time::Duration::from_millis(250)).build()?;
        /// # Ok(()) }
        /// ```
        wait_recheck: Duration
    );
    setter!(
        /// How long a channel stays subscribed in Redis after its last
        /// local subscription was dropped (default 1 s; zero unsubscribes
        /// at once). At most a few hundred channels linger; past that the
        /// oldest are unsubscribed first.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().subscription_linger(std::time::Duration::ZERO).build()?;
        /// # Ok(()) }
        /// ```
        subscription_linger: Duration
    );
    setter!(
        /// First reconnect delay of the pub/sub thread (default 50 ms).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().reconnect_min(std::time::Duration::from_millis(10)).build()?;
        /// # Ok(()) }
        /// ```
        reconnect_min: Duration
    );
    setter!(
        /// Cap of the reconnect backoff (default 2 s).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().reconnect_max(std::time::Duration::from_secs(5)).build()?;
        /// # Ok(()) }
        /// ```
        reconnect_max: Duration
    );
    /// Timeout of one peer ping (default: 300 ms, or a third of the
    /// heartbeat interval if that is shorter; below the heartbeat).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder().peer_timeout(std::time::Duration::from_millis(200)).build()?;
    /// # Ok(()) }
    /// ```
    pub fn peer_timeout(mut self, d: Duration) -> Self {
        self.peer_timeout = Some(d);
        self
    }
    setter!(
        /// Minimum % of known peers that must answer for a node without
        /// Redis to keep working (default 60, range 0..=100).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let c = redswarm::Config::builder().partition_percentage(50).build()?;
        /// # Ok(()) }
        /// ```
        partition_percentage: u8
    );

    /// Trust only the CA certificate(s) in this PEM file for `rediss://`
    /// connections (default: the system's roots, or `SSL_CERT_FILE`). The
    /// file is read when the config is built.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder()
    ///     .url("rediss://redis.internal:6380/")
    ///     .tls_ca_file("/etc/redswarm/ca.pem")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.c.tls.ca = Some(PemSource::File(path.into()));
        self
    }

    /// Like [`ConfigBuilder::tls_ca_file`] with the PEM text itself.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pem = std::fs::read("/etc/redswarm/ca.pem")?;
    /// let c = redswarm::Config::builder()
    ///     .url("rediss://redis.internal:6380/")
    ///     .tls_ca_pem(pem)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.c.tls.ca = Some(PemSource::Inline(pem.into()));
        self
    }

    /// Present this client certificate (PEM chain, leaf first) and private
    /// key (PEM, PKCS#8, PKCS#1 or SEC1) to servers that require one
    /// (`tls-auth-clients yes`). The files are read when the config is
    /// built.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder()
    ///     .url("rediss://redis.internal:6380/")
    ///     .tls_ca_file("/etc/redswarm/ca.pem")
    ///     .tls_client_cert_files("/etc/redswarm/client.crt", "/etc/redswarm/client.key")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls_client_cert_files(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.c.tls.client = Some((PemSource::File(cert.into()), PemSource::File(key.into())));
        self
    }

    /// Like [`ConfigBuilder::tls_client_cert_files`] with the PEM texts
    /// themselves (the key is never shown by `Debug`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cert = std::fs::read("/etc/redswarm/client.crt")?;
    /// let key = std::fs::read("/etc/redswarm/client.key")?;
    /// let c = redswarm::Config::builder()
    ///     .url("rediss://redis.internal:6380/")
    ///     .tls_client_cert_pem(cert, key)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.c.tls.client = Some((
            PemSource::Inline(cert.into()),
            PemSource::Inline(key.into()),
        ));
        self
    }

    /// Accept a server certificate whose names do not include the host of
    /// the URL, as long as it chains to the CA of
    /// [`ConfigBuilder::tls_ca_file`] (required with this option). For
    /// connecting by IP address or through an alias to servers whose
    /// certificates name something else; redis-rs has no way to check
    /// another name instead, so the name check is skipped, the chain check
    /// is not. Default off.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder()
    ///     .url("rediss://10.0.0.5:6380/")
    ///     .tls_ca_file("/etc/redswarm/ca.pem")
    ///     .tls_skip_hostname_check(true)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls_skip_hostname_check(mut self, skip: bool) -> Self {
        self.c.tls.skip_hostname_check = skip;
        self
    }

    /// Find the primary through Redis Sentinel: ask `sentinels`
    /// (`host:port`, port 26379 if left out) for `master_name` at every
    /// connect, so reconnects after a failover reach the new primary. The
    /// URL still gives the scheme (`rediss://` for TLS), user, password and
    /// db of the data nodes; its host and port are not used. The same as a
    /// `redis+sentinel://[user:pass@]host1:port1,host2:port2/master_name[/db]`
    /// URL.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = redswarm::Config::builder()
    ///     .url("redis://app:secret@unused/0")
    ///     .sentinel("mymaster", &["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3"])
    ///     .build()?;
    /// let same = redswarm::Config::from_url(
    ///     "redis+sentinel://app:secret@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster/0",
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn sentinel(mut self, master_name: impl Into<String>, sentinels: &[&str]) -> Self {
        self.sentinel = Some((
            master_name.into(),
            sentinels.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// Connect to a Redis Cluster (cargo feature `cluster`): `seeds` are
    /// `host:port` addresses of some of its nodes (port 6379 if left out);
    /// the rest is discovered. The URL still gives the scheme (`rediss://`
    /// for TLS), user and password; its host and port are not used. The same
    /// as a `redis+cluster://[user:pass@]host1:port1,host2:port2` URL.
    /// Commands are routed by slot, following `MOVED`/`ASK`; see the README's
    /// "Scaling out" for what each feature does on a cluster.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let built = redswarm::Config::builder()
    ///     .url("redis://app:secret@unused/")
    ///     .cluster(&["10.0.0.1:7000", "10.0.0.2:7000"])
    ///     .build();
    /// let same = redswarm::Config::from_url("redis+cluster://app:secret@10.0.0.1:7000,10.0.0.2:7000");
    /// // Without the `cluster` feature both are refused, naming the feature.
    /// assert_eq!(built.is_ok(), same.is_ok());
    /// # Ok(()) }
    /// ```
    pub fn cluster(mut self, seeds: &[&str]) -> Self {
        self.cluster = Some(seeds.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Checks every field and the timing rules, and returns the config.
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = redswarm::Config::builder()
    ///     .heartbeat_interval(Duration::from_secs(5))
    ///     .node_ttl(Duration::from_secs(6))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("node_ttl"));
    /// ```
    pub fn build(self) -> Result<Config> {
        let mut c = self.c;
        c.command_timeout = self
            .command_timeout
            .unwrap_or_else(|| c.heartbeat_interval.min(Duration::from_secs(1)));
        c.peer_timeout = self
            .peer_timeout
            .unwrap_or_else(|| (c.heartbeat_interval / 3).min(Duration::from_millis(300)));
        // Before the URL parse: without the `tls` feature redis-rs refuses
        // `rediss://` with a message that does not name redswarm's feature.
        c.tls.check(&c.url, &mask_url(&c.url))?;
        c.sentinel = match self.sentinel {
            _ if crate::sentinel::is_sentinel_url(&c.url) && self.sentinel.is_some() => {
                return Err(Error::config(
                    "sentinel",
                    "given twice: by a redis+sentinel:// URL and by ConfigBuilder::sentinel",
                ))
            }
            _ if crate::sentinel::is_sentinel_url(&c.url) => {
                Some(crate::sentinel::parse_url(&c.url)?)
            }
            Some((master_name, sentinels)) => {
                let s = SentinelSettings {
                    master_name,
                    sentinels: sentinels
                        .iter()
                        .map(|h| crate::sentinel::parse_host(h))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|why| Error::config("sentinel", why))?,
                    node_url: c.url.clone(),
                };
                s.check()?;
                Some(s)
            }
            None => None,
        };
        let cluster_url = crate::redis_cluster::is_cluster_url(&c.url);
        c.cluster = match self.cluster {
            Some(_) if cluster_url => {
                return Err(Error::config(
                    "cluster",
                    "given twice: by a redis+cluster:// URL and by ConfigBuilder::cluster",
                ))
            }
            _ if cluster_url => Some(crate::redis_cluster::parse_url(&c.url)?),
            Some(seeds) => Some(ClusterSettings::from_parts(&seeds, &c.url)?),
            None => None,
        };
        if c.cluster.is_some() {
            if c.sentinel.is_some() {
                return Err(Error::config(
                    "cluster",
                    "a Redis Cluster and Sentinel cannot be used together",
                ));
            }
            if !cfg!(feature = "cluster") {
                return Err(Error::config(
                    "cluster",
                    "Redis Cluster needs redswarm's `cluster` cargo feature",
                ));
            }
        }
        let node_url = match (&c.sentinel, &c.cluster) {
            (Some(s), _) => s.node_url.as_str(),
            (None, Some(cl)) => cl.node_url.as_str(),
            (None, None) => c.url.as_str(),
        };
        if let Err(e) = redis::Client::open(node_url) {
            return Err(Error::config("url", format!("{}: {e}", mask_url(&c.url))));
        }
        crate::keys::validate_namespace(&c.namespace)
            .map_err(|e| Error::config("namespace", e.to_string()))?;
        if let Some(id) = &c.node_id {
            crate::keys::validate_node_id(id)
                .map_err(|e| Error::config("node_id", e.to_string()))?;
        }
        if c.pool_size == 0 {
            return Err(Error::config("pool_size", "must be at least 1"));
        }
        if c.pool_size > Config::MAX_POOL_SIZE {
            return Err(Error::config(
                "pool_size",
                format!(
                    "{} is above the limit of {} (Config::MAX_POOL_SIZE)",
                    c.pool_size,
                    Config::MAX_POOL_SIZE
                ),
            ));
        }
        for (field, d) in [
            ("pool_timeout", c.pool_timeout),
            ("connect_timeout", c.connect_timeout),
            ("command_timeout", c.command_timeout),
            ("heartbeat_interval", c.heartbeat_interval),
            ("node_ttl", c.node_ttl),
            ("wait_recheck", c.wait_recheck),
            ("reconnect_min", c.reconnect_min),
            ("reconnect_max", c.reconnect_max),
            ("peer_timeout", c.peer_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(field, "must be greater than zero"));
            }
            // Before any arithmetic on them below.
            if d > Config::MAX_DURATION {
                return Err(Error::config(
                    field,
                    format!(
                        "{d:?} is above the limit of {:?} (Config::MAX_DURATION)",
                        Config::MAX_DURATION
                    ),
                ));
            }
        }
        if c.heartbeat_interval < Duration::from_millis(10) {
            return Err(Error::config(
                "heartbeat_interval",
                "must be at least 10 ms",
            ));
        }
        if c.node_ttl < c.heartbeat_interval * 3 {
            return Err(Error::config(
                "node_ttl",
                format!(
                    "{:?} is less than 3 x heartbeat_interval ({:?}); a node would expire after one late beat",
                    c.node_ttl, c.heartbeat_interval
                ),
            ));
        }
        if c.command_timeout > c.heartbeat_interval {
            return Err(Error::config(
                "command_timeout",
                format!(
                    "{:?} exceeds heartbeat_interval ({:?}); a hung renewal would hide lease loss",
                    c.command_timeout, c.heartbeat_interval
                ),
            ));
        }
        if c.reconnect_min > c.reconnect_max {
            return Err(Error::config(
                "reconnect_min",
                "must not exceed reconnect_max",
            ));
        }
        if c.partition_percentage > 100 {
            return Err(Error::config("partition_percentage", "must be 0..=100"));
        }
        if c.peer_timeout >= c.heartbeat_interval {
            return Err(Error::config(
                "peer_timeout",
                format!(
                    "{:?} must be below heartbeat_interval ({:?}) so partition detection finishes before leases expire",
                    c.peer_timeout, c.heartbeat_interval
                ),
            ));
        }
        if let Some(secret) = &c.peer_secret {
            if secret.is_empty() || secret.len() > 256 {
                return Err(Error::config("peer_secret", "must be 1..=256 bytes"));
            }
        }
        Ok(c)
    }
}

/// The URL with every secret in it replaced by `***`, for logs and errors.
///
/// Errs on the side of hiding: everything between `://` and the *last* `@`
/// is userinfo (a raw password may contain `/`, `@`, `:`, `?` or `#`, which
/// a URL parser would misread), the user name before the first `:` stays
/// visible, and a userinfo without `:` is hidden whole (it may be a
/// password). In the query, everything from a `pass=` or `password=`
/// parameter on is hidden (`redis+unix:///sock?pass=...`; a raw `&` in the
/// value must not expose the rest of it).
pub(crate) fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (userinfo, host_and_rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if let Some(info) = userinfo {
        match info.find(':') {
            Some(colon) => {
                out.push_str(&info[..colon]);
                out.push_str(":***");
            }
            None => out.push_str("***"),
        }
    }
    out.push_str(&mask_query(host_and_rest));
    out
}

/// Hides a query's password parameter and everything after it.
fn mask_query(s: &str) -> String {
    let Some(q) = s.find('?') else {
        return s.to_string();
    };
    let mut pos = q + 1;
    for param in s[q + 1..].split('&') {
        let key = param.split('=').next().unwrap_or("");
        if param.contains('=')
            && (key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password"))
        {
            return format!("{}{key}=***", &s[..pos]);
        }
        pos += param.len() + 1;
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_every_url_form() {
        let table: &[(&str, &str)] = &[
            ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
            ("redis://u:pw@h/", "redis://u:***@h/"),
            ("redis://h:1/", "redis://h:1/"),
            ("redis://h", "redis://h"),
            // A raw `/` in the password used to end the "authority".
            ("redis://:pa/ss@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:a/b/c@h/", "redis://u:***@h/"),
            ("redis://:p@ss@h/", "redis://:***@h/"),
            ("redis://u:p:w:d@h/", "redis://u:***@h/"),
            ("redis://:p%40ss%2F@h/", "redis://:***@h/"),
            ("redis://:p?x#y@h/", "redis://:***@h/"),
            ("redis://:pw@[::1]:6379/2", "redis://:***@[::1]:6379/2"),
            // A lone userinfo may be a password: hidden whole.
            ("redis://user@h/", "redis://***@h/"),
            ("redis://secretpw@h/", "redis://***@h/"),
            (
                "rediss://default:pw@example.com:6380/",
                "rediss://default:***@example.com:6380/",
            ),
            ("valkeys://u:pw@h/", "valkeys://u:***@h/"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=pw",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "redis+unix:///tmp/r.sock?pass=pw&db=1",
                "redis+unix:///tmp/r.sock?pass=***",
            ),
            (
                "redis+unix:///tmp/r.sock?pass=p&w",
                "redis+unix:///tmp/r.sock?pass=***",
            ),
            (
                "unix:///tmp/r.sock?user=u&PASSWORD=pw",
                "unix:///tmp/r.sock?user=u&PASSWORD=***",
            ),
            (
                "redis+unix:///tmp/r.sock?db=2",
                "redis+unix:///tmp/r.sock?db=2",
            ),
            ("redis://u:pw@h/0?pass=x", "redis://u:***@h/0?pass=***"),
            ("not a url :pw@h", "not a url :***@h"),
            ("", ""),
        ];
        for (url, want) in table {
            let got = mask_url(url);
            assert_eq!(&got, want, "mask_url({url:?})");
            for secret in ["pw", "pa/ss", "p@ss", "p%40ss", "secretpw", "p:w"] {
                if url.contains(secret) {
                    assert!(!got.contains(secret), "{url:?} leaks {secret:?}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn debug_hides_the_password_and_the_peer_secret() {
        let b = Config::builder()
            .url("redis://admin:hunter2/x@127.0.0.1:6379/0")
            .peer_secret("s3cret-peer");
        let built = b.clone().build();
        for text in [format!("{b:?}"), format!("{built:?}"), format!("{b:#?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("s3cret-peer"), "{text}");
        }
        let c = Config::builder()
            .url("redis://:hunter2@127.0.0.1/")
            .peer_secret("s3cret-peer")
            .build()
            .unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret-peer"),
            "{text}"
        );
        assert!(text.contains("peer_secret: Some(\"***\")"), "{text}");
        assert!(text.contains("redis://:***@127.0.0.1/"), "{text}");
    }

    #[test]
    fn bounds_are_checked_by_field_name() {
        let huge = Duration::from_millis(u64::MAX) + Duration::from_millis(5);
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder().pool_size(u32::MAX), "pool_size"),
            (
                Config::builder().pool_size(Config::MAX_POOL_SIZE + 1),
                "pool_size",
            ),
            (
                Config::builder().heartbeat_interval(Duration::MAX),
                "heartbeat_interval",
            ),
            (
                Config::builder().heartbeat_interval(huge),
                "heartbeat_interval",
            ),
            (Config::builder().node_ttl(Duration::MAX), "node_ttl"),
            (
                Config::builder().pool_timeout(Duration::MAX),
                "pool_timeout",
            ),
            (
                Config::builder().connect_timeout(Duration::MAX),
                "connect_timeout",
            ),
            (
                Config::builder().wait_recheck(Duration::MAX),
                "wait_recheck",
            ),
            (
                Config::builder().reconnect_min(Duration::MAX),
                "reconnect_min",
            ),
            (
                Config::builder().reconnect_max(Duration::MAX),
                "reconnect_max",
            ),
        ];
        for (b, field) in cases {
            match b.build() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidConfig for {field}, got {other:?}"),
            }
        }
        assert!(Config::builder()
            .pool_size(Config::MAX_POOL_SIZE)
            .build()
            .is_ok());
        assert!(Config::builder()
            .heartbeat_interval(Duration::from_secs(3600))
            .node_ttl(Config::MAX_DURATION)
            .build()
            .is_ok());
    }

    #[test]
    fn namespace_and_node_id_use_a_safe_character_set() {
        for ns in ["a:lock", "a b", "a|b", "a{b", "é", "a*", &"x".repeat(65)] {
            match Config::builder().namespace(ns).build() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "namespace", "{ns:?}"),
                other => panic!("namespace {ns:?}: expected InvalidConfig, got {other:?}"),
            }
        }
        for id in ["n 1", "a|b", "a:b", "", &"n".repeat(129)] {
            match Config::builder().node_id(id).build() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "node_id", "{id:?}"),
                other => panic!("node id {id:?}: expected InvalidConfig, got {other:?}"),
            }
        }
        assert!(Config::builder()
            .namespace("my-app.prod_2")
            .node_id("worker-7.example.com")
            .build()
            .is_ok());
    }

    #[test]
    fn rejects_each_bad_field_by_name() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder().namespace(""), "namespace"),
            (Config::builder().namespace("a{b"), "namespace"),
            (Config::builder().pool_size(0), "pool_size"),
            (
                Config::builder().command_timeout(Duration::ZERO),
                "command_timeout",
            ),
            (Config::builder().url("ftp://x"), "url"),
            (
                Config::builder().partition_percentage(101),
                "partition_percentage",
            ),
            (
                Config::builder().command_timeout(Duration::from_secs(2)),
                "command_timeout",
            ),
            (
                Config::builder().node_ttl(Duration::from_secs(2)),
                "node_ttl",
            ),
            (Config::builder().node_id(""), "node_id"),
        ];
        for (b, field) in cases {
            match b.build() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidConfig for {field}, got {other:?}"),
            }
        }
    }
}
