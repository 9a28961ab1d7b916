//! The one place that names Redis keys and channels.
//!
//! Every group of keys that one script touches shares a hash tag
//! `{<ns>:<kind>:<name>}` (DESIGN rule 9), so each lock, semaphore, fan-out
//! job and queue lives on one Redis Cluster slot while different ones spread
//! over slots. Names are validated before any key is built.
//!
//! No two (namespace, feature, name) triples share a key or a channel:
//! - the namespace contains no `:`, `{` or `}` —
//!   [`Config`](crate::Config) only accepts `[A-Za-z0-9._-]` (see
//!   [`validate_namespace`]), and [`Keys::new`], which takes any string,
//!   percent-escapes `%`, `:`, `{` and `}` in it — so inside the tag the
//!   namespace ends at the first `:`;
//! - the feature is one fixed word without `:` (`lock`, `sem`, `fanout`,
//!   `queue`; `nodes` has no name part at all);
//! - the name may contain `:` but no `{` or `}` ([`validate_name`]), so it
//!   ends at the `}` that closes the tag;
//! - what follows the tag is one of the fixed suffixes below.
//!
//! So namespace `a:lock` with lock `x` cannot meet namespace `a` with lock
//! `lock:x`: the first is refused by `Config`, and `Keys::new("a:lock")`
//! builds `{a%3Alock:lock:x}`, not `{a:lock:x}`.
//!
//! Admin listings find queues, held locks, semaphores, clusters and
//! trackers with `SCAN MATCH` on [`Keys::scan_pattern`] and map each key
//! back with [`Keys::name_in_key`] (see [`Family`] for which key of each).
//!
//! | key / channel | type | holds |
//! |---|---|---|
//! | `{ns:nodes}` | zset | node id → membership deadline (ms, Redis clock) |
//! | `{ns:nodes}:info:<node>` | hash | host, pid, started, peer address of a node |
//! | `{ns}:wake:<node>` | channel | wakes this node's pub/sub thread to (un)subscribe |
//! | `{ns:lock:<name>}` | string | owner token of the lock, with a PX TTL |
//! | `{ns:lock:<name>}:fence` | string | fencing counter, never expires; never below the Redis clock in µs |
//! | `{ns:lock:<name>}:queue` | zset | FIFO waiters (fair mode): token → arrival number |
//! | `{ns:lock:<name>}:tickets` | hash | fair-mode waiter token → ticket deadline; `#seq` arrival counter |
//! | `{ns:lock:<name>}:released` | channel | published on release |
//! | `{ns:sem:<name>}:holders` | zset | permit id → lease deadline |
//! | `{ns:sem:<name>}:fence` | string | fencing counter, as for locks |
//! | `{ns:sem:<name>}:grants` | hash | permit id → its fencing token (live permits) |
//! | `{ns:sem:<name>}:queue` | zset | FIFO waiters (fair mode): permit id → arrival number |
//! | `{ns:sem:<name>}:tickets` | hash | fair-mode waiter → ticket deadline; `#seq` arrival counter |
//! | `{ns:sem:<name>}:released` | channel | published on release |
//! | `{ns:fanout:<id>}` | string | leader token with lease |
//! | `{ns:fanout:<id>}:result` | string | serialized outcome, kept briefly |
//! | `{ns:fanout:<id>}:fence` | string | leadership fencing counter, kept a day after the last grant |
//! | `{ns:fanout:<id>}:done` | channel | published when the outcome is stored |
//! | `{ns:paired:<id>}` | string | paired task: the holder's owner token, `PX` lease |
//! | `{ns:paired:<id>}:record` | hash | paired task record: state, attempt, max, fence, owner, node, payload, reason, times; kept for the retention once finished |
//! | `{ns:paired:<id>}:fence` | string | paired task fencing counter (expires with the finished record) |
//! | `{ns:paired:<id>}:events` | channel | `done` / `open` / `failed` when the holder reports |
//! | `{ns:phash:<h>}` | hash | paired tasks kept in a hash (the seed's `hlock`): field → holder's owner token |
//! | `{ns:phash:<h>}:leases` | zset | field → holder's lease deadline (ms, Redis clock) |
//! | `{ns:phash:<h>}:record:<field>` / `:fence:<field>` / `:events:<field>` | hash / string / channel | as for `{ns:paired:<id>}` |
//! | `{ns:queue:<q>}:ready` | zset | ready task ids by priority, then arrival |
//! | `{ns:queue:<q>}:delayed` | zset | delayed / backing-off task ids by run-at (ms) |
//! | `{ns:queue:<q>}:running` | zset | running task ids by lease deadline (ms) |
//! | `{ns:queue:<q>}:ended` | zset | tasks ended `ok`/`cancelled` by end time (bounded retention) |
//! | `{ns:queue:<q>}:failed` | zset | tasks ended `failed` by end time |
//! | `{ns:queue:<q>}:marker` | list | wake-up markers workers block on (`BLPOP`) |
//! | `{ns:queue:<q>}:seq` | string | arrival counter |
//! | `{ns:queue:<q>}:task:<id>` | hash | the task record: state, data, attempts, failures, lost runs, fence, claim token, times, worker, error, result |
//! | `{ns:queue:<q>}:claim:<token>` | string | the task a worker's claim took (`""` once handed back), kept a few leases (`PX`) |
//! | `{ns:queue:<q>}:events` | channel | every task event of the queue (JSON) |
//! | `{ns:queue:<q>}:task:<id>:events` | channel | one task's events (JSON) |
//! | `{ns:queue:<q>}:task:<id>:control` | channel | control messages to a running task (`cancel`) |
//! | `{ns:cluster:<c>}:meta` | hash | cluster record: `created` (ms), `rebalance` flag set when a worker joins |
//! | `{ns:cluster:<c>}:jobs` | zset | every job id → arrival number |
//! | `{ns:cluster:<c>}:pending` | zset | unassigned job ids → arrival number (assigned in this order) |
//! | `{ns:cluster:<c>}:seq` | string | arrival counter |
//! | `{ns:cluster:<c>}:fence` | string | fencing counter of assignments (`max(n + 1, now_us)`) |
//! | `{ns:cluster:<c>}:job:<id>` | hash | payload, seq, added (ms), worker, token, assigned (ms) |
//! | `{ns:cluster:<c>}:workers` | zset | worker id → membership lease deadline (ms, Redis clock) |
//! | `{ns:cluster:<c>}:worker:<w>` | hash | session token, capacity, node, joined (ms) |
//! | `{ns:cluster:<c>}:worker:<w>:jobs` | hash | the worker's jobs: job id → fencing token |
//! | `{ns:cluster:<c>}:worker:<w>:events` | channel | `add` / `delete` / `reaped` messages to one worker (JSON) |
//! | `{ns:cluster:<c>}:master` | string | the active master's token, `PX` lease |
//! | `{ns:cluster:<c>}:wake` | channel | wakes the masters: a job was added or deleted, a worker joined or left, a master resigned |
//! | `{ns:tracker:<t>}:task:<task>` | hash | chunk tracker task record: state, info, attempts, attempt, timeout, errors, last error, fence, consumer, reported, times; kept for the retention once completed or failed |
//! | `{ns:tracker:<t>}:chunks:<task>` | hash | the task's locked chunks: chunk → owner token |
//! | `{ns:tracker:<t>}:locks` | zset | `task\nchunk` → chunk lock deadline (ms, Redis clock; renewed by the holder's heartbeat) |
//! | `{ns:tracker:<t>}:since` | zset | `task\nchunk` → when the chunk was locked (ms; for `timeout_locks(age)`) |
//! | `{ns:tracker:<t>}:released` | list | released tasks waiting for a consumer, oldest first |
//! | `{ns:tracker:<t>}:processing` | zset | task → processing deadline (ms) of its running attempt |
//! | `{ns:tracker:<t>}:stats` | hash | `completed` and `failed` counters |
//! | `{ns:tracker:<t>}:wake` | channel | published when a task is released (wakes consumers) |
//! | `{ns:tracker:<t>}:sweep` | channel | published when a new earliest deadline is added (wakes sweepers) |

