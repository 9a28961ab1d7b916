//! Redis Cluster: `redis+cluster://` URLs, the routed connections of the
//! pool (redis-rs's sync `ClusterConnection`), and plain connections to one
//! node for what a routed connection cannot do — pub/sub, a `BLPOP` whose
//! `CLIENT UNBLOCK` must reach the same node, `SCAN` on every primary.
//!
//! Why `retries(2)`: redis-rs retries MOVED/ASK (a slot that moved) and
//! TRYAGAIN/CLUSTERDOWN only within its retry budget, and it also re-sends
//! a command after a read timeout. Two retries follow one redirect after a
//! reshard; a hung node holds a call for at most 3 × `command_timeout`.
//! redswarm's scripts are idempotent per token, so a re-sent transition
//! grants or settles nothing twice (a late reply is skipped by redis-rs).

#[cfg(feature = "cluster")]
use crate::connection::NodeAddr;
use crate::error::{Error, Result};

/// Seed nodes of a cluster and the URL template of its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterSettings {
    /// `(host, port)` of each seed node, tried in this order.
    pub(crate) seeds: Vec<(String, u16)>,
    /// `redis[s]://[user:pass@]<first seed>/`: scheme and credentials of
    /// every node (its host is replaced by each node's).
    pub(crate) node_url: String,
}

/// True for `redis+cluster://` and `rediss+cluster://` URLs.
pub(crate) fn is_cluster_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("redis+cluster") || scheme.eq_ignore_ascii_case("rediss+cluster")
}

/// Splits `redis[s]+cluster://[user:pass@]h1:p1[,h2:p2...][/]` into the
/// seed nodes and the URL template of the nodes. A cluster has only db 0.
pub(crate) fn parse_url(url: &str) -> Result<ClusterSettings> {
    let bad = |why: &str| Error::config("url", format!("{}: {why}", crate::config::mask_url(url)));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let node_scheme = if scheme.eq_ignore_ascii_case("rediss+cluster") {
        "rediss"
    } else {
        "redis"
    };
    // Userinfo ends at the last `@` (a raw password may contain `/`).
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    if !(path.is_empty() || path == "0") {
        return Err(bad("a Redis Cluster has only database 0"));
    }
    let seeds = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| crate::sentinel::parse_host_or(h, 6379))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|why| bad(&why))?;
    let settings = ClusterSettings::new(seeds, node_scheme, userinfo)?;
    Ok(settings)
}

impl ClusterSettings {
    /// Settings from seed addresses (`host[:port]`) and the URL of one node
    /// (for its scheme and credentials), as [`ConfigBuilder::cluster`] takes
    /// them.
    ///
    /// [`ConfigBuilder::cluster`]: crate::ConfigBuilder::cluster
    pub(crate) fn from_parts(seeds: &[String], url: &str) -> Result<ClusterSettings> {
        let seeds = seeds
            .iter()
            .map(|h| crate::sentinel::parse_host_or(h, 6379))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|why| Error::config("cluster", why))?;
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", ""));
        let userinfo = rest.split('/').next().and_then(|a| a.rsplit_once('@'));
        ClusterSettings::new(seeds, scheme, userinfo.map(|(u, _)| u))
    }

    fn new(
        seeds: Vec<(String, u16)>,
        scheme: &str,
        userinfo: Option<&str>,
    ) -> Result<ClusterSettings> {
        let Some((host, port)) = seeds.first().cloned() else {
            return Err(Error::config(
                "cluster",
                "at least one seed node address is needed",
            ));
        };
        let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(ClusterSettings {
            seeds,
            node_url: format!("{scheme}://{auth}{host}:{port}/"),
        })
    }
}

/// The cluster slot of `key` (CRC16/XMODEM of its hash tag, mod 16384),
/// as `CLUSTER KEYSLOT` computes it.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One range of `CLUSTER SLOTS`: the slots, the primary serving them and
/// its replicas.
#[cfg(feature = "cluster")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) primary: NodeAddr,
    pub(crate) replicas: Vec<NodeAddr>,
}

