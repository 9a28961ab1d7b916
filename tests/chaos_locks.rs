//! Chaos for locks, semaphores and fan-out: several real processes (this
//! test binary re-run in a child role) loop on the same resource while the
//! parent pauses (SIGSTOP past the TTL) and kills them. Every process
//! reports to a small in-test "protected resource" server, which checks what
//! users rely on:
//!
//! - locks: the resource accepts a write only with a fencing token ≥ the
//!   highest it has seen (rejections are expected after pauses), and no
//!   process may *believe* it holds the lock (`is_held()` true) after a newer
//!   token was granted to someone else — 0 such writes;
//! - semaphore: never more holders than permits (kills, no pauses);
//! - fan-out: one run per round, two only when the leader was killed
//!   mid-run; every caller gets the result.
//!
//! `REDSWARM_CHAOS_SEED` replays a schedule; `REDSWARM_SOAK=<seconds>`
//! lengthens each phase.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redswarm::{Config, Redswarm};
use support::RedisServer;

const PROCESSES: usize = 4;
const TTL: Duration = Duration::from_millis(900);
const PERMITS: usize = 2;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn seed() -> u64 {
    std::env::var("REDSWARM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_us)
        .max(1)
}

fn phase(default_secs: u64) -> Duration {
    let soak: u64 = std::env::var("REDSWARM_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Duration::from_secs(default_secs.max(soak))
}

/// xorshift64*: a seed replays a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// What the protected resource saw.
#[derive(Default)]
struct Ledger {
    highest: u64,
    /// Accepted lock writes: (token, when the writer checked is_held()).
    accepted: Vec<(u64, u64)>,
    rejected: usize,
    /// Lock grants: token → when its holder learned it.
    grants: BTreeMap<u64, u64>,
    /// Semaphore: current holders (pid, token) and the most seen at once.
    inside: HashSet<(u32, u64)>,
    max_inside: usize,
    /// Processes killed by the test: a report of theirs still in flight
    /// when they died is not a holder any more.
    killed: HashSet<u32>,
    /// Fan-out: runs per round (with the running pids) and results per round.
    runs: HashMap<u64, Vec<u32>>,
    results: HashMap<u64, usize>,
    errors: Vec<String>,
}

/// The resource: one line per request, one reply line.
fn resource() -> (String, Arc<Mutex<Ledger>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let l = ledger.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let l = l.clone();
            std::thread::spawn(move || serve(stream, l));
        }
    });
    (addr, ledger)
}