use crate::error::{Error, Result};

/// Longest name (lock, queue, job id, ...) accepted, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Longest node id accepted, in bytes (it must fit the peer wire format's
/// line limit next to the namespace, a nonce and a MAC).
pub const MAX_NODE_ID_LEN: usize = 128;

/// Checks a namespace: 1 to [`MAX_NAMESPACE_LEN`] bytes of
/// `[A-Za-z0-9._-]`. No `:` (keys could collide across namespaces), no
/// spaces or `|` (the namespace travels in the space-separated peer wire
/// format and in its MAC input), no braces (hash tags).
///
/// ```
/// assert!(redswarm::keys::validate_namespace("billing.prod-2").is_ok());
/// assert!(redswarm::keys::validate_namespace("a:lock").is_err());
/// assert!(redswarm::keys::validate_namespace("a b").is_err());
/// ```
pub fn validate_namespace(ns: &str) -> Result<()> {
    validate_token("namespace", ns, MAX_NAMESPACE_LEN)
}

/// Checks a node id: 1 to [`MAX_NODE_ID_LEN`] bytes of `[A-Za-z0-9._-]`
/// (same reasons as [`validate_namespace`]).
///
/// ```
/// assert!(redswarm::keys::validate_node_id("worker-7.example.com").is_ok());
/// assert!(redswarm::keys::validate_node_id("a|b").is_err());
/// assert!(redswarm::keys::validate_node_id("").is_err());
/// ```
pub fn validate_node_id(id: &str) -> Result<()> {
    validate_token("node id", id, MAX_NODE_ID_LEN)
}

