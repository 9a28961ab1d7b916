//! Load generator: each scenario measured over repeated rounds next to the
//! raw redis-rs floor of the same run, so figures from a shared, noisy
//! machine can be compared as ratios.
//!
//! ```sh
//! cargo run --release --example loadgen -- floor
//! cargo run --release --example loadgen -- lock
//! cargo run --release --example loadgen -- lock-contended --handles 8 [--think-ms 10] [--fair]
//! cargo run --release --example loadgen -- semaphore
//! cargo run --release --example loadgen -- enqueue
//! cargo run --release --example loadgen -- tasks --threads 32 [--processes 4]
//! cargo run --release --example loadgen --features cluster -- cluster-tasks --threads 32 [--queues 8] [--primaries 3]
//! cargo run --release --example loadgen -- failover [--trials 10] [--lease-ms 600 --heartbeat-ms 200]
//! cargo run --release --example loadgen -- fanout --waiters 50 --handles 5
//! cargo run --release --example loadgen -- all
//! cargo run --release --example loadgen -- peers
//! ```
//!
//! Against `REDIS_URL`, or a throwaway `redis-server` when it is unset.
//! `--rounds N` (default 3) and `--seconds S` (default 3) per round.
//! `--peers` adds BullMQ, bee-queue or redlock rows (Node.js, `benches/peers/`)
//! to `tasks`, `enqueue` and `lock-contended`; `peers` runs all of them alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{Config, Redswarm, SwarmWorker, WorkerOptions};
use serde_json::json;

mod common;

const USAGE: &str =
    "usage: loadgen <floor|lock|lock-contended|semaphore|enqueue|tasks|cluster-tasks|failover|fanout|all|peers> \
[--peers] [--rounds N] [--seconds S] [--threads N] [--processes P] [--handles N] [--think-ms MS] [--fair] \
[--trials N] [--lease-ms MS] [--heartbeat-ms MS] [--waiters N] [--queues Q] [--primaries N]";