fn serve(stream: TcpStream, ledger: Arc<Mutex<Ledger>>) {
    let mut out = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let mut l = ledger.lock();
        let reply = match f.first().copied() {
            Some("W") => {
                let (token, checked) = (num(1), num(2));
                if token >= l.highest {
                    l.highest = token;
                    l.accepted.push((token, checked));
                    "OK"
                } else {
                    l.rejected += 1;
                    "NO"
                }
            }
            Some("G") => {
                l.grants.insert(num(1), num(2));
                "OK"
            }
            Some("E") if l.killed.contains(&(num(1) as u32)) => "OK",
            Some("E") => {
                l.inside.insert((num(1) as u32, num(2)));
                l.max_inside = l.max_inside.max(l.inside.len());
                "OK"
            }
            Some("L") => {
                l.inside.remove(&(num(1) as u32, num(2)));
                "OK"
            }
            Some("R") => {
                l.runs.entry(num(1)).or_default().push(num(2) as u32);
                "OK"
            }
            Some("D") => {
                *l.results.entry(num(1)).or_default() += 1;
                "OK"
            }
            _ => {
                l.errors.push(line.clone());
                "OK"
            }
        };
        drop(l);
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

/// A child's line to the resource.
struct Report(BufReader<TcpStream>);

impl Report {
    fn connect() -> Report {
        let addr = std::env::var("CHAOS_RESOURCE").unwrap();
        Report(BufReader::new(TcpStream::connect(addr).unwrap()))
    }
    fn send(&mut self, line: &str) -> bool {
        writeln!(self.0.get_mut(), "{line}").unwrap();
        let mut reply = String::new();
        self.0.read_line(&mut reply).unwrap();
        reply.trim() == "OK"
    }
}

fn child_swarm() -> Option<(Redswarm, Instant)> {
    let url = std::env::var("CHAOS_URL").ok()?;
    // An absolute end (µs since the epoch), the same for respawned children.
    let until_us: u64 = std::env::var("CHAOS_UNTIL_US").ok()?.parse().ok()?;
    let swarm = Redswarm::connect(
        Config::builder()
            .url(url)
            .namespace("chaoslocks")
            .heartbeat_interval(Duration::from_millis(200))
            .command_timeout(Duration::from_millis(200))
            .node_ttl(Duration::from_millis(1000))
            .build()
            .unwrap(),
    )
    .unwrap();
    let left = Duration::from_micros(until_us.saturating_sub(now_us()));
    Some((swarm, Instant::now() + left))
}

#[test]
fn child_lock_holder() {
    let Some((swarm, until)) = child_swarm() else {
        return;
    };
    let mut report = Report::connect();
    while Instant::now() < until {
        let Ok(guard) = swarm
            .lock_options("res")
            .ttl(TTL)
            .auto_extend(true)
            .lock(Duration::from_secs(5))
        else {
            continue;
        };
        let token = guard.fencing_token();
        report.send(&format!("G {token} {}", now_us()));
        for _ in 0..3 {
            let checked = now_us();
            if !guard.is_held() {
                break;
            }
            report.send(&format!("W {token} {checked}"));
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = guard.release();
    }
}

#[test]
fn child_semaphore_holder() {
    let Some((swarm, until)) = child_swarm() else {
        return;
    };
    let mut report = Report::connect();
    let sem = swarm
        .semaphore("pool", PERMITS as u32)
        .unwrap()
        .ttl(TTL)
        .auto_extend(true);
    let pid = std::process::id();
    while Instant::now() < until {
        let Ok(permit) = sem.acquire(Duration::from_secs(5)) else {
            continue;
        };
        let token = permit.fencing_token();
        report.send(&format!("E {pid} {token}"));
        std::thread::sleep(Duration::from_millis(30));
        report.send(&format!("L {pid} {token}"));
        let _ = permit.release();
    }
}

#[test]
fn child_fanout_caller() {
    let Some((swarm, until)) = child_swarm() else {
        return;
    };
    let mut report = Report::connect();
    let job_report = Mutex::new(Report::connect());
    let pid = std::process::id();
    while Instant::now() < until {
        // Everybody joins the round of the current second.
        let round = now_us() / 1_000_000;
        let r = swarm
            .fanout_options()
            .leader_lease(Duration::from_millis(600))
            .run(&format!("round-{round}"), Duration::from_secs(20), || {
                job_report.lock().send(&format!("R {round} {pid}"));
                std::thread::sleep(Duration::from_millis(300));
                Ok::<u64, String>(round)
            });
        match r {
            Ok(v) if v == round => {
                report.send(&format!("D {round}"));
            }
            other => {
                report.send(&format!("ERR round {round}: {other:?}"));
            }
        }
        let next = (round + 1) * 1_000_000;
        std::thread::sleep(Duration::from_micros(next.saturating_sub(now_us())));
    }
}

/// Runs `PROCESSES` children in `role` for `length`, pausing (if `pause`)
/// and killing them at random. Returns the pids killed and when.
fn run_children(
    role: &str,
    server: &RedisServer,
    resource: &str,
    length: Duration,
    pause: bool,
    rng: &mut Rng,
    on_kill: impl Fn(u32),
) -> usize {
    let until_us = now_us() + length.as_micros() as u64;
    let spawn = || -> Child {
        support::child_role(role)
            .env("CHAOS_URL", server.url())
            .env("CHAOS_RESOURCE", resource)
            .env("CHAOS_UNTIL_US", until_us.to_string())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<Child> = (0..PROCESSES).map(|_| spawn()).collect();
    let end = Instant::now() + length;
    let mut faults = 0;
    // Leave the last seconds fault-free so every child finishes its loop.
    while Instant::now() + Duration::from_secs(3) < end {
        std::thread::sleep(rng.millis(300, 1200));
        let i = (rng.next() % PROCESSES as u64) as usize;
        let pid = children[i].id();
        if pause && rng.next() % 2 == 0 {
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
            std::thread::sleep(TTL + rng.millis(200, 1200));
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        } else {
            let _ = children[i].kill();
            let _ = children[i].wait();
            on_kill(pid);
            children[i] = spawn();
        }
        faults += 1;
    }
    for mut c in children {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    faults
}

#[test]
fn no_two_processes_believe_they_hold_a_lock_under_pauses_and_kills() {
    let seed = seed();
    eprintln!("lock chaos: seed {seed} (replay with REDSWARM_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let server = RedisServer::start();
    let (addr, ledger) = resource();
    let faults = run_children(
        "child_lock_holder",
        &server,
        &addr,
        phase(20),
        true,
        &mut rng,
        |_| {},
    );
    let l = ledger.lock();
    // A write whose writer still believed it held the lock after a newer
    // token had been granted elsewhere: two holders at once.
    let overlapping: Vec<(u64, u64, u64)> = l
        .accepted
        .iter()
        .filter_map(|&(token, checked)| {
            l.grants
                .range(token + 1..)
                .find(|(_, &granted)| granted < checked)
                .map(|(&newer, _)| (token, checked, newer))
        })
        .collect();
    eprintln!(
        "lock chaos summary: seed {seed}; {faults} faults; {} grants; {} writes accepted, {} rejected by fencing; {} overlapping",
        l.grants.len(),
        l.accepted.len(),
        l.rejected,
        overlapping.len()
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert!(l.grants.len() > PROCESSES, "the lock changed hands");
    assert!(
        overlapping.is_empty(),
        "writes by a holder after a newer token was granted (token, checked_us, newer): {overlapping:?}"
    );
}

#[test]
fn a_semaphore_never_has_more_holders_than_permits_under_kills() {
    let seed = seed();
    eprintln!("semaphore chaos: seed {seed}");
    let mut rng = Rng(seed);
    let server = RedisServer::start();
    let (addr, ledger) = resource();
    let l2 = ledger.clone();
    let faults = run_children(
        "child_semaphore_holder",
        &server,
        &addr,
        phase(10),
        false,
        &mut rng,
        // A killed holder leaves the resource now (its permit lapses later,
        // which only makes the others wait).
        move |pid| {
            let mut l = l2.lock();
            l.killed.insert(pid);
            l.inside.retain(|(p, _)| *p != pid);
        },
    );
    let l = ledger.lock();
    eprintln!(
        "semaphore chaos summary: seed {seed}; {faults} kills; most holders at once {}",
        l.max_inside
    );
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert!(l.max_inside >= 1);
    assert!(
        l.max_inside <= PERMITS,
        "{} holders at once with {PERMITS} permits",
        l.max_inside
    );
}

#[test]
fn fanout_runs_once_per_round_and_survives_a_killed_leader() {
    let seed = seed();
    eprintln!("fan-out chaos: seed {seed}");
    let mut rng = Rng(seed);
    let server = RedisServer::start();
    let (addr, ledger) = resource();
    let killed: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    let k2 = killed.clone();
    let faults = run_children(
        "child_fanout_caller",
        &server,
        &addr,
        phase(12),
        false,
        &mut rng,
        move |pid| k2.lock().push((pid, now_us() / 1_000_000)),
    );
    let l = ledger.lock();
    let killed = killed.lock();
    let mut extra = Vec::new();
    for (round, pids) in &l.runs {
        // Each run beyond the first needs a leader that was killed before it
        // (a waiter is promoted once per dead leader, and a leader can die
        // more than once in a round).
        let killed_leaders = pids
            .iter()
            .filter(|p| killed.iter().any(|(k, _)| k == *p))
            .count();
        let allowed = 1 + killed_leaders;
        if pids.len() > allowed {
            extra.push((*round, pids.clone()));
        }
    }
    eprintln!(
        "fan-out chaos summary: seed {seed}; {faults} kills; {} rounds run; {} results delivered; extra runs {extra:?}",
        l.runs.len(),
        l.results.values().sum::<usize>()
    );
    assert!(l.errors.is_empty(), "callers got errors: {:?}", l.errors);
    assert!(extra.is_empty(), "rounds run more than once: {extra:?}");
    assert!(l.runs.len() >= 3, "rounds ran");
}
