//! [`Redswarm`], the handle every program creates first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fanout::{Fanout, FanoutError, LocalFlights};
use crate::heartbeat::{Health, Heartbeat, NodeInfo, PartitionState};
use crate::keys::Keys;
use crate::lease::{Lease, LeaseTarget};
use crate::lock::{LockGuard, LockOptions};
use crate::multilock::{MultiLockGuard, MultiLockOptions};
use crate::peer::{advertise_addr, PeerIdentity, PeerListener};
use crate::semaphore::Semaphore;
use crate::store::{PooledConnection, Store};
use crate::subscriber::{Subscriber, Subscription};
use crate::swarm::Queue;

/// A connection to one Redis deployment: pool, pub/sub thread and
/// heartbeat. Cheap to clone (`Arc` inside), `Send + Sync`; the last clone
/// to drop shuts everything down, or call [`Redswarm::shutdown`].
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let other = swarm.clone(); // same pool, same node
/// log::info!("node {} sees {} live nodes", swarm.node_id(), other.live_nodes()?.len());
/// swarm.shutdown();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redswarm {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    fanout_flights: LocalFlights,
    peers: Option<PeerListener>,
    /// Told to peers in ping answers; the runtime rewrite connects it to
    /// the heartbeat's view of Redis.
    #[allow(dead_code)]
    reaches_redis: Arc<AtomicBool>,
    subscriber: Subscriber,
    heartbeat: Heartbeat,
    down: AtomicBool,
}

impl Inner {
    fn shutdown(&self) {
        if self.down.swap(true, Ordering::SeqCst) {
            return;
        }
        log::debug!("shutting down node {}", self.store.node_id);
        self.heartbeat.stop();
        self.subscriber.stop();
        if let Some(p) = &self.peers {
            p.stop();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Redswarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redswarm")
            .field("url", &self.inner.store.config.masked_url())
            .field("namespace", &self.inner.store.config.namespace)
            .field("node_id", &self.inner.store.node_id)
            .finish()
    }
}

impl Redswarm {
    /// Connects: checks that Redis answers and is 6.2 or newer (failing
    /// fast with [`Error::Connect`] / [`Error::UnsupportedRedis`]),
    /// registers this node and starts the pub/sub and heartbeat threads.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let swarm = redswarm::Redswarm::connect(redswarm::Config::from_url("redis://127.0.0.1/")?);
    /// # Ok(()) }
    /// ```
    pub fn connect(config: Config) -> Result<Redswarm> {
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(crate::util::random_id);
        let store = Store::open(config, node_id)?;
        // Whether this node's heartbeat reaches Redis, as its peer answers
        // report it (the heartbeat keeps it current once wired to it).
        let reaches_redis = Arc::new(AtomicBool::new(true));
        let peers = match store.config.peer_listen {
            Some(bind) => Some(PeerListener::start(
                bind,
                PeerIdentity {
                    namespace: store.config.namespace.clone(),
                    node_id: store.node_id.clone(),
                    secret: store.config.peer_secret.clone(),
                },
                // Valid peers send their line at once; a bound this short
                // keeps slow clients from holding slots.
                store
                    .config
                    .peer_timeout
                    .clamp(Duration::from_millis(250), Duration::from_secs(1)),
                reaches_redis.clone(),
            )?),
            None => None,
        };
        let advertised = match &peers {
            Some(listener) => {
                let (host, port) = crate::peer::redis_endpoint(&store.config.url);
                Some(advertise_addr(
                    listener.addr(),
                    store.config.peer_advertise.as_deref(),
                    &host,
                    port,
                )?)
            }
            None => store.config.peer_advertise.clone(),
        };
        let heartbeat = Heartbeat::start(store.clone(), advertised)?;
        let subscriber = match Subscriber::start(store.clone()) {
            Ok(s) => s,
            Err(e) => {
                heartbeat.stop();
                return Err(e);
            }
        };
        log::info!(
            "redswarm node {} connected to {} (namespace `{}`)",
            store.node_id,
            store.config.masked_url(),
            store.config.namespace
        );
        Ok(Redswarm {
            inner: Arc::new(Inner {
                store,
                fanout_flights: LocalFlights::default(),
                peers,
                reaches_redis,
                subscriber,
                heartbeat,
                down: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration in use.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.config().namespace(), "redswarm");
    /// # Ok(()) }
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.store.config
    }

    /// This node's id (random unless configured).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert!(!swarm.node_id().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn node_id(&self) -> &str {
        &self.inner.store.node_id
    }

    /// Key and channel names for this namespace.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let owner_key = swarm.keys().lock("orders")?.owner;
    /// # Ok(()) }
    /// ```
    pub fn keys(&self) -> &Keys {
        &self.inner.store.keys
    }

    /// Borrows a pooled connection (for your own commands); it goes back to
    /// the pool on drop. Waits at most the pool timeout, then fails with
    /// [`Error::PoolExhausted`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let mut conn = swarm.connection()?;
    /// let pong: String = redis::cmd("PING").query(&mut *conn)?;
    /// # Ok(()) }
    /// ```
    pub fn connection(&self) -> Result<PooledConnection> {
        self.check_up()?;
        self.inner.store.conn()
    }

    /// Subscribes to `channel`. Returns once Redis confirmed the
    /// subscription (or, while Redis is unreachable, once it is registered:
    /// you will get [`SubEvent::Reconnected`](crate::SubEvent) later).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.subscribe("events")?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, channel: &str) -> Result<Subscription> {
        self.check_up()?;
        self.inner.subscriber.subscribe(channel)
    }

    /// Subscribes to a glob pattern of channels (`PSUBSCRIBE`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.psubscribe("events:*")?;
    /// # Ok(()) }
    /// ```
    pub fn psubscribe(&self, pattern: &str) -> Result<Subscription> {
        self.check_up()?;
        self.inner.subscriber.psubscribe(pattern)
    }

    /// Publishes `payload` on `channel`; returns how many clients got it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// swarm.publish("events", "hello")?;
    /// # Ok(()) }
    /// ```
    pub fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> Result<u64> {
        let mut conn = self.connection()?;
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query(&mut *conn)?)
    }

