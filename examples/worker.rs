//! The redswarm worker process: the main job of the project.
//!
//! ```sh
//! cargo run --release --example worker -- --demo 1000     # push 1,000 demo tasks, run them, print a summary
//! cargo run --release --example worker                    # serve queue `demo` until Ctrl-C
//! cargo run --release --example worker -- --queue jobs --threads 8 --listen 127.0.0.1:7400 --partition 60
//! cargo run --release --example worker -- --queue jobs --exec 'jq .n | xargs -I{} convert in-{}.png out-{}.jpg'
//! ```
//!
//! Configuration from flags and the environment (`REDIS_URL`,
//! `REDSWARM_NAMESPACE`, `REDSWARM_PEER_LISTEN`, ...). Without `REDIS_URL`
//! it starts a throwaway `redis-server` and says so. Each task runs the
//! built-in demo handler — sleep for the task's `ms` (stopping early if told
//! to) and echo the payload — or, with `--exec CMD`, the command (see
//! `common/exec.rs` for its contract). It prints
//! `done <task-id> <attempt> <fencing-token>` on stdout for every task it
//! completes (with `--demo` on a terminal, a progress bar takes their place;
//! pipe stdout to get them).
//!
//! Ctrl-C (or SIGTERM) shuts down gracefully: running tasks get the grace
//! period, then are told to stop and go back to the queue at once; tasks
//! that finish meanwhile are printed and counted. A second Ctrl-C exits at
//! once.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use redswarm::{Config, Finished, FinishedHow, SwarmWorker, WorkerOptions};
use serde_json::json;

mod common;

use common::cli::usage;
use common::exec::ExecOptions;