fn validate_token(what: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(
            what,
            format!("is {} bytes, the limit is {max}", s.len()),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(
            what,
            format!("contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// The namespace as it appears in keys: `%`, `:`, `{` and `}` are
/// percent-escaped, so the namespace ends at the first `:` of a tag even
/// when [`Keys::new`] gets one `Config` would refuse. Valid namespaces are
/// unchanged.
fn escape_namespace(ns: &str) -> String {
    let mut out = String::with_capacity(ns.len());
    for c in ns.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// Checks a user-supplied name: not empty, at most [`MAX_NAME_LEN`] bytes,
/// no `{`/`}` (they would break hash tags) and no control characters.
///
/// ```
/// assert!(redswarm::keys::validate_name("lock name", "orders:42").is_ok());
/// assert!(redswarm::keys::validate_name("lock name", "").is_err());
/// assert!(redswarm::keys::validate_name("lock name", "a{b}").is_err());
/// ```
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            what,
            format!("is {} bytes, the limit is {MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '{' || *c == '}' || c.is_control())
    {
        return Err(Error::invalid(
            what,
            format!("contains {c:?}; braces and control characters are not allowed"),
        ));
    }
    Ok(())
}

/// Builds key and channel names for one namespace.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = redswarm::keys::Keys::new("app");
/// assert_eq!(keys.lock("orders")?.owner, "{app:lock:orders}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Keys {
    ns: String,
    /// `ns` as written into keys (see `escape_namespace`).
    tag_ns: String,
}

/// Keys of one lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockKeys {
    /// Owner token with the lock's TTL.
    pub owner: String,
    /// Fencing counter.
    pub fence: String,
    /// FIFO waiter queue (fair mode).
    pub queue: String,
    /// Waiter ticket deadlines and arrival counter (fair mode).
    pub tickets: String,
    /// Release notification channel.
    pub released: String,
}

/// Keys of one semaphore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreKeys {
    /// Permit id → lease deadline.
    pub holders: String,
    /// Fencing counter.
    pub fence: String,
    /// FIFO waiter queue (fair mode).
    pub queue: String,
    /// Waiter ticket deadlines and arrival counter (fair mode).
    pub tickets: String,
    /// Permit id → its fencing token, so a retried grant returns the same one.
    pub grants: String,
    /// Release notification channel.
    pub released: String,
}

/// Keys of one fan-out job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanoutKeys {
    /// Leader token with lease.
    pub leader: String,
    /// Stored outcome.
    pub result: String,
    /// Leadership fencing counter.
    pub fence: String,
    /// Completion channel.
    pub done: String,
}

/// Keys of one paired task (see [`Keys::paired`] and
/// [`Keys::paired_in_hash`]); all share one hash tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairedKeys {
    /// Where the holder's token lives: a string key with a `PX` lease, or
    /// (with `field` set) a hash whose `field` holds it.
    pub owner: String,
    /// The hash field of the task (hash form only).
    pub field: Option<String>,
    /// Zset of field → lease deadline (hash form only).
    pub leases: Option<String>,
    /// The task record (hash).
    pub record: String,
    /// Fencing counter.
    pub fence: String,
    /// Channel published on when the holder reports.
    pub events: String,
}

/// Keys of one task queue (all share the hash tag `{ns:queue:<q>}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    /// Hash tag base `{ns:queue:<q>}`; task hashes are `<base>:task:<id>`.
    pub base: String,
    /// Zset of ready task ids, by priority then arrival.
    pub ready: String,
    /// Zset of delayed (and backing-off) task ids by run-at (ms).
    pub delayed: String,
    /// Zset of running task ids by lease deadline (ms).
    pub running: String,
    /// Zset of tasks ended `ok` or `cancelled`, by end time (ms).
    pub ended: String,
    /// Zset of tasks ended `failed`, by end time (ms).
    pub failed: String,
    /// List of wake-up markers workers block on (not tasks: losing one
    /// loses nothing).
    pub marker: String,
    /// Arrival counter (orders tasks of equal priority).
    pub seq: String,
    /// Queue-wide event channel.
    pub events: String,
}

/// Keys of one chunk tracker (all share the hash tag `{ns:tracker:<t>}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerKeys {
    /// Hash tag base `{ns:tracker:<t>}`.
    pub base: String,
    /// Prefix of task records (`<base>:task:`).
    pub task_prefix: String,
    /// Prefix of chunk hashes (`<base>:chunks:`).
    pub chunks_prefix: String,
    /// Zset of chunk locks by deadline.
    pub locks: String,
    /// Zset of chunk locks by the time they were taken.
    pub since: String,
    /// List of released tasks.
    pub released: String,
    /// Zset of running attempts by processing deadline.
    pub processing: String,
    /// Hash of counters.
    pub stats: String,
    /// Channel that wakes consumers.
    pub wake: String,
    /// Channel that wakes sweepers.
    pub sweep: String,
}

impl TrackerKeys {
    /// The record of task `task` (validated like every name).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").tracker("t")?;
    /// assert_eq!(k.task("a:1")?, "{ns:tracker:t}:task:a:1");
    /// assert!(k.task("").is_err());
    /// # Ok(()) }
    /// ```
    pub fn task(&self, task: &str) -> Result<String> {
        validate_name("tracker task name", task)?;
        Ok(format!("{}{task}", self.task_prefix))
    }

    /// The chunks hash of task `task`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").tracker("t")?;
    /// assert_eq!(k.chunks("a")?, "{ns:tracker:t}:chunks:a");
    /// # Ok(()) }
    /// ```
    pub fn chunks(&self, task: &str) -> Result<String> {
        validate_name("tracker task name", task)?;
        Ok(format!("{}{task}", self.chunks_prefix))
    }
}

