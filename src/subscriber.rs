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
//! A channel whose last local subscriber left stays subscribed for
//! [`Config::subscription_linger`](crate::Config::subscription_linger)
//! (at most [`MAX_LINGERING`] of them), so subscribing to it again — a
//! handle that locks the same name in a loop — is confirmed at once, with
//! no round trip.
//!
//! A subscription Redis refuses (an ACL without the channel) fails with
//! [`Error::SubscriptionRefused`]; the connection and the other
//! subscriptions carry on.
//!
//! On any connection error the thread reconnects with capped exponential
//! backoff and jitter, resubscribes everything, and sends
//! [`SubEvent::Reconnected`] to every live subscription: pub/sub loses
//! messages while disconnected, so waiters must re-check state. A read
//! interrupted by a signal (`EINTR`, e.g. after SIGSTOP/SIGCONT of the
//! process) is retried, not taken for a lost connection.
//!
//! # Why subscribing cannot race with unsubscribing
//!
//! The invariant, kept under the table lock:
//!
//! 1. `confirmed` holds a topic only if Redis confirmed its SUBSCRIBE on
//!    the current connection and no UNSUBSCRIBE of it has been decided
//!    since. Only the pub/sub thread adds to it, after reading the
//!    confirmation.
//! 2. The thread decides to UNSUBSCRIBE a topic only in one critical
//!    section that checks that the topic has no interest and, in the same
//!    section, removes it from `confirmed` and `lingering`
//!    ([`Table::due_unsubscribes`]). The command is sent after the lock is
//!    released.
//! 3. [`Subscriber::subscribe`] registers its interest and looks at
//!    `confirmed` in one critical section. If the topic is confirmed, by (2)
//!    no UNSUBSCRIBE can be decided while that interest exists, and any
//!    earlier decision already took it out of `confirmed`. If it is not
//!    confirmed, the caller waits for the confirmation of a SUBSCRIBE the
//!    thread sends after seeing the interest; the thread is the only writer
//!    on the connection, so that SUBSCRIBE follows any UNSUBSCRIBE decided
//!    before, and Redis applies them in order.
//! 4. `lingering` ⊆ `confirmed`, and a lingering topic has no interest:
//!    dropping the last subscription of a confirmed topic puts it there,
//!    subscribing again takes it out.
//!
//! When the connection is lost, `confirmed`, `lingering` and `refused` are
//! cleared (the thread owns a fresh connection with nothing subscribed);
//! every registered subscription is resubscribed and told `Reconnected`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use redis::{PushKind, RedisResult, Value};

use crate::connection::NodeAddr;
use crate::error::{Error, Result};
use crate::store::Store;

/// How long a blocked read waits before the thread looks at its mailbox.
const READ_TICK: Duration = Duration::from_millis(200);
/// Idle time after which the connection is PINGed to catch half-open sockets.
const PING_EVERY: Duration = Duration::from_secs(3);
/// Messages buffered per subscription before new ones are dropped.
const SUBSCRIPTION_BUFFER: usize = 4096;
/// Most topics kept subscribed after their last local subscriber left;
/// past it the oldest are unsubscribed first, so neither memory nor
/// Redis's subscription count grows with the number of distinct names.
pub(crate) const MAX_LINGERING: usize = 256;
/// Most (un)subscribe commands pipelined in one batch (one write, then one
/// reply each), so a resubscribe of many topics stays within one command
/// timeout per batch.
const BATCH: usize = 64;

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

impl Topic {
    /// The channel or pattern.
    fn name(&self) -> &str {
        match self {
            Topic::Channel(n) | Topic::Pattern(n) => n,
        }
    }

