//! A job-cluster master: add, delete and list jobs from the command line,
//! or stand for the master seat and assign jobs to workers until Ctrl-C.
//!
//! ```sh
//! cargo run --example master -- --demo 20                 # add 20 demo jobs, then be a master until Ctrl-C
//! cargo run --example master                              # be a master (active or standby) until Ctrl-C
//! cargo run --example master -- --add '{"stream":"orders"}' [--id orders]
//! cargo run --example master -- --delete orders
//! cargo run --example master -- --list
//! ```
//!
//! `--cluster NAME` (default `demo`), `--namespace NS`, `--rebalance`
//! (move jobs to workers that join). Configuration from the environment
//! (`REDIS_URL`, `REDSWARM_NAMESPACE`, ...); without `REDIS_URL` it starts
//! a throwaway `redis-server` and says so (then run workers in the same
//! process: `cargo run --example cluster_worker -- --demo 10`). While it
//! serves it prints a status line every two seconds; Ctrl-C (or SIGTERM)
//! steps down at once, so a standby takes over without waiting.

use std::time::Duration;

use clap::Parser;
use redswarm::{Config, Master, MasterOptions, Redswarm};

mod common;

/// A job-cluster master: add, delete and list jobs, or hold the master
/// seat and assign jobs to workers until Ctrl-C.
#[derive(Parser, Debug)]
#[command(name = "master", version)]
struct Args {
    /// Cluster to manage.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    cluster: String,
    /// Key namespace (default: REDSWARM_NAMESPACE, else `redswarm`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Add N demo jobs, then serve.
    #[arg(long, value_name = "N", default_value_t = 0)]
    demo: usize,
    /// Move jobs to workers that join.
    #[arg(long)]
    rebalance: bool,
    /// Add a job (JSON if it parses, else the text as a string).
    #[arg(long, value_name = "PAYLOAD", value_parser = common::cli::json_or_string)]
    add: Option<serde_json::Value>,
    /// With --add: the job's id (default: a random one).
    #[arg(long, value_name = "ID", requires = "add")]
    id: Option<String>,
    /// Delete a job.
    #[arg(long, value_name = "ID")]
    delete: Option<String>,
    /// List jobs and workers.
    #[arg(long)]
    list: bool,
    /// Serve (hold or stand by for the master seat) after the one-shot
    /// commands; the default when none is given.
    #[arg(long)]
    serve: bool,
}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = args.cluster.clone();
    let demo = args.demo;
    let one_shot = args.add.is_some() || args.delete.is_some() || args.list;
    let serve = args.serve || demo > 0 || !one_shot;

    let (url, _server) = common::redis_url()?;
    let mut builder = Config::builder_from_env()?.url(url);
    if let Some(ns) = &args.namespace {
        builder = builder.namespace(ns);
    }
    let swarm = Redswarm::connect(builder.build()?)?;
    // One-shot commands never take the seat.
    let master = Master::with_options(
        &swarm,
        &cluster,
        MasterOptions::new().assign(serve).rebalance(args.rebalance),
    )?;

    if let Some(value) = &args.add {
        match &args.id {
            Some(id) => {
                let added = master.add_job_with_id(id, value)?;
                println!("{id} {}", if added { "added" } else { "already there" });
            }
            None => println!("{} added", master.add_job(value)?),
        }
    }
    if let Some(id) = &args.delete {
        master.delete_job(id)?;
        println!("{id} deleted");
    }
    for i in 0..demo {
        master.add_job(&serde_json::json!({ "n": i, "stream": format!("demo-{i}") }))?;
    }
    if demo > 0 {
        eprintln!("added {demo} demo jobs to cluster `{cluster}`");
    }
    if args.list {
        print_listing(&master)?;
    }
    if !serve {
        return Ok(());
    }

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    eprintln!(
        "master {} of cluster `{cluster}` running; Ctrl-C to stop",
        master.id()
    );
    loop {
        if stop_rx.recv_timeout(Duration::from_secs(2)).is_ok() {
            break;
        }
        match status(&master) {
            Ok(line) => eprintln!("{line}"),
            Err(e) => eprintln!("status unavailable: {e}"),
        }
    }
    master.stop();
    eprintln!("stepped down");
    swarm.shutdown();
    Ok(())
}

fn status(master: &Master) -> redswarm::Result<String> {
    let jobs = master.jobs()?;
    let waiting = jobs.iter().filter(|j| j.worker.is_none()).count();
    let workers: Vec<String> = master
        .workers()?
        .iter()
        .map(|w| format!("{}={}", &w.id[..8.min(w.id.len())], w.load))
        .collect();
    Ok(format!(
        "{}: {} jobs, {waiting} waiting, workers [{}]",
        if master.is_active() {
            "active"
        } else {
            "standby"
        },
        jobs.len(),
        workers.join(" ")
    ))
}

fn print_listing(master: &Master) -> redswarm::Result<()> {
    for j in master.jobs()? {
        match (&j.worker, j.token) {
            (Some(w), Some(t)) => println!("job {} on {w} token {t} payload {}", j.id, j.payload),
            _ => println!("job {} waiting payload {}", j.id, j.payload),
        }
    }
    for w in master.workers()? {
        println!(
            "worker {} node {} load {} capacity {}",
            w.id,
            w.node,
            w.load,
            w.capacity
                .map_or_else(|| "unlimited".to_string(), |c| c.to_string())
        );
    }
    Ok(())
}
