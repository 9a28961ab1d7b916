//! A producer: pushes N demo tasks and, with `--wait`, reports completions
//! and throughput as workers process them.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example push -- --count 1000 --ms 5 --wait
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redswarm::{Config, EventKind, Redswarm, TaskOptions};
use serde_json::json;

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = common::args::Args::parse(&["wait"])?;
    let queue_name = args.get("queue").unwrap_or("demo").to_string();
    let count: usize = args.parse_or("count", 100)?;
    let ms: u64 = args.parse_or("ms", 10)?;
    let priority: u8 = args.parse_or("priority", 0)?;
    let (url, _server) = common::redis_url()?;
    let swarm = Redswarm::connect(Config::builder_from_env()?.url(url).build()?)?;
    let queue = swarm.queue(&queue_name)?;
    // Subscribe before pushing so no completion is missed.
    let events = queue.events()?;
    let started = Instant::now();
    let mut ids = HashSet::new();
    let items: Vec<_> = (0..count).map(|i| json!({ "n": i, "ms": ms })).collect();
    for chunk in items.chunks(500) {
        ids.extend(queue.push_many_with(chunk, &TaskOptions::new().priority(priority))?);
    }
    println!(
        "pushed {count} tasks to `{queue_name}` in {:?}",
        started.elapsed()
    );
    if !args.flag("wait") {
        return Ok(());
    }
    let (mut completed, mut failed) = (0usize, 0usize);
    let mut last_report = Instant::now();
    while completed + failed < count {
        match events.next_event(Duration::from_secs(2)) {
            Some(e) if ids.contains(&e.task) => match e.kind {
                EventKind::Completed => completed += 1,
                EventKind::Failed => failed += 1,
                _ => {}
            },
            Some(_) => {}
            None => {
                // Pub/sub is lossy: fall back to the queue's own counts.
                if queue.counts()?.pending() == 0 {
                    break;
                }
            }
        }
        if last_report.elapsed() > Duration::from_secs(1) {
            last_report = Instant::now();
            println!(
                "{completed} completed, {failed} failed, {:?}",
                queue.counts()?
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "all done: {completed} completed, {failed} failed in {secs:.2} s ({:.0} tasks/s)",
        completed as f64 / secs
    );
    Ok(())
}
