//! The one error type of redswarm.
//!
//! Every fallible call returns [`Result<T>`](crate::Result). Variants are
//! typed so callers can match on what went wrong (a timeout, a lost lease,
//! a bad name) instead of parsing strings.

use std::time::Duration;

/// Everything that can go wrong in redswarm.
///
/// ```
/// use redswarm::Error;
/// let e = Error::InvalidInput { what: "lock name", reason: "must not be empty".into() };
/// assert_eq!(e.to_string(), "invalid lock name: must not be empty");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable; `field` names it.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The config field (builder method) that is wrong.
        field: &'static str,
        /// Why it is wrong.
        reason: String,
    },

    /// An argument from the caller (a name, a TTL, a count) is unusable.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What kind of argument it was (for example "lock name").
        what: &'static str,
        /// Why it is unusable.
        reason: String,
    },

    /// Redis could not be reached when connecting.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        /// The URL tried, with any password masked.
        url: String,
        /// What the driver said.
        #[source]
        source: redis::RedisError,
    },

    /// The Redis server is older than redswarm supports.
    #[error("Redis at {url} is version {found}; redswarm needs 6.2 or newer")]
    UnsupportedRedis {
        /// The URL, password masked.
        url: String,
        /// The version the server reported.
        found: String,
    },

    /// A Redis command failed (connection lost, timeout, server error).
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),

    /// Redis refused a subscription, typically because the user's ACL does
    /// not allow the channel (`NOPERM`). The pub/sub connection and the
    /// other subscriptions are unaffected.
    #[error("Redis refused the subscription to `{channel}`: {reason}")]
    SubscriptionRefused {
        /// The channel, or the pattern of a pattern subscription.
        channel: String,
        /// What Redis answered.
        reason: String,
    },

    /// Every pooled connection stayed busy for the whole checkout wait.
    #[error("no Redis connection became free within {waited:?} (pool of {size})")]
    PoolExhausted {
        /// How long the checkout waited.
        waited: Duration,
        /// The pool's maximum size.
        size: u32,
    },

    /// The pool could not open a connection.
    #[error("connection pool: {0}")]
    Pool(String),

    /// A blocking wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long the caller waited.
        waited: Duration,
    },

    /// A lease (lock, permit, task claim) is no longer held by this owner:
    /// it expired, was taken over, or could not be renewed in time.
    #[error("lease on {what} was lost: {reason}")]
    LeaseLost {
        /// The resource whose lease is gone.
        what: String,
        /// Why it is considered lost.
        reason: String,
    },

    /// This node cannot reach Redis nor enough of its peers, so it has
    /// stopped its work (see the swarm's partition rule).
    #[error("this node is partitioned: {0}")]
    Partitioned(String),

    /// The handle (or the component) was shut down.
    #[error("redswarm handle is shut down")]
    ShutDown,

    /// A value could not be serialized to or parsed from JSON.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),

    /// Something in Redis does not have the shape redswarm wrote.
    #[error("unexpected data in Redis at `{key}`: {reason}")]
    CorruptData {
        /// The key that holds it.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A payload is larger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// Fewer replicas than asked for acknowledged a grant in time (see
    /// [`LockOptions::replicas`](crate::LockOptions::replicas)); the grant
    /// was given back.
    #[error("{what} reached {acked} of {wanted} replicas in time; released it")]
    NotReplicated {
        /// The resource.
        what: String,
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged.
        acked: u32,
    },

    /// An operation on several resources (a multi-lock) failed for some of
    /// them; `failed` names each with its reason.
    #[error("{what} failed for {}: {}", .failed.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", "), .failed.iter().map(|f| f.1.as_str()).collect::<Vec<_>>().join("; "))]
    Partial {
        /// The operation.
        what: &'static str,
        /// (resource name, reason) for each failure.
        failed: Vec<(String, String)>,
    },

    /// Something named by the caller (a job id, a cluster) does not exist.
    #[error("{what} `{id}` does not exist")]
    NotFound {
        /// What kind of thing (for example "job").
        what: &'static str,
        /// The id asked for.
        id: String,
    },

    /// The resource's current state forbids the request (a chunk locked
    /// by another owner, a chunk lock asked for a task already released).
    #[error("{what}: {reason}")]
    Conflict {
        /// The resource.
        what: String,
        /// What stands in the way.
        reason: String,
    },

    /// A component (a cluster worker) was used after it was terminated.
    #[error("{what} was terminated and cannot be used any more")]
    Terminated {
        /// The component.
        what: String,
    },
}

/// `Result` with redswarm's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for errors that mean "Redis could not be reached or answered in
    /// time" rather than a logical refusal; such calls may succeed later.
    ///
    /// ```
    /// # use redswarm::Error;
    /// assert!(!Error::ShutDown.is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_io_error()
            }
            Error::Connect { .. } | Error::Pool(_) | Error::PoolExhausted { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::CorruptData {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