/// Parses a `CLUSTER SLOTS` reply, asked of `asked` (a node that announces
/// an empty host means "the address you reached me at"). Malformed entries
/// are skipped: the reply comes from outside.
#[cfg(feature = "cluster")]
pub(crate) fn parse_slots(asked: &NodeAddr, reply: &redis::Value) -> Vec<SlotRange> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
            let node = |v: &Value| {
                let Value::Array(node) = v else {
                    return None;
                };
                let host = text(node.first()?)?;
                let port = int(node.get(1)?)?;
                let host = if host.is_empty() || host == "?" {
                    asked.host.clone()
                } else {
                    host
                };
                Some(NodeAddr { host, port })
            };
            let primary = node(parts.get(2)?)?;
            let replicas = parts.iter().skip(3).filter_map(node).collect();
            (start <= end && end < 16384).then_some(SlotRange {
                start,
                end,
                primary,
                replicas,
            })
        })
        .collect()
}

#[cfg(feature = "cluster")]
pub(crate) use source::ClusterSource;

#[cfg(feature = "cluster")]
mod source {
    use std::time::Duration;

    use redis::ConnectionInfo;

    use super::{parse_slots, ClusterSettings, SlotRange};
    use crate::connection::NodeAddr;
    use crate::tls::TlsSettings;

    /// Opens routed connections to the cluster, and plain ones to its
    /// nodes.
    pub(crate) struct ClusterSource {
        settings: ClusterSettings,
        /// Scheme, credentials and TCP settings of the nodes; the address
        /// is replaced by each node's.
        template: ConnectionInfo,
        tls: TlsSettings,
        client: redis::cluster::ClusterClient,
    }