    fn refused(&self, reason: &str) -> Error {
        Error::SubscriptionRefused {
            channel: self.name().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A live subscription: a receiver of [`SubEvent`]s. Subscribed in Redis
/// from the moment [`Redswarm::subscribe`](crate::Redswarm::subscribe)
/// returns until it is dropped; the Redis subscription is shared with the
/// handle's other subscriptions of the same channel and lingers briefly
/// after the last one is dropped.
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
        self.shared
            .table
            .lock()
            .remove_interest(&self.topic, self.id);
        // The thread unsubscribes after the linger, at one of its turns; no
        // need to wake it.
    }
}

/// What a caller waiting for its topic is told: confirmed (or registered
/// while Redis is away), or refused with Redis's reason.
type Ack = std::result::Result<(), String>;

#[derive(Default)]
struct Table {
    interest: HashMap<Topic, Vec<(u64, Sender<SubEvent>)>>,
    /// Topics Redis confirmed on the current connection and that are not
    /// being unsubscribed (invariant 1 of the module docs).
    confirmed: HashSet<Topic>,
    /// Confirmed topics without interest, oldest first, with the time their
    /// last subscriber left.
    lingering: VecDeque<(Topic, Instant)>,
    /// Topics Redis refused on the current connection, with its reason;
    /// not retried while anybody still holds them.
    refused: HashMap<Topic, String>,
    /// Callers waiting for a topic's confirmation.
    waiting: Vec<(Topic, Sender<Ack>)>,
    /// Interest may hold a topic that is not subscribed yet.
    unsynced: bool,
}

impl Table {
    fn remove_interest(&mut self, topic: &Topic, id: u64) {
        let Some(list) = self.interest.get_mut(topic) else {
            return;
        };
        list.retain(|(i, _)| *i != id);
        if !list.is_empty() {
            return;
        }
        self.interest.remove(topic);
        self.refused.remove(topic);
        if self.confirmed.contains(topic) {
            // Still subscribed in Redis: it lingers, and only the thread
            // decides when to unsubscribe it (invariant 2).
            self.lingering.push_back((topic.clone(), Instant::now()));
        }
    }

    /// Takes `topic` out of `lingering` (it has interest again).
    fn stop_lingering(&mut self, topic: &Topic) {
        if let Some(i) = self.lingering.iter().position(|(t, _)| t == topic) {
            self.lingering.remove(i);
        }
    }

    /// The UNSUBSCRIBE decision (invariant 2): lingering topics whose linger
    /// is over, or the oldest past [`MAX_LINGERING`], leave `confirmed` here,
    /// under the lock, together with the check that nobody wants them.
    fn due_unsubscribes(&mut self, now: Instant, linger: Duration) -> Vec<Topic> {
        let mut due = Vec::new();
        while let Some((topic, since)) = self.lingering.front() {
            let over = self.lingering.len() > MAX_LINGERING
                || now.saturating_duration_since(*since) >= linger;
            if !over {
                break;
            }
            let topic = topic.clone();
            self.lingering.pop_front();
            if self.interest.contains_key(&topic) {
                // Cannot happen (subscribe takes it out of `lingering`);
                // if it did, the topic must stay subscribed.
                continue;
            }
            self.confirmed.remove(&topic);
            due.push(topic);
        }
        due
    }

    /// Topics somebody wants that are neither subscribed on this connection
    /// nor refused; the wake channel first.
    fn unsubscribed(&mut self, live: &HashSet<Topic>, wake: &Topic) -> Vec<Topic> {
        self.unsynced = false;
        std::iter::once(wake)
            .chain(self.interest.keys())
            .filter(|t| !live.contains(*t) && !self.refused.contains_key(*t))
            .cloned()
            .collect()
    }

