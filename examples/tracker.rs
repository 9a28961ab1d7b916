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

use clap::Parser;
use redswarm::{CloseOptions, Config, Redswarm, Released, Tracker, TrackerOptions};
use serde::{Deserialize, Serialize};

mod common;

#[derive(Serialize, Deserialize)]
struct StreamInfo {
    stream: u32,
    format: String,
}

/// Chunk tracker demo: two encoders lock chunks of streams; closed streams
/// are merged once no chunk is locked.
#[derive(Parser, Debug)]
#[command(name = "tracker", version)]
struct Args {
    /// SIGKILL encoder B while it encodes a chunk of stream 2.
    #[arg(long)]
    kill: bool,
    /// Streams to encode.
    #[arg(long, value_name = "N", default_value_t = 3)]
    streams: u32,
    /// Chunks per stream encoder A encodes.
    #[arg(long, value_name = "K", default_value_t = 3)]
    chunks: u32,
    /// Milliseconds per chunk.
    #[arg(long = "chunk-ms", value_name = "MS", default_value = "400",
          value_parser = common::cli::millis)]
    chunk: Duration,
    /// Milliseconds after which an unrenewed chunk lock times out.
    #[arg(long = "lock-timeout-ms", value_name = "MS", default_value = "2000",
          value_parser = common::cli::millis)]
    lock_timeout: Duration,
    /// Key namespace (default: a fresh one per run).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Internal: run as the child encoder process.
    #[arg(long, value_name = "ROLE", hide = true, value_parser = ["encoder"])]
    role: Option<String>,
    /// Internal: the child encoder's name.
    #[arg(long, value_name = "NAME", hide = true, default_value = "B")]
    name: String,
}

fn main() {
    common::cli::main::<Args>("warn", run)
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

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = common::redis_url()?;
    let settings = Settings {
        url,
        namespace: args
            .namespace
            .unwrap_or_else(|| format!("tracker-example-{}", std::process::id())),
        streams: args.streams,
        chunks: args.chunks,
        chunk: args.chunk,
        lock_timeout: args.lock_timeout,
    };
    if args.role.is_some() {
        // A slower server: one long chunk per stream, still encoding when
        // the other server is done and the stream ends.
        return encoder(&settings, &args.name);
    }
    demo(&settings, args.kill)
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
