//! A plain thread-per-connection HTTP server (std `TcpListener`, no
//! framework) whose handler serves an expensive lookup through `fanout`:
//! a burst of concurrent requests for one key, across several server
//! processes, reaches the backend once.
//!
//! ```sh
//! cargo run --example legacy_server -- --demo          # two servers + a burst, prints the count
//! cargo run --example legacy_server -- --port 8080     # just serve: GET /price/<sku>
//! ```
//! Without `REDIS_URL` the demo starts a throwaway redis-server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use redswarm::{Config, FanoutError, Redswarm};

mod common;

/// Counter of real backend calls, in Redis so every server process adds to it.
const BACKEND_CALLS: &str = "legacy-demo:backend-calls";

/// A thread-per-connection HTTP server whose expensive lookups go
/// through `fanout`.
#[derive(Parser, Debug)]
#[command(name = "legacy_server", version)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["port", "demo"])))]
struct Args {
    /// Serve `GET /price/<sku>` on 127.0.0.1:PORT (Redis from REDIS_URL).
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Start two servers and a burst of 60 requests; print the backend calls.
    #[arg(long)]
    demo: bool,
}

fn main() {
    common::cli::main::<Args>("warn", run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    match args.port {
        Some(port) => serve(port),
        None => demo(),
    }
}

/// The legacy server: one OS thread per connection.
fn serve(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let swarm = Redswarm::connect(Config::from_env()?)?;
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    eprintln!("serving on 127.0.0.1:{port}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let swarm = swarm.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(&swarm, stream) {
                eprintln!("request failed: {e}");
            }
        });
    }
    Ok(())
}

fn handle(swarm: &Redswarm, mut stream: TcpStream) -> Result<(), Box<dyn std::error::Error>> {
    let mut line = String::new();
    if BufReader::new(stream.try_clone()?).read_line(&mut line)? == 0 {
        return Ok(()); // a probe that connected and closed
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path.strip_prefix("/price/") {
        Some(sku) if !sku.is_empty() => {
            let result = swarm.fanout(&format!("price:{sku}"), Duration::from_secs(10), || {
                expensive_lookup(swarm, sku)
            });
            match result {
                Ok(price) => ("200 OK", format!("{sku} costs {price}\n")),
                Err(FanoutError::Job(e)) => ("502 Bad Gateway", format!("backend: {e}\n")),
                Err(e) => ("503 Service Unavailable", format!("{e}\n")),
            }
        }
        _ => ("404 Not Found", "try /price/<sku>\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// The slow backend every request would otherwise hit.
fn expensive_lookup(swarm: &Redswarm, sku: &str) -> Result<u64, String> {
    if let Ok(mut c) = swarm.connection() {
        let _: redis::RedisResult<i64> = redis::cmd("INCR").arg(BACKEND_CALLS).query(&mut *c);
    }
    std::thread::sleep(Duration::from_millis(700));
    Ok(sku.bytes().map(u64::from).sum::<u64>() * 3)
}

/// Two server processes, a burst of 60 concurrent requests for one SKU
/// spread over both, and the number of backend calls it caused.
fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    let mut admin = redis::Client::open(url.as_str())?.get_connection()?;
    let _: () = redis::cmd("DEL").arg(BACKEND_CALLS).query(&mut admin)?;
    let ports = [free_port()?, free_port()?];
    let mut children: Vec<Child> = Vec::new();
    for port in ports {
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["--port", &port.to_string()])
                .env("REDIS_URL", &url)
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    let outcome = burst(&ports);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (ok, took) = outcome?;
    let calls: i64 = redis::cmd("GET")
        .arg(BACKEND_CALLS)
        .query(&mut admin)
        .unwrap_or(0);
    println!(
        "burst: 60 concurrent requests over 2 server processes, {ok} answered 200 in {took:?}"
    );
    println!("backend calls caused by the burst: {calls}");
    Ok(())
}

fn burst(ports: &[u16; 2]) -> Result<(usize, Duration), Box<dyn std::error::Error>> {
    for port in ports {
        wait_for_port(*port)?;
    }
    let start = Arc::new(Barrier::new(60));
    let started = Instant::now();
    let clients: Vec<_> = (0..60)
        .map(|i| {
            let port = ports[i % 2];
            let start = start.clone();
            std::thread::spawn(move || -> std::io::Result<bool> {
                start.wait();
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                write!(s, "GET /price/sku-42 HTTP/1.1\r\nHost: demo\r\n\r\n")?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply.starts_with("HTTP/1.1 200"))
            })
        })
        .collect();
    let mut ok = 0;
    for c in clients {
        if matches!(c.join(), Ok(Ok(true))) {
            ok += 1;
        }
    }
    Ok((ok, started.elapsed()))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("server on port {port} did not start").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