    fn connection_lost(&mut self) {
        self.confirmed.clear();
        self.lingering.clear();
        self.refused.clear();
        self.unsynced = true;
    }
}

struct Shared {
    store: Arc<Store>,
    table: Mutex<Table>,
    wake_channel: String,
    /// The node the thread's connection is to, while connected: the wake
    /// is published there (on a cluster, a PUBLISH on another node reaches
    /// it over the cluster bus, sometimes only after tens of ms).
    node: Mutex<Option<NodeAddr>>,
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
            node: Mutex::new(None),
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
        // Registering and looking at `confirmed` in one critical section is
        // what invariant 3 of the module docs rests on.
        let confirmation = {
            let mut table = self.shared.table.lock();
            if let Some(reason) = table.refused.get(&topic) {
                return Err(topic.refused(reason));
            }
            let list = table.interest.entry(topic.clone()).or_default();
            let first = list.is_empty();
            list.push((id, tx));
            if table.confirmed.contains(&topic) {
                if first {
                    table.stop_lingering(&topic);
                }
                None
            } else if !self.is_connected() {
                // Redis is away: the subscriber gets Reconnected once it is
                // subscribed again.
                None
            } else {
                table.unsynced = true;
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
            match ack.recv_timeout(wait) {
                Ok(Ok(())) => {}
                // Dropping `subscription` on the way out removes the interest.
                Ok(Err(reason)) => return Err(subscription.topic.refused(&reason)),
                Err(_) => {
                    log::debug!(
                        "subscription not confirmed within {wait:?}; continuing unconfirmed"
                    )
                }
            }
        }
        Ok(subscription)
    }