/// Keys of one job cluster (all share the hash tag `{ns:cluster:<c>}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterKeys {
    /// Hash tag base `{ns:cluster:<c>}`.
    pub base: String,
    /// Cluster record (creation time, rebalance flag).
    pub meta: String,
    /// Zset of every job id by arrival number.
    pub jobs: String,
    /// Zset of unassigned job ids by arrival number.
    pub pending: String,
    /// Arrival counter.
    pub seq: String,
    /// Fencing counter of assignments.
    pub fence: String,
    /// Zset of worker ids by membership lease deadline (ms).
    pub workers: String,
    /// The active master's token with its lease.
    pub master: String,
    /// Channel that wakes the masters.
    pub wake: String,
}

impl Keys {
    /// Key builder for namespace `ns` (validated by [`Config`](crate::Config);
    /// any other string is escaped so it cannot collide with a valid one).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redswarm::keys::Keys;
    /// assert_eq!(Keys::new("a").lock("lock:x")?.owner, "{a:lock:lock:x}");
    /// assert_eq!(Keys::new("a:lock").lock("x")?.owner, "{a%3Alock:lock:x}");
    /// # Ok(()) }
    /// ```
    pub fn new(ns: impl Into<String>) -> Keys {
        let ns = ns.into();
        Keys {
            tag_ns: escape_namespace(&ns),
            ns,
        }
    }

    /// The namespace.
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").namespace(), "ns");
    /// ```
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn tag(&self, kind: &str, what: &'static str, name: &str) -> Result<String> {
        validate_name(what, name)?;
        Ok(format!("{{{}:{kind}:{name}}}", self.tag_ns))
    }

    /// The node membership zset.
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").nodes(), "{ns:nodes}");
    /// ```
    pub fn nodes(&self) -> String {
        format!("{{{}:nodes}}", self.tag_ns)
    }

    /// The info hash of a node (same slot as [`Keys::nodes`]).
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").node_info("n1"), "{ns:nodes}:info:n1");
    /// ```
    pub fn node_info(&self, node: &str) -> String {
        format!("{{{}:nodes}}:info:{node}", self.tag_ns)
    }

    /// Channel that wakes a node's pub/sub thread.
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").wake_channel("n1"), "{ns}:wake:n1");
    /// ```
    pub fn wake_channel(&self, node: &str) -> String {
        format!("{{{}}}:wake:{node}", self.tag_ns)
    }

    /// Keys of lock `name`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").lock("a")?;
    /// assert_eq!(k.fence, "{ns:lock:a}:fence");
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: &str) -> Result<LockKeys> {
        let base = self.tag("lock", "lock name", name)?;
        Ok(LockKeys {
            fence: format!("{base}:fence"),
            queue: format!("{base}:queue"),
            tickets: format!("{base}:tickets"),
            released: format!("{base}:released"),
            owner: base,
        })
    }

    /// Keys of semaphore `name`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").semaphore("s")?;
    /// assert_eq!(k.holders, "{ns:sem:s}:holders");
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str) -> Result<SemaphoreKeys> {
        let base = self.tag("sem", "semaphore name", name)?;
        Ok(SemaphoreKeys {
            holders: format!("{base}:holders"),
            fence: format!("{base}:fence"),
            queue: format!("{base}:queue"),
            tickets: format!("{base}:tickets"),
            grants: format!("{base}:grants"),
            released: format!("{base}:released"),
        })
    }

    /// Keys of fan-out job `id`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").fanout("j")?;
    /// assert_eq!(k.result, "{ns:fanout:j}:result");
    /// # Ok(()) }
    /// ```
    pub fn fanout(&self, id: &str) -> Result<FanoutKeys> {
        let base = self.tag("fanout", "job id", id)?;
        Ok(FanoutKeys {
            result: format!("{base}:result"),
            fence: format!("{base}:fence"),
            done: format!("{base}:done"),
            leader: base,
        })
    }

    /// Keys of paired task `id`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").paired("t")?;
    /// assert_eq!(k.owner, "{ns:paired:t}");
    /// assert_eq!(k.record, "{ns:paired:t}:record");
    /// # Ok(()) }
    /// ```
    pub fn paired(&self, id: &str) -> Result<PairedKeys> {
        let base = self.tag("paired", "paired task id", id)?;
        Ok(PairedKeys {
            field: None,
            leases: None,
            record: format!("{base}:record"),
            fence: format!("{base}:fence"),
            events: format!("{base}:events"),
            owner: base,
        })
    }

    /// Keys of the paired task kept as `field` of hash `hash` (the seed's
    /// `hlock`); every task of one hash lives on the hash's slot.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").paired_in_hash("h", "f")?;
    /// assert_eq!(k.owner, "{ns:phash:h}");
    /// assert_eq!(k.record, "{ns:phash:h}:record:f");
    /// # Ok(()) }
    /// ```
    pub fn paired_in_hash(&self, hash: &str, field: &str) -> Result<PairedKeys> {
        let base = self.tag("phash", "paired hash name", hash)?;
        validate_name("paired hash field", field)?;
        Ok(PairedKeys {
            field: Some(field.to_string()),
            leases: Some(format!("{base}:leases")),
            record: format!("{base}:record:{field}"),
            fence: format!("{base}:fence:{field}"),
            events: format!("{base}:events:{field}"),
            owner: base,
        })
    }

    /// Keys of task queue `queue`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").queue("q")?;
    /// assert_eq!(k.running, "{ns:queue:q}:running");
    /// # Ok(()) }
    /// ```
    pub fn queue(&self, queue: &str) -> Result<QueueKeys> {
        let base = self.tag("queue", "queue name", queue)?;
        Ok(QueueKeys {
            ready: format!("{base}:ready"),
            delayed: format!("{base}:delayed"),
            running: format!("{base}:running"),
            ended: format!("{base}:ended"),
            failed: format!("{base}:failed"),
            marker: format!("{base}:marker"),
            seq: format!("{base}:seq"),
            events: format!("{base}:events"),
            base,
        })
    }

    /// Keys of job cluster `cluster`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.pending, "{ns:cluster:c}:pending");
    /// # Ok(()) }
    /// ```
    pub fn cluster(&self, cluster: &str) -> Result<ClusterKeys> {
        let base = self.tag("cluster", "cluster id", cluster)?;
        Ok(ClusterKeys {
            meta: format!("{base}:meta"),
            jobs: format!("{base}:jobs"),
            pending: format!("{base}:pending"),
            seq: format!("{base}:seq"),
            fence: format!("{base}:fence"),
            workers: format!("{base}:workers"),
            master: format!("{base}:master"),
            wake: format!("{base}:wake"),
            base,
        })
    }

    /// Keys of chunk tracker `tracker`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").tracker("ogg")?;
    /// assert_eq!(k.released, "{ns:tracker:ogg}:released");
    /// # Ok(()) }
    /// ```
    pub fn tracker(&self, tracker: &str) -> Result<TrackerKeys> {
        let base = self.tag("tracker", "tracker name", tracker)?;
        Ok(TrackerKeys {
            task_prefix: format!("{base}:task:"),
            chunks_prefix: format!("{base}:chunks:"),
            locks: format!("{base}:locks"),
            since: format!("{base}:since"),
            released: format!("{base}:released"),
            processing: format!("{base}:processing"),
            stats: format!("{base}:stats"),
            wake: format!("{base}:wake"),
            sweep: format!("{base}:sweep"),
            base,
        })
    }
}

