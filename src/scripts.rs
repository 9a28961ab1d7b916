//! Lua script registry: every state transition is one script (DESIGN rule 1).
//!
//! Scripts live in `src/scripts/*.lua`, each opening with a header that
//! states its keys, arguments and reply. [`lua_script!`] embeds one with
//! `include_str!` behind the shared prelude (which provides `now_ms()`, the
//! Redis server clock). Calls go through EVALSHA; when the server answers
//! NOSCRIPT (after a restart, failover or `SCRIPT FLUSH`) the script is
//! loaded and the call retried, for single calls and pipelines alike.

use redis::{ConnectionLike, FromRedisValue, Pipeline, Script, ScriptInvocation};

use crate::error::Result;

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
/// prelude in front.
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
}
pub(crate) use lua_script;

/// Runs `inv` (EVALSHA, loading on NOSCRIPT).
pub(crate) fn invoke<T: FromRedisValue>(
    inv: &ScriptInvocation<'_>,
    conn: &mut dyn ConnectionLike,
) -> Result<T> {
    Ok(inv.invoke(conn)?)
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
