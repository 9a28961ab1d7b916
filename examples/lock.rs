//! Locks in action: several threads (run the example twice to add another
//! process) take turns on one lock; every write is checked against the
//! fencing token, as a real storage backend should.
//!
//! ```sh
//! cargo run --example lock      # throwaway redis-server unless REDIS_URL is set
//! ```

use std::time::Duration;

use clap::Parser;
use redswarm::{Config, Redswarm};

mod common;

/// Threads take turns on one lock, checking fencing tokens; then a
/// multi-lock and a semaphore.
#[derive(Parser, Debug)]
#[command(name = "lock", version)]
struct Args {}

fn main() {
    common::cli::main::<Args>("info", run)
}

fn run(_args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    let swarm = Redswarm::connect(Config::builder_from_env()?.url(url).build()?)?;

    // The "storage": remembers the highest fencing token it accepted and
    // rejects writes from anyone holding an older one.
    let highest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..4 {
        let swarm = swarm.clone();
        let highest = highest.clone();
        threads.push(std::thread::spawn(move || -> redswarm::Result<()> {
            for round in 0..5 {
                let guard = swarm
                    .lock_options("example:report")
                    .ttl(Duration::from_secs(10))
                    .auto_extend(true)
                    .lock(Duration::from_secs(30))?;
                let token = guard.fencing_token();
                let prev = highest.fetch_max(token, std::sync::atomic::Ordering::SeqCst);
                if token <= prev {
                    return Err(redswarm::Error::InvalidInput {
                        what: "fencing token",
                        reason: format!("{token} is not above {prev}: the storage would reject it"),
                    });
                }
                println!("thread {t} round {round}: holding with fencing token {token}");
                std::thread::sleep(Duration::from_millis(50));
                guard.release()?;
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| "thread panicked")??;
    }

    // All-or-nothing on several names, and a semaphore.
    let all = swarm.lock_all(
        &["example:a", "example:b"],
        Duration::from_secs(5),
        Duration::from_secs(5),
    )?;
    println!("multi-lock tokens: {:?}", all.fencing_tokens());
    all.release()?;
    let sem = swarm
        .semaphore("example:renderers", 2)?
        .ttl(Duration::from_secs(10));
    let p1 = sem.acquire(Duration::from_secs(5))?;
    let p2 = sem.acquire(Duration::from_secs(5))?;
    println!(
        "semaphore holders: {} (third try: {:?})",
        sem.holders()?,
        sem.try_acquire()?.map(|p| p.fencing_token())
    );
    drop((p1, p2));
    swarm.shutdown();
    Ok(())
}