    /// Redis's clock in milliseconds since the epoch.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert!(swarm.redis_time_ms()? > 0);
    /// # Ok(()) }
    /// ```
    pub fn redis_time_ms(&self) -> Result<u64> {
        let mut conn = self.connection()?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut *conn)?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Whether the heartbeat reaches Redis.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.health(), redswarm::Health::Healthy);
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> Health {
        self.inner.heartbeat.health()
    }

    /// Whether this node may keep doing leased work. Without a peer mesh
    /// (no `peer_listen` configured) losing Redis means
    /// [`PartitionState::Partitioned`]: there is nobody to ask.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert_eq!(swarm.partition_state(), redswarm::PartitionState::Connected);
    /// # Ok(()) }
    /// ```
    pub fn partition_state(&self) -> PartitionState {
        self.inner.heartbeat.partition_state()
    }

    /// A channel that receives every change of
    /// [`Redswarm::partition_state`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let changes = swarm.watch_partition();
    /// # Ok(()) }
    /// ```
    pub fn watch_partition(&self) -> Receiver<PartitionState> {
        self.inner.heartbeat.watch_partition()
    }

    /// Where this node answers peer pings, if `peer_listen` is set.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if let Some(addr) = swarm.peer_addr() { log::info!("pings answered on {addr}"); }
    /// # Ok(()) }
    /// ```
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.peers.as_ref().map(|p| p.addr())
    }

    /// Peer-ping addresses of the other live nodes, as last read from Redis
    /// (what this node pings when it loses Redis).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// log::info!("{:?}", swarm.known_peers());
    /// # Ok(()) }
    /// ```
    pub fn known_peers(&self) -> Vec<String> {
        self.inner.heartbeat.known_peers()
    }

    /// A channel that receives every change of [`Redswarm::health`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let changes = swarm.watch_health();
    /// # Ok(()) }
    /// ```
    pub fn watch_health(&self) -> Receiver<Health> {
        self.inner.heartbeat.watch_health()
    }

    /// Nodes whose membership lease is live (Redis clock).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert!(swarm.live_nodes()?.iter().any(|n| n.id == swarm.node_id()));
    /// # Ok(()) }
    /// ```
    pub fn live_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.check_up()?;
        self.inner.heartbeat.nodes(true)
    }

    /// Nodes whose membership lapsed recently (they stopped beating without
    /// deregistering: crashed, hung or cut off). Kept for ten node TTLs.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// for dead in swarm.dead_nodes()? { log::info!("{} is gone", dead.id); }
    /// # Ok(()) }
    /// ```
    pub fn dead_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.check_up()?;
        self.inner.heartbeat.nodes(false)
    }

    /// Stops the heartbeat (deregistering this node) and the pub/sub
    /// thread. Idempotent; later calls on this handle fail with
    /// [`Error::ShutDown`]. Dropping the last clone does the same.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// swarm.shutdown();
    /// assert!(swarm.is_shut_down());
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// True after [`Redswarm::shutdown`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// assert!(!swarm.is_shut_down());
    /// # Ok(()) }
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.inner.down.load(Ordering::SeqCst)
    }

    fn check_up(&self) -> Result<()> {
        if self.is_shut_down() {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    // ---- locks and semaphores ----

    /// Takes lock `name` for `ttl` if it is free right now.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// match swarm.try_lock("cron:cleanup", std::time::Duration::from_secs(60))? {
    ///     Some(guard) => { /* we run it */ }
    ///     None => { /* someone else does */ }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.lock_options(name).ttl(ttl).try_lock()
    }

    /// Takes lock `name` for `ttl`, waiting at most `wait`
    /// ([`Error::Timeout`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// use std::time::Duration;
    /// let guard = swarm.lock("orders:42", Duration::from_secs(10), Duration::from_secs(2))?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: &str, ttl: Duration, wait: Duration) -> Result<LockGuard> {
        self.lock_options(name).ttl(ttl).lock(wait)
    }

    /// Options (TTL, auto-extension, fairness) for lock `name`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let guard = swarm.lock_options("a").auto_extend(true).lock(std::time::Duration::from_secs(1))?;
    /// # Ok(()) }
    /// ```
    pub fn lock_options(&self, name: &str) -> LockOptions {
        LockOptions::new(self, name)
    }

    /// Takes every lock in `names` (all or nothing) for `ttl`, waiting at
    /// most `wait`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// use std::time::Duration;
    /// let all = swarm.lock_all(&["a", "b", "c"], Duration::from_secs(10), Duration::from_secs(2))?;
    /// # Ok(()) }
    /// ```
    pub fn lock_all(
        &self,
        names: &[&str],
        ttl: Duration,
        wait: Duration,
    ) -> Result<MultiLockGuard> {
        self.multi_lock(names).ttl(ttl).lock(wait)
    }

    /// Options for an all-or-nothing lock on `names`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let all = swarm.multi_lock(&["a", "b"]).auto_extend(true).lock(std::time::Duration::from_secs(1))?;
    /// # Ok(()) }
    /// ```
    pub fn multi_lock(&self, names: &[&str]) -> MultiLockOptions {
        MultiLockOptions::new(self, names)
    }

    /// A counting semaphore `name` with `permits` permits.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sem = swarm.semaphore("db-connections", 10)?;
    /// let permit = sem.acquire(std::time::Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore> {
        Semaphore::new(self, name, permits)
    }

    // ---- fan-out ----

    /// Runs `job` for `job_id` unless it is already running in some
    /// process; then waits up to `timeout` for that run's outcome instead.
    /// See [`Fanout`] for the options.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let rate: Result<f64, redswarm::FanoutError<String>> =
    ///     swarm.fanout("fx:EURUSD", std::time::Duration::from_secs(5), || Ok(1.08));
    /// # Ok(()) }
    /// ```
    pub fn fanout<T, E, F>(
        &self,
        job_id: &str,
        timeout: Duration,
        job: F,
    ) -> std::result::Result<T, FanoutError<E>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        self.fanout_options().run(job_id, timeout, job)
    }

    /// Fan-out with options (result TTL, leader lease, size limit) and the
    /// low-level [`Fanout::push`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let f = swarm.fanout_options().result_ttl(std::time::Duration::from_secs(1));
    /// # Ok(()) }
    /// ```
    pub fn fanout_options(&self) -> Fanout {
        Fanout::new(self)
    }

    // ---- task swarm ----

    /// The task queue `name` (see [`Queue`], [`SwarmWorker`](crate::SwarmWorker),
    /// [`Monitor`](crate::Monitor)).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let q = swarm.queue("emails")?;
    /// q.push(&serde_json::json!({"to": "a@example.com"}))?;
    /// # Ok(()) }
    /// ```
    pub fn queue(&self, name: &str) -> Result<Queue> {
        Queue::new(self, name)
    }

    // ---- for the feature modules ----

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Fan-out jobs in flight in this handle (in-process coalescing).
    pub(crate) fn fanout_flights(&self) -> &LocalFlights {
        &self.inner.fanout_flights
    }

    /// A pooled connection for feature code.
    pub(crate) fn conn(&self) -> Result<PooledConnection> {
        self.connection()
    }

    /// Registers a lease for renewal by the heartbeat (auto-extension).
    pub(crate) fn lease(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        self.inner
            .heartbeat
            .register(what, target, ttl, acquired, false)
    }

    /// Like [`Redswarm::lease`], but the lease survives a Redis outage while
    /// enough peers answer (task claims: the partition rule decides).
    pub(crate) fn lease_tolerating_outage(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        self.inner
            .heartbeat
            .register(what, target, ttl, acquired, true)
    }

    /// A lease only watched for its local deadline (no auto-extension).
    pub(crate) fn lease_unrenewed(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        self.inner.heartbeat.unrenewed(what, target, ttl, acquired)
    }
}
