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

use crate::error::{Error, Result};

/// A named Lua script.
pub(crate) struct LuaScript {
    pub(crate) name: &'static str,
    pub(crate) script: Script,
}

impl LuaScript {
    pub(crate) fn new(name: &'static str, source: &str) -> LuaScript {
        LuaScript {
            name,
            script: Script::new(source),
        }
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
    e.into()
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
            Ok(pipe.query::<T>(conn)?)
        }
        other => Ok(other?),
    }
}
