//! A swarm monitor: re-queues tasks whose workers died (or fails them after
//! their last attempt), reports dead nodes and queue counts. Any number can
//! run; they never re-queue a task twice.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example monitor -- --queue demo --interval-ms 1000
//! ```

use std::time::Duration;

use redswarm::{Config, Monitor};

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = common::args::Args::parse(&[])?;
    let queue_name = args.get("queue").unwrap_or("demo").to_string();
    let interval = Duration::from_millis(args.parse_or("interval-ms", 1000)?);
    let (url, _server) = common::redis_url()?;
    let config = Config::builder_from_env()?.url(url).build()?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    let swarm = common::connect_waiting(config, &stop_rx)?;
    let queue = swarm.queue(&queue_name)?;
    let monitor = Monitor::start(&queue, interval)?;
    println!("monitoring queue `{queue_name}` every {interval:?}; Ctrl-C to stop");
    while stop_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        let counts = queue.counts();
        let dead: Vec<String> = swarm
            .dead_nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.id)
            .collect();
        println!(
            "{:?} | {:?} | {} live nodes, dead: {dead:?} | partition: {:?}",
            monitor.stats(),
            counts,
            swarm.live_nodes().map(|n| n.len()).unwrap_or(0),
            swarm.partition_state()
        );
    }
    monitor.stop();
    swarm.shutdown();
    Ok(())
}
