//! A producer: pushes N demo tasks and, with `--wait`, follows them until
//! every one has ended, then reports what Redis recorded.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example push -- --count 1000 --ms 5 --wait
//! ```
//!
//! `--wait` counts from Redis, the source of truth: it asks, for the ids it
//! pushed, which are in the queue's ended and failed sets (one atomic
//! `ZMSCORE` round per poll), so no lost pub/sub message can make it miss
//! one. The time it reports runs from the push to the last task's end as
//! Redis's clock recorded it, not to when this process noticed.

use std::time::{Duration, Instant};

use clap::Parser;
use redswarm::{Config, Queue, Redswarm, TaskOptions};
use serde_json::json;

mod common;

/// How often `--wait` asks Redis.
const POLL: Duration = Duration::from_millis(100);
/// Ids per `ZMSCORE` (bounds one command's size).
const BATCH: usize = 1000;

/// Pushes demo tasks to a redswarm queue.
#[derive(Parser, Debug)]
#[command(name = "push", version)]
struct Args {
    /// Queue to push to.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    queue: String,
    /// Tasks to push.
    #[arg(long, value_name = "N", default_value_t = 100)]
    count: usize,
    /// Each demo task's `ms` (how long the demo handler sleeps).
    #[arg(long, value_name = "MS", default_value_t = 10)]
    ms: u64,
    /// Priority 0-9 (higher runs first).
    #[arg(long, value_name = "P", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: u8,
    /// Wait until every pushed task has ended and report the counts.
    #[arg(long)]
    wait: bool,
}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    let swarm = Redswarm::connect(Config::builder_from_env()?.url(url).build()?)?;
    let queue = swarm.queue(&args.queue)?;
    let count = args.count;
    let started_ms = redis_now_ms(&swarm)?;
    let started = Instant::now();
    let items: Vec<_> = (0..count)
        .map(|i| json!({ "n": i, "ms": args.ms }))
        .collect();
    let mut ids = Vec::with_capacity(count);
    let opts = TaskOptions::new().priority(args.priority);
    for chunk in items.chunks(500) {
        ids.extend(queue.push_many_with(chunk, &opts)?);
    }
    println!(
        "pushed {count} tasks to `{}` in {:.2} s",
        args.queue,
        started.elapsed().as_secs_f64()
    );
    if !args.wait {
        return Ok(());
    }

    let mut progress = common::progress::Progress::new(count as u64, true);
    let mut ends = Ends::default();
    let mut pending = ids;
    loop {
        pending = ends.poll(&swarm, &queue, pending)?;
        progress.set(ends.ended(), ends.failed);
        if pending.is_empty() {
            break;
        }
        std::thread::sleep(POLL);
    }
    progress.finish();
    let secs = if ends.last_end_ms > 0 {
        ends.last_end_ms.saturating_sub(started_ms) as f64 / 1000.0
    } else {
        started.elapsed().as_secs_f64() // none left an end time (all trimmed)
    };
    println!(
        "all {count} ended: {} ok or cancelled, {} failed{} in {secs:.2} s ({:.0} tasks/s, from the push to the last end by Redis's clock)",
        ends.ok,
        ends.failed,
        if ends.gone > 0 {
            format!(", {} no longer in Redis (trimmed by retention or deleted)", ends.gone)
        } else {
            String::new()
        },
        count as f64 / secs.max(1e-3)
    );
    Ok(())
}

/// Redis's clock in milliseconds (task end times are on it).
fn redis_now_ms(swarm: &Redswarm) -> Result<u64, Box<dyn std::error::Error>> {
    let mut conn = swarm.connection()?;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut *conn)?;
    Ok(secs * 1000 + micros / 1000)
}

/// What Redis says about the pushed tasks so far.
#[derive(Default)]
struct Ends {
    /// Ended ok or cancelled (the `ended` set).
    ok: u64,
    /// Ended failed.
    failed: u64,
    /// In no set at all: trimmed by the ended sets' retention, or deleted.
    gone: u64,
    /// Latest end time seen (Redis's clock, ms).
    last_end_ms: u64,
}

impl Ends {
    fn ended(&self) -> u64 {
        self.ok + self.failed + self.gone
    }

    /// Looks the `pending` ids up; returns those still pending.
    fn poll(
        &mut self,
        swarm: &Redswarm,
        queue: &Queue,
        pending: Vec<String>,
    ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let keys = queue.keys();
        let mut conn = swarm.connection()?;
        let mut still = Vec::new();
        for batch in pending.chunks(BATCH) {
            // One transaction: a task that moves between sets (a script,
            // atomic) is seen in exactly one of them.
            let mut pipe = redis::pipe();
            pipe.atomic();
            for set in [
                &keys.ended,
                &keys.failed,
                &keys.ready,
                &keys.delayed,
                &keys.running,
            ] {
                pipe.cmd("ZMSCORE").arg(set).arg(batch);
            }
            #[allow(clippy::type_complexity)]
            let (ended, failed, ready, delayed, running): (
                Vec<Option<f64>>,
                Vec<Option<f64>>,
                Vec<Option<f64>>,
                Vec<Option<f64>>,
                Vec<Option<f64>>,
            ) = pipe.query(&mut *conn)?;
            for (i, id) in batch.iter().enumerate() {
                let at = |v: &Vec<Option<f64>>| v.get(i).copied().flatten();
                if let Some(t) = at(&ended) {
                    self.ok += 1;
                    self.last_end_ms = self.last_end_ms.max(t as u64);
                } else if let Some(t) = at(&failed) {
                    self.failed += 1;
                    self.last_end_ms = self.last_end_ms.max(t as u64);
                } else if at(&ready).is_some() || at(&delayed).is_some() || at(&running).is_some() {
                    still.push(id.clone());
                } else {
                    self.gone += 1;
                }
            }
        }
        Ok(still)
    }
}
