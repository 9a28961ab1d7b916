//! Chaos: real worker, monitor and push processes (the example binaries)
//! against a real `redis-server` with AOF `appendfsync always`, under a
//! random mix of faults drawn from a printed seed. Afterwards the end state
//! must show that nothing was lost: every task ended ok, nothing is left
//! ready, delayed or running, no completion was accepted twice or from a
//! stale claim, and no process panicked.
//!
//! - `REDSWARM_CHAOS_SEED=<n>` replays a run's fault schedule.
//! - `REDSWARM_SOAK=<seconds>` makes the fault phase that long (default: a
//!   CI-sized run of 40 s) and scales the task count with it.
//!
//! The example binaries are built by `cargo test` before the tests run; this
//! file finds them next to the test binary (`target/<profile>/examples/`).

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redswarm::{Config, Redswarm, TaskOutcome, TaskState};
use support::{FaultProxy, RedisServer};

const NAMESPACE: &str = "chaos";
const QUEUE: &str = "chaos";
const SECRET: &str = "chaos-secret";
const WORKERS: usize = 3;
const THREADS: usize = 4;
const LEASE: Duration = Duration::from_millis(3000);
const TASK_MS: u64 = 150;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn seed() -> u64 {
    match std::env::var("REDSWARM_CHAOS_SEED") {
        Ok(s) => s.parse().expect("REDSWARM_CHAOS_SEED must be a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

fn soak_seconds() -> u64 {
    std::env::var("REDSWARM_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// One `done <id> <attempt> <token>` line, and which process printed it.
#[derive(Clone, Debug)]
struct Done {
    id: String,
    attempt: u64,
    token: u64,
    #[allow(dead_code)] // shown in failure messages
    worker: usize,
}

/// A worker slot: its fault proxy to Redis and its current process.
struct WorkerSlot {
    proxy: FaultProxy,
    child: Option<Child>,
    incarnation: usize,
    paused_until: Option<Instant>,
    stderr_files: Vec<PathBuf>,
}

struct Harness {
    server: RedisServer,
    dir: PathBuf,
    workers: Vec<WorkerSlot>,
    monitor: Option<Child>,
    done: Arc<Mutex<Vec<Done>>>,
    stderr_files: Vec<PathBuf>,
}

impl Harness {
    fn env(cmd: &mut Command, url: &str) {
        cmd.env("REDIS_URL", url)
            .env("REDSWARM_NAMESPACE", NAMESPACE)
            .env("REDSWARM_PEER_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .env_remove("REDSWARM_PEER_LISTEN")
            .env_remove("REDSWARM_NODE_ID");
    }

    fn stderr_file(&mut self, name: &str) -> (std::fs::File, PathBuf) {
        let path = self.dir.join(name);
        let file = std::fs::File::create(&path).expect("stderr capture file");
        (file, path)
    }

    fn start_worker(&mut self, i: usize) {
        let slot_url = self.workers[i].proxy.url();
        let incarnation = self.workers[i].incarnation;
        let (err, path) = self.stderr_file(&format!("worker-{i}-{incarnation}.err"));
        let mut cmd = Command::new(support::example_binary("worker"));
        Self::env(&mut cmd, &slot_url);
        cmd.args(["--queue", QUEUE, "--threads", &THREADS.to_string()])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--lease-ms", &LEASE.as_millis().to_string()])
            .args(["--grace-ms", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = cmd.spawn().expect("spawn worker");
        let stdout = child.stdout.take().expect("worker stdout");
        let done = self.done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let ["done", id, attempt, token] = parts.as_slice() {
                    done.lock().push(Done {
                        id: id.to_string(),
                        attempt: attempt.parse().unwrap_or(0),
                        token: token.parse().unwrap_or(0),
                        worker: i,
                    });
                }
            }
        });
        let slot = &mut self.workers[i];
        slot.child = Some(child);
        slot.incarnation += 1;
        slot.stderr_files.push(path);
    }

    fn start_monitor(&mut self) {
        let (err, path) = self.stderr_file(&format!("monitor-{}.err", self.stderr_files.len()));
        let mut cmd = Command::new(support::example_binary("monitor"));
        Self::env(&mut cmd, &self.server.url());
        cmd.args(["--queue", QUEUE, "--interval-ms", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        self.monitor = Some(cmd.spawn().expect("spawn monitor"));
        self.stderr_files.push(path);
    }

    fn kill_worker(&mut self, i: usize) {
        let slot = &mut self.workers[i];
        if let Some(mut child) = slot.child.take() {
            if slot.paused_until.take().is_some() {
                signal(child.id(), "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn push(&self, count: usize) {
        let status = Command::new(support::example_binary("push"))
            .env("REDIS_URL", self.server.url())
            .env("REDSWARM_NAMESPACE", NAMESPACE)
            .env("RUST_LOG", "warn")
            .args(["--queue", QUEUE, "--count", &count.to_string()])
            .args(["--ms", &TASK_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run push");
        assert!(status.success(), "push exited with {status}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for i in 0..self.workers.len() {
            self.kill_worker(i);
        }
        if let Some(mut m) = self.monitor.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    PauseWorker,
    RestartRedis,
    KillMonitor,
    CutWorker,
    BlackholeWorker,
    CutAll,
}

const FAULTS: [Fault; 7] = [
    Fault::KillWorker,
    Fault::PauseWorker,
    Fault::RestartRedis,
    Fault::KillMonitor,
    Fault::CutWorker,
    Fault::BlackholeWorker,
    Fault::CutAll,
];

#[test]
fn tasks_survive_chaos_of_real_processes() {
    support::init_logging();
    let seed = seed();
    let soak = soak_seconds();
    eprintln!("chaos: seed {seed} (replay with REDSWARM_CHAOS_SEED={seed}), faults for {soak} s");
    let mut rng = Rng::new(seed);
    let server = RedisServer::builder().aof(true).start();
    // Kept when the run fails (the path is printed), removed when it passes.
    let dir = std::env::temp_dir().join(format!("redswarm-chaos-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("chaos: process logs in {}", dir.display());
    let workers = (0..WORKERS)
        .map(|_| WorkerSlot {
            proxy: FaultProxy::start(server.addr()),
            child: None,
            incarnation: 0,
            paused_until: None,
            stderr_files: Vec::new(),
        })
        .collect();
    let mut h = Harness {
        server,
        dir,
        workers,
        monitor: None,
        done: Arc::new(Mutex::new(Vec::new())),
        stderr_files: Vec::new(),
    };
    // Enough work to keep every thread busy through the fault phase.
    // (At most 9,000: the queue keeps 10,000 ended tasks by default.)
    let tasks = ((soak as usize * WORKERS * THREADS * 1000 / TASK_MS as usize) * 6 / 10).min(9000);
    h.push(tasks);
    h.start_monitor();
    for i in 0..WORKERS {
        h.start_worker(i);
    }

    let mut counts: HashMap<Fault, usize> = HashMap::new();
    let mut cut_until: Vec<Option<Instant>> = vec![None; WORKERS];
    let mut restart_at: Vec<Option<Instant>> = vec![None; WORKERS];
    let faults_end = Instant::now() + Duration::from_secs(soak);
    let mut last_fault = Instant::now();
    let mut exited = Vec::new();
    while Instant::now() < faults_end {
        std::thread::sleep(rng.millis(700, 2000));
        let now = Instant::now();
        // A worker that ended by itself (not killed by us) is a finding: the
        // binary must ride out Redis restarts and cuts, also at start-up.
        // Restart it so the run goes on, and report it at the end.
        for i in 0..WORKERS {
            if let Some(c) = h.workers[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited.push(format!("worker {i}: {status}"));
                    h.workers[i].child = None;
                    h.workers[i].paused_until = None;
                    h.start_worker(i);
                }
            }
        }
        // Heal what is due first.
        for i in 0..WORKERS {
            if restart_at[i].is_some_and(|t| now >= t) {
                restart_at[i] = None;
                h.start_worker(i);
            }
            if cut_until[i].is_some_and(|t| now >= t) {
                cut_until[i] = None;
                h.workers[i].proxy.pass();
            }
            let slot = &mut h.workers[i];
            if slot.paused_until.is_some_and(|t| now >= t) {
                slot.paused_until = None;
                if let Some(c) = &slot.child {
                    signal(c.id(), "CONT");
                }
            }
        }
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let i = rng.below(WORKERS as u64) as usize;
        let busy = h.workers[i].child.is_none()
            || h.workers[i].paused_until.is_some()
            || cut_until[i].is_some();
        match fault {
            Fault::KillWorker if !busy => {
                h.kill_worker(i);
                restart_at[i] = Some(now + rng.millis(300, 2000));
            }
            Fault::PauseWorker if !busy => {
                if let Some(c) = &h.workers[i].child {
                    signal(c.id(), "STOP");
                }
                h.workers[i].paused_until = Some(now + LEASE + rng.millis(500, 2500));
            }
            Fault::RestartRedis => {
                h.server.kill();
                std::thread::sleep(rng.millis(100, 1500));
                h.server.restart();
            }
            Fault::KillMonitor => {
                if let Some(mut m) = h.monitor.take() {
                    let _ = m.kill();
                    let _ = m.wait();
                }
                std::thread::sleep(rng.millis(100, 1000));
                h.start_monitor();
            }
            Fault::CutWorker if !busy => {
                h.workers[i].proxy.cut();
                cut_until[i] = Some(now + rng.millis(500, 4000));
            }
            Fault::BlackholeWorker if !busy => {
                h.workers[i].proxy.blackhole();
                cut_until[i] = Some(now + LEASE + rng.millis(200, 2000));
            }
            Fault::CutAll if cut_until.iter().all(Option::is_none) => {
                for (j, slot) in h.workers.iter().enumerate() {
                    slot.proxy.cut();
                    cut_until[j] = Some(now + rng.millis(500, 3000));
                }
            }
            _ => continue,
        }
        *counts.entry(fault).or_default() += 1;
        last_fault = Instant::now();
    }

    // Heal everything and let the swarm settle.
    for i in 0..WORKERS {
        h.workers[i].proxy.pass();
        let slot = &mut h.workers[i];
        if slot.paused_until.take().is_some() {
            if let Some(c) = &slot.child {
                signal(c.id(), "CONT");
            }
        }
        if let Some(c) = slot.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                exited.push(format!("worker {i}: {status}"));
                slot.child = None;
            }
        }
        if slot.child.is_none() {
            h.start_worker(i);
        }
    }
    let observer = Redswarm::connect(
        Config::builder()
            .url(h.server.url())
            .namespace(NAMESPACE)
            .build()
            .unwrap(),
    )
    .unwrap();
    let queue = observer.queue(QUEUE).unwrap();
    // Settled: nothing pending or running. Stuck: no task ended for 60 s.
    let mut last_ended = 0;
    let mut last_progress = Instant::now();
    let settled = loop {
        match queue.counts() {
            Ok(c) if c.pending() == 0 && c.running == 0 => break true,
            Ok(c) if c.ended + c.failed != last_ended => {
                last_ended = c.ended + c.failed;
                last_progress = Instant::now();
            }
            _ => {}
        }
        if last_progress.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let recovered_in = last_fault.elapsed();
    let final_counts = queue.counts().unwrap();

    // The end state, from Redis.
    let ended = queue.list(redswarm::TaskSet::Ended, tasks + 10).unwrap();
    let failed = queue.list(redswarm::TaskSet::Failed, tasks + 10).unwrap();
    let mut not_ok = Vec::new();
    let mut final_token: HashMap<String, u64> = HashMap::new();
    for id in &ended {
        let info = queue.get(id).unwrap().expect("an ended task has a record");
        if info.state != TaskState::End(TaskOutcome::Ok) {
            not_ok.push(format!("{id}: {:?} {:?}", info.state, info.error));
        }
        final_token.insert(id.clone(), info.fencing_token);
    }
    for id in &failed {
        let info = queue.get(id).unwrap();
        not_ok.push(format!("{id}: failed: {:?}", info.and_then(|i| i.error)));
    }

    // The done lines: at most one accepted completion per task, from the
    // claim Redis recorded last.
    let done = h.done.lock().clone();
    let mut by_task: HashMap<&str, Vec<&Done>> = HashMap::new();
    for d in &done {
        by_task.entry(d.id.as_str()).or_default().push(d);
    }
    let twice: Vec<String> = by_task
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(id, v)| format!("{id}: {v:?}"))
        .collect();
    let stale: Vec<String> = done
        .iter()
        .filter(|d| final_token.get(&d.id).is_some_and(|t| *t != d.token))
        .map(|d| {
            format!(
                "{d:?} but Redis recorded token {:?}",
                final_token.get(&d.id)
            )
        })
        .collect();
    let reruns = done.iter().filter(|d| d.attempt > 1).count();

    // No process panicked.
    let mut files = h.stderr_files.clone();
    for slot in &h.workers {
        files.extend(slot.stderr_files.iter().cloned());
    }
    let panics: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok().map(|s| (f, s)))
        .filter(|(_, s)| s.contains("panicked"))
        .map(|(f, s)| {
            format!(
                "{}: {}",
                f.display(),
                s.lines().find(|l| l.contains("panicked")).unwrap_or("")
            )
        })
        .collect();

    let mut faults: Vec<_> = counts.into_iter().collect();
    faults.sort();
    eprintln!(
        "chaos summary: seed {seed}; {tasks} tasks; faults {faults:?}; ended {} ok-checked, failed {}, \
         counts {final_counts:?}; done lines {}, reruns (attempt > 1) {reruns}, completed twice {}, \
         stale completions {}; settled {} s after the last fault; lost {}",
        ended.len(),
        failed.len(),
        done.len(),
        twice.len(),
        stale.len(),
        recovered_in.as_secs(),
        tasks.saturating_sub(ended.len() + failed.len()),
    );
    assert!(
        settled,
        "the swarm did not settle: {final_counts:?} (seed {seed})"
    );
    assert!(panics.is_empty(), "processes panicked: {panics:#?}");
    assert_eq!(
        ended.len(),
        tasks,
        "every pushed task ends (seed {seed}); failed: {not_ok:#?}"
    );
    assert!(
        not_ok.is_empty(),
        "tasks that did not end ok (seed {seed}): {not_ok:#?}"
    );
    assert!(
        twice.is_empty(),
        "completions accepted twice (seed {seed}): {twice:#?}"
    );
    assert!(
        stale.is_empty(),
        "completions from a stale claim (seed {seed}): {stale:#?}"
    );
    // Every check passed: the process logs are not needed.
    let _ = std::fs::remove_dir_all(&h.dir);
}
