//! Fan-out in one process: 20 threads ask for the same expensive value at
//! once; the computation runs once and every thread gets its result.
//!
//! ```sh
//! cargo run --example fanout        # throwaway redis-server unless REDIS_URL is set
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

mod common;

/// 20 threads ask for one expensive value at once; it is computed once.
#[derive(Parser, Debug)]
#[command(name = "fanout", version)]
struct Args {}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(_args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    let swarm =
        redswarm::Redswarm::connect(redswarm::Config::builder_from_env()?.url(url).build()?)?;
    let computed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (swarm, computed) = (swarm.clone(), computed.clone());
            std::thread::spawn(move || {
                swarm.fanout(
                    "exchange-rate:EURUSD",
                    Duration::from_secs(10),
                    || -> Result<f64, String> {
                        computed.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(500)); // the slow backend
                        Ok(1.0842)
                    },
                )
            })
        })
        .collect();
    for t in threads {
        let rate = t.join().map_err(|_| "thread panicked")??;
        if rate != 1.0842 {
            return Err(format!("a caller got {rate}, not the computed 1.0842").into());
        }
    }
    println!(
        "20 callers got the rate in {:?}; the backend was called {} time(s)",
        started.elapsed(),
        computed.load(Ordering::SeqCst)
    );
    swarm.shutdown();
    Ok(())
}
