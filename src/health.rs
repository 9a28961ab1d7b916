//! What this node knows about its own connection: [`Health`] (does the
//! heartbeat reach Redis?) and [`PartitionState`] (may it keep doing leased
//! work?). Plain values shared by the heartbeat, the lease registry and the
//! features; they depend on nothing.

use std::time::SystemTime;

/// This node's view of its connection to Redis.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// match swarm.health() {
///     redswarm::Health::Healthy => {}
///     redswarm::Health::LostRedis { since } => log::warn!("no Redis since {since:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The last heartbeat reached Redis.
    Healthy,
    /// Heartbeats have failed since this time.
    LostRedis {
        /// When the first failed beat happened.
        since: SystemTime,
    },
}

/// Whether this node may keep doing leased work (the swarm's partition rule).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let swarm = redswarm::Redswarm::connect(redswarm::Config::from_env()?)?;
/// if swarm.partition_state().may_work() { /* keep going */ }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionState {
    /// Redis is reachable.
    Connected,
    /// Redis is unreachable but at least `partition_percentage` of the known
    /// peers answered pings: the outage is Redis's, not ours; keep going.
    RedisLostPeersOk {
        /// Peers that answered.
        answered: usize,
        /// Peers known.
        known: usize,
    },
    /// Redis is unreachable and too few peers answered (or none are
    /// known): this node is cut off and must stop leased work.
    Partitioned {
        /// Peers that answered.
        answered: usize,
        /// Peers known.
        known: usize,
    },
}

impl PartitionState {
    /// True unless [`PartitionState::Partitioned`].
    ///
    /// ```
    /// assert!(redswarm::PartitionState::Connected.may_work());
    /// ```
    pub fn may_work(&self) -> bool {
        !matches!(self, PartitionState::Partitioned { .. })
    }
}
