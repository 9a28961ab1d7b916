//! The one place that names Redis keys and channels.
//!
//! Every group of keys that one script touches shares a hash tag
//! `{<ns>:<kind>:<name>}` (DESIGN rule 9), so each lock, semaphore, fan-out
//! job and queue lives on one Redis Cluster slot while different ones spread
//! over slots. Names are validated before any key is built.
//!
//! | key / channel | type | holds |
//! |---|---|---|
//! | `{ns:nodes}` | zset | node id → membership deadline (ms, Redis clock) |
//! | `{ns:nodes}:info:<node>` | hash | host, pid, started, peer address of a node |
//! | `{ns}:wake:<node>` | channel | wakes this node's pub/sub thread to (un)subscribe |
//! | `{ns:lock:<name>}` | string | owner token of the lock, with a PX TTL |
//! | `{ns:lock:<name>}:fence` | string | fencing counter, never expires |
//! | `{ns:lock:<name>}:queue` | zset | FIFO waiters (fair mode): token → arrival number |
//! | `{ns:lock:<name>}:tickets` | hash | fair-mode waiter token → ticket deadline; `#seq` arrival counter |
//! | `{ns:lock:<name>}:released` | channel | published on release |
//! | `{ns:sem:<name>}:holders` | zset | permit id → lease deadline |
//! | `{ns:sem:<name>}:fence` | string | fencing counter |
//! | `{ns:sem:<name>}:queue` | zset | FIFO waiters (fair mode): permit id → arrival number |
//! | `{ns:sem:<name>}:tickets` | hash | fair-mode waiter → ticket deadline; `#seq` arrival counter |
//! | `{ns:sem:<name>}:released` | channel | published on release |
//! | `{ns:fanout:<id>}` | string | leader token with lease |
//! | `{ns:fanout:<id>}:result` | string | serialized outcome, kept briefly |
//! | `{ns:fanout:<id>}:done` | channel | published when the outcome is stored |
//! | `{ns:queue:<q>}:ready` | zset | ready task ids by priority, then arrival |
//! | `{ns:queue:<q>}:delayed` | zset | delayed / backing-off task ids by run-at (ms) |
//! | `{ns:queue:<q>}:running` | zset | running task ids by lease deadline (ms) |
//! | `{ns:queue:<q>}:ended` | zset | tasks ended `ok`/`cancelled` by end time (bounded retention) |
//! | `{ns:queue:<q>}:failed` | zset | tasks ended `failed` by end time |
//! | `{ns:queue:<q>}:marker` | list | wake-up markers workers block on (`BLPOP`) |
//! | `{ns:queue:<q>}:seq` | string | arrival counter |
//! | `{ns:queue:<q>}:task:<id>` | hash | the task record: state, data, attempts, fence, times, worker, error, result |
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

use crate::error::{Error, Result};

/// Longest name (lock, queue, job id, ...) accepted, in bytes.
pub const MAX_NAME_LEN: usize = 512;

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
    /// Completion channel.
    pub done: String,
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
    /// Key builder for namespace `ns` (validated by [`Config`](crate::Config)).
    ///
    /// ```
    /// let keys = redswarm::keys::Keys::new("ns");
    /// ```
    pub fn new(ns: impl Into<String>) -> Keys {
        Keys { ns: ns.into() }
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
        Ok(format!("{{{}:{kind}:{name}}}", self.ns))
    }

    /// The node membership zset.
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").nodes(), "{ns:nodes}");
    /// ```
    pub fn nodes(&self) -> String {
        format!("{{{}:nodes}}", self.ns)
    }

    /// The info hash of a node (same slot as [`Keys::nodes`]).
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").node_info("n1"), "{ns:nodes}:info:n1");
    /// ```
    pub fn node_info(&self, node: &str) -> String {
        format!("{{{}:nodes}}:info:{node}", self.ns)
    }

    /// Channel that wakes a node's pub/sub thread.
    ///
    /// ```
    /// assert_eq!(redswarm::keys::Keys::new("ns").wake_channel("n1"), "{ns}:wake:n1");
    /// ```
    pub fn wake_channel(&self, node: &str) -> String {
        format!("{{{}}}:wake:{node}", self.ns)
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
            done: format!("{base}:done"),
            leader: base,
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
        assert_eq!(hash_tag("plain"), "plain");
    }
}
