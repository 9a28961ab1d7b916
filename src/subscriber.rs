//! One dedicated pub/sub connection per handle, on its own thread.
//!
//! Local subscribers register interest in a table (channel or pattern →
//! senders); the thread makes the Redis subscriptions match the table.
//! Many local subscribers of one channel share one Redis subscription.
//! A new subscription is confirmed by Redis before `subscribe` returns, so
//! a caller that subscribes and *then* checks state cannot miss a message
//! published after the check. To make that fast the caller wakes the
//! thread by publishing on this node's private wake channel instead of
//! waiting for the thread's read timeout.
//!
//! On any connection error the thread reconnects with capped exponential
//! backoff and jitter, resubscribes everything, and sends
//! [`SubEvent::Reconnected`] to every live subscription: pub/sub loses
//! messages while disconnected, so waiters must re-check state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::Store;

/// How long a blocked read waits before the thread looks at its mailbox.
const READ_TICK: Duration = Duration::from_millis(200);
/// Idle time after which the connection is PINGed to catch half-open sockets.
const PING_EVERY: Duration = Duration::from_secs(3);
/// Messages buffered per subscription before new ones are dropped.
const SUBSCRIPTION_BUFFER: usize = 4096;

/// A message received on a subscribed channel.
///
/// ```
/// # let m = redswarm::Message { channel: "c".into(), pattern: None, payload: b"hi".to_vec() };
/// assert_eq!(m.payload_str(), Some("hi"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// The pattern that matched, for pattern subscriptions.
    pub pattern: Option<String>,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// The payload as UTF-8, if it is.
    ///
    /// ```
    /// # let m = redswarm::Message { channel: "c".into(), pattern: None, payload: vec![0xff] };
    /// assert_eq!(m.payload_str(), None);
    /// ```
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// What a [`Subscription`] delivers.
///
/// ```
/// # use redswarm::SubEvent;
/// let e = SubEvent::Reconnected;
/// assert!(matches!(e, SubEvent::Reconnected));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubEvent {
    /// A published message.
    Message(Message),
    /// The pub/sub connection was re-established; messages may have been
    /// missed while it was down, so re-check whatever you wait for.
    Reconnected,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Topic {
    Channel(String),
    Pattern(String),
}

/// A live subscription: a receiver of [`SubEvent`]s that unsubscribes
/// when dropped.
///
/// ```no_run
/// # fn main() -> redswarm::Result<()> {
/// let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// let sub = swarm.subscribe("news")?;
/// swarm.publish("news", "hello")?;
/// if let Ok(redswarm::SubEvent::Message(m)) = sub.recv_timeout(std::time::Duration::from_secs(1)) {
///     assert_eq!(m.payload_str(), Some("hello"));
/// }
/// # Ok(()) }
/// ```
pub struct Subscription {
    topic: Topic,
    id: u64,
    rx: Receiver<SubEvent>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The crossbeam receiver (use it in `select!`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.subscribe("c")?;
    /// let rx = sub.receiver();
    /// # Ok(()) }
    /// ```
    pub fn receiver(&self) -> &Receiver<SubEvent> {
        &self.rx
    }

    /// Waits up to `timeout` for the next event.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.subscribe("c")?;
    /// let _ = sub.recv_timeout(std::time::Duration::from_millis(10));
    /// # Ok(()) }
    /// ```
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> std::result::Result<SubEvent, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Drops every event queued so far (before a re-check).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
    /// let sub = swarm.subscribe("c")?;
    /// sub.drain();
    /// # Ok(()) }
    /// ```
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut table = self.shared.table.lock();
        if let Some(list) = table.interest.get_mut(&self.topic) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                table.interest.remove(&self.topic);
            }
        }
        // The thread unsubscribes at its next turn; no need to wake it.
    }
}

#[derive(Default)]
struct Table {
    interest: HashMap<Topic, Vec<(u64, Sender<SubEvent>)>>,
    /// Topics Redis has confirmed on the current connection.
    confirmed: HashSet<Topic>,
    /// Callers waiting for a topic's confirmation.
    waiting: Vec<(Topic, Sender<()>)>,
}

struct Shared {
    store: Arc<Store>,
    table: Mutex<Table>,
    wake_channel: String,
    mailbox: Sender<()>,
    connected: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
}