    /// Interrupts the thread's blocking read so it serves its mailbox now.
    fn wake(&self) {
        // Straight to the node the pub/sub connection is on (on a cluster a
        // message from another node crosses the cluster bus, which took up
        // to ~40 ms); else, or if that fails, as any publish.
        let node = self.shared.node.lock().clone();
        let at_node = node.and_then(|node| {
            let mut conn = self.shared.store.conn().ok()?;
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&self.shared.wake_channel).arg("");
            conn.query_at_node::<i64>(&node, &cmd).ok()
        });
        if at_node.is_none() {
            if let Err(e) = self.shared.store.publish(&self.shared.wake_channel, b"") {
                log::debug!("wake publish failed: {e}");
            }
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
        table.lingering.clear();
    }
}

fn run(shared: Arc<Shared>, inbox: Receiver<()>, first_attempt: Sender<()>) {
    let cfg = &shared.store.config;
    let mut backoff = cfg.reconnect_min;
    let mut ever_connected = false;
    while !shared.stop.load(Ordering::SeqCst) {
        match shared.store.dedicated.open_node(None, cfg.connect_timeout) {
            Ok((mut conn, node)) => {
                backoff = cfg.reconnect_min;
                *shared.node.lock() = Some(node);
                let outcome = serve(&shared, &inbox, &mut conn, ever_connected, &first_attempt);
                *shared.node.lock() = None;
                ever_connected = true;
                shared.connected.store(false, Ordering::SeqCst);
                shared.table.lock().connection_lost();
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
///
/// The connection is driven directly rather than through redis-rs's
/// `PubSub`, whose `subscribe` discards Redis's answer — a refusal
/// (`-NOPERM`) would look like a confirmation.
fn serve(
    shared: &Shared,
    inbox: &Receiver<()>,
    conn: &mut redis::Connection,
    reconnected: bool,
    first_attempt: &Sender<()>,
) -> RedisResult<()> {
    let mut live: HashSet<Topic> = HashSet::new();
    let wake = Topic::Channel(shared.wake_channel.clone());
    shared.table.lock().unsynced = true;
    // Connected before the first sync: a subscribe arriving meanwhile then
    // waits for its confirmation instead of returning unconfirmed.
    shared.connected.store(true, Ordering::SeqCst);
    sync(shared, conn, &mut live, &wake)?;
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
    let mut last_traffic = Instant::now();
    // Commands set their own read timeouts; idle reads use READ_TICK.
    let mut ticking = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        while inbox.try_recv().is_ok() {}
        if sync(shared, conn, &mut live, &wake)? {
            ticking = false;
        }
        if !ticking {
            conn.set_read_timeout(Some(READ_TICK))?;
            ticking = true;
        }
        match read_message(conn) {
            Ok(msg) => {
                last_traffic = Instant::now();
                dispatch(shared, msg);
            }
            Err(e) if e.is_timeout() => {
                if last_traffic.elapsed() >= PING_EVERY {
                    exchange(shared, conn, &[Request::Ping])?;
                    ticking = false;
                    last_traffic = Instant::now();
                }
            }
            // The read left the connection as it was (like a timeout): a
            // signal such as SIGCONT after SIGSTOP interrupted it.
            Err(e) if is_interrupted(&e) => {
                log::debug!("pub/sub read interrupted ({e}); reading on")
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the next published message.
///
/// Through a `PubSub` view of the connection because its reader, unlike
/// `Connection::recv_response`, does not count a timed-out or interrupted
/// read as a reply to skip later: the read can simply be tried again. The
/// view is never dropped, since dropping a `PubSub` unsubscribes from
/// everything; it owns nothing here (its message cache is only filled by
/// its own subscribe calls, which are not used).
fn read_message(conn: &mut redis::Connection) -> RedisResult<redis::Msg> {
    let mut view = ManuallyDrop::new(conn.as_pubsub());
    view.get_message()
}

/// True for an I/O error `EINTR`: the system call was interrupted by a
/// signal before it completed.
fn is_interrupted(e: &redis::RedisError) -> bool {
    // redis-rs keeps the io::Error behind an Arc and offers no predicate.
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

/// Brings the Redis subscriptions in line with the table — unsubscribes
/// topics whose linger is over, subscribes topics wanted but not live (the
/// wake channel among them) — and answers waiting callers. True if it sent
/// commands.
fn sync(
    shared: &Shared,
    conn: &mut redis::Connection,
    live: &mut HashSet<Topic>,
    wake: &Topic,
) -> RedisResult<bool> {
    let linger = shared.store.config.subscription_linger;
    let (remove, add) = {
        let mut table = shared.table.lock();
        let remove = table.due_unsubscribes(Instant::now(), linger);
        let add = if table.unsynced {
            table.unsubscribed(live, wake)
        } else {
            Vec::new()
        };
        (remove, add)
    };
    let talked = !(remove.is_empty() && add.is_empty());
    for chunk in remove.chunks(BATCH) {
        let requests: Vec<Request<'_>> = chunk.iter().map(Request::Unsubscribe).collect();
        for (topic, ack) in chunk.iter().zip(exchange(shared, conn, &requests)?) {
            live.remove(topic);
            if let Err(reason) = ack {
                // Unexpected (Redis checks no ACL on UNSUBSCRIBE); at worst
                // messages keep coming for a topic nobody wants, and they
                // are dropped.
                log::warn!("UNSUBSCRIBE {} refused: {reason}", topic.name());
            }
        }
    }
    for chunk in add.chunks(BATCH) {
        let requests: Vec<Request<'_>> = chunk.iter().map(Request::Subscribe).collect();
        let acks = exchange(shared, conn, &requests)?;
        let mut table = shared.table.lock();
        for (topic, ack) in chunk.iter().zip(acks) {
            match ack {
                Ok(()) => {
                    live.insert(topic.clone());
                    table.confirmed.insert(topic.clone());
                    if topic != wake && !table.interest.contains_key(topic) {
                        // Its subscriber left while the SUBSCRIBE was on
                        // the way: subscribed, so it lingers (invariant 4).
                        table.lingering.push_back((topic.clone(), Instant::now()));
                    }
                }
                Err(reason) => {
                    if topic == wake {
                        log::warn!(
                            "Redis refused this node's wake channel `{}` ({reason}); new \
                             subscriptions are confirmed at the next read tick instead of at \
                             once (allow the channel for this user)",
                            topic.name()
                        );
                    } else {
                        log::warn!(
                            "Redis refused the subscription to `{}`: {reason}",
                            topic.name()
                        );
                    }
                    // Not retried on this connection while anybody holds it.
                    table.refused.insert(topic.clone(), reason);
                }
            }
        }
    }
    release_waiters(shared);
    Ok(talked)
}

/// One command of a pipelined batch on the pub/sub connection.
#[derive(Debug)]
enum Request<'a> {
    Subscribe(&'a Topic),
    Unsubscribe(&'a Topic),
    Ping,
}

impl Request<'_> {
    /// The command, which is also the kind of its confirmation in lower case.
    fn command(&self) -> &'static str {
        match self {
            Request::Subscribe(Topic::Channel(_)) => "SUBSCRIBE",
            Request::Subscribe(Topic::Pattern(_)) => "PSUBSCRIBE",
            Request::Unsubscribe(Topic::Channel(_)) => "UNSUBSCRIBE",
            Request::Unsubscribe(Topic::Pattern(_)) => "PUNSUBSCRIBE",
            Request::Ping => "PING",
        }
    }

    fn topic(&self) -> Option<&Topic> {
        match self {
            Request::Subscribe(t) | Request::Unsubscribe(t) => Some(t),
            Request::Ping => None,
        }
    }

    /// Whether `reply` answers this request.
    fn answered_by(&self, reply: &Incoming) -> bool {
        match (self.topic(), reply) {
            (None, _) => true,
            (Some(topic), Incoming::Confirmation { kind, name }) => {
                kind.eq_ignore_ascii_case(self.command().as_bytes())
                    && name.as_slice() == topic.name().as_bytes()
            }
            (Some(_), _) => false,
        }
    }
}

/// A value read from the pub/sub connection.
#[derive(Debug)]
enum Incoming {
    Message(redis::Msg),
    /// `subscribe`/`unsubscribe`/... confirmation of one channel or pattern.
    Confirmation {
        kind: Vec<u8>,
        name: Vec<u8>,
    },
    /// An error reply: the command was refused.
    Refused(String),
    /// Anything else (a PING's answer); kept for protocol error messages.
    Other(#[allow(dead_code)] Value),
}

/// Sorts a value read from the connection, in RESP2 (arrays) or RESP3
/// (push values).
fn classify(value: Value) -> Incoming {
    let (kind, name) = match &value {
        Value::ServerError(e) => {
            return Incoming::Refused(match e.details() {
                Some(d) => format!("{} {d}", e.code()),
                None => e.code().to_string(),
            })
        }
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(kind)) => (kind.to_ascii_lowercase(), items.get(1)),
            _ => return Incoming::Other(value),
        },
        Value::Push { kind, data } => {
            let kind: &[u8] = match kind {
                PushKind::Message => b"message",
                PushKind::PMessage => b"pmessage",
                PushKind::Subscribe => b"subscribe",
                PushKind::PSubscribe => b"psubscribe",
                PushKind::Unsubscribe => b"unsubscribe",
                PushKind::PUnsubscribe => b"punsubscribe",
                _ => return Incoming::Other(value),
            };
            (kind.to_vec(), data.first())
        }
        _ => return Incoming::Other(value),
    };
    match kind.as_slice() {
        b"message" | b"pmessage" => match redis::Msg::from_owned_value(value) {
            Some(msg) => Incoming::Message(msg),
            None => Incoming::Other(Value::Nil),
        },
        b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" => {
            let name = match name {
                Some(Value::BulkString(n)) => n.clone(),
                _ => Vec::new(),
            };
            Incoming::Confirmation { kind, name }
        }
        _ => Incoming::Other(value),
    }
}

/// Sends `requests` in one write and reads one answer for each, in order,
/// within one command timeout; messages that arrive in between are
/// dispatched. An answer that does not fit its request is a protocol error
/// (the connection is then replaced).
///
/// Any failed read here ends the connection, an interrupted one included:
/// after a failed `recv_response` redis-rs skips the next reply.
fn exchange(
    shared: &Shared,
    conn: &mut redis::Connection,
    requests: &[Request<'_>],
) -> RedisResult<Vec<Ack>> {
    let mut packed = Vec::new();
    for r in requests {
        let mut cmd = redis::cmd(r.command());
        if let Some(topic) = r.topic() {
            cmd.arg(topic.name());
        }
        cmd.write_packed_command(&mut packed);
    }
    let deadline = Instant::now() + shared.store.config.command_timeout;
    conn.send_packed_command(&packed)?;
    let mut acks = Vec::with_capacity(requests.len());
    for r in requests {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to {} within the command timeout", r.command()),
                )
                .into());
            }
            conn.set_read_timeout(Some(left))?;
            match classify(conn.recv_response()?) {
                Incoming::Message(msg) => dispatch(shared, msg),
                Incoming::Refused(reason) => {
                    acks.push(Err(reason));
                    break;
                }
                reply if r.answered_by(&reply) => {
                    acks.push(Ok(()));
                    break;
                }
                reply => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "unexpected reply on the pub/sub connection",
                        format!("{reply:?} in answer to {r:?}"),
                    )))
                }
            }
        }
    }
    Ok(acks)
}

