//! Paired workers (the seed's redis-paired-worker): every participant joins
//! the same tasks; one wins each and works on it, the others stand by and
//! learn when it is done — or take over when the winner fails or dies.
//!
//! ```sh
//! cargo run --example paired -- --demo        # two processes; the parent SIGKILLs the winner
//! # or by hand, in two terminals against one Redis:
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example paired -- --name A
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example paired -- --name B
//! ```
//!
//! By hand, kill the one that is working (`kill -9 <pid>`: the other takes
//! over when the lease lapses; Ctrl-C: it reports failure on its way out,
//! and the other takes over at once). Finished tasks are remembered for 20 s
//! (`--batch` picks other task ids). Options: `--tasks N` (default 4),
//! `--work-ms MS` (default 3000), `--lease-ms MS` (default 2000).

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use redswarm::{Config, PairedOutcome, Redswarm};
use serde_json::json;

mod common;

/// Paired workers: every participant joins the same tasks; one wins each,
/// the others stand by and take over when it fails or dies.
#[derive(Parser, Debug)]
#[command(name = "paired", version)]
struct Args {
    /// Start two participants of this binary and SIGKILL the winner of task 2.
    #[arg(long)]
    demo: bool,
    /// This participant's name (default: its pid).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Tasks to join.
    #[arg(long, value_name = "N", default_value_t = 4)]
    tasks: u32,
    /// How long the winner works on a task, in milliseconds.
    #[arg(long = "work-ms", value_name = "MS", default_value = "3000",
          value_parser = common::cli::millis)]
    work: Duration,
    /// The winner's lease, in milliseconds.
    #[arg(long = "lease-ms", value_name = "MS", default_value = "2000",
          value_parser = common::cli::millis)]
    lease: Duration,
    /// Tag of the task ids (finished tasks are remembered for 20 s).
    #[arg(long, value_name = "TAG", default_value = "1")]
    batch: String,
    /// Key namespace.
    #[arg(long, value_name = "NS", default_value = "paired-example")]
    namespace: String,
}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    if args.demo {
        return demo(&url, &args.namespace, args.tasks);
    }
    let name = args.name.unwrap_or_else(|| std::process::id().to_string());
    participant(
        &url,
        &args.namespace,
        &name,
        &args.batch,
        args.tasks,
        args.work,
        args.lease,
    )
}

/// One participant: joins `push:<batch>:1..=tasks` in turn.
fn participant(
    url: &str,
    namespace: &str,
    name: &str,
    batch: &str,
    tasks: u32,
    work: Duration,
    lease: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let swarm = Redswarm::connect(
        Config::builder_from_env()?
            .url(url)
            .namespace(namespace)
            .heartbeat_interval(Duration::from_millis(200))
            .node_id(format!("{name}-{}", std::process::id()))
            .build()?,
    )?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (interrupted, swarm) = (interrupted.clone(), swarm.clone());
        ctrlc::set_handler(move || {
            interrupted.store(true, Ordering::SeqCst);
            swarm.shutdown(); // a participant standing by stops at once
        })?;
    }
    println!("[{name}] pid {} joining {tasks} tasks", std::process::id());
    let paired = swarm
        .paired_options()
        .lease(lease)
        .retention(Duration::from_secs(20));
    for n in 1..=tasks {
        let id = format!("push:{batch}:{n}");
        let payload = json!({ "to": format!("device-{n}"), "text": "hello" });
        let joined = Instant::now();
        let job = match paired.task(&id)?.run(&payload) {
            Ok(PairedOutcome::Won(job)) => {
                println!(
                    "[{name}] {id}: won the race (fencing token {})",
                    job.fencing_token()
                );
                job
            }
            Ok(PairedOutcome::TookOver(job)) => {
                println!(
                    "[{name}] {id}: the winner failed or died; taking over as attempt {} after standing by {:.1?} (fencing token {})",
                    job.attempt(),
                    joined.elapsed(),
                    job.fencing_token()
                );
                job
            }
            Ok(PairedOutcome::DoneByPeer { attempt }) => {
                println!(
                    "[{name}] {id}: done by a peer (attempt {attempt}); stood by {:.1?}",
                    joined.elapsed()
                );
                continue;
            }
            Ok(PairedOutcome::Failed { attempts, reason }) => {
                println!("[{name}] {id}: failed after {attempts} attempts: {reason}");
                continue;
            }
            Err(_) if interrupted.load(Ordering::SeqCst) => break,
            Err(e) => return Err(e.into()),
        };
        // The "push": work in steps, stopping if the lease is lost or we
        // are interrupted (then the job reports failure and a peer takes
        // over at once).
        let lost = job.lost();
        let started = Instant::now();
        let mut ok = true;
        while started.elapsed() < work {
            if interrupted.load(Ordering::SeqCst) || lost.try_recv().is_ok() {
                ok = false;
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            println!("[{name}] {id}: pushing to {} ...", job.payload()["to"]);
        }
        if ok {
            job.succeeded()?;
            println!("[{name}] {id}: pushed");
        } else {
            let _ = job.failed("interrupted");
            println!("[{name}] {id}: stopped; a peer takes over");
            break;
        }
    }
    swarm.shutdown();
    Ok(())
}

/// Starts two participants of this very binary, waits until one works on
/// task 2, SIGKILLs it and lets the other take over.
fn demo(url: &str, namespace: &str, tasks: u32) -> Result<(), Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))?;
    }
    let exe = std::env::current_exe()?;
    let batch = format!("demo-{}", std::process::id());
    let mut children: Vec<(String, Child)> = Vec::new();
    for name in ["A", "B"] {
        let child = Command::new(&exe)
            .env("REDIS_URL", url)
            .args(["--name", name, "--batch", &batch, "--namespace", namespace])
            .args(["--tasks", &tasks.to_string()])
            .spawn()?;
        children.push((name.to_string(), child));
    }
    // Who works on task 2? The task's record names the holder's node.
    let record = format!("{{{namespace}:paired:push:{batch}:2}}:record");
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let holder = loop {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break None;
        }
        let (state, node): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&record)
            .arg("state")
            .arg("node")
            .query(&mut conn)?;
        if state.as_deref() == Some("running") {
            break node;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(node) = holder {
        std::thread::sleep(Duration::from_millis(1200)); // let it work a little
        if let Some((name, child)) = children
            .iter_mut()
            .find(|(n, _)| node.starts_with(n.as_str()))
        {
            println!(
                "[demo] SIGKILL {name} (pid {}) while it works on task 2",
                child.id()
            );
            child.kill()?;
        }
    }
    for (_, child) in &mut children {
        while child.try_wait()?.is_none() {
            if stop.load(Ordering::SeqCst) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (state, attempt): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&record)
        .arg("state")
        .arg("attempt")
        .query(&mut conn)?;
    println!(
        "[demo] task 2 ended {} at attempt {}",
        state.unwrap_or_else(|| "?".into()),
        attempt.unwrap_or_else(|| "?".into())
    );
    Ok(())
}
