//! The redswarm worker process: the main job of the project.
//!
//! ```sh
//! cargo run --release --example worker -- --demo 1000     # push 1,000 demo tasks, run them, print a summary
//! cargo run --release --example worker                    # serve queue `demo` until Ctrl-C
//! cargo run --release --example worker -- --queue jobs --threads 8 --listen 127.0.0.1:7400 --partition 60
//! ```
//!
//! Configuration from flags and the environment (`REDIS_URL`,
//! `REDSWARM_NAMESPACE`, `REDSWARM_PEER_LISTEN`, ...). Without `REDIS_URL`
//! it starts a throwaway `redis-server` and says so. It runs the built-in
//! demo handler — sleep for the task's `ms` (stopping early if told to) and
//! echo the payload — and prints `done <task-id> <attempt> <fencing-token>`
//! on stdout for every task it completes (with `--demo` on a terminal, a
//! live progress line takes their place; pipe stdout to get them).
//! Ctrl-C (or SIGTERM) shuts down gracefully: running tasks get the grace
//! period, then go back to the queue at once.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use redswarm::{Config, FinishedHow, SwarmWorker, WorkerOptions};
use serde_json::json;

mod common;

const USAGE: &str = "usage: worker [--demo N] [--queue NAME] [--threads N] [--listen ADDR] \
[--partition PCT] [--lease-ms MS] [--grace-ms MS] [--namespace NS]";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("worker: {e}\n{USAGE}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::args::Args::parse(&["help"])?;
    if args.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let demo: usize = args.parse_or("demo", 0)?;
    let queue_name = args.get("queue").unwrap_or("demo").to_string();
    let threads: usize = args.parse_or("threads", 4)?;
    let lease = Duration::from_millis(args.parse_or("lease-ms", 10_000)?);
    let grace = Duration::from_millis(args.parse_or("grace-ms", 5_000)?);

    let (url, _server) = common::redis_url()?;
    let mut builder = Config::builder_from_env()?.url(url);
    if let Some(ns) = args.get("namespace") {
        builder = builder.namespace(ns);
    }
    if let Some(addr) = args.get("listen") {
        builder = builder.peer_listen(
            addr.parse()
                .map_err(|e| format!("--listen {addr:?}: {e}"))?,
        );
    }
    if let Some(p) = args.get("partition") {
        builder =
            builder.partition_percentage(p.parse().map_err(|e| format!("--partition {p:?}: {e}"))?);
    }
    let config = builder.build()?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    // A worker started while Redis is down waits for it instead of exiting.
    let swarm = common::connect_waiting(config, &stop_rx)?;
    let queue = swarm.queue(&queue_name)?;

    if demo > 0 {
        let tasks: Vec<_> = (0..demo)
            .map(|i| json!({ "n": i, "ms": 1 + (i * 7) % 10 }))
            .collect();
        for chunk in tasks.chunks(500) {
            queue.push_many(chunk)?;
        }
        eprintln!("pushed {demo} demo tasks to queue `{queue_name}`");
    }

    let worker = SwarmWorker::start(
        &queue,
        WorkerOptions::new()
            .threads(threads)
            .lease(lease)
            .grace(grace),
        |ctx| {
            let ms = ctx.data()["ms"].as_u64().unwrap_or(10);
            if ctx.sleep(Duration::from_millis(ms)) {
                Ok(json!({ "echo": ctx.data(), "node": std::process::id() }))
            } else {
                Err(format!("stopped: {:?}", ctx.stop_reason()))
            }
        },
    )?;
    eprintln!(
        "node {} working on queue `{queue_name}` with {threads} threads{}; Ctrl-C to stop",
        swarm.node_id(),
        swarm
            .peer_addr()
            .map(|a| format!(", peer pings on {a}"))
            .unwrap_or_default()
    );

    let live_progress = demo > 0 && std::io::stdout().is_terminal();
    let finished = worker.finished();
    let started = Instant::now();
    let (mut done, mut failed) = (0usize, 0usize);
    let mut last_draw = Instant::now();
    let mut stdout = std::io::stdout().lock();
    loop {
        crossbeam_channel::select! {
            recv(stop_rx) -> _ => {
                eprintln!("\nstopping: letting running tasks finish (grace {grace:?})");
                break;
            }
            recv(finished) -> f => {
                let Ok(f) = f else { break };
                match f.how {
                    FinishedHow::Completed => {
                        done += 1;
                        if !live_progress {
                            writeln!(stdout, "done {} {} {}", f.id, f.attempt, f.fencing_token)?;
                        }
                    }
                    FinishedHow::Failed(_) => failed += 1,
                    _ => {}
                }
            }
            default(Duration::from_millis(200)) => {}
        }
        if demo > 0 {
            if live_progress
                && (last_draw.elapsed() > Duration::from_millis(100) || done + failed >= demo)
            {
                last_draw = Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                eprint!("\r{done}/{demo} done, {failed} failed, {rate:.0} tasks/s   ");
            }
            if done + failed >= demo && queue.counts()?.pending() == 0 {
                break;
            }
        }
    }
    let handed_back = worker.shutdown();
    if demo > 0 {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "\nsummary: {done} tasks done, {failed} failed, {handed_back} handed back, in {secs:.2} s ({:.0} tasks/s) with {threads} threads",
            done as f64 / secs.max(1e-9)
        );
    } else {
        eprintln!("stopped after {done} tasks ({handed_back} handed back)");
    }
    swarm.shutdown();
    Ok(())
}
