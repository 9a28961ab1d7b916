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

use redswarm::{Config, PairedOutcome, Redswarm};
use serde_json::json;

mod common;

const USAGE: &str = "usage: paired [--demo] [--name NAME] [--tasks N] [--work-ms MS] \
[--lease-ms MS] [--batch TAG] [--namespace NS]";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("paired: {e}\n{USAGE}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::args::Args::parse(&["demo", "help"])?;
    if args.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let tasks: u32 = args.parse_or("tasks", 4)?;
    let work = Duration::from_millis(args.parse_or("work-ms", 3000)?);
    let lease = Duration::from_millis(args.parse_or("lease-ms", 2000)?);
    let batch = args.get("batch").unwrap_or("1").to_string();
    let (url, _server) = common::redis_url()?;
    let namespace = args
        .get("namespace")
        .unwrap_or("paired-example")
        .to_string();
    if args.flag("demo") {
        return demo(&url, &namespace, tasks);
    }
    let name = args
        .get("name")
        .map_or_else(|| std::process::id().to_string(), str::to_string);
    participant(&url, &namespace, &name, &batch, tasks, work, lease)
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
