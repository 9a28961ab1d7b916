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
            let server = throwaway::RedisServer::start()?;
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

mod throwaway {
    //! A throwaway redis-server for running the examples without setup.
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct RedisServer {
        child: Child,
        port: u16,
        dir: std::path::PathBuf,
    }

    impl RedisServer {
        pub fn start() -> Result<RedisServer, Box<dyn std::error::Error>> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let dir = std::env::temp_dir()
                .join(format!("redswarm-example-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!("cannot start redis-server (is it installed and on PATH?): {e}")
                })?;
            let server = RedisServer { child, port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(mut c) = redis::Client::open(server.url())?.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return Ok(server);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err("redis-server did not answer within 10 s".into())
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
