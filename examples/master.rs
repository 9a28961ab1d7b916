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

use redswarm::{Config, Master, MasterOptions, Redswarm};

mod common;

const USAGE: &str = "usage: master [--cluster NAME] [--namespace NS] [--demo N] [--rebalance] \
[--add PAYLOAD [--id ID]] [--delete ID] [--list] [--serve]";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("master: {e}\n{USAGE}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::args::Args::parse(&["help", "list", "serve", "rebalance"])?;
    if args.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let cluster = args.get("cluster").unwrap_or("demo").to_string();
    let demo: usize = args.parse_or("demo", 0)?;
    let one_shot = args.get("add").is_some() || args.get("delete").is_some() || args.flag("list");
    let serve = args.flag("serve") || demo > 0 || !one_shot;

    let (url, _server) = common::redis_url()?;
    let mut builder = Config::builder_from_env()?.url(url);
    if let Some(ns) = args.get("namespace") {
        builder = builder.namespace(ns);
    }
    let swarm = Redswarm::connect(builder.build()?)?;
    // One-shot commands never take the seat.
    let master = Master::with_options(
        &swarm,
        &cluster,
        MasterOptions::new()
            .assign(serve)
            .rebalance(args.flag("rebalance")),
    )?;

    if let Some(payload) = args.get("add") {
        // JSON if it parses, else the text as a JSON string.
        let value: serde_json::Value =
            serde_json::from_str(payload).unwrap_or_else(|_| serde_json::json!(payload));
        match args.get("id") {
            Some(id) => {
                let added = master.add_job_with_id(id, &value)?;
                println!("{id} {}", if added { "added" } else { "already there" });
            }
            None => println!("{} added", master.add_job(&value)?),
        }
    }
    if let Some(id) = args.get("delete") {
        master.delete_job(id)?;
        println!("{id} deleted");
    }
    for i in 0..demo {
        master.add_job(&serde_json::json!({ "n": i, "stream": format!("demo-{i}") }))?;
    }
    if demo > 0 {
        eprintln!("added {demo} demo jobs to cluster `{cluster}`");
    }
    if args.flag("list") {
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