/// Runs tasks of a redswarm queue until Ctrl-C (or, with --demo, until its
/// demo tasks are done).
#[derive(Parser, Debug)]
#[command(name = "worker", version)]
struct Args {
    /// Push N demo tasks first, run them and print a summary, then exit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    demo: usize,
    /// Queue to work on.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    queue: String,
    /// Tasks run at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Answer peer pings on ADDR (partition detection); port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Keep working while Redis is unreachable if at least PCT % of the
    /// known peers answer.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    partition: Option<u8>,
    /// Task lease in milliseconds (renewed by the heartbeat; at least three
    /// heartbeat intervals; default three heartbeats, 3 s: a killed
    /// worker's tasks run elsewhere that soon).
    #[arg(long = "lease-ms", value_name = "MS", value_parser = common::cli::millis)]
    lease: Option<Duration>,
    /// Shutdown grace in milliseconds: how long running tasks may finish
    /// after Ctrl-C before they are stopped and handed back.
    #[arg(long = "grace-ms", value_name = "MS", default_value_t = 5000)]
    grace_ms: u64,
    /// Key namespace (default: REDSWARM_NAMESPACE, else `redswarm`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Run each task as `sh -c CMD`: payload on stdin and in REDSWARM_TASK,
    /// stdout is the result, a non-zero exit fails it with stderr's tail,
    /// `@progress <json>` lines become progress events.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// With --exec: milliseconds between SIGTERM and SIGKILL when a task is
    /// stopped (cancel, timeout, shutdown).
    #[arg(long = "kill-grace-ms", value_name = "MS", default_value = "3000",
          value_parser = common::cli::millis, requires = "exec")]
    kill_grace: Duration,
}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let grace = Duration::from_millis(args.grace_ms);
    let exec = match &args.exec {
        Some(cmd) if cmd.trim().is_empty() => return usage("--exec needs a command"),
        Some(cmd) => Some(ExecOptions {
            command: cmd.clone(),
            kill_grace: args.kill_grace,
        }),
        None => None,
    };

    // Everything that can be rejected is checked before anything is written
    // to Redis: a bad flag must not leave demo tasks behind.
    let (url, _server) = common::redis_url()?;
    let mut builder = Config::builder_from_env()?.url(url);
    if let Some(ns) = &args.namespace {
        builder = builder.namespace(ns);
    }
    if let Some(addr) = args.listen {
        builder = builder.peer_listen(addr);
    }
    if let Some(p) = args.partition {
        builder = builder.partition_percentage(p);
    }
    let config = match builder.build() {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    let lease = args.lease.unwrap_or(config.min_renewable_ttl());
    if lease < config.min_renewable_ttl() {
        return usage(format!(
            "--lease-ms {} is below {} ms: three heartbeat intervals, so a lease could lapse between two renewals",
            lease.as_millis(),
            config.min_renewable_ttl().as_millis()
        ));
    }
    if lease > redswarm::MAX_TTL {
        return usage(format!(
            "--lease-ms {} is above the limit of {} ms",
            lease.as_millis(),
            redswarm::MAX_TTL.as_millis()
        ));
    }

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let interrupts = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if interrupts.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = stop_tx.try_send(());
            return;
        }
        // A second Ctrl-C: exit now. shutdown() is already running on the
        // main thread with the grace it was started with and cannot be
        // shortened, so this does not hand tasks back: it leaves them
        // under their leases, which lapse (the heartbeat stops with the
        // process) and any worker's or monitor's reaper re-queues them —
        // nothing is lost, they are only delayed by up to one lease.
        // Commands run by --exec are in their own process groups, out of
        // the terminal's reach: take them down first.
        common::exec::kill_all_groups();
        eprintln!(
            "\nsecond interrupt: exiting now; running tasks are re-queued when their leases lapse"
        );
        std::process::exit(130);
    })?;
    // A worker started while Redis is down waits for it instead of exiting.
    let swarm = common::connect_waiting(config, &stop_rx)?;
    let queue = swarm.queue(&args.queue)?;

    let handler = {
        let queue_name = args.queue.clone();
        move |ctx: &redswarm::TaskContext| match &exec {
            Some(exec) => common::exec::run_task(exec, &queue_name, ctx),
            None => {
                let ms = ctx.data()["ms"].as_u64().unwrap_or(10);
                if ctx.sleep(Duration::from_millis(ms)) {
                    Ok(json!({ "echo": ctx.data(), "node": std::process::id() }))
                } else {
                    Err(format!("stopped: {:?}", ctx.stop_reason()))
                }
            }
        }
    };
    // Started before the demo tasks are pushed: its options are validated
    // here, so a rejected worker leaves nothing in the queue.
    let worker = SwarmWorker::start(
        &queue,
        WorkerOptions::new()
            .threads(usize::from(args.threads))
            .lease(lease)
            .grace(grace),
        handler,
    )?;
    let demo = args.demo;
    if demo > 0 {
        let tasks: Vec<_> = (0..demo)
            .map(|i| json!({ "n": i, "ms": 1 + (i * 7) % 10 }))
            .collect();
        for chunk in tasks.chunks(500) {
            queue.push_many(chunk)?;
        }
        eprintln!("pushed {demo} demo tasks to queue `{}`", args.queue);
    }
    eprintln!(
        "node {} working on queue `{}` with {} threads{}{}; Ctrl-C to stop",
        swarm.node_id(),
        args.queue,
        args.threads,
        swarm
            .peer_addr()
            .map(|a| format!(", peer pings on {a}"))
            .unwrap_or_default(),
        args.exec
            .as_deref()
            .map(|c| format!(", running `sh -c {c:?}`"))
            .unwrap_or_default()
    );

    // A bar only when both streams are a terminal: piped stdout wants the
    // `done` lines.
    let mut progress = (demo > 0)
        .then(|| common::progress::Progress::new(demo as u64, std::io::stdout().is_terminal()));
    let finished = worker.finished();
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut stdout = std::io::stdout().lock();
    let print_done = progress.as_ref().is_none_or(|p| !p.is_bar());
    let mut interrupted = false;
    loop {
        crossbeam_channel::select! {
            recv(stop_rx) -> _ => {
                eprintln!("\nstopping: letting running tasks finish (grace {grace:?}); Ctrl-C again to exit at once");
                interrupted = true;
                break;
            }
            recv(finished) -> f => {
                let Ok(f) = f else { break };
                tally.count(&f, print_done, &mut stdout)?;
            }
            default(Duration::from_millis(200)) => {}
        }
        if let Some(p) = &mut progress {
            p.set(tally.ended(), tally.failed as u64);
            if tally.ended() >= demo as u64 && queue.counts()?.pending() == 0 {
                break;
            }
        }
    }
    let handed_back = worker.shutdown();
    // Tasks that finished during the grace are in the channel: count them.
    for f in finished.try_iter() {
        tally.count(&f, print_done, &mut stdout)?;
    }
    stdout.flush()?;
    if let Some(p) = &progress {
        p.finish();
    }
    let secs = started.elapsed().as_secs_f64();
    if demo > 0 && !interrupted {
        eprintln!(
            "summary: {} tasks done, {} failed, {handed_back} handed back, in {secs:.2} s ({:.0} tasks/s) with {} threads",
            tally.done,
            tally.failed,
            tally.done as f64 / secs.max(1e-9),
            args.threads
        );
    } else {
        eprintln!(
            "stopped after {} tasks done, {} failed ({handed_back} handed back) in {secs:.2} s",
            tally.done, tally.failed
        );
    }
    swarm.shutdown();
    Ok(())
}

/// Outcomes seen by this worker.
#[derive(Default)]
struct Tally {
    done: usize,
    failed: usize,
}

impl Tally {
    /// Counts one finished attempt; prints `done <id> <attempt> <token>`
    /// for a completed one (tests and scripts parse that line: keep it).
    fn count(&mut self, f: &Finished, print: bool, out: &mut impl Write) -> std::io::Result<()> {
        match &f.how {
            FinishedHow::Completed => {
                self.done += 1;
                if print {
                    writeln!(out, "done {} {} {}", f.id, f.attempt, f.fencing_token)?;
                }
            }
            FinishedHow::Failed(e) => {
                self.failed += 1;
                log::warn!("task {} failed: {e}", f.id);
            }
            FinishedHow::Retrying(e) => {
                log::info!("task {} attempt {} failed, retrying: {e}", f.id, f.attempt)
            }
            _ => {}
        }
        Ok(())
    }

    fn ended(&self) -> u64 {
        (self.done + self.failed) as u64
    }
}