/// The handle's pub/sub thread and its subscription table.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Subscriber {
    pub(crate) fn start(store: Arc<Store>) -> Result<Subscriber> {
        let (mailbox, inbox) = unbounded();
        let shared = Arc::new(Shared {
            wake_channel: store.keys.wake_channel(&store.node_id),
            store,
            table: Mutex::new(Table::default()),
            mailbox,
            connected: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let thread_shared = shared.clone();
        let (first_tx, first_rx) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("redswarm-pubsub".into())
            .spawn(move || run(thread_shared, inbox, first_tx))
            .map_err(|e| Error::Pool(format!("cannot spawn pub/sub thread: {e}")))?;
        // Wait for the first connection attempt, so that a subscribe right
        // after connect is confirmed rather than silently pending.
        let cfg = &shared.store.config;
        let _ = first_rx.recv_timeout(cfg.connect_timeout + cfg.command_timeout * 2);
        Ok(Subscriber {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn subscribe(&self, channel: &str) -> Result<Subscription> {
        self.add(Topic::Channel(channel.to_string()))
    }

    pub(crate) fn psubscribe(&self, pattern: &str) -> Result<Subscription> {
        self.add(Topic::Pattern(pattern.to_string()))
    }

    /// True while the pub/sub connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    fn add(&self, topic: Topic) -> Result<Subscription> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        let (tx, rx) = bounded(SUBSCRIPTION_BUFFER);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let confirmation = {
            let mut table = self.shared.table.lock();
            table
                .interest
                .entry(topic.clone())
                .or_default()
                .push((id, tx));
            if table.confirmed.contains(&topic) || !self.is_connected() {
                // Already live in Redis, or Redis is away: the subscriber will
                // get Reconnected once it is subscribed again.
                None
            } else {
                let (ack_tx, ack_rx) = bounded(1);
                table.waiting.push((topic.clone(), ack_tx));
                Some(ack_rx)
            }
        };
        let subscription = Subscription {
            topic,
            id,
            rx,
            shared: self.shared.clone(),
        };
        if let Some(ack) = confirmation {
            let _ = self.shared.mailbox.send(());
            self.wake();
            let wait = self.shared.store.config.command_timeout * 2 + READ_TICK;
            if ack.recv_timeout(wait).is_err() {
                log::debug!("subscription not confirmed within {wait:?}; continuing unconfirmed");
            }
        }
        Ok(subscription)
    }

    /// Interrupts the thread's blocking read so it serves its mailbox now.
    fn wake(&self) {
        match self.shared.store.conn() {
            Ok(mut conn) => {
                let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&self.shared.wake_channel)
                    .arg("")
                    .query(&mut *conn);
                if let Err(e) = r {
                    log::debug!("wake publish failed: {e}");
                }
            }
            Err(e) => log::debug!("wake publish skipped: {e}"),
        }
    }

    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.mailbox.send(());
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                log::error!("pub/sub thread panicked");
            }
        }
        // Wake anybody still waiting so no caller hangs on a dead thread.
        let mut table = self.shared.table.lock();
        table.waiting.clear();
        table.interest.clear();
    }
}

