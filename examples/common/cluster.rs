//! A throwaway Redis Cluster for the load generator's `cluster-tasks`
//! scenario: N primaries (no replicas) on free ports, joined with
//! `redis-cli --cluster create`, stopped on drop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ThrowawayCluster {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl ThrowawayCluster {
    pub fn start(primaries: usize) -> Result<ThrowawayCluster, Box<dyn std::error::Error>> {
        if primaries < 3 {
            return Err("a Redis Cluster needs at least 3 primaries".into());
        }
        let dir = std::env::temp_dir().join(format!(
            "redswarm-example-cluster-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = ThrowawayCluster {
            children: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..primaries {
            // The cluster bus uses port + 10000: pick ports that leave room.
            let port = loop {
                let p = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                if p < 55_000 {
                    break p;
                }
            };
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                ])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        for url in cluster.node_urls() {
            wait_ping(&url)?;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )
            .into());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for url in cluster.node_urls() {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut redis::Client::open(url.as_str())?.get_connection()?)?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err("the cluster did not reach cluster_state:ok in 60 s".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// `redis+cluster://` URL with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// `redis://` URL of each node.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }
}

fn wait_ping(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut c) = redis::Client::open(url)?.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{url} did not answer within 10 s").into())
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
