//! Redis Sentinel: find the current primary through the sentinels each time
//! a connection is opened, so that every reconnect after a failover (pool,
//! pub/sub thread, heartbeat, worker waits) lands on the new primary.
//!
//! Why our own few lines and not redis-rs's `sentinel` feature: its
//! blocking client connects to sentinels and nodes without a timeout
//! (DESIGN rule 10), and it would build clients without redswarm's TLS
//! settings. Here one overall deadline covers asking the sentinels,
//! connecting to the primary and checking with `ROLE` that it still is one
//! (a sentinel may answer with the old primary for a moment after a
//! failover; Sentinel then demotes it and kills its clients, and the next
//! reconnect asks again).

use std::time::{Duration, Instant};

use redis::{ConnectionInfo, RedisResult};

use crate::error::{Error, Result};
use crate::tls::TlsSettings;

/// Where the sentinels are and which primary to ask them for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SentinelSettings {
    pub(crate) master_name: String,
    /// `(host, port)` of each sentinel, asked in this order.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// URL of the data nodes: scheme, credentials and db (its host is
    /// replaced by the primary's at each connect).
    pub(crate) node_url: String,
}

/// True for `redis+sentinel://` and `rediss+sentinel://` URLs.
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("redis+sentinel") || scheme.eq_ignore_ascii_case("rediss+sentinel")
}

/// Splits `redis[s]+sentinel://[user:pass@]h1:p1[,h2:p2...]/master[/db]`
/// into the sentinels and the URL of the data nodes
/// (`redis[s]://[user:pass@]<first sentinel>/db`, whose host is replaced by
/// the primary's at each connect).
pub(crate) fn parse_url(url: &str) -> Result<SentinelSettings> {
    let bad = |why: &str| Error::config("url", format!("{}: {why}", crate::config::mask_url(url)));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let node_scheme = if scheme.eq_ignore_ascii_case("rediss+sentinel") {
        "rediss"
    } else {
        "redis"
    };
    // Userinfo ends at the last `@` (a raw password may contain `/`).
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or_else(|| {
        bad("the master name is missing (redis+sentinel://host:port[,host:port]/master_name[/db])")
    })?;
    let mut path = path.splitn(2, '/');
    let master_name = path.next().unwrap_or("").to_string();
    let db = path.next().unwrap_or("").trim_end_matches('/');
    let sentinels = parse_hosts(hosts).map_err(|why| bad(&why))?;
    let (host, port) = sentinels.first().cloned().unwrap_or_default();
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let settings = SentinelSettings {
        master_name,
        sentinels,
        node_url: format!("{node_scheme}://{auth}{host}:{port}/{db}"),
    };
    settings.check()?;
    Ok(settings)
}

/// `h1:p1,h2:p2` (port 26379 when left out; IPv6 in brackets).
fn parse_hosts(hosts: &str) -> std::result::Result<Vec<(String, u16)>, String> {
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(parse_host)
        .collect()
}

pub(crate) fn parse_host(h: &str) -> std::result::Result<(String, u16), String> {
    parse_host_or(h, 26379)
}

/// `host[:port]` (IPv6 in brackets), with `default_port` when left out.
pub(crate) fn parse_host_or(
    h: &str,
    default_port: u16,
) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let (host, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("address {h:?}: unclosed '['"))?;
        (host, tail.strip_prefix(':'))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if host.is_empty() {
        return Err(format!("address {h:?} has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("address {h:?}: bad port {p:?}"))?,
    };
    Ok((host.to_string(), port))
}

impl SentinelSettings {
    pub(crate) fn check(&self) -> Result<()> {
        if self.sentinels.is_empty() {
            return Err(Error::config(
                "sentinel",
                "at least one sentinel address is needed",
            ));
        }
        let name = &self.master_name;
        if name.is_empty()
            || name.len() > 256
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::config(
                "sentinel",
                format!("master name {name:?} must be 1..=256 characters without spaces"),
            ));
        }
        Ok(())
    }
}

/// Opens connections to whatever node the sentinels currently name as the
/// primary.
#[derive(Debug)]
pub(crate) struct SentinelSource {
    settings: SentinelSettings,
    /// Scheme, credentials, db and TCP settings of the data nodes; its
    /// address is replaced by the primary's.
    template: ConnectionInfo,
    tls: TlsSettings,
}

impl SentinelSource {
    pub(crate) fn new(
        settings: SentinelSettings,
        template: ConnectionInfo,
        tls: TlsSettings,
    ) -> Self {
        SentinelSource {
            settings,
            template,
            tls,
        }
    }