/// A kind of named thing the admin listings discover with `SCAN`
/// ([`Keys::scan_pattern`], [`Keys::name_in_key`]).
///
/// ```
/// let f = redswarm::keys::Family::Queue;
/// assert_eq!(f.word(), "queue");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Task queues: any of their `ready`, `delayed`, `running`, `ended`,
    /// `failed` or `seq` keys (never a task hash).
    Queue,
    /// Locks that are held now: the owner key (it ends at the tag's `}`).
    Lock,
    /// Semaphores with live or unexpired permits: the holders zset.
    Semaphore,
    /// Job clusters: the `meta` hash every cluster gets when opened.
    Cluster,
    /// Chunk trackers: any of their `since`, `stats`, `locks`, `released`
    /// or `processing` keys (never a task record).
    Tracker,
}

impl Family {
    /// The feature word inside the hash tag (`{ns:<word>:<name>}`).
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Family::Semaphore.word(), "sem");
    /// ```
    pub fn word(&self) -> &'static str {
        match self {
            Family::Queue => "queue",
            Family::Lock => "lock",
            Family::Semaphore => "sem",
            Family::Cluster => "cluster",
            Family::Tracker => "tracker",
        }
    }

    /// What follows the tag in the keys the pattern matches (a `SCAN`
    /// glob: `[...]` is one character of the set). Each is chosen so
    /// that no per-item key (task, job, chunk record) matches: a million
    /// task hashes are never returned, only filtered out by Redis.
    fn suffix_glob(&self) -> &'static str {
        match self {
            // ready, delayed, running, ended, failed, seq (not task:, claim:, marker).
            Family::Queue => ":[rdefs]*",
            Family::Lock => "",
            Family::Semaphore => ":holders",
            Family::Cluster => ":meta",
            // since, stats, locks, released, processing (not task:, chunks:).
            Family::Tracker => ":[slrp]*",
        }
    }
}

/// `s` with the `SCAN MATCH` glob characters (`*`, `?`, `[`, `]`, `\`)
/// escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Keys {
    /// The `SCAN MATCH` pattern that finds the things of `family` in this
    /// namespace (see [`Family`] for which key of each it matches). Use
    /// [`Keys::name_in_key`] on every key it returns.
    ///
    /// ```
    /// use redswarm::keys::{Family, Keys};
    /// assert_eq!(Keys::new("ns").scan_pattern(Family::Lock), "{ns:lock:*}");
    /// assert_eq!(Keys::new("ns").scan_pattern(Family::Semaphore), "{ns:sem:*}:holders");
    /// ```
    pub fn scan_pattern(&self, family: Family) -> String {
        format!(
            "{{{}:{}:*}}{}",
            glob_escape(&self.tag_ns),
            family.word(),
            family.suffix_glob()
        )
    }

    /// The name of the `family` thing that `key` belongs to, or `None` if
    /// the key is not one this namespace builds for that family (a glob
    /// match is looser than the key shapes: the name must be valid and end
    /// at the first `}`).
    ///
    /// ```
    /// use redswarm::keys::{Family, Keys};
    /// let k = Keys::new("ns");
    /// assert_eq!(k.name_in_key(Family::Queue, "{ns:queue:mail:out}:ready").as_deref(), Some("mail:out"));
    /// assert_eq!(k.name_in_key(Family::Queue, "{ns:queue:mail}:task:1"), None);
    /// assert_eq!(k.name_in_key(Family::Lock, "{ns:lock:a}:fence"), None);
    /// ```
    pub fn name_in_key(&self, family: Family, key: &str) -> Option<String> {
        let prefix = format!("{{{}:{}:", self.tag_ns, family.word());
        let rest = key.strip_prefix(&prefix)?;
        let (name, after) = rest.split_once('}')?;
        validate_name("name", name).ok()?;
        let fits = match family {
            Family::Queue => matches!(
                after,
                ":ready" | ":delayed" | ":running" | ":ended" | ":failed" | ":seq"
            ),
            Family::Lock => after.is_empty(),
            Family::Semaphore => after == ":holders",
            Family::Cluster => after == ":meta",
            Family::Tracker => matches!(
                after,
                ":since" | ":stats" | ":locks" | ":released" | ":processing"
            ),
        };
        fits.then(|| name.to_string())
    }
}

