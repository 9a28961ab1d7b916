//! `redswarm`: see and steer a redswarm deployment from the shell.
//!
//! Reads the same environment as every redswarm program (`REDIS_URL`,
//! `REDSWARM_NAMESPACE`, ...; see `Config::from_env`). Tables for people,
//! `--json` for scripts; the exit codes are listed in `--help` and in the
//! README. Built with `--features cli`.

mod act;
mod show;
mod table;
mod web;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use redswarm::{Config, Error, Redswarm};

const EXIT_HELP: &str = "\
Environment:
  REDIS_URL            Redis to talk to (default redis://127.0.0.1:6379/)
  REDSWARM_NAMESPACE   key namespace (default redswarm)
  and the other REDSWARM_* settings of Config::from_env

Exit codes:
  0  done
  1  error talking to Redis, or unusable data found in Redis
  2  usage: unknown command or flag, bad argument or environment setting
  3  not found: no such task
  4  refused: a destructive command was not confirmed (no --yes, and no
     terminal to ask on, or the answer was not yes)
  5  not done: the task's state does not allow it (retry of a task that
     has not failed, cancel of one that already ended)";

/// See and steer a redswarm deployment: nodes, queues, tasks, locks,
/// semaphores, job clusters and chunk trackers.
#[derive(Parser)]
#[command(name = "redswarm", version, after_help = EXIT_HELP)]
struct Cli {
    /// Print JSON instead of tables (one document; `watch`: one event per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Live and recently lapsed nodes: host, pid, uptime, peer address,
    /// state, and what each holds.
    Nodes,
    /// Every queue: ready, delayed, running, ended, failed, and how many
    /// ended and failed in the last minute.
    Queues,
    /// One queue's figures (every queue's without QUEUE).
    Stats {
        /// The queue.
        queue: Option<String>,
    },
    /// A queue's failed tasks, the latest first: error and attempts.
    Failed(ListArgs),
    /// A queue's running tasks: worker node, lease left, fencing token.
    Running(ListArgs),
    /// Everything recorded about one task.
    Inspect {
        /// The queue.
        queue: String,
        /// The task id.
        id: String,
    },
    /// Re-queue failed tasks with fresh attempts: the ones named, or all.
    Retry {
        /// The queue.
        queue: String,
        /// Ids of failed tasks.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every failed task (asks first, unless --yes).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Cancel a task: a queued one ends at once, a running one is told to
    /// stop and ends cancelled.
    Cancel {
        /// The queue.
        queue: String,
        /// The task id.
        id: String,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Delete a task and its record (a worker running it has its result
    /// rejected).
    Delete {
        /// The queue.
        queue: String,
        /// The task id.
        id: String,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Delete the tasks that have ended (ok or cancelled) or failed, with
    /// their records. Tasks that are queued or running are never touched.
    Purge {
        /// The queue.
        queue: String,
        /// Delete the ended tasks.
        #[arg(long, required_unless_present = "failed")]
        ended: bool,
        /// Delete the failed tasks.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Print a queue's task events as they happen (until interrupted).
    Watch {
        /// The queue.
        queue: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        seconds: Option<u64>,
    },
    /// Held locks: holder node, TTL left, fencing token, waiters.
    Locks,
    /// Semaphore permits: holder node, TTL left, fencing token, waiters.
    Semaphores,
    /// Job clusters: jobs, pending jobs, master, jobs per worker.
    Clusters,
    /// Chunk trackers: released, processing, locked, completed, failed.
    Trackers,
    /// Serve the status page, its JSON API and Prometheus /metrics.
    Web(web::WebArgs),
}

#[derive(Args)]
struct ListArgs {
    /// The queue.
    queue: String,
    /// Show at most this many tasks.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Args)]
struct Confirm {
    /// Do it without asking.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// How a command ended, as the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Refused = 4,
    NotDone = 5,
}

/// A command's failure: one line for stderr and the exit code.
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let exit = match e {
            Error::InvalidInput { .. } | Error::InvalidConfig { .. } => Exit::Usage,
            Error::NotFound { .. } => Exit::NotFound,
            _ => Exit::Failure,
        };
        Failure::new(exit, e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::new(Exit::Failure, format!("cannot write the output: {e}"))
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::new(Exit::Failure, format!("cannot encode JSON: {e}"))
    }
}

type Outcome = Result<Exit, Failure>;

/// What every command gets: the connection and the output format.
struct Ctx {
    swarm: Redswarm,
    json: bool,
}

impl Ctx {
    /// Prints `value` as pretty JSON (with `--json`).
    fn print_json<T: serde::Serialize>(&self, value: &T) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(value)?;
        writeln!(std::io::stdout().lock(), "{text}")?;
        Ok(())
    }

    fn print(&self, text: &str) -> Result<(), Failure> {
        write!(std::io::stdout().lock(), "{text}")?;
        Ok(())
    }

    /// Asks "`question` [y/N]" on the terminal unless `confirm.yes`;
    /// refuses when there is no terminal to ask on.
    fn confirm(&self, confirm: &Confirm, question: &str) -> Result<(), Failure> {
        if confirm.yes {
            return Ok(());
        }
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(Failure::new(
                Exit::Refused,
                format!("refusing to {question} without --yes (no terminal to ask on)"),
            ));
        }
        let mut ask = question.to_string();
        if let Some(first) = ask.get(..1) {
            ask.replace_range(..1, &first.to_ascii_uppercase());
        }
        eprint!("{ask}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            Ok(())
        } else {
            Err(Failure::new(Exit::Refused, "not confirmed; nothing done"))
        }
    }
}

fn connect() -> Result<Redswarm, Failure> {
    // This process only looks: it must not take the peer-ping port or the
    // node id that a worker on the same host may be configured with (a
    // live namesake would refuse it).
    std::env::remove_var("REDSWARM_PEER_LISTEN");
    std::env::remove_var("REDSWARM_NODE_ID");
    let config: Config = Config::builder_from_env()?.pool_size(2).build()?;
    Ok(Redswarm::connect(config)?)
}

fn run(cli: Cli) -> Outcome {
    let ctx = Ctx {
        swarm: connect()?,
        json: cli.json,
    };
    let outcome = match cli.command {
        Command::Nodes => show::nodes(&ctx),
        Command::Queues => show::queues(&ctx, None),
        Command::Stats { queue } => show::queues(&ctx, queue.as_deref()),
        Command::Failed(a) => show::failed(&ctx, &a.queue, a.limit),
        Command::Running(a) => show::running(&ctx, &a.queue, a.limit),
        Command::Inspect { queue, id } => show::inspect(&ctx, &queue, &id),
        Command::Retry {
            queue,
            ids,
            all,
            confirm,
        } => act::retry(&ctx, &queue, &ids, all, &confirm),
        Command::Cancel { queue, id, confirm } => act::cancel(&ctx, &queue, &id, &confirm),
        Command::Delete { queue, id, confirm } => act::delete(&ctx, &queue, &id, &confirm),
        Command::Purge {
            queue,
            ended,
            failed,
            confirm,
        } => act::purge(&ctx, &queue, ended, failed, &confirm),
        Command::Watch {
            queue,
            count,
            seconds,
        } => show::watch(&ctx, &queue, count, seconds),
        Command::Locks => show::locks(&ctx),
        Command::Semaphores => show::semaphores(&ctx),
        Command::Clusters => show::clusters(&ctx),
        Command::Trackers => show::trackers(&ctx),
        Command::Web(a) => web::run(&ctx, &a),
    };
    ctx.swarm.shutdown();
    outcome
}

fn main() -> ExitCode {
    // clap prints usage and exits 2 on a bad command line, 0 for --help.
    let cli = Cli::parse();
    match run(cli) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(f) => {
            // One line, whatever the error carried.
            let line: String = f
                .message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            eprintln!("redswarm: {line}");
            ExitCode::from(f.exit as u8)
        }
    }
}
