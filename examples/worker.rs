//! The redswarm worker process (grows into the task swarm worker).
//!
//! Connects to `REDIS_URL`, or starts a throwaway `redis-server` when it is
//! unset, registers as a node and runs until Ctrl-C.

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = common::RedisServer::start()?;
            println!(
                "REDIS_URL is unset: started a throwaway redis-server at {}",
                server.url()
            );
            (server.url(), Some(server))
        }
    };
    let config = redswarm::Config::builder_from_env()?.url(url).build()?;
    let swarm = redswarm::Redswarm::connect(config)?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    println!("node {} up; Ctrl-C to stop", swarm.node_id());
    loop {
        if stop_rx.recv_timeout(Duration::from_secs(5)).is_ok() {
            break;
        }
        println!("live nodes: {}", swarm.live_nodes()?.len());
    }
    swarm.shutdown();
    println!("stopped");
    Ok(())
}

mod common;