    impl std::fmt::Debug for ClusterSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ClusterSource")
                .field("seeds", &self.settings.seeds)
                .finish_non_exhaustive()
        }
    }

    impl ClusterSource {
        pub(crate) fn new(
            settings: ClusterSettings,
            template: ConnectionInfo,
            tls: TlsSettings,
            connect_timeout: Duration,
            command_timeout: Duration,
        ) -> redis::RedisResult<ClusterSource> {
            let seeds: Vec<ConnectionInfo> = settings
                .seeds
                .iter()
                .map(|(h, p)| crate::store::info_at(&template, h, *p))
                .collect();
            let mut builder = redis::cluster::ClusterClient::builder(seeds)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .connection_timeout(connect_timeout)
                .response_timeout(command_timeout);
            builder = crate::tls::cluster_tls(builder, &template, &tls)?;
            Ok(ClusterSource {
                client: builder.build()?,
                settings,
                template,
                tls,
            })
        }

        /// A routed connection with `command_timeout` on every node socket.
        pub(crate) fn connect(
            &self,
            command_timeout: Duration,
        ) -> redis::RedisResult<redis::cluster::ClusterConnection> {
            let conn = self.client.get_connection()?;
            conn.set_read_timeout(Some(command_timeout))?;
            conn.set_write_timeout(Some(command_timeout))?;
            Ok(conn)
        }

        /// A plain connection to the node at `addr`.
        pub(crate) fn open_node(
            &self,
            addr: &NodeAddr,
            timeout: Duration,
            command_timeout: Duration,
        ) -> redis::RedisResult<redis::Connection> {
            let info = crate::store::info_at(&self.template, &addr.host, addr.port);
            let client = crate::tls::client(info, &self.tls)?;
            let conn = client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(command_timeout))?;
            conn.set_write_timeout(Some(command_timeout))?;
            Ok(conn)
        }

        /// A plain connection to the first seed (then any node the seeds
        /// know) that answers, within `timeout` overall.
        pub(crate) fn open_any(
            &self,
            timeout: Duration,
            command_timeout: Duration,
        ) -> redis::RedisResult<(redis::Connection, NodeAddr)> {
            // Saturating: a caller's Duration::MAX must not overflow.
            let deadline = crate::util::Deadline::after(timeout);
            let mut tried = Vec::new();
            for (host, port) in &self.settings.seeds {
                let addr = NodeAddr {
                    host: host.clone(),
                    port: *port,
                };
                let left = deadline.remaining().unwrap_or(timeout);
                if left.is_zero() {
                    break;
                }
                match self.open_node(&addr, left, command_timeout) {
                    Ok(conn) => return Ok((conn, addr)),
                    Err(e) => tried.push(format!("{addr}: {e}")),
                }
            }
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no seed node of the cluster answered",
                tried.join("; "),
            )))
        }

        /// The slot map, asked of the first seed that answers.
        pub(crate) fn slots(
            &self,
            timeout: Duration,
            command_timeout: Duration,
        ) -> redis::RedisResult<Vec<SlotRange>> {
            let (mut conn, asked) = self.open_any(timeout, command_timeout)?;
            let reply: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
            let ranges = parse_slots(&asked, &reply);
            if ranges.is_empty() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "CLUSTER SLOTS named no primary",
                    format!("asked {asked}"),
                )));
            }
            Ok(ranges)
        }

        /// A plain connection to the primary that serves `key`'s slot now.
        pub(crate) fn open_for_key(
            &self,
            key: &[u8],
            timeout: Duration,
            command_timeout: Duration,
        ) -> redis::RedisResult<(redis::Connection, NodeAddr)> {
            // Saturating: a caller's Duration::MAX must not overflow.
            let deadline = crate::util::Deadline::after(timeout);
            let slot = super::key_slot(key);
            let ranges = self.slots(timeout, command_timeout)?;
            let Some(range) = ranges.iter().find(|r| r.start <= slot && slot <= r.end) else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no primary serves the slot",
                    format!("slot {slot}"),
                )));
            };
            let left = deadline.remaining().unwrap_or(timeout);
            let conn = self.open_node(
                &range.primary,
                left.max(Duration::from_millis(1)),
                command_timeout,
            )?;
            Ok((conn, range.primary.clone()))
        }

        /// Every primary, each once, in address order.
        pub(crate) fn primaries(
            &self,
            timeout: Duration,
            command_timeout: Duration,
        ) -> redis::RedisResult<Vec<NodeAddr>> {
            let mut nodes: Vec<NodeAddr> = self
                .slots(timeout, command_timeout)?
                .into_iter()
                .map(|r| r.primary)
                .collect();
            nodes.sort();
            nodes.dedup();
            Ok(nodes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_keyslot() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
        assert_ne!(key_slot(b"{}x"), key_slot(b"x"));
    }

    #[test]
    fn cluster_urls_split_into_seeds_and_the_node_url() {
        let s = parse_url("redis+cluster://app:pw@h1:7000,h2,[::1]:7002/").unwrap();
        assert_eq!(
            s.seeds,
            vec![
                ("h1".into(), 7000),
                ("h2".into(), 6379),
                ("::1".into(), 7002)
            ]
        );
        assert_eq!(s.node_url, "redis://app:pw@h1:7000/");
        assert_eq!(
            parse_url("rediss+cluster://h:1").unwrap().node_url,
            "rediss://h:1/"
        );
        assert!(is_cluster_url("REDIS+CLUSTER://h"));
        assert!(!is_cluster_url("redis://h/"));
        for bad in [
            "redis+cluster://",
            "redis+cluster://h:1/2",
            "redis+cluster://h:x",
            "redis+cluster://h:0",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let err = parse_url("redis+cluster://u:hunter2@h:x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn slot_replies_are_read_defensively() {
        use redis::Value;
        let asked = NodeAddr {
            host: "10.0.0.1".into(),
            port: 7000,
        };
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 7000)]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("h2", 7001),
                node("h2r", 7101),
            ]),
            Value::Array(vec![Value::Int(9), Value::Int(1)]),
            Value::Array(vec![Value::Int(1), Value::Int(99_999), node("h3", 7002)]),
            Value::Nil,
        ]);
        let ranges = parse_slots(&asked, &reply);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].primary, asked);
        assert_eq!(ranges[1].primary.host, "h2");
        assert_eq!(ranges[1].replicas[0].host, "h2r");
        assert!(ranges[0].replicas.is_empty());
        assert!(parse_slots(&asked, &Value::Nil).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn no_cluster_url_makes_the_parser_panic(tail in "[a-z0-9:@/,\\[\\]%. -]{0,40}") {
            let _ = parse_url(&format!("redis+cluster://{tail}"));
        }
    }
}
