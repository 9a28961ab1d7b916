//! [`Redswarm`], the handle every program creates first: a thin facade
//! over the runtime core ([`crate::runtime`]) with one entry point per
//! feature.

use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::error::Result;
use crate::fanout::{Fanout, FanoutError};
use crate::health::{Health, PartitionState};
use crate::keys::Keys;
use crate::lock::{LockGuard, LockOptions};
use crate::membership::NodeInfo;
use crate::multilock::{MultiLockGuard, MultiLockOptions};
use crate::paired::{Paired, PairedOutcome};
use crate::runtime::Runtime;
use crate::semaphore::Semaphore;
use crate::store::PooledConnection;
use crate::subscriber::Subscription;
use crate::swarm::Queue;
use crate::tracker::{Tracker, TrackerOptions};

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
    rt: Runtime,
}

impl std::fmt::Debug for Redswarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redswarm")
            .field("url", &self.rt.config().masked_url())
            .field("namespace", &self.rt.config().namespace)
            .field("node_id", &self.rt.node_id())
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
        Ok(Redswarm {
            rt: Runtime::connect(config)?,
        })
    }

    /// The runtime core, for features whose public constructors take the
    /// handle (`Master::new(&swarm, ..)`).
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.rt
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
        self.rt.config()
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
        self.rt.node_id()
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
        self.rt.keys()
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
        self.rt.conn()
    }

    /// Subscribes to `channel`. Returns once Redis confirmed the
    /// subscription (or, while Redis is unreachable, once it is registered:
    /// you will get [`SubEvent::Reconnected`](crate::SubEvent) later); from
    /// then on it stays subscribed in Redis until dropped. Fails with
    /// [`Error::SubscriptionRefused`](crate::Error::SubscriptionRefused) if
    /// Redis refuses it (an ACL without the channel). A channel stays
    /// subscribed for [`Config::subscription_linger`](crate::Config::subscription_linger)
    /// after its last subscription is dropped, so subscribing again at once
    /// costs no round trip.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.subscribe("events")?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, channel: &str) -> Result<Subscription> {
        self.rt.subscribe(channel)
    }

    /// Subscribes to a glob pattern of channels (`PSUBSCRIBE`); like
    /// [`Redswarm::subscribe`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.psubscribe("events:*")?;
    /// # Ok(()) }
    /// ```
    pub fn psubscribe(&self, pattern: &str) -> Result<Subscription> {
        self.rt.psubscribe(pattern)
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
        self.rt.publish(channel, payload.as_ref())
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
        self.rt.redis_time_ms()
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
        self.rt.health()
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
        self.rt.partition_state()
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
        self.rt.watch_partition()
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
        self.rt.peer_addr()
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
        self.rt.known_peers()
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
        self.rt.watch_health()
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
        self.rt.nodes(true)
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
        self.rt.nodes(false)
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
        self.rt.shutdown();
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
        self.rt.is_shut_down()
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
        LockOptions::new(&self.rt, name)
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
        MultiLockOptions::new(&self.rt, names)
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
        Semaphore::new(&self.rt, name, permits)
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
        Fanout::new(&self.rt)
    }

    // ---- paired workers ----

    /// Races for paired task `task_id` with the other participants (in any
    /// process) and blocks until this one wins it, takes it over (the
    /// holder failed or died), or learns it is finished. See [`Paired`] for
    /// the options and the channel and thread-pool forms.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// use redswarm::PairedOutcome;
    /// match swarm.paired("push:42", &"payload".to_string())? {
    ///     PairedOutcome::Won(job) | PairedOutcome::TookOver(job) => job.succeeded()?,
    ///     PairedOutcome::DoneByPeer { .. } => {}
    ///     PairedOutcome::Failed { reason, .. } => log::warn!("{reason}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn paired<T>(&self, task_id: &str, payload: &T) -> Result<PairedOutcome<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.paired_options().task(task_id)?.run(payload)
    }

    /// [`Redswarm::paired`] for a task kept as `field` of hash `hash` (the
    /// seed's `hlock`).
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// if let redswarm::PairedOutcome::Won(job) = swarm.paired_in_hash("pushes", "user:7", &1u32)? {
    ///     job.succeeded()?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn paired_in_hash<T>(
        &self,
        hash: &str,
        field: &str,
        payload: &T,
    ) -> Result<PairedOutcome<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.paired_options().hash_field(hash, field)?.run(payload)
    }

    /// Paired-task options (lease, retention, attempts, standby timeout)
    /// and the channel and thread-pool forms.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let p = swarm.paired_options().lease(std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn paired_options(&self) -> Paired {
        Paired::new(&self.rt)
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
        Queue::new(&self.rt, name)
    }

    // ---- chunk tracker ----

    /// The chunk tracker `name` with default [`TrackerOptions`] (see
    /// [`Tracker`]); its lock and processing timeouts are swept in the
    /// background while it lives.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let tracker = swarm.tracker("ogg-to-mp3")?;
    /// assert!(swarm.tracker("bad{name}").is_err());
    /// # Ok(()) }
    /// ```
    pub fn tracker(&self, name: &str) -> Result<Tracker> {
        Tracker::new(&self.rt, name, TrackerOptions::default())
    }

    /// The chunk tracker `name` with `options`.
    ///
    /// ```no_run
    /// # fn main() -> redswarm::Result<()> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let opts = redswarm::TrackerOptions {
    ///     lock_timeout: std::time::Duration::from_secs(10),
    ///     ..Default::default()
    /// };
    /// let tracker = swarm.tracker_with("ogg-to-mp3", opts)?;
    /// # Ok(()) }
    /// ```
    pub fn tracker_with(&self, name: &str, options: TrackerOptions) -> Result<Tracker> {
        Tracker::new(&self.rt, name, options)
    }
}
