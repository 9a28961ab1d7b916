//! The smallest Redis ACL a redswarm user needs, as `ACL SETUSER` rules.
//!
//! Found by reading every command redswarm sends (from Rust and from its
//! Lua scripts: Redis checks ACLs for commands a script calls too) and
//! tested in `tests/acl.rs`, which runs every feature as a user with
//! exactly these rules while the default user is disabled, and asserts that
//! `ACL LOG` recorded no denial.
//!
//! Keys: every key starts with `{<ns>:` (see [`keys`](crate::keys)).
//! Channels: `{<ns>:` too, plus each node's wake channel `{<ns>}:wake:<node>`.
//! One catch: Redis lets a user `PSUBSCRIBE` a pattern only if the ACL lists
//! that exact pattern (a channel rule `&{ns:*` allows `SUBSCRIBE` to every
//! matching channel, but not `PSUBSCRIBE {ns:queue:q}:task:*:control`), so
//! each queue a [`SwarmWorker`](crate::SwarmWorker) serves adds one rule.

use crate::error::Result;
use crate::keys::Keys;

/// Every command a redswarm user runs, in ACL syntax (`+name` or
/// `+name|subcommand`). Besides the Lua scripts' own commands:
/// `info` (version check on connect), `role` (Sentinel mode: is the node
/// the sentinels named still the primary), `evalsha` and `script|load`
/// (scripts), `subscribe`/`psubscribe`/`unsubscribe`/`punsubscribe`/`ping`
/// (the pub/sub thread), `blpop` with `client|id` and `client|unblock`
/// (swarm workers wait for tasks and are woken on shutdown), `wait`
/// ([`LockOptions::replicas`](crate::LockOptions::replicas)) and `select`
/// (a database number in the URL), `multi`/`exec` (the tracker's stats).
///
/// ```
/// assert!(redswarm::ACL_COMMANDS.contains(&"+evalsha"));
/// ```
pub const ACL_COMMANDS: &[&str] = &[
    // Connection and server.
    "+ping",
    "+info",
    // Sentinel mode: a node named as primary is checked with ROLE.
    "+role",
    "+select",
    "+time",
    "+wait",
    "+client|id",
    "+client|unblock",
    // The tracker reads its statistics in one MULTI/EXEC.
    "+multi",
    "+exec",
    // Scripts: every state transition.
    "+evalsha",
    "+script|load",
    // Pub/sub.
    "+publish",
    "+subscribe",
    "+psubscribe",
    "+unsubscribe",
    "+punsubscribe",
    // Reads and writes, from Rust and from the scripts.
    "+blpop",
    "+del",
    "+exists",
    "+get",
    "+set",
    "+incr",
    "+incrby",
    "+pexpire",
    "+pttl",
    "+type",
    "+hdel",
    "+hexists",
    "+hget",
    "+hgetall",
    "+hincrby",
    "+hkeys",
    "+hlen",
    "+hmget",
    "+hset",
    "+hsetnx",
    "+lindex",
    "+llen",
    "+lpop",
    "+lpush",
    "+ltrim",
    "+rpush",
    "+zadd",
    "+zcard",
    "+zcount",
    "+zrange",
    "+zrangebyscore",
    "+zrank",
    "+zrem",
    "+zremrangebyscore",
    "+zscore",
];

/// The rules for `ACL SETUSER <user> on ><password> <rules>` that let a
/// user run redswarm in `namespace` and nothing else: its keys, its
/// channels, [`ACL_COMMANDS`], and one pattern per queue in
/// `worker_queues` that a [`SwarmWorker`](crate::SwarmWorker) of this user
/// serves (see the module docs). The rules start with `resetkeys`,
/// `resetchannels` and `-@all`, so they replace what the user had.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rules = redswarm::acl_rules("myapp", &["jobs"])?;
/// assert!(rules.starts_with("resetkeys ~{myapp:* resetchannels &{myapp:* &{myapp}:* &{myapp:queue:jobs}:task:*:control -@all +ping"));
/// assert!(redswarm::acl_rules("bad:ns", &[]).is_err());
/// # Ok(()) }
/// ```
pub fn acl_rules(namespace: &str, worker_queues: &[&str]) -> Result<String> {
    crate::keys::validate_namespace(namespace)?;
    let keys = Keys::new(namespace);
    let mut rules = vec![
        "resetkeys".to_string(),
        format!("~{{{namespace}:*"),
        "resetchannels".to_string(),
        format!("&{{{namespace}:*"),
        format!("&{{{namespace}}}:*"),
    ];
    for q in worker_queues {
        // The worker's control pattern, exactly as it subscribes it.
        rules.push(format!("&{}*:control", keys.queue(q)?.task_prefix()));
    }
    rules.push("-@all".to_string());
    rules.extend(ACL_COMMANDS.iter().map(|c| c.to_string()));
    Ok(rules.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_cover_every_key_and_channel_of_the_namespace() {
        let k = Keys::new("ns");
        let keys = [
            k.nodes(),
            k.node_info("n1"),
            k.lock("l").unwrap().fence.clone(),
            k.queue("q").unwrap().task("t"),
            k.tracker("t").unwrap().locks.clone(),
        ];
        for key in keys {
            assert!(key.starts_with("{ns:"), "{key} is outside ~{{ns:*");
        }
        let wake = k.wake_channel("n1");
        assert!(wake.starts_with("{ns}:"), "{wake} is outside &{{ns}}:*");
    }

    #[test]
    fn the_readme_shows_the_rules_this_function_makes() {
        let readme = include_str!("../README.md");
        let rules = acl_rules("myapp", &["jobs"]).unwrap();
        assert!(
            readme.contains(&rules),
            "README.md must show the current rules:\n{rules}"
        );
    }
}
