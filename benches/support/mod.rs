//! Bench support: a throwaway redis-server (or `REDIS_URL`), shared by the
//! bench files with `mod support;`.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server for the benchmark run, or the one at `REDIS_URL`.
pub struct BenchRedis {
    child: Option<Child>,
    url: String,
    dir: Option<std::path::PathBuf>,
}

impl BenchRedis {
    pub fn start() -> BenchRedis {
        if let Ok(url) = std::env::var("REDIS_URL") {
            if !url.is_empty() {
                return BenchRedis {
                    child: None,
                    url,
                    dir: None,
                };
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("redswarm-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
            .expect("redis-server on PATH");
        let url = format!("redis://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(url.as_str()).unwrap().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        BenchRedis {
            child: Some(child),
            url,
            dir: Some(dir),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn connect(&self, ns: &str) -> redswarm::Redswarm {
        redswarm::Redswarm::connect(
            redswarm::Config::builder()
                .url(self.url.clone())
                .namespace(ns)
                .build()
                .unwrap(),
        )
        .unwrap()
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
