//! A job-cluster worker: prints `job <id> added <token>` and
//! `job <id> deleted <token>` lines on stdout as jobs come and go (the
//! reason for a deletion goes to stderr); Ctrl-C (or SIGTERM) terminates
//! it, which hands its jobs back to the cluster at once.
//!
//! ```sh
//! cargo run --example cluster_worker -- --demo 10          # alone: also runs a master that adds 10 jobs
//! cargo run --example cluster_worker -- --cluster demo --capacity 5
//! ```
//!
//! `--cluster NAME` (default `demo`), `--namespace NS`, `--capacity N`,
//! `--lease-ms MS`. Configuration from the environment (`REDIS_URL`, ...);
//! without `REDIS_URL` it starts a throwaway `redis-server` and says so.
//! Start several against one Redis with `examples/master.rs` and kill one:
//! its jobs show up on the others within its lease.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use redswarm::{
    ClusterEvent, ClusterWorker, ClusterWorkerOptions, Config, Master, MasterOptions, Redswarm,
};

mod common;

/// Joins a job cluster and prints the jobs it is given and loses.
#[derive(Parser, Debug)]
#[command(name = "cluster_worker", version)]
struct Args {
    /// Cluster to join.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    cluster: String,
    /// Key namespace (default: REDSWARM_NAMESPACE, else `redswarm`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Most jobs this worker takes (default: unlimited).
    #[arg(long, value_name = "N")]
    capacity: Option<u32>,
    /// Membership lease in milliseconds.
    #[arg(long = "lease-ms", value_name = "MS", value_parser = common::cli::millis)]
    lease: Option<Duration>,
    /// Also run a master here that adds N demo jobs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    demo: usize,
}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = args.cluster.clone();
    let demo = args.demo;

    let (url, _server) = common::redis_url()?;
    let mut builder = Config::builder_from_env()?.url(url);
    if let Some(ns) = &args.namespace {
        builder = builder.namespace(ns);
    }
    let swarm = Redswarm::connect(builder.build()?)?;

    let mut opts = ClusterWorkerOptions::new();
    if let Some(c) = args.capacity {
        opts = opts.capacity(c);
    }
    if let Some(lease) = args.lease {
        opts = opts.lease(lease);
    }
    let worker = ClusterWorker::join(&swarm, &cluster, opts)?;
    eprintln!(
        "worker {} joined cluster `{cluster}`; Ctrl-C to terminate",
        worker.id()
    );

    // Alone (e.g. on a throwaway server), run a master here too so that
    // something happens.
    let master = if demo > 0 {
        let m = Master::with_options(&swarm, &cluster, MasterOptions::new())?;
        for i in 0..demo {
            m.add_job(&serde_json::json!({ "n": i, "stream": format!("demo-{i}") }))?;
        }
        eprintln!("added {demo} demo jobs");
        Some(m)
    } else {
        None
    };

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    let events = worker.events();
    let mut out = std::io::stdout().lock();
    let mut terminating = false;
    loop {
        crossbeam_channel::select! {
            recv(stop_rx) -> _ => {
                if std::mem::replace(&mut terminating, true) {
                    continue; // a second Ctrl-C while the events drain
                }
                eprintln!("terminating: handing jobs back");
                if let Err(e) = worker.terminate() {
                    eprintln!("could not tell Redis ({e}); the jobs move when the lease lapses");
                }
            }
            recv(events) -> event => match event {
                Ok(ClusterEvent::Added(job)) => {
                    writeln!(out, "job {} added {}", job.id(), job.token())?;
                }
                Ok(ClusterEvent::Deleted { id, token, reason }) => {
                    writeln!(out, "job {id} deleted {token}")?;
                    eprintln!("  ({id}: {reason})");
                }
                Ok(ClusterEvent::Closed) | Err(_) => break,
            },
        }
        out.flush()?;
    }
    eprintln!("worker closed");
    if let Some(m) = master {
        m.stop(); // steps down at once
    }
    swarm.shutdown();
    Ok(())
}
