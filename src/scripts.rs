//! Lua script registry: every state transition is one script (DESIGN rule 1).
//!
//! Scripts live in `src/scripts/*.lua`, each opening with a header that
//! states its keys, arguments and reply. [`lua_script!`] embeds one with
//! `include_str!` behind the shared prelude (which provides `now_ms()`, the
//! Redis server clock). Calls go through EVALSHA; when the server answers
//! NOSCRIPT (after a restart, failover or `SCRIPT FLUSH`) the script is
//! loaded and the call retried, for single calls and pipelines alike.
//! A script that finds unusable data aborts before its first write with the
//! error reply `CORRUPT <key>\t<reason>` (the prelude's `corrupt()`), which
//! [`invoke`] turns into [`Error::CorruptData`].

use redis::{ConnectionLike, FromRedisValue, Pipeline, Script, ScriptInvocation};

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Every script built so far by SHA1: its name and source, to say which
/// command of which script an ACL refused (Redis only gives a line number).
static SOURCES: LazyLock<Mutex<HashMap<String, (&'static str, &'static str)>>> =
    LazyLock::new(Default::default);

/// A named Lua script.
pub(crate) struct LuaScript {
    pub(crate) name: &'static str,
    pub(crate) script: Script,
}

impl LuaScript {
    pub(crate) fn new(name: &'static str, source: &'static str) -> LuaScript {
        let script = Script::new(source);
        SOURCES
            .lock()
            .insert(script.get_hash().to_string(), (name, source));
        LuaScript { name, script }
    }

    /// Starts an invocation: add keys and args, then [`invoke`].
    pub(crate) fn prepare(&self) -> ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// Loads the script into the server's cache.
    pub(crate) fn load(&self, conn: &mut dyn ConnectionLike) -> Result<()> {
        log::debug!("loading script {}", self.name);
        let _sha: String = self.script.load(conn)?;
        Ok(())
    }
}

/// Declares a `static` [`LuaScript`] from `src/scripts/<file>`, with the
/// prelude in front — and, with `with "<lib>.lua"`, a feature's own helper
/// library between the two (queue, cluster and tracker scripts).
macro_rules! lua_script {
    ($vis:vis $static_name:ident, $file:literal) => {
        $vis static $static_name: std::sync::LazyLock<$crate::scripts::LuaScript> =
            std::sync::LazyLock::new(|| {
                $crate::scripts::LuaScript::new(
                    $file,
                    concat!(
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/prelude.lua")),
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/", $file))
                    ),
                )
            });
    };
    ($vis:vis $static_name:ident, $file:literal, with $lib:literal) => {
        $vis static $static_name: std::sync::LazyLock<$crate::scripts::LuaScript> =
            std::sync::LazyLock::new(|| {
                $crate::scripts::LuaScript::new(
                    $file,
                    concat!(
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/prelude.lua")),
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/", $lib)),
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/", $file))
                    ),
                )
            });
    };
}
pub(crate) use lua_script;

/// Runs `inv` (EVALSHA, loading on NOSCRIPT).
pub(crate) fn invoke<T: FromRedisValue>(
    inv: &ScriptInvocation<'_>,
    conn: &mut dyn ConnectionLike,
) -> Result<T> {
    inv.invoke(conn).map_err(script_error)
}

/// A script's `CORRUPT <key>\t<reason>` error reply as
/// [`Error::CorruptData`]; any other error unchanged.
pub(crate) fn script_error(e: redis::RedisError) -> Error {
    if e.code() == Some("CORRUPT") {
        if let Some((key, reason)) = e.detail().and_then(|d| d.split_once('\t')) {
            // Redis 7 appends " script: <sha>, on @user_script:<line>." to
            // errors raised inside a script.
            let reason = match reason.rsplit_once(" script: ") {
                Some((r, tail)) if tail.contains("@user_script") => r,
                _ => reason,
            };
            return Error::corrupt(key, reason.trim_end());
        }
    }
    explain_acl_denial(e).into()
}

/// Redis refuses a command that a script calls for the user's ACL with a
/// plain `ERR` naming neither the command nor NOPERM ("The user executing
/// the script can't run this command or subcommand script: <sha>, on
/// @user_script:<line>."). This turns it into a `NoPerm` error that names
/// the script and the command on that line; any other error is unchanged.
pub(crate) fn explain_acl_denial(e: redis::RedisError) -> redis::RedisError {
    let Some(detail) = e.detail() else {
        return e;
    };
    if !(detail.contains("The user executing the script can't")
        || detail.contains("ACL failure in script"))
    {
        return e;
    }
    let located = detail.rsplit_once(" script: ").and_then(|(_, tail)| {
        let (sha, rest) = tail.split_once(',')?;
        let line: usize = rest
            .rsplit_once("@user_script:")?
            .1
            .trim_end_matches('.')
            .trim()
            .parse()
            .ok()?;
        let (name, source) = *SOURCES.lock().get(sha.trim())?;
        let command = source
            .lines()
            .nth(line.checked_sub(1)?)
            .and_then(called_command);
        Some(match command {
            Some(cmd) => format!("script {name} calls `{cmd}` at line {line}"),
            None => format!("script {name} at line {line}"),
        })
    });
    let what = located.unwrap_or_else(|| "a script".to_string());
    redis::RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
        "ACL denial inside a script",
        format!("{what}, which the Redis user may not run or reach (see redswarm::ACL_COMMANDS): {detail}"),
    ))
}

/// The command of the first `redis.call('x'` / `redis.pcall("x"` on a line.
fn called_command(line: &str) -> Option<String> {
    let at = line
        .find("redis.call(")
        .or_else(|| line.find("redis.pcall("))?;
    let args = &line[at..];
    let args = &args[args.find('(')? + 1..];
    let quote = args
        .trim_start()
        .chars()
        .next()
        .filter(|c| *c == '\'' || *c == '"')?;
    let inner = &args.trim_start()[1..];
    let name = &inner[..inner.find(quote)?];
    Some(name.to_ascii_lowercase())
}

/// Runs a pipeline of script invocations; on NOSCRIPT loads `scripts` and
/// sends the pipeline once more.
pub(crate) fn query_pipeline<T: FromRedisValue>(
    pipe: &Pipeline,
    scripts: &[&LuaScript],
    conn: &mut dyn ConnectionLike,
) -> Result<T> {
    match pipe.query::<T>(conn) {
        Err(e) if e.code() == Some("NOSCRIPT") => {
            log::debug!("scripts missing on the server (NOSCRIPT); loading and retrying");
            for s in scripts {
                s.load(conn)?;
            }
            Ok(pipe.query::<T>(conn).map_err(explain_acl_denial)?)
        }
        other => Ok(other.map_err(explain_acl_denial)?),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_called_command_is_read_from_a_script_line() {
        let f = super::called_command;
        assert_eq!(
            f("  redis.call('ZADD', KEYS[1], 1, 'a')").as_deref(),
            Some("zadd")
        );
        assert_eq!(
            f("local t = redis.pcall(\"TIME\")").as_deref(),
            Some("time")
        );
        assert_eq!(
            f("local x = redis.call( 'hget', k, 'f')").as_deref(),
            Some("hget")
        );
        assert_eq!(f("return redis.call(cmd, k)"), None);
        assert_eq!(f("-- no call here"), None);
        assert_eq!(f("redis.call('unterminated"), None);
    }
}