impl ClusterKeys {
    /// Hash of one job.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.job("7"), "{ns:cluster:c}:job:7");
    /// # Ok(()) }
    /// ```
    pub fn job(&self, id: &str) -> String {
        format!("{}{id}", self.job_prefix())
    }

    /// Prefix of job hashes (`<base>:job:`), for scripts that derive a
    /// job's key from its id (same hash tag, same slot).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.job_prefix(), "{ns:cluster:c}:job:");
    /// # Ok(()) }
    /// ```
    pub fn job_prefix(&self) -> String {
        format!("{}:job:", self.base)
    }

    /// Prefix of worker keys (`<base>:worker:`); a worker's record is
    /// `<prefix><w>`, its jobs `<prefix><w>:jobs`, its channel
    /// `<prefix><w>:events`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.worker_prefix(), "{ns:cluster:c}:worker:");
    /// # Ok(()) }
    /// ```
    pub fn worker_prefix(&self) -> String {
        format!("{}:worker:", self.base)
    }

    /// Record (hash) of worker `w`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.worker("w1"), "{ns:cluster:c}:worker:w1");
    /// # Ok(()) }
    /// ```
    pub fn worker(&self, w: &str) -> String {
        format!("{}{w}", self.worker_prefix())
    }

    /// Jobs of worker `w` (hash: job id → fencing token).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.worker_jobs("w1"), "{ns:cluster:c}:worker:w1:jobs");
    /// # Ok(()) }
    /// ```
    pub fn worker_jobs(&self, w: &str) -> String {
        format!("{}{w}:jobs", self.worker_prefix())
    }

    /// Event channel of worker `w`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").cluster("c")?;
    /// assert_eq!(k.worker_events("w1"), "{ns:cluster:c}:worker:w1:events");
    /// # Ok(()) }
    /// ```
    pub fn worker_events(&self, w: &str) -> String {
        format!("{}{w}:events", self.worker_prefix())
    }
}

impl Keys {
    /// The `PSUBSCRIBE` pattern of every queue's event channel
    /// (`{ns:queue:<q>}:events`), for watchers of all queues at once (the
    /// status server's progress column). A task's own channel
    /// (`...}:task:<id>:events`) does not match: a name holds no `}`.
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").queue_events_pattern(), "{ns:queue:*}:events");
    /// ```
    pub fn queue_events_pattern(&self) -> String {
        format!("{{{}:queue:*}}:events", self.tag_ns)
    }

    /// The queue whose event channel `channel` is, or `None` when it is
    /// not one (the inverse of [`QueueKeys::events`]).
    ///
    /// ```
    /// let k = redswarm::keys::Keys::new("ns");
    /// assert_eq!(k.queue_of_events_channel("{ns:queue:mail}:events").as_deref(), Some("mail"));
    /// assert_eq!(k.queue_of_events_channel("{ns:queue:mail}:task:1:events"), None);
    /// assert_eq!(k.queue_of_events_channel("{other:queue:mail}:events"), None);
    /// ```
    pub fn queue_of_events_channel(&self, channel: &str) -> Option<String> {
        let name = channel
            .strip_prefix(&format!("{{{}:queue:", self.tag_ns))?
            .strip_suffix("}:events")?;
        validate_name("queue name", name).ok()?;
        Some(name.to_string())
    }
}

impl QueueKeys {
    /// Hash of one task.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").queue("q")?;
    /// assert_eq!(k.task("7"), "{ns:queue:q}:task:7");
    /// # Ok(()) }
    /// ```
    pub fn task(&self, id: &str) -> String {
        format!("{}:task:{id}", self.base)
    }

    /// Event channel of one task.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").queue("q")?;
    /// assert_eq!(k.task_events("7"), "{ns:queue:q}:task:7:events");
    /// # Ok(()) }
    /// ```
    pub fn task_events(&self, id: &str) -> String {
        format!("{}:task:{id}:events", self.base)
    }

    /// Prefix of task hashes (`<base>:task:`), for scripts that derive a
    /// task's key from its id (same hash tag, same slot).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").queue("q")?;
    /// assert_eq!(k.task_prefix(), "{ns:queue:q}:task:");
    /// # Ok(()) }
    /// ```
    pub fn task_prefix(&self) -> String {
        format!("{}:task:", self.base)
    }