    /// Asks the sentinels in turn for the primary, connects to it and
    /// checks its role, all within `timeout`. The connection comes back
    /// with read and write timeouts of `command_timeout`.
    pub(crate) fn connect(
        &self,
        timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<redis::Connection> {
        let deadline = Instant::now() + timeout;
        let mut tried = Vec::new();
        for (host, port) in &self.settings.sentinels {
            match self.via(host, *port, deadline, command_timeout) {
                Ok(conn) => return Ok(conn),
                Err(e) => tried.push(format!("{host}:{port}: {e}")),
            }
            if Instant::now() >= deadline {
                tried.push(format!("gave up after {timeout:?}"));
                break;
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no sentinel named a reachable primary",
            format!(
                "master {:?}: {}",
                self.settings.master_name,
                tried.join("; ")
            ),
        )))
    }

    fn via(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
        command_timeout: Duration,
    ) -> RedisResult<redis::Connection> {
        let left = || {
            let d = deadline.saturating_duration_since(Instant::now());
            if d.is_zero() {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connect deadline passed",
                )))
            } else {
                Ok(d)
            }
        };
        // Sentinels: same scheme and TLS as the nodes, no credentials, db 0.
        let info = self
            .at(host, port)
            .set_redis_settings(redis::RedisConnectionInfo::default());
        let sentinel = crate::tls::client(info, &self.tls)?;
        let mut conn = sentinel.get_connection_with_timeout(left()?)?;
        conn.set_read_timeout(Some(left()?.min(command_timeout)))?;
        conn.set_write_timeout(Some(left()?.min(command_timeout)))?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.settings.master_name)
            .query(&mut conn)?;
        drop(conn);
        let Some((primary, primary_port)) = addr else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "this sentinel does not monitor the master name",
            )));
        };
        let node = crate::tls::client(self.at(&primary, primary_port), &self.tls)?;
        let mut conn = node.get_connection_with_timeout(left()?)?;
        conn.set_read_timeout(Some(left()?.min(command_timeout)))?;
        conn.set_write_timeout(Some(left()?.min(command_timeout)))?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn)?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r.as_slice() == b"master" => {}
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the node named as primary is not one (yet)",
                    format!("{primary}:{primary_port} reports role {other:?}"),
                )))
            }
        }
        conn.set_read_timeout(Some(command_timeout))?;
        conn.set_write_timeout(Some(command_timeout))?;
        Ok(conn)
    }

    /// The template with `host:port` as its address.
    fn at(&self, host: &str, port: u16) -> ConnectionInfo {
        crate::store::info_at(&self.template, host, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_split_into_sentinels_and_the_node_url() {
        let s = parse_url("redis+sentinel://app:pw@h1:26380,h2,[::1]:5/mymaster/2").unwrap();
        let node = s.node_url.clone();
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(
            s.sentinels,
            vec![
                ("h1".into(), 26380),
                ("h2".into(), 26379),
                ("::1".into(), 5)
            ]
        );
        assert_eq!(node, "redis://app:pw@h1:26380/2");
        let s = parse_url("rediss+sentinel://h:1/m").unwrap();
        assert_eq!(s.node_url, "rediss://h:1/");
        assert!(is_sentinel_url("REDIS+SENTINEL://h/m"));
        assert!(!is_sentinel_url("redis://h/"));
    }

    #[test]
    fn bad_sentinel_urls_are_refused_by_name() {
        for url in [
            "redis+sentinel://h1:1",
            "redis+sentinel://h1:1/",
            "redis+sentinel:///m",
            "redis+sentinel://h1:0/m",
            "redis+sentinel://h1:x/m",
            "redis+sentinel://[::1/m",
            "redis+sentinel://h1/m m",
        ] {
            match parse_url(url) {
                Err(Error::InvalidConfig { field, .. }) => {
                    assert!(field == "url" || field == "sentinel", "{url}")
                }
                other => panic!("{url}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn no_sentinel_url_makes_the_parser_panic(
            tail in "[a-z0-9:@/,\\[\\]%. -]{0,40}",
        ) {
            let _ = parse_url(&format!("redis+sentinel://{tail}"));
            let _ = parse_hosts(&tail);
        }
    }

    #[test]
    fn passwords_stay_out_of_parse_errors() {
        let err = parse_url("redis+sentinel://u:hunter2@h1:x/m").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
