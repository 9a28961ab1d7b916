//! `redswarm web`: the status page, JSON API and `/metrics` (the server is
//! `redswarm::web`; this only turns flags into its options and runs it
//! until Ctrl-C).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use redswarm::web::{WebOptions, WebServer, DEFAULT_LISTEN, TOKEN_ENV};

use super::{Ctx, Exit, Failure, Outcome};

/// Request threads: as many as the tool's connection pool holds, so no
/// request waits for a connection another one holds.
const THREADS: usize = 2;

#[derive(Args)]
pub(crate) struct WebArgs {
    /// Address to listen on. Anything but loopback shows the swarm to the
    /// network: set a token then.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "HOST:PORT")]
    listen: String,
    /// Require this token on every request, as `Authorization: Bearer
    /// TOKEN` or as the basic-auth password (any user name). Default:
    /// $REDSWARM_WEB_TOKEN (better: a command line shows in `ps`).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Allow actions (the page's retry button; POST
    /// /api/queues/Q/failed/ID/retry). Without it the server is read-only
    /// and answers them 403.
    #[arg(long)]
    allow_actions: bool,
    /// Seconds between the page's reloads (0.5 to 3600).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    refresh: f64,
}

/// Serves until Ctrl-C (or SIGTERM).
pub(crate) fn run(ctx: &Ctx, args: &WebArgs) -> Outcome {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()));
    let refresh = Duration::try_from_secs_f64(args.refresh)
        .map_err(|e| Failure::new(Exit::Usage, format!("--refresh {}: {e}", args.refresh)))?;
    let has_token = token.is_some();
    let options = WebOptions::new()
        .listen(args.listen.as_str())
        .token(token)
        .allow_actions(args.allow_actions)
        .refresh(refresh)
        .threads(THREADS);
    let server = Arc::new(WebServer::start(&ctx.swarm, options)?);
    if !server.addr().ip().is_loopback() && !has_token {
        eprintln!(
            "redswarm: warning: {} is reachable from the network and no token is set \
             (--token or {TOKEN_ENV})",
            server.addr()
        );
    }
    let stopper = server.clone();
    ctrlc::set_handler(move || stopper.shutdown()).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot install the Ctrl-C handler: {e}"),
        )
    })?;
    ctx.print(&format!(
        "redswarm: status page at {} ({}, {}); Ctrl-C stops it\n",
        server.url(),
        if args.allow_actions {
            "actions allowed"
        } else {
            "read-only"
        },
        if has_token {
            "token required"
        } else {
            "no token"
        }
    ))?;
    server.join();
    Ok(Exit::Ok)
}