    /// Control channel of one task.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").queue("q")?;
    /// assert_eq!(k.task_control("7"), "{ns:queue:q}:task:7:control");
    /// # Ok(()) }
    /// ```
    pub fn task_control(&self, id: &str) -> String {
        format!("{}:task:{id}:control", self.base)
    }

    /// A worker's claim token → the task it claimed, kept a few leases so a
    /// claim whose reply was lost can be recovered.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let k = redswarm::keys::Keys::new("ns").queue("q")?;
    /// assert_eq!(k.claim("c1"), "{ns:queue:q}:claim:c1");
    /// # Ok(()) }
    /// ```
    pub fn claim(&self, token: &str) -> String {
        format!("{}:claim:{token}", self.base)
    }
}

/// The hash tag of a key (the part between the first `{` and the next `}`),
/// or the whole key; keys with equal tags share a cluster slot.
#[cfg(test)]
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        let k = Keys::new("ns");
        assert!(k.lock("").is_err());
        assert!(k.lock(&"x".repeat(513)).is_err());
        assert!(k.lock(&"x".repeat(512)).is_ok());
        assert!(k.lock("a\nb").is_err());
        assert!(k.queue("}").is_err());
    }

    #[test]
    fn groups_share_a_tag() {
        let k = Keys::new("ns").queue("q").unwrap();
        assert_eq!(hash_tag(&k.running), hash_tag(&k.task("1")));
        let p = Keys::new("ns").paired_in_hash("h", "f").unwrap();
        for k in [&p.record, &p.fence, &p.events, p.leases.as_ref().unwrap()] {
            assert_eq!(hash_tag(&p.owner), hash_tag(k));
        }
        assert!(Keys::new("ns").paired_in_hash("h", "").is_err());

        let c = Keys::new("ns").cluster("c").unwrap();
        for key in [
            c.job("1"),
            c.worker_jobs("w"),
            c.master.clone(),
            c.fence.clone(),
        ] {
            assert_eq!(hash_tag(&key), hash_tag(&c.pending));
        }
        assert_eq!(
            hash_tag(&Keys::new("ns").nodes()),
            hash_tag(&Keys::new("ns").node_info("x"))
        );
        let t = Keys::new("ns").tracker("t").unwrap();
        for key in [
            t.task("a").unwrap(),
            t.chunks("a").unwrap(),
            t.locks.clone(),
        ] {
            assert_eq!(hash_tag(&key), hash_tag(&t.processing));
        }
        assert_eq!(hash_tag("plain"), "plain");
    }

    /// (name built, the triple that built it).
    type Built = Vec<(String, String)>;

    /// Every key (and, separately, every channel) a (namespace, feature,
    /// name) triple produces, tagged with the triple.
    fn all_names(ns: &str, name: &str) -> (Built, Built) {
        let k = Keys::new(ns);
        let mut keys = Vec::new();
        let mut channels = Vec::new();
        let who = |feature: &str| format!("ns={ns:?} {feature} {name:?}");
        if let Ok(l) = k.lock(name) {
            for key in [l.owner, l.fence, l.queue, l.tickets] {
                keys.push((key, who("lock")));
            }
            channels.push((l.released, who("lock")));
        }
        if let Ok(m) = k.semaphore(name) {
            for key in [m.holders, m.fence, m.queue, m.tickets] {
                keys.push((key, who("semaphore")));
            }
            channels.push((m.released, who("semaphore")));
        }
        if let Ok(f) = k.fanout(name) {
            keys.push((f.leader, who("fanout")));
            keys.push((f.result, who("fanout")));
            channels.push((f.done, who("fanout")));
        }
        if let Ok(q) = k.queue(name) {
            for key in [
                q.ready.clone(),
                q.delayed.clone(),
                q.running.clone(),
                q.ended.clone(),
                q.failed.clone(),
                q.marker.clone(),
                q.seq.clone(),
            ] {
                keys.push((key, who("queue")));
            }
            channels.push((q.events.clone(), who("queue")));
            for id in ["1", "1:events", "x:control", "ready"] {
                keys.push((q.task(id), who(&format!("queue task {id:?}"))));
                channels.push((q.task_events(id), who(&format!("queue task {id:?}"))));
                channels.push((q.task_control(id), who(&format!("queue task {id:?}"))));
            }
        }
        if let Ok(t) = k.tracker(name) {
            for key in [
                t.locks.clone(),
                t.since.clone(),
                t.released.clone(),
                t.processing.clone(),
                t.stats.clone(),
            ] {
                keys.push((key, who("tracker")));
            }
            channels.push((t.wake.clone(), who("tracker")));
            channels.push((t.sweep.clone(), who("tracker")));
            for task in ["1", "locks", "chunks:1", "task:1"] {
                let w = who(&format!("tracker task {task:?}"));
                keys.push((t.task(task).unwrap(), w.clone()));
                keys.push((t.chunks(task).unwrap(), w));
            }
        }
        // The node id plays the name's part for the per-node names.
        keys.push((k.node_info(name), who("node info")));
        channels.push((k.wake_channel(name), who("wake")));
        (keys, channels)
    }

    #[test]
    fn no_two_triples_share_a_key_or_a_channel() {
        let namespaces = [
            "a",
            "a:lock",
            "a:lock:x",
            "a%3Alock",
            "a%",
            "lock",
            "a:",
            ":",
            "",
            "a{b",
            "a}b",
            "{a}",
            "%25",
            "a:b:c",
            "a:sem",
            "a:queue:q",
            "a:nodes",
            "nodes",
            "ns",
            "a-b.c_d",
        ];
        let names = [
            "x", "lock:x", "sem:x", "queue:x", "fanout:x", "nodes", "x:fence", "fence", ":", "a:b",
            "b", "lock", "released", "task:1", "x:task:1", "%3A", "*", "a b", "info:x", "x}:fence",
            "",
        ];
        let mut seen_keys: std::collections::HashMap<String, String> = Default::default();
        let mut seen_channels: std::collections::HashMap<String, String> = Default::default();
        let mut count = 0;
        for ns in namespaces {
            // The per-namespace key, once.
            let nodes = Keys::new(ns).nodes();
            let who = format!("ns={ns:?} nodes");
            if let Some(other) = seen_keys.insert(nodes.clone(), who.clone()) {
                panic!("key {nodes:?} built for both [{other}] and [{who}]");
            }
            for name in names {
                let (keys, channels) = all_names(ns, name);
                for (key, who) in keys {
                    count += 1;
                    if let Some(other) = seen_keys.insert(key.clone(), who.clone()) {
                        panic!("key {key:?} built for both [{other}] and [{who}]");
                    }
                }
                for (ch, who) in channels {
                    if let Some(other) = seen_channels.insert(ch.clone(), who.clone()) {
                        panic!("channel {ch:?} built for both [{other}] and [{who}]");
                    }
                }
            }
        }
        assert!(count > 1000, "only {count} keys checked");
        // The collision from the issue, spelled out.
        assert_ne!(
            Keys::new("a:lock").lock("x").unwrap().owner,
            Keys::new("a").lock("lock:x").unwrap().owner
        );
    }

    /// Every key a family's listing should find is found by its pattern
    /// (checked with Redis's own glob rules in tests/admin.rs) and maps back
    /// to its name; per-item keys never do.
    #[test]
    fn name_in_key_finds_the_family_keys_only() {
        let k = Keys::new("ns");
        let q = k.queue("a:b").unwrap();
        for key in [
            &q.ready, &q.delayed, &q.running, &q.ended, &q.failed, &q.seq,
        ] {
            assert_eq!(
                k.name_in_key(Family::Queue, key).as_deref(),
                Some("a:b"),
                "{key}"
            );
        }
        for key in [q.task("1"), q.claim("c"), q.marker.clone(), q.task("r")] {
            assert_eq!(k.name_in_key(Family::Queue, &key), None, "{key}");
        }
        let l = k.lock("x").unwrap();
        assert_eq!(k.name_in_key(Family::Lock, &l.owner).as_deref(), Some("x"));
        assert_eq!(k.name_in_key(Family::Lock, &l.fence), None);
        assert_eq!(k.name_in_key(Family::Queue, &l.owner), None);
        let m = k.semaphore("s").unwrap();
        assert_eq!(
            k.name_in_key(Family::Semaphore, &m.holders).as_deref(),
            Some("s")
        );
        let c = k.cluster("c").unwrap();
        assert_eq!(
            k.name_in_key(Family::Cluster, &c.meta).as_deref(),
            Some("c")
        );
        assert_eq!(k.name_in_key(Family::Cluster, &c.job("meta")), None);
        let t = k.tracker("t").unwrap();
        for key in [&t.since, &t.stats, &t.locks, &t.released, &t.processing] {
            assert_eq!(
                k.name_in_key(Family::Tracker, key).as_deref(),
                Some("t"),
                "{key}"
            );
        }
        assert_eq!(k.name_in_key(Family::Tracker, &t.task("s").unwrap()), None);
        // Another namespace's keys are not ours.
        assert_eq!(Keys::new("n").name_in_key(Family::Lock, &l.owner), None);
        assert_eq!(
            Keys::new("a*[b").scan_pattern(Family::Lock),
            "{a\\*\\[b:lock:*}"
        );
    }

    #[test]
    fn valid_namespaces_are_not_escaped() {
        assert_eq!(Keys::new("my-app.prod_2").nodes(), "{my-app.prod_2:nodes}");
        assert_eq!(Keys::new("a:b").nodes(), "{a%3Ab:nodes}");
        assert_eq!(Keys::new("a:b").namespace(), "a:b");
        assert_eq!(hash_tag(&Keys::new("a}b").nodes()), "a%7Db:nodes");
    }

    #[test]
    fn namespace_and_node_id_charset() {
        for ok in ["a", "A-z.0_9", &"n".repeat(64)] {
            assert!(validate_namespace(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "a:b",
            "a b",
            "a|b",
            "a{b",
            "a%b",
            "é",
            "a\nb",
            &"n".repeat(65),
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
        assert!(validate_node_id(&"n".repeat(128)).is_ok());
        assert!(validate_node_id(&"n".repeat(129)).is_err());
        assert!(validate_node_id("host:1").is_err());
    }
}
