//! Chunk tracker (the seed's tusker): ogg streams transcoded to mp3 in
//! chunks by several stateless servers; each locks a chunk while it encodes
//! it; at the end of a stream a closer closes the task; once no chunk of a
//! closed stream is locked, one merging consumer merges it and reports.
//!
//! ```sh
//! cargo run --example tracker            # encoder A here, encoder B in a child process
//! cargo run --example tracker -- --kill  # SIGKILL B while it encodes a chunk of stream 2
//! ```
//!
//! With `--kill`, B's chunk lock is no longer renewed by its heartbeat; the
//! tracker's background sweep times it out (`--lock-timeout-ms`, default
//! 2000) and stream 2 is released and merged without B, with no cron job.
//! Options: `--streams N` (default 3), `--chunks K` per encoder (default 3),
//! `--chunk-ms MS` (default 400), `--namespace NS`.

use std::process::Command;
use std::time::{Duration, Instant};

use redswarm::{CloseOptions, Config, Redswarm, Released, Tracker, TrackerOptions};
use serde::{Deserialize, Serialize};

mod common;

const USAGE: &str = "usage: tracker [--kill] [--streams N] [--chunks K] [--chunk-ms MS] \
[--lock-timeout-ms MS] [--namespace NS] [--role encoder --name NAME]";

#[derive(Serialize, Deserialize)]
struct StreamInfo {
    stream: u32,
    format: String,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("tracker: {e}\n{USAGE}");
        std::process::exit(1);
    }
}

struct Settings {
    url: String,
    namespace: String,
    streams: u32,
    chunks: u32,
    chunk: Duration,
    lock_timeout: Duration,
}

fn connect(s: &Settings, name: &str) -> Result<(Redswarm, Tracker), Box<dyn std::error::Error>> {
    let swarm = Redswarm::connect(
        Config::builder_from_env()?
            .url(&s.url)
            .namespace(&s.namespace)
            .heartbeat_interval(Duration::from_millis(200))
            .node_id(format!("{name}-{}", std::process::id()))
            .build()?,
    )?;
    let tracker = swarm.tracker_with(
        "ogg-to-mp3",
        TrackerOptions {
            lock_timeout: s.lock_timeout,
            ..Default::default()
        },
    )?;
    Ok((swarm, tracker))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::args::Args::parse(&["kill", "help"])?;
    if args.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let (url, _server) = common::redis_url()?;
    let settings = Settings {
        url,
        namespace: args.get("namespace").map_or_else(
            || format!("tracker-example-{}", std::process::id()),
            str::to_string,
        ),
        streams: args.parse_or("streams", 3)?,
        chunks: args.parse_or("chunks", 3)?,
        chunk: Duration::from_millis(args.parse_or("chunk-ms", 400)?),
        lock_timeout: Duration::from_millis(args.parse_or("lock-timeout-ms", 2000)?),
    };
    if args.get("role") == Some("encoder") {
        let name = args.get("name").unwrap_or("B").to_string();
        // A slower server: one long chunk per stream, still encoding when
        // the other server is done and the stream ends.
        return encoder(&settings, &name);
    }
    demo(&settings, args.flag("kill"))
}

/// The slow encoding server: one long chunk per stream (random names, as
/// in the seed).
fn encoder(s: &Settings, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (swarm, tracker) = connect(s, name)?;
    for stream in 1..=s.streams {
        encode_stream(&tracker, name, stream, 1, s.chunk * (s.chunks + 1));
    }
    swarm.shutdown();
    Ok(())
}

fn encode_stream(tracker: &Tracker, name: &str, stream: u32, chunks: u32, per_chunk: Duration) {
    let task = format!("stream-{stream}");
    for k in 1..=chunks {
        let chunk = format!("{name}-{k}-{:08x}", rand_u32());
        match tracker.lock(&task, &chunk) {
            Ok(lock) => {
                println!("[{name}] {task}: encoding chunk {chunk}");
                std::thread::sleep(per_chunk);
                if let Err(e) = lock.unlock() {
                    println!("[{name}] {task}: unlock failed: {e}");
                }
            }
            Err(e) => println!("[{name}] {task}: cannot lock {chunk}: {e}"),
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    u32::from_le_bytes(b)
}

/// Encoder A in this process, encoder B in a child, the closer and the
/// merging consumer here.
fn demo(s: &Settings, kill: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (swarm, tracker) = connect(s, "A")?;
    let merging = tracker.consume(1, |task: &Released<StreamInfo>| {
        println!(
            "[merger] {}: merging the chunks of stream {} into {} (attempt {}, fencing token {})",
            task.task(),
            task.info().stream,
            task.info().format,
            task.attempt(),
            task.fencing_token()
        );
        Ok(())
    })?;
    let mut b = Command::new(std::env::current_exe()?)
        .env("REDIS_URL", &s.url)
        .args([
            "--role",
            "encoder",
            "--name",
            "B",
            "--namespace",
            &s.namespace,
        ])
        .args([
            "--streams",
            &s.streams.to_string(),
            "--chunks",
            &s.chunks.to_string(),
        ])
        .args(["--chunk-ms", &s.chunk.as_millis().to_string()])
        .args(["--lock-timeout-ms", &s.lock_timeout.as_millis().to_string()])
        .spawn()?;
    let mut b_alive = true;
    for stream in 1..=s.streams {
        encode_stream(&tracker, "A", stream, s.chunks, s.chunk);
        if kill && stream == 2 && b_alive {
            println!(
                "[demo] SIGKILL encoder B (pid {}) while it encodes stream 2",
                b.id()
            );
            b.kill()?;
            b.wait()?;
            b_alive = false;
        }
        let task = format!("stream-{stream}");
        let info = StreamInfo {
            stream,
            format: "mp3".into(),
        };
        let closed = tracker.close(
            &task,
            &info,
            CloseOptions {
                attempts: 3,
                timeout: Duration::from_secs(10),
            },
        )?;
        println!("[closer] {task}: end of stream, closed: {closed:?}");
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let st = tracker.stats()?;
        if st.completed + st.failed >= u64::from(s.streams) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    merging.stop();
    if b_alive {
        b.wait()?;
    }
    println!("[demo] stats: {:?}", tracker.stats()?);
    swarm.shutdown();
    Ok(())
}
