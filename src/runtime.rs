//! The runtime core every feature stands on: the store (pool, config,
//! keys), the pub/sub thread, the heartbeat with its lease registry, and the
//! peer listener. Features hold a [`Runtime`] (cheap to clone); the public
//! [`Redswarm`](crate::Redswarm) handle is a thin facade over it. Nothing
//! here knows about any feature (DESIGN rule 12): per-handle state a feature
//! needs lives in [`Runtime::feature_state`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::{Health, PartitionState};
use crate::heartbeat::Heartbeat;
use crate::keys::Keys;
use crate::lease::{Lease, LeaseTarget};
use crate::membership::NodeInfo;
use crate::peer::{advertise_addr, PeerIdentity, PeerListener};
use crate::store::{PooledConnection, Store};
use crate::subscriber::{Subscriber, Subscription};

/// The running core of one handle. Cheap to clone (`Arc` inside); the last
/// clone to drop shuts the threads down.
#[derive(Clone)]
pub(crate) struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    /// One value per type, created on first use (e.g. fan-out's table of
    /// in-process flights).
    feature_state: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    peers: Option<PeerListener>,
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

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("namespace", &self.config().namespace)
            .field("node_id", &self.node_id())
            .finish()
    }
}

impl Runtime {
    /// Opens the store, starts the peer listener, the heartbeat (first beat
    /// included) and the pub/sub thread.
    pub(crate) fn connect(config: Config) -> Result<Runtime> {
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(crate::util::random_id);
        let store = Store::open(config, node_id)?;
        // Whether this node's heartbeat reaches Redis: what its peer
        // listener tells nodes that ping it. The heartbeat keeps it current.
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
                // With Sentinel, the route to the first sentinel stands in
                // for the route to the (moving) primary.
                let url = match &store.config.sentinel {
                    Some(s) => &s.node_url,
                    None => &store.config.url,
                };
                let (host, port) = crate::peer::redis_endpoint(url);
                Some(advertise_addr(
                    listener.addr(),
                    store.config.peer_advertise.as_deref(),
                    &host,
                    port,
                )?)
            }
            None => store.config.peer_advertise.clone(),
        };
        let heartbeat = Heartbeat::start(store.clone(), advertised, reaches_redis)?;
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
        Ok(Runtime {
            inner: Arc::new(Inner {
                store,
                feature_state: Mutex::new(HashMap::new()),
                peers,
                subscriber,
                heartbeat,
                down: AtomicBool::new(false),
            }),
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.store.config
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.inner.store.node_id
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.store.keys
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// A pooled connection; fails with [`Error::ShutDown`] after shutdown.
    pub(crate) fn conn(&self) -> Result<PooledConnection> {
        self.check_up()?;
        self.inner.store.conn()
    }

    pub(crate) fn subscribe(&self, channel: &str) -> Result<Subscription> {
        self.check_up()?;
        self.inner.subscriber.subscribe(channel)
    }

    pub(crate) fn psubscribe(&self, pattern: &str) -> Result<Subscription> {
        self.check_up()?;
        self.inner.subscriber.psubscribe(pattern)
    }

    pub(crate) fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> Result<u64> {
        self.check_up()?;
        self.store().publish(channel, payload.as_ref())
    }

    pub(crate) fn redis_time_ms(&self) -> Result<u64> {
        let mut conn = self.conn()?;
        // On a cluster: the clock of the node that holds the membership set.
        let (secs, micros): (u64, u64) =
            conn.query_at_key(&self.keys().nodes(), &redis::cmd("TIME"))?;
        Ok(secs * 1000 + micros / 1000)
    }

    pub(crate) fn health(&self) -> Health {
        self.inner.heartbeat.health()
    }

    pub(crate) fn watch_health(&self) -> Receiver<Health> {
        self.inner.heartbeat.watch_health()
    }

    pub(crate) fn partition_state(&self) -> PartitionState {
        self.inner.heartbeat.partition_state()
    }

    pub(crate) fn watch_partition(&self) -> Receiver<PartitionState> {
        self.inner.heartbeat.watch_partition()
    }

    pub(crate) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.peers.as_ref().map(|p| p.addr())
    }

    pub(crate) fn known_peers(&self) -> Vec<String> {
        self.inner.heartbeat.known_peers()
    }

    pub(crate) fn nodes(&self, alive: bool) -> Result<Vec<NodeInfo>> {
        self.check_up()?;
        self.inner.heartbeat.nodes(alive)
    }

    pub(crate) fn shutdown(&self) {
        self.inner.shutdown();
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.inner.down.load(Ordering::SeqCst)
    }

    pub(crate) fn check_up(&self) -> Result<()> {
        if self.is_shut_down() {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    /// This handle's one value of type `T`, created on first use.
    pub(crate) fn feature_state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut map = self.inner.feature_state.lock();
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()) as Arc<dyn Any + Send + Sync>)
            .clone();
        drop(map);
        match entry.downcast::<T>() {
            Ok(state) => state,
            // Unreachable: the map is keyed by the value's own TypeId.
            Err(_) => Arc::new(T::default()),
        }
    }

    /// A lease the heartbeat renews every beat (auto-extended).
    pub(crate) fn lease(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        self.inner
            .heartbeat
            .register(what, target, true, ttl, acquired, false)
    }

    /// A renewed lease kept through a Redis outage while enough peers
    /// answer (the swarm's partition rule: task claims).
    pub(crate) fn lease_tolerating_outage(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        self.inner
            .heartbeat
            .register(what, target, true, ttl, acquired, true)
    }

    /// A lease that is not renewed but still fenced at its local deadline.
    pub(crate) fn lease_unrenewed(
        &self,
        what: String,
        target: LeaseTarget,
        ttl: Duration,
        acquired: Instant,
    ) -> Lease {
        self.inner
            .heartbeat
            .register(what, target, false, ttl, acquired, false)
    }
}