/// Answers callers whose topic is confirmed or refused, or all of them
/// while Redis is unreachable (they will get `Reconnected` later).
fn release_waiters(shared: &Shared) {
    let connected = shared.connected.load(Ordering::SeqCst);
    let mut table = shared.table.lock();
    if table.waiting.is_empty() {
        return;
    }
    let Table {
        waiting,
        confirmed,
        refused,
        interest,
        ..
    } = &mut *table;
    waiting.retain(|(topic, ack)| {
        let answer = if !connected || confirmed.contains(topic) {
            Ok(())
        } else if let Some(reason) = refused.get(topic) {
            Err(reason.clone())
        } else {
            // Still pending, unless its caller has gone (the caller holds
            // its interest while it waits).
            return interest.contains_key(topic);
        };
        let _ = ack.try_send(answer);
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_read_is_recognised() {
        let e = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::Interrupted));
        assert!(is_interrupted(&e));
        let e = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(!is_interrupted(&e));
    }

    #[test]
    fn replies_are_sorted_in_resp2_and_resp3() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let confirm = classify(Value::Array(vec![
            bulk("subscribe"),
            bulk("c"),
            Value::Int(1),
        ]));
        assert!(Request::Subscribe(&Topic::Channel("c".into())).answered_by(&confirm));
        assert!(!Request::Subscribe(&Topic::Pattern("c".into())).answered_by(&confirm));
        assert!(!Request::Subscribe(&Topic::Channel("d".into())).answered_by(&confirm));
        let push = classify(Value::Push {
            kind: PushKind::PSubscribe,
            data: vec![bulk("p*"), Value::Int(1)],
        });
        assert!(Request::Subscribe(&Topic::Pattern("p*".into())).answered_by(&push));
        let msg = classify(Value::Array(vec![bulk("message"), bulk("c"), bulk("hi")]));
        assert!(matches!(msg, Incoming::Message(m) if m.get_payload_bytes() == b"hi"));
        let pong = classify(Value::Array(vec![bulk("pong"), bulk("")]));
        assert!(Request::Ping.answered_by(&pong));
        let refused = redis::parse_redis_value(b"-NOPERM no permission\r\n").map(classify);
        assert!(
            matches!(&refused, Ok(Incoming::Refused(r)) if r == "NOPERM no permission"),
            "{refused:?}"
        );
    }

    #[test]
    fn lingering_is_bounded_and_due_topics_leave_confirmed() {
        let mut t = Table::default();
        let now = Instant::now();
        for i in 0..MAX_LINGERING + 10 {
            let topic = Topic::Channel(format!("c{i}"));
            t.confirmed.insert(topic.clone());
            t.lingering.push_back((topic, now));
        }
        let due = t.due_unsubscribes(now, Duration::from_secs(60));
        assert_eq!(due.len(), 10);
        assert_eq!(due[0], Topic::Channel("c0".into()));
        assert!(due.iter().all(|d| !t.confirmed.contains(d)));
        assert_eq!(t.lingering.len(), MAX_LINGERING);
        let due = t.due_unsubscribes(now + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(due.len(), MAX_LINGERING);
        assert!(t.confirmed.is_empty());
    }
}
