//! Shared by the examples: a throwaway redis-server for running them
//! without setup, and the `REDIS_URL`-or-throwaway choice.
#![allow(dead_code)]

pub mod args;
pub mod cli;
pub mod cluster;
pub mod exec;
pub mod peers;
pub mod progress;
use std::os::unix::process::CommandExt;
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
        let dir =
            std::env::temp_dir().join(format!("redswarm-example-{}-{port}", std::process::id()));
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
            // Its own process group: Ctrl-C in the terminal reaches only the
            // example, which then shuts down cleanly and stops the server.
            .process_group(0)
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

/// `REDIS_URL` if set, else a throwaway server (kept alive by the returned
/// guard). Says which on stderr.
pub fn redis_url() -> Result<(String, Option<RedisServer>), Box<dyn std::error::Error>> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Ok((url, None)),
        _ => {
            let server = RedisServer::start()?;
            eprintln!(
                "REDIS_URL is unset: started a throwaway redis-server at {}",
                server.url()
            );
            Ok((server.url(), Some(server)))
        }
    }
}

/// Connects, waiting for Redis while it is unreachable (a worker started
/// during a Redis restart or a network cut waits instead of exiting), until
/// `stop` fires. Configuration errors and other refusals end at once.
pub fn connect_waiting(
    config: redswarm::Config,
    stop: &crossbeam_channel::Receiver<()>,
) -> Result<redswarm::Redswarm, Box<dyn std::error::Error>> {
    let mut pause = Duration::from_millis(100);
    loop {
        match redswarm::Redswarm::connect(config.clone()) {
            Ok(swarm) => return Ok(swarm),
            Err(e) if e.is_unavailable() => {
                eprintln!("{e}; retrying in {pause:?}");
                if stop.recv_timeout(pause).is_ok() {
                    return Err("stopped before Redis could be reached".into());
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