struct Opts {
    rounds: usize,
    seconds: Duration,
    threads: usize,
    processes: usize,
    handles: usize,
    think: Duration,
    fair: bool,
    trials: usize,
    lease: Option<Duration>,
    waiters: usize,
    peers: bool,
    queues: usize,
    primaries: usize,
    url: String,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("tasks-worker") {
        return tasks_worker_process(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("failover-worker") {
        return failover_worker_process();
    }
    if argv.is_empty() || argv[0] == "--help" || argv[0] == "-h" {
        println!("{USAGE}");
        return Ok(());
    }
    let scenario = argv.remove(0);
    let args = common::args::Args::parse_from(argv, &["fair", "peers"])?;
    if let Some(ms) = args.get("heartbeat-ms") {
        let _: u64 = ms.parse().map_err(|e| format!("--heartbeat-ms: {e}"))?;
        std::env::set_var("LOADGEN_HEARTBEAT_MS", ms);
    }
    let (url, _server) = common::redis_url()?;
    let o = Opts {
        rounds: args.parse_or("rounds", 3)?,
        seconds: Duration::from_secs_f64(args.parse_or("seconds", 3.0)?),
        threads: args.parse_or("threads", 8)?,
        processes: args.parse_or("processes", 1)?,
        handles: args.parse_or("handles", 8)?,
        think: Duration::from_millis(args.parse_or("think-ms", 0)?),
        fair: args.flag("fair"),
        trials: args.parse_or("trials", 10)?,
        lease: args
            .get("lease-ms")
            .map(|v| v.parse().map(Duration::from_millis))
            .transpose()
            .map_err(|e| format!("--lease-ms: {e}"))?,
        waiters: args.parse_or("waiters", 50)?,
        peers: args.flag("peers"),
        queues: args.parse_or("queues", 8)?,
        primaries: args.parse_or("primaries", 3)?,
        url,
    };
    println!(
        "loadgen {scenario}: {} rounds of {:?} against {} ({} cores)",
        o.rounds,
        o.seconds,
        mask(&o.url),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match scenario.as_str() {
        "floor" => floor(&o)?,
        "lock" => lock(&o)?,
        "lock-contended" => lock_contended(&o)?,
        "semaphore" => semaphore(&o)?,
        "enqueue" => enqueue(&o)?,
        "tasks" => tasks(&o)?,
        "cluster-tasks" => cluster_tasks(&o)?,
        "failover" => failover(&o)?,
        "fanout" => fanout(&o)?,
        "peers" => common::peers::run_all(&o.url, o.rounds, o.seconds.as_secs_f64())?,
        "all" => {
            floor(&o)?;
            lock(&o)?;
            lock_contended(&o)?;
            semaphore(&o)?;
            enqueue(&o)?;
            tasks(&o)?;
            fanout(&o)?;
            failover(&o)?;
        }
        other => return Err(format!("unknown scenario {other:?}\n{USAGE}").into()),
    }
    Ok(())
}

fn mask(url: &str) -> String {
    match url.find('@') {
        Some(at) => format!("redis://***{}", &url[at..]),
        None => url.to_string(),
    }
}

// ---------------------------------------------------------------- reporting

/// Median and spread of one measured quantity over rounds.
#[derive(Clone)]
struct Stat {
    samples: Vec<f64>,
}

impl Stat {
    fn new(mut samples: Vec<f64>) -> Stat {
        samples.sort_by(|a, b| a.total_cmp(b));
        Stat { samples }
    }
    fn median(&self) -> f64 {
        let n = self.samples.len();
        if n == 0 {
            return 0.0;
        }
        if n % 2 == 1 {
            self.samples[n / 2]
        } else {
            (self.samples[n / 2 - 1] + self.samples[n / 2]) / 2.0
        }
    }
    fn spread(&self) -> String {
        match (self.samples.first(), self.samples.last()) {
            (Some(lo), Some(hi)) => format!("{} – {}", fmt(*lo), fmt(*hi)),
            _ => "-".into(),
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Prints a table: name, median, spread, and the ratio to `base` (the row
/// the others are compared with).
fn table(title: &str, unit: &str, rows: &[(&str, Stat)], base: Option<usize>) {
    println!("\n{title}");
    println!(
        "| {:<52} | {:>12} | {:>25} | {:>7} |",
        "", unit, "spread (min – max)", "ratio"
    );
    println!("|{:-<54}|{:-<14}|{:-<27}|{:-<9}|", "", "", "", "");
    let base_value = base.and_then(|b| rows.get(b)).map(|(_, s)| s.median());
    for (name, stat) in rows {
        let ratio = match base_value {
            Some(b) if b > 0.0 => format!("{:.2}×", stat.median() / b),
            _ => "".into(),
        };
        println!(
            "| {:<52} | {:>12} | {:>25} | {:>7} |",
            name,
            fmt(stat.median()),
            stat.spread(),
            ratio
        );
    }
}

/// Runs `f` for `rounds` rounds; each returns one sample.
fn rounds(
    o: &Opts,
    mut f: impl FnMut() -> Result<f64, Box<dyn std::error::Error>>,
) -> Result<Stat, Box<dyn std::error::Error>> {
    let mut samples = Vec::new();
    for _ in 0..o.rounds {
        samples.push(f()?);
    }
    Ok(Stat::new(samples))
}

/// Calls `op` from `threads` threads for `d`; returns operations per second.
fn rate(
    threads: usize,
    d: Duration,
    make: impl Fn(usize) -> Box<dyn FnMut() -> bool + Send> + Sync,
) -> f64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let mut op = make(t);
            let (done, stop) = (&done, &stop);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    if op() {
                        n += 1;
                    }
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(d);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn raw_conn(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("REDIS_URL parses");
    client.get_connection().expect("raw connection")
}

/// A handle of its own per caller; `LOADGEN_HEARTBEAT_MS` (set from
/// `--heartbeat-ms`, inherited by the worker processes) tunes the heartbeat
/// and with it the shortest lease.
fn swarm(url: &str, ns: &str) -> Result<Redswarm, Box<dyn std::error::Error>> {
    let mut b = Config::builder().url(url).namespace(ns).pool_size(64);
    if let Some(ms) = std::env::var("LOADGEN_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let beat = Duration::from_millis(ms);
        b = b.heartbeat_interval(beat);
    }
    Ok(Redswarm::connect(b.build()?)?)
}

fn flush(url: &str) {
    let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut raw_conn(url));
}

/// The fencing floor: one script `SET NX PX` + `INCR`, one compare-and-delete.
const FENCE_ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
return redis.call('INCR', KEYS[2]) end return 0";
const FENCE_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn fencing_floor(o: &Opts, threads: usize) -> Result<Stat, Box<dyn std::error::Error>> {
    let acquire = redis::Script::new(FENCE_ACQUIRE);
    let release = redis::Script::new(FENCE_RELEASE);
    rounds(o, || {
        Ok(rate(threads, o.seconds, |t| {
            let mut c = raw_conn(&o.url);
            let (a, r) = (acquire.clone(), release.clone());
            let key = format!("floor:lock:{t}");
            Box::new(move || {
                let tok: i64 = a
                    .key(&key)
                    .key("floor:fence")
                    .arg("me")
                    .arg(30_000)
                    .invoke(&mut c)
                    .unwrap_or(0);
                let _: i64 = r.key(&key).arg("me").invoke(&mut c).unwrap_or(0);
                tok > 0
            })
        }))
    })
}

// ---------------------------------------------------------------- scenarios

fn floor(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let ping = rounds(o, || {
        Ok(rate(1, o.seconds, |_| {
            let mut c = raw_conn(&o.url);
            Box::new(move || redis::cmd("PING").query::<String>(&mut c).is_ok())
        }))
    })?;
    let setdel = rounds(o, || {
        Ok(rate(1, o.seconds, |_| {
            let mut c = raw_conn(&o.url);
            Box::new(move || {
                let ok: bool = redis::cmd("SET")
                    .arg("floor:k")
                    .arg("v")
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query::<Option<String>>(&mut c)
                    .map(|r| r.is_some())
                    .unwrap_or(false);
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg("floor:k").query(&mut c);
                ok
            })
        }))
    })?;
    let fence = fencing_floor(o, 1)?;
    let lpush = rounds(o, || lpush_floor(&o.url))?;
    let lmove1 = rounds(o, || lmove_floor(&o.url, 1, o.seconds))?;
    let lmove_n = rounds(o, || lmove_floor(&o.url, o.threads, o.seconds))?;
    let lmove_label = format!("LMOVE+LREM loop, {} threads (items/s)", o.threads);
    table(
        "raw redis-rs floors",
        "ops/s",
        &[
            ("PING, 1 connection", ping),
            ("SET NX PX + DEL (cycles/s)", setdel),
            ("fencing script cycle (SET NX PX+INCR, CAS-DEL)", fence),
            ("pipelined LPUSH, batches of 1,000 (items/s)", lpush),
            ("LMOVE+LREM loop, 1 thread (items/s)", lmove1),
            (&lmove_label, lmove_n),
        ],
        None,
    );
    Ok(())
}

fn lpush_floor(url: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let mut c = raw_conn(url);
    let _: () = redis::cmd("DEL").arg("floor:list").query(&mut c)?;
    let items: Vec<String> = (0..1000).map(|i| format!("{{\"n\":{i}}}")).collect();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(1) {
        let mut p = redis::pipe();
        for it in &items {
            p.cmd("LPUSH").arg("floor:list").arg(it).ignore();
        }
        p.query::<()>(&mut c)?;
        n += items.len();
    }
    let r = n as f64 / started.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL").arg("floor:list").query(&mut c)?;
    Ok(r)
}

/// The unbatched queue floor: each thread moves an item to a processing
/// list and removes it (BLMOVE-style claim + acknowledge), two round trips.
fn lmove_floor(url: &str, threads: usize, d: Duration) -> Result<f64, Box<dyn std::error::Error>> {
    let mut c = raw_conn(url);
    let _: () = redis::cmd("DEL").arg("floor:q").query(&mut c)?;
    let mut p = redis::pipe();
    for i in 0..200_000 {
        p.cmd("LPUSH").arg("floor:q").arg(i).ignore();
    }
    p.query::<()>(&mut c)?;
    let r = rate(threads, d, |t| {
        let mut c = raw_conn(url);
        let processing = format!("floor:processing:{t}");
        Box::new(move || {
            let item: Option<String> = redis::cmd("LMOVE")
                .arg("floor:q")
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT")
                .query(&mut c)
                .unwrap_or(None);
            match item {
                Some(it) => redis::cmd("LREM")
                    .arg(&processing)
                    .arg(1)
                    .arg(it)
                    .query::<i64>(&mut c)
                    .is_ok(),
                None => false,
            }
        })
    });
    let _: () = redis::cmd("DEL").arg("floor:q").query(&mut c)?;
    Ok(r)
}

fn lock(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let s = swarm(&o.url, "loadgen-lock")?;
    let floor = fencing_floor(o, 1)?;
    let locks = rounds(o, || {
        Ok(rate(1, o.seconds, |_| {
            let s = s.clone();
            Box::new(
                move || match s.try_lock("uncontended", Duration::from_secs(30)) {
                    Ok(Some(g)) => g.release().is_ok(),
                    _ => false,
                },
            )
        }))
    })?;
    table(
        "uncontended lock: try_lock + release, 1 thread",
        "cycles/s",
        &[
            ("raw fencing floor (same run)", floor),
            ("redswarm try_lock + release", locks),
        ],
        Some(0),
    );
    Ok(())
}

fn lock_contended(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let handles: Vec<Redswarm> = (0..o.handles)
        .map(|_| swarm(&o.url, "loadgen-contended"))
        .collect::<Result<_, _>>()?;
    // Hand-off latency: the time from one holder's release to the next
    // holder's acquire returning (same process, so one clock).
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let handoffs: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut stalls = 0usize;
    let cycles = rounds(o, || {
        Ok(rate(o.handles, o.seconds, |t| {
            let h = handles[t].clone();
            let (released_at, handoffs) = (released_at.clone(), handoffs.clone());
            let (think, fair) = (o.think, o.fair);
            Box::new(move || {
                let guard = h
                    .lock_options("hot")
                    .ttl(Duration::from_secs(10))
                    .fair(fair)
                    .lock(Duration::from_secs(30));
                let Ok(guard) = guard else { return false };
                if let Some(at) = released_at.lock().take() {
                    handoffs.lock().push(at.elapsed().as_secs_f64() * 1000.0);
                }
                if !think.is_zero() {
                    std::thread::sleep(think);
                }
                *released_at.lock() = Some(Instant::now());
                guard.release().is_ok()
            })
        }))
    })?;
    let mut h = handoffs.lock().clone();
    h.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        h.get(((h.len() as f64 * p) as usize).min(h.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    stalls += h.iter().filter(|ms| **ms > 50.0).count();
    let mut rows = vec![("redswarm lock + release, all handles", cycles)];
    let (secs, think) = (o.seconds.as_secs_f64(), o.think.as_millis());
    let peer = format!(
        "lock.js --clients {} --seconds {secs} --think-ms {think}",
        o.handles
    );
    rows.extend(peer_rows(o, &peer)?);
    table(
        &format!(
            "contended lock, {} handles (one connection each), think {:?}, fair {}",
            o.handles, o.think, o.fair
        ),
        "cycles/s",
        &rows,
        (rows.len() > 1).then_some(0),
    );
    println!(
        "hand-off release → next holder: p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms, stalls > 50 ms: {stalls} (of {})",
        pct(0.5),
        pct(0.99),
        h.last().copied().unwrap_or(0.0),
        h.len()
    );
    Ok(())
}

fn semaphore(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let s = swarm(&o.url, "loadgen-sem")?;
    let floor = fencing_floor(o, 1)?;
    let sem = s.semaphore("pool", 4)?;
    let cycles = rounds(o, || {
        Ok(rate(1, o.seconds, |_| {
            let sem = sem.clone();
            Box::new(move || match sem.try_acquire() {
                Ok(Some(p)) => p.release().is_ok(),
                _ => false,
            })
        }))
    })?;
    table(
        "uncontended semaphore: try_acquire + release, 1 thread",
        "cycles/s",
        &[
            ("raw fencing floor (same run)", floor),
            ("redswarm semaphore", cycles),
        ],
        Some(0),
    );
    Ok(())
}

fn enqueue(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let s = swarm(&o.url, "loadgen-enqueue")?;
    let q = s.queue("enqueue")?;
    let lpush = rounds(o, || lpush_floor(&o.url))?;
    let items: Vec<_> = (0..1000).map(|i| json!({ "n": i })).collect();
    let batched = rounds(o, || {
        flush(&o.url);
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(1) {
            q.push_many(&items)?;
            n += items.len();
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })?;
    let set = rounds(o, || {
        Ok(rate(1, o.seconds, |_| {
            let mut c = raw_conn(&o.url);
            Box::new(move || {
                redis::cmd("SET")
                    .arg("floor:s")
                    .arg("v")
                    .query::<()>(&mut c)
                    .is_ok()
            })
        }))
    })?;
    let single = rounds(o, || {
        flush(&o.url);
        Ok(rate(1, o.seconds, |_| {
            let q = q.clone();
            Box::new(move || q.push(&json!({ "n": 1 })).is_ok())
        }))
    })?;
    let secs = o.seconds.as_secs_f64();
    table(
        "enqueue in batches of 1,000",
        "tasks/s",
        &[
            ("raw pipelined LPUSH (same run)", lpush),
            ("redswarm push_many", batched),
        ]
        .into_iter()
        .chain(peer_rows(o, "queue.js --scenario enqueue-batch")?)
        .collect::<Vec<_>>(),
        Some(0),
    );
    table(
        "enqueue one by one, 1 thread",
        "tasks/s",
        &[
            ("raw SET, 1 connection (same run)", set),
            ("redswarm push", single),
        ]
        .into_iter()
        .chain(peer_rows(
            o,
            &format!("queue.js --scenario enqueue-one --seconds {secs}"),
        )?)
        .collect::<Vec<_>>(),
        Some(0),
    );
    flush(&o.url);
    Ok(())
}

/// Redis CPU seconds (user + sys) so far.
fn redis_cpu(url: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut raw_conn(url))
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

fn tasks(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let s = swarm(&o.url, "loadgen-tasks")?;
    let q = s.queue("noop")?;
    let total_threads = o.threads * o.processes.max(1);
    let floor = rounds(o, || lmove_floor(&o.url, total_threads, o.seconds))?;
    let count = 20_000usize;
    let mut cpu_per_task = Vec::new();
    let items: Vec<_> = (0..count).map(|i| json!({ "n": i })).collect();
    let tasks = rounds(o, || {
        flush(&o.url);
        for chunk in items.chunks(1000) {
            q.push_many(chunk)?;
        }
        let cpu0 = redis_cpu(&o.url);
        let started = Instant::now();
        if o.processes <= 1 {
            let worker = SwarmWorker::start(&q, WorkerOptions::new().threads(o.threads), |_ctx| {
                Ok(json!(null))
            })?;
            while q.counts()?.pending() > 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let secs = started.elapsed().as_secs_f64();
            worker.shutdown();
            cpu_per_task.push((redis_cpu(&o.url) - cpu0) / count as f64 * 1e6);
            Ok(count as f64 / secs)
        } else {
            let exe = std::env::current_exe()?;
            let mut children = Vec::new();
            for _ in 0..o.processes {
                children.push(
                    std::process::Command::new(&exe)
                        .arg("tasks-worker")
                        .arg(o.threads.to_string())
                        .env("REDIS_URL", &o.url)
                        .spawn()?,
                );
            }
            while q.counts()?.pending() > 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let secs = started.elapsed().as_secs_f64();
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
            cpu_per_task.push((redis_cpu(&o.url) - cpu0) / count as f64 * 1e6);
            Ok(count as f64 / secs)
        }
    })?;
    // One Node.js worker process with the same total concurrency.
    let peer = format!("queue.js --scenario tasks --concurrency {total_threads} --count {count}");
    table(
        &format!(
            "no-op tasks end to end ({count} per round), {} process(es) × {} threads",
            o.processes.max(1),
            o.threads
        ),
        "tasks/s",
        &[
            ("raw LMOVE+LREM loop, same thread count (same run)", floor),
            ("redswarm push → worker → completed", tasks),
        ]
        .into_iter()
        .chain(peer_rows(o, &peer)?)
        .collect::<Vec<_>>(),
        Some(0),
    );
    let cpu = Stat::new(cpu_per_task);
    println!(
        "Redis CPU per task: median {:.1} µs (spread {} µs)",
        cpu.median(),
        cpu.spread()
    );
    flush(&o.url);
    Ok(())
}

/// No-op tasks on one server and on a throwaway Redis Cluster, on one
/// queue and spread over `--queues` queues (the threads split between one
/// worker per queue): does throughput grow with primaries? Always starts
/// its own single server and cluster (REDIS_URL is not used).
fn cluster_tasks(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let single = common::RedisServer::start()?;
    let cluster = common::cluster::ThrowawayCluster::start(o.primaries)?;
    let queues = o.queues.max(1);
    let count = 20_000usize;
    let mut rows: Vec<(String, Stat)> = Vec::new();
    let mut cpu_notes = Vec::new();
    for (setup, url, node_urls) in [
        ("one server", single.url(), vec![single.url()]),
        (
            &*format!("cluster of {}", o.primaries),
            cluster.url(),
            cluster.node_urls(),
        ),
    ] {
        for q_count in [1, queues] {
            let s = swarm(&url, "loadgen-cluster")?;
            let qs: Vec<_> = (0..q_count)
                .map(|i| s.queue(&format!("noop-{i}")))
                .collect::<Result<_, _>>()?;
            let per_queue = count / q_count;
            let items: Vec<_> = (0..per_queue).map(|i| json!({ "n": i })).collect();
            let mut cpu = Vec::new();
            let stat = rounds(o, || {
                for u in &node_urls {
                    flush(u);
                }
                for q in &qs {
                    for chunk in items.chunks(1000) {
                        q.push_many(chunk)?;
                    }
                }
                let cpu0: f64 = node_urls.iter().map(|u| redis_cpu(u)).sum();
                let started = Instant::now();
                let threads = (o.threads / q_count).max(1);
                let workers = qs
                    .iter()
                    .map(|q| {
                        SwarmWorker::start(q, WorkerOptions::new().threads(threads), |_ctx| {
                            Ok(json!(null))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                loop {
                    let mut pending = 0;
                    for q in &qs {
                        pending += q.counts()?.pending();
                    }
                    if pending == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let secs = started.elapsed().as_secs_f64();
                for w in workers {
                    w.shutdown();
                }
                let cpu1: f64 = node_urls.iter().map(|u| redis_cpu(u)).sum();
                cpu.push((cpu1 - cpu0) / (per_queue * q_count) as f64 * 1e6);
                Ok((per_queue * q_count) as f64 / secs)
            })?;
            s.shutdown();
            let label = format!("{setup}, {q_count} queue(s)");
            cpu_notes.push(format!(
                "{label}: Redis CPU per task {:.1} µs (all nodes)",
                Stat::new(cpu).median()
            ));
            rows.push((label, stat));
        }
    }
    let rows: Vec<(&str, Stat)> = rows.iter().map(|(l, s)| (l.as_str(), s.clone())).collect();
    table(
        &format!(
            "no-op tasks end to end ({count} per round), {} threads in all, one server vs a {}-primary cluster",
            o.threads, o.primaries
        ),
        "tasks/s",
        &rows,
        Some(0),
    );
    for n in cpu_notes {
        println!("{n}");
    }
    Ok(())
}

fn tasks_worker_process(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = args.first().and_then(|t| t.parse().ok()).unwrap_or(8);
    let url = std::env::var("REDIS_URL")?;
    let s = swarm(&url, "loadgen-tasks")?;
    let q = s.queue("noop")?;
    let _worker = SwarmWorker::start(&q, WorkerOptions::new().threads(threads), |_ctx| {
        Ok(json!(null))
    })?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn failover_worker_process() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")?;
    let lease = std::env::var("LOADGEN_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let s = swarm(&url, "loadgen-failover")?;
    let q = s.queue("failover")?;
    let mut opts = WorkerOptions::new().threads(1);
    if let Some(ms) = lease {
        opts = opts.lease(Duration::from_millis(ms));
    }
    let _worker = SwarmWorker::start(&q, opts, |ctx| {
        // Hold the task until killed.
        ctx.sleep(Duration::from_secs(3600));
        Ok(json!(null))
    })?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// SIGKILL a worker process that runs a task; how long until the task
/// starts on another worker.
fn failover(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let s = swarm(&o.url, "loadgen-failover")?;
    let q = s.queue("failover")?;
    let exe = std::env::current_exe()?;
    let mut samples = Vec::new();
    for trial in 0..o.trials {
        flush(&o.url);
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("failover-worker").env("REDIS_URL", &o.url);
        if let Some(l) = o.lease {
            cmd.env("LOADGEN_LEASE_MS", l.as_millis().to_string());
        }
        let mut child = cmd.spawn()?;
        let id = q.push(&json!({ "trial": trial }))?;
        // Wait until the child runs it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while q.counts()?.running == 0 {
            if Instant::now() > deadline {
                return Err("the worker process never claimed the task".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let started_elsewhere = Arc::new(Mutex::new(None::<Instant>));
        let mark = started_elsewhere.clone();
        let mut opts = WorkerOptions::new().threads(1);
        if let Some(l) = o.lease {
            opts = opts.lease(l);
        }
        let rescuer = SwarmWorker::start(&q, opts, move |_ctx| {
            mark.lock().get_or_insert_with(Instant::now);
            Ok(json!(null))
        })?;
        let killed = Instant::now();
        child.kill()?;
        child.wait()?;
        let deadline = killed + Duration::from_secs(120);
        while started_elsewhere.lock().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        rescuer.shutdown();
        let at = started_elsewhere
            .lock()
            .ok_or_else(|| format!("task {id} did not start elsewhere within 120 s"))?;
        let secs = at.duration_since(killed).as_secs_f64();
        println!("  trial {trial}: started elsewhere {secs:.2} s after SIGKILL");
        samples.push(secs);
    }
    let worst = samples.iter().cloned().fold(0.0, f64::max);
    table(
        &format!(
            "failover: SIGKILLed worker's task starts elsewhere ({} trials, lease {})",
            o.trials,
            o.lease.map_or("default".into(), |l| format!("{l:?}"))
        ),
        "seconds",
        &[("time to restart elsewhere", Stat::new(samples))],
        None,
    );
    println!("worst of {}: {worst:.2} s", o.trials);
    Ok(())
}

/// A leader computes; `--waiters` callers spread over `--handles` handles
/// wait; time from the leader's completion to the last waiter's result.
fn fanout(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let handles: Vec<Redswarm> = (0..o.handles.max(1))
        .map(|_| swarm(&o.url, "loadgen-fanout"))
        .collect::<Result<_, _>>()?;
    let leader = swarm(&o.url, "loadgen-fanout")?;
    let mut round = 0u64;
    let latency = rounds(o, || {
        let mut samples = Vec::new();
        for _ in 0..20 {
            round += 1;
            let job = format!("job-{round}");
            let completed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
            let last_result: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
            let runs = Arc::new(AtomicU64::new(0));
            std::thread::scope(|s| {
                let (ca, j, l, r) = (
                    completed_at.clone(),
                    job.clone(),
                    leader.clone(),
                    runs.clone(),
                );
                s.spawn(move || {
                    let _ = l.fanout(&j, Duration::from_secs(30), || -> Result<u64, String> {
                        r.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                        *ca.lock() = Some(Instant::now());
                        Ok(7)
                    });
                });
                std::thread::sleep(Duration::from_millis(5));
                for w in 0..o.waiters {
                    let h = handles[w % handles.len()].clone();
                    let (j, lr, r) = (job.clone(), last_result.clone(), runs.clone());
                    s.spawn(move || {
                        let v = h.fanout(&j, Duration::from_secs(30), || -> Result<u64, String> {
                            r.fetch_add(1, Ordering::Relaxed);
                            Ok(7)
                        });
                        if v.is_ok() {
                            let now = Instant::now();
                            let mut l = lr.lock();
                            if l.is_none_or(|t| now > t) {
                                *l = Some(now);
                            }
                        }
                    });
                }
            });
            if runs.load(Ordering::Relaxed) != 1 {
                eprintln!("  round {round}: {} runs", runs.load(Ordering::Relaxed));
            }
            let (completed, last) = (*completed_at.lock(), *last_result.lock());
            if let (Some(c), Some(l)) = (completed, last) {
                samples.push(l.saturating_duration_since(c).as_secs_f64() * 1000.0);
            }
        }
        Ok(Stat::new(samples).median())
    })?;
    table(
        &format!(
            "fan-out: leader completes → last of {} waiters ({} handles) has the result",
            o.waiters, o.handles
        ),
        "ms",
        &[("redswarm fanout", latency)],
        None,
    );
    Ok(())
}

/// With `--peers`, the Node.js peers' rows for `benches/peers/run.sh --one
/// <script_args>` (`queue.js`: BullMQ and bee-queue; `lock.js`: redlock),
/// each over `--rounds` rounds against the same server.
fn peer_rows(
    o: &Opts,
    script_args: &str,
) -> Result<Vec<(&'static str, Stat)>, Box<dyn std::error::Error>> {
    if !o.peers {
        return Ok(Vec::new());
    }
    let run_sh = match common::peers::script() {
        Ok(run_sh) => run_sh,
        Err(why) => {
            println!("{why}");
            return Ok(Vec::new());
        }
    };
    let peers = common::peers::libs(script_args);
    let rate = |args: String| rounds(o, || common::peers::rate(&run_sh, &o.url, &args));
    peers
        .iter()
        .map(|(label, lib)| Ok((*label, rate(format!("{script_args} {lib}"))?)))
        .collect()
}
