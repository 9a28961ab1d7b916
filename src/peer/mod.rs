//! The peer mesh: partition awareness when Redis is unreachable
//! (task-swarm's `partitionPercentage`).
//!
//! Each node may listen on a TCP address (`peer_listen`) and advertises it
//! in its membership record; every node keeps the list of peers (id and
//! address) it last read from Redis, never counting itself. When a
//! heartbeat fails, the node pings every known peer in parallel, all under
//! one total deadline (`peer_timeout`). If at least `partition_percentage` %
//! answer **and none of them reaches Redis**, Redis is down for everyone and
//! the node keeps working ([`PartitionState::RedisLostPeersOk`]). If any
//! peer still reaches Redis, Redis is up and this node is the one cut off;
//! with too few answers it may be cut off too: either way it is
//! [`PartitionState::Partitioned`], running tasks are told to stop and no new
//! work starts. With no peers known it counts as partitioned. The rule is
//! [`verdict`]; the answers come from a [`Pinger`] that runs on its own
//! thread, so the heartbeat never blocks on the network or on DNS.
//!
//! Parts: [`wire`] (the protocol and its MAC), [`ping`] (one exchange under
//! a total deadline, and name resolution with a bound), [`pinger`] (rounds
//! of parallel pings on a thread of their own, and the verdict),
//! [`listener`] (the port that answers) and [`advertise`] (which address
//! other nodes should dial).
//!
//! # Wire protocol `RSWP/2`
//!
//! One line each way, ASCII fields separated by single spaces, ending in
//! `\n`, at most [`MAX_LINE`] bytes; the connection closes after the reply:
//!
//! ```text
//! RSWP/2 PING <namespace> <from-node> <to-node> <nonce> <mac>
//! RSWP/2 PONG <namespace> <node> <nonce> <redis:up|redis:down> <mac>
//! ```
//!
//! `to-node` is the id the pinger expects to reach: a listener answers only
//! pings addressed to its own id and never a ping from its own id, and the
//! pinger accepts only a PONG from the node it pinged, for its nonce. So an
//! address that loops back to the pinging node itself (a `0.0.0.0` or
//! loopback advertisement, a stale record) never counts as a peer. The
//! `redis:` flag says whether the answering node's heartbeat reaches Redis.
//!
//! With a shared secret (`peer_secret`), `mac` is the lowercase hex
//! HMAC-SHA256 (via `ring`, verified in constant time) of the
//! length-prefixed fields `<len>:<bytes>,` of
//! `RSWP/2, PING, ns, from, to, nonce` for a ping and
//! `RSWP/2, PONG, ns, node, pinger, nonce, flag` for the answer. The
//! length prefixes make the input unambiguous whatever the ids contain, the
//! secret never crosses the wire, and a replayed answer does not fit a new
//! nonce. Without a secret `mac` is `-`; both sides must agree on having one.
//! Anything else — wrong version, namespace, addressee or MAC, garbage, an
//! oversized or slow client — is dropped; drops are counted and logged as
//! one summary at most every 10 s.
//!
//! [`PartitionState::RedisLostPeersOk`]: crate::PartitionState::RedisLostPeersOk
//! [`PartitionState::Partitioned`]: crate::PartitionState::Partitioned

pub(crate) mod advertise;
pub(crate) mod listener;
mod net;
pub(crate) mod ping;
pub(crate) mod pinger;
pub(crate) mod wire;

pub(crate) use advertise::{advertise_addr, redis_endpoint};
pub(crate) use listener::PeerListener;
pub(crate) use pinger::{verdict, PeerPoll, Pinger};

/// Longest line either side may send: room for two 512-byte node ids, a
/// 64-byte namespace, the nonce and the MAC.
pub(crate) const MAX_LINE: usize = 1536;

/// Identity and secret a node pings and answers with.
#[derive(Clone, Debug)]
pub(crate) struct PeerIdentity {
    pub(crate) namespace: String,
    pub(crate) node_id: String,
    pub(crate) secret: Option<String>,
}

/// A peer as its membership record advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerAddr {
    /// Its node id: the only node whose answer counts for this address.
    pub(crate) id: String,
    /// The address it advertises, `host:port` (a name or a literal IP).
    pub(crate) addr: String,
}