fn run(shared: Arc<Shared>, inbox: Receiver<()>, first_attempt: Sender<()>) {
    let cfg = &shared.store.config;
    let mut backoff = cfg.reconnect_min;
    let mut ever_connected = false;
    while !shared.stop.load(Ordering::SeqCst) {
        match shared.store.dedicated.open() {
            Ok(mut conn) => {
                backoff = cfg.reconnect_min;
                let outcome = serve(&shared, &inbox, &mut conn, ever_connected, &first_attempt);
                ever_connected = true;
                shared.connected.store(false, Ordering::SeqCst);
                shared.table.lock().confirmed.clear();
                match outcome {
                    Ok(()) => break, // asked to stop
                    Err(e) => log::warn!("pub/sub connection lost: {e}; reconnecting"),
                }
            }
            Err(e) => log::debug!("pub/sub connect failed: {e}; retrying in {backoff:?}"),
        }
        let _ = first_attempt.try_send(());
        // Back off, but answer callers meanwhile: their subscriptions are
        // registered and will be made live (with Reconnected) on reconnect.
        let until = Instant::now() + jitter(backoff);
        loop {
            release_waiters(&shared);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let _ = inbox.recv_timeout(left);
        }
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
    shared.connected.store(false, Ordering::SeqCst);
}

/// Serves one connection until it fails (Err) or stop is requested (Ok).
fn serve(
    shared: &Shared,
    inbox: &Receiver<()>,
    conn: &mut redis::Connection,
    reconnected: bool,
    first_attempt: &Sender<()>,
) -> redis::RedisResult<()> {
    let mut pubsub = conn.as_pubsub();
    let mut live: HashSet<Topic> = HashSet::new();
    let wake = Topic::Channel(shared.wake_channel.clone());
    // Connected before the first reconcile: a subscribe arriving meanwhile
    // then waits for its confirmation instead of returning unconfirmed.
    shared.connected.store(true, Ordering::SeqCst);
    reconcile(shared, &mut pubsub, &mut live, &wake)?;
    let _ = first_attempt.try_send(());
    if reconnected {
        log::info!("pub/sub reconnected; {} topics resubscribed", live.len());
        let table = shared.table.lock();
        for list in table.interest.values() {
            for (_, tx) in list {
                let _ = tx.try_send(SubEvent::Reconnected);
            }
        }
    }
    pubsub.set_read_timeout(Some(READ_TICK))?;
    let mut last_traffic = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        while inbox.try_recv().is_ok() {}
        reconcile(shared, &mut pubsub, &mut live, &wake)?;
        match pubsub.get_message() {
            Ok(msg) => {
                last_traffic = Instant::now();
                dispatch(shared, msg);
            }
            Err(e) if e.is_timeout() => {
                if last_traffic.elapsed() >= PING_EVERY {
                    pubsub.set_read_timeout(Some(shared.store.config.command_timeout))?;
                    let _: redis::Value = pubsub.ping()?;
                    pubsub.set_read_timeout(Some(READ_TICK))?;
                    last_traffic = Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes the Redis subscriptions equal the table's interest (plus the wake
/// channel) and confirms waiting callers.
fn reconcile(
    shared: &Shared,
    pubsub: &mut redis::PubSub<'_>,
    live: &mut HashSet<Topic>,
    wake: &Topic,
) -> redis::RedisResult<()> {
    let mut wanted: HashSet<Topic> = shared.table.lock().interest.keys().cloned().collect();
    wanted.insert(wake.clone());
    let add: Vec<Topic> = wanted.difference(live).cloned().collect();
    let remove: Vec<Topic> = live.difference(&wanted).cloned().collect();
    if add.is_empty() && remove.is_empty() {
        release_waiters(shared);
        return Ok(());
    }
    pubsub.set_read_timeout(Some(shared.store.config.command_timeout))?;
    for topic in add {
        match &topic {
            Topic::Channel(c) => pubsub.subscribe(c)?,
            Topic::Pattern(p) => pubsub.psubscribe(p)?,
        }
        live.insert(topic.clone());
        shared.table.lock().confirmed.insert(topic);
    }
    for topic in remove {
        shared.table.lock().confirmed.remove(&topic);
        live.remove(&topic);
        match &topic {
            Topic::Channel(c) => pubsub.unsubscribe(c)?,
            Topic::Pattern(p) => pubsub.punsubscribe(p)?,
        }
    }
    pubsub.set_read_timeout(Some(READ_TICK))?;
    release_waiters(shared);
    Ok(())
}

/// Answers callers whose topic is confirmed, or all of them while Redis is
/// unreachable (they will get `Reconnected` later).
fn release_waiters(shared: &Shared) {
    let connected = shared.connected.load(Ordering::SeqCst);
    let mut table = shared.table.lock();
    let Table {
        waiting, confirmed, ..
    } = &mut *table;
    waiting.retain(|(topic, ack)| {
        if !connected || confirmed.contains(topic) {
            let _ = ack.try_send(());
            false
        } else {
            true
        }
    });
}

fn dispatch(shared: &Shared, msg: redis::Msg) {
    let channel = msg.get_channel_name().to_string();
    if channel == shared.wake_channel {
        return;
    }
    let pattern: Option<String> = msg.get_pattern::<Option<String>>().ok().flatten();
    let topic = match &pattern {
        Some(p) => Topic::Pattern(p.clone()),
        None => Topic::Channel(channel.clone()),
    };
    let event = SubEvent::Message(Message {
        channel,
        pattern,
        payload: msg.get_payload_bytes().to_vec(),
    });
    let table = shared.table.lock();
    if let Some(list) = table.interest.get(&topic) {
        for (_, tx) in list {
            if let Err(TrySendError::Full(_)) = tx.try_send(event.clone()) {
                log::warn!("a subscription's buffer is full; dropping a message on {topic:?}");
            }
        }
    }
}

/// Up to +25% random jitter so reconnecting nodes do not stampede.
fn jitter(d: Duration) -> Duration {
    let r = crate::util::random_id();
    let n = u64::from_str_radix(&r[..4], 16).unwrap_or(0); // ok: random_id is hex
    d + d.mul_f64((n as f64 / 65535.0) * 0.25)
}
