//! A swarm monitor: re-queues tasks whose workers died (or fails them after
//! their last attempt), reports dead nodes and queue counts. Any number can
//! run; they never re-queue a task twice.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example monitor -- --queue demo --interval-ms 1000
//! ```
//!
//! It sweeps every `--interval-ms` and prints one status line every
//! `--report-ms` (default: the sweep interval) until Ctrl-C.

use std::time::Duration;

use clap::Parser;
use redswarm::{Config, Monitor, MonitorStats, PartitionState, QueueCounts, Redswarm};

mod common;

/// Re-queues the tasks of dead workers and reports a queue's state.
#[derive(Parser, Debug)]
#[command(name = "monitor", version)]
struct Args {
    /// Queue to watch.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    queue: String,
    /// Milliseconds between sweeps for expired leases.
    #[arg(long = "interval-ms", value_name = "MS", default_value = "1000",
          value_parser = common::cli::millis)]
    interval: Duration,
    /// Milliseconds between status lines (default: the sweep interval).
    #[arg(long = "report-ms", value_name = "MS", value_parser = common::cli::millis)]
    report: Option<Duration>,
}

fn main() {
    common::cli::main::<Args>("info", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    let config = Config::builder_from_env()?.url(url).build()?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    let swarm = common::connect_waiting(config, &stop_rx)?;
    let queue = swarm.queue(&args.queue)?;
    let monitor = Monitor::start(&queue, args.interval)?;
    let report = args.report.unwrap_or(args.interval);
    println!(
        "monitoring queue `{}`: sweeping every {} ms, reporting every {} ms; Ctrl-C to stop",
        args.queue,
        args.interval.as_millis(),
        report.as_millis()
    );
    while stop_rx.recv_timeout(report).is_err() {
        println!("{}", status(&swarm, &queue, monitor.stats()));
    }
    monitor.stop();
    swarm.shutdown();
    Ok(())
}

/// One status line; a part Redis could not answer says so instead.
fn status(swarm: &Redswarm, queue: &redswarm::Queue, stats: MonitorStats) -> String {
    let counts = match queue.counts() {
        Ok(QueueCounts {
            ready,
            delayed,
            running,
            ended,
            failed,
        }) => format!(
            "{ready} ready, {delayed} delayed, {running} running, {ended} ended, {failed} failed"
        ),
        Err(e) => format!("counts unavailable ({e})"),
    };
    let nodes = match (swarm.live_nodes(), swarm.dead_nodes()) {
        (Ok(live), Ok(dead)) if dead.is_empty() => format!("{} live nodes", live.len()),
        (Ok(live), Ok(dead)) => format!(
            "{} live nodes, dead: {}",
            live.len(),
            dead.iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        (Err(e), _) | (_, Err(e)) => format!("nodes unavailable ({e})"),
    };
    let partition = match swarm.partition_state() {
        PartitionState::Connected => "connected".to_string(),
        PartitionState::RedisLostPeersOk { answered, known } => {
            format!("Redis lost, {answered}/{known} peers answer: working on")
        }
        PartitionState::Partitioned { answered, known } => {
            format!("partitioned ({answered}/{known} peers answer): sweeps paused")
        }
    };
    format!(
        "{counts} | {nodes} | swept {} times: requeued {}, failed {}, {} node deaths | {partition}",
        stats.sweeps, stats.requeued, stats.failed, stats.dead_nodes
    )
}
