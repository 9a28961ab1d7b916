//! Job clusters against a real redis-server: masters add and delete jobs,
//! workers get `Added` / `Deleted` events, jobs move when a worker dies,
//! terminates or is cut off (and the cut-off one is told first), standby
//! masters take over, workers keep their jobs without any master, and lost
//! messages are made good by reconciling. Death is real where it matters
//! (worker and master child processes killed with SIGKILL).
//!
//! With `REDSWARM_TEST_BACKEND=cluster` the tests outside `mod
//! single_server` run on a 3-primary Redis Cluster shared by the whole
//! file instead, with `REDSWARM_TEST_BACKEND=sentinel` on one shared
//! Sentinel set-up (`tests/support/backend.rs`).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redswarm::{
    ClusterEvent, ClusterWorker, ClusterWorkerOptions, Config, DeleteReason, Error, Job, Master,
    MasterOptions, Redswarm,
};
use serde_json::json;
use support::{FaultProxy, RedisServer, TestRedis};

const SEC: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Membership lease of test workers and the master seat's lease.
const LEASE: Duration = Duration::from_millis(600);
/// How long a dead worker's jobs may take to move: its lease, one sweep,
/// and a generous allowance for a busy machine.
const REASSIGN_BOUND: Duration = Duration::from_millis(600 + 2400);

fn config(url: &str, ns: &str) -> Config {
    Config::builder()
        .url(url)
        .namespace(ns)
        .heartbeat_interval(HEARTBEAT)
        .command_timeout(HEARTBEAT)
        .node_ttl(SEC)
        .peer_timeout(Duration::from_millis(50))
        .reconnect_min(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .wait_recheck(Duration::from_millis(500))
        .pool_size(8)
        .build()
        .unwrap()
}

fn connect(url: &str, ns: &str) -> Redswarm {
    Redswarm::connect(config(url, ns)).unwrap()
}

fn master(swarm: &Redswarm) -> Master {
    Master::with_options(swarm, "c", MasterOptions::new().lease(LEASE)).unwrap()
}

fn opts() -> ClusterWorkerOptions {
    ClusterWorkerOptions::new().lease(LEASE)
}

/// A worker on a handle of its own (as if in its own process), with its
/// events recorded as they come.
struct TestWorker {
    worker: ClusterWorker,
    seen: Seen,
    _swarm: Redswarm,
}

fn join(url: &str, ns: &str, o: ClusterWorkerOptions) -> TestWorker {
    let swarm = connect(url, ns);
    let worker = ClusterWorker::join(&swarm, "c", o).unwrap();
    let seen = Seen::record(worker.events());
    TestWorker {
        worker,
        seen,
        _swarm: swarm,
    }
}

/// Every event a worker got, with when it got it.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, ClusterEvent)>>>);

impl Seen {
    fn record(events: crossbeam_channel::Receiver<ClusterEvent>) -> Seen {
        let seen = Seen::default();
        let log = seen.0.clone();
        std::thread::spawn(move || {
            for e in events.iter() {
                let closed = matches!(e, ClusterEvent::Closed);
                log.lock().push((Instant::now(), e));
                if closed {
                    return;
                }
            }
        });
        seen
    }

    fn events(&self) -> Vec<ClusterEvent> {
        self.0.lock().iter().map(|(_, e)| e.clone()).collect()
    }

    /// Jobs held according to the events: id → token.
    fn held(&self) -> BTreeMap<String, u64> {
        let mut held = BTreeMap::new();
        for (_, e) in self.0.lock().iter() {
            match e {
                ClusterEvent::Added(j) => {
                    held.insert(j.id().to_string(), j.token());
                }
                ClusterEvent::Deleted { id, token, .. } => {
                    assert_eq!(held.remove(id), Some(*token), "Deleted for a job not held");
                }
                ClusterEvent::Closed => {}
            }
        }
        held
    }

    fn job(&self, id: &str) -> Option<Job> {
        self.0.lock().iter().rev().find_map(|(_, e)| match e {
            ClusterEvent::Added(j) if j.id() == id => Some(j.clone()),
            _ => None,
        })
    }

    fn deletions(&self) -> Vec<(String, DeleteReason, Instant)> {
        self.0
            .lock()
            .iter()
            .filter_map(|(at, e)| match e {
                ClusterEvent::Deleted { id, reason, .. } => Some((id.clone(), *reason, *at)),
                _ => None,
            })
            .collect()
    }

    fn added_at(&self, id: &str) -> Option<Instant> {
        self.0.lock().iter().find_map(|(at, e)| match e {
            ClusterEvent::Added(j) if j.id() == id => Some(*at),
            _ => None,
        })
    }
}

/// Jobs per worker id, as Redis says (pending jobs under "").
fn assignment(m: &Master) -> HashMap<String, BTreeMap<String, u64>> {
    try_assignment(m).unwrap()
}

fn try_assignment(m: &Master) -> redswarm::Result<HashMap<String, BTreeMap<String, u64>>> {
    let mut by: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    for j in m.jobs()? {
        by.entry(j.worker.clone().unwrap_or_default())
            .or_default()
            .insert(j.id.clone(), j.token.unwrap_or(0));
    }
    Ok(by)
}

/// Every job but `waiting` ones is assigned to one of `workers`, and every
/// worker's events agree with Redis's assignment of it.
fn in_step(m: &Master, workers: &[&TestWorker], waiting: usize) -> bool {
    let Ok(by) = try_assignment(m) else {
        return false; // Redis is away for a moment
    };
    if by.get("").map_or(0, |p| p.len()) != waiting {
        return false;
    }
    let ids: HashSet<&str> = workers.iter().map(|w| w.worker.id()).collect();
    if by
        .keys()
        .any(|w| !w.is_empty() && !ids.contains(w.as_str()))
    {
        return false;
    }
    workers.iter().all(|w| {
        let redis = by.get(w.worker.id()).cloned().unwrap_or_default();
        w.seen.held() == redis && w.worker.jobs() == redis.keys().cloned().collect::<Vec<_>>()
    })
}

fn wait_in_step(m: &Master, workers: &[&TestWorker], within: Duration) {
    wait_in_step_with(m, workers, 0, within)
}

fn wait_in_step_with(m: &Master, workers: &[&TestWorker], waiting: usize, within: Duration) {
    assert!(
        support::wait_until(within, || in_step(m, workers, waiting)),
        "workers never matched Redis: {:?} vs {:?}",
        assignment(m),
        workers.iter().map(|w| w.seen.held()).collect::<Vec<_>>()
    );
}

fn wait_active(m: &Master) {
    assert!(
        support::wait_until(10 * SEC, || m.is_active()),
        "master never became active"
    );
}

fn wait_workers(m: &Master, n: usize) {
    assert!(
        support::wait_until(10 * SEC, || m.workers().unwrap().len() == n),
        "expected {n} live workers, got {:?}",
        m.workers().unwrap()
    );
}

fn loads(m: &Master) -> Vec<u32> {
    let mut l: Vec<u32> = m.workers().unwrap().iter().map(|w| w.load).collect();
    l.sort();
    l
}

fn pending(m: &Master) -> usize {
    m.jobs()
        .unwrap()
        .iter()
        .filter(|j| j.worker.is_none())
        .count()
}

#[test]
fn added_jobs_reach_a_worker_with_payload_and_token_and_deleted_ones_leave_it() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "roundtrip");
    let m = master(&s);
    let w = join(&server.url(), "roundtrip", opts());
    wait_active(&m);
    let a = m.add_job(&json!({"stream": "orders"})).unwrap();
    assert!(m.add_job_with_id("fx", &"EURUSD").unwrap());
    assert!(
        !m.add_job_with_id("fx", &"EURUSD").unwrap(),
        "same id and payload: no change"
    );
    wait_in_step(&m, &[&w], 10 * SEC);
    let job = w.seen.job(&a).expect("Added for the first job");
    assert_eq!(
        job.payload::<serde_json::Value>().unwrap(),
        json!({"stream": "orders"})
    );
    assert_eq!(
        w.seen.job("fx").unwrap().payload::<String>().unwrap(),
        "EURUSD"
    );
    let info = m.jobs().unwrap();
    assert_eq!(info.len(), 2);
    assert!(info
        .iter()
        .all(|j| j.worker.as_deref() == Some(w.worker.id())));
    assert_eq!(info[0].token, Some(job.token()));
    assert!(
        info[1].token > info[0].token,
        "tokens increase per assignment"
    );

    m.delete_job(&a).unwrap();
    assert!(support::wait_until(10 * SEC, || w.seen.held().len() == 1));
    assert_eq!(
        w.seen
            .deletions()
            .iter()
            .map(|d| (d.0.as_str(), d.1))
            .collect::<Vec<_>>(),
        vec![(a.as_str(), DeleteReason::Deleted)]
    );
    assert_eq!(m.jobs().unwrap().len(), 1);
    // Exactly one Added per job: no duplicates from messages and reconciles.
    std::thread::sleep(SEC);
    let added = w
        .seen
        .events()
        .iter()
        .filter(|e| matches!(e, ClusterEvent::Added(_)))
        .count();
    assert_eq!(added, 2);
}

#[test]
fn jobs_spread_evenly_over_three_workers() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "balance");
    let m = master(&s);
    let ws: Vec<TestWorker> = (0..3)
        .map(|_| join(&server.url(), "balance", opts()))
        .collect();
    wait_active(&m);
    wait_workers(&m, 3);
    for i in 0..30 {
        m.add_job(&i).unwrap();
    }
    let refs: Vec<&TestWorker> = ws.iter().collect();
    wait_in_step(&m, &refs, 10 * SEC);
    assert_eq!(pending(&m), 0);
    assert_eq!(loads(&m), vec![10, 10, 10]);
    for w in &ws {
        assert_eq!(w.seen.held().len(), 10);
    }
}

#[test]
fn a_worker_never_holds_more_than_its_capacity_and_extra_jobs_wait_for_room() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "capacity");
    let m = master(&s);
    let small = join(&server.url(), "capacity", opts().capacity(2));
    let medium = join(&server.url(), "capacity", opts().capacity(3));
    wait_active(&m);
    wait_workers(&m, 2);
    for i in 0..8 {
        m.add_job(&i).unwrap();
    }
    wait_in_step_with(&m, &[&small, &medium], 3, 10 * SEC);
    assert_eq!(small.seen.held().len(), 2);
    assert_eq!(medium.seen.held().len(), 3);
    // Room frees up: a waiting job takes it.
    let freed = small.seen.held().keys().next().unwrap().clone();
    m.delete_job(&freed).unwrap();
    wait_in_step_with(&m, &[&small, &medium], 2, 10 * SEC);
    assert_eq!(small.seen.held().len(), 2);
    // A worker without a limit takes the rest.
    let big = join(&server.url(), "capacity", opts());
    wait_in_step(&m, &[&small, &medium, &big], 10 * SEC);
    assert_eq!(big.seen.held().len(), 2);
}

#[test]
fn a_terminating_worker_gets_deleted_for_each_job_then_closed_and_its_jobs_move_at_once() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "terminate");
    let m = master(&s);
    let a = join(&server.url(), "terminate", opts().lease(10 * SEC));
    let b = join(&server.url(), "terminate", opts());
    wait_active(&m);
    wait_workers(&m, 2);
    for i in 0..6 {
        m.add_job(&i).unwrap();
    }
    wait_in_step(&m, &[&a, &b], 10 * SEC);
    let had: BTreeMap<String, u64> = a.seen.held();
    assert_eq!(had.len(), 3);
    let job = a.seen.job(had.keys().next().unwrap()).unwrap();
    let started = Instant::now();
    a.worker.terminate().unwrap();
    // Well before a's 10 s lease could lapse, b has all six.
    assert!(support::wait_until(5 * SEC, || b.seen.held().len() == 6));
    assert!(started.elapsed() < 5 * SEC);
    assert!(support::wait_until(5 * SEC, || a
        .seen
        .events()
        .last()
        .is_some_and(|e| matches!(e, ClusterEvent::Closed))));
    let tail: Vec<ClusterEvent> = a.seen.events().split_off(3);
    assert_eq!(tail.len(), 4, "{tail:?}");
    let mut gone = BTreeMap::new();
    for e in &tail[..3] {
        match e {
            ClusterEvent::Deleted { id, token, reason } => {
                assert_eq!(*reason, DeleteReason::Terminated);
                gone.insert(id.clone(), *token);
            }
            other => panic!("expected Deleted, got {other:?}"),
        }
    }
    assert_eq!(gone, had);
    assert!(matches!(tail[3], ClusterEvent::Closed));
    wait_workers(&m, 1);
    // Used after terminate: a clear error, not a hang or a panic.
    assert!(matches!(
        a.worker.terminate(),
        Err(Error::Terminated { .. })
    ));
    assert!(matches!(job.delete(), Err(Error::Terminated { .. })));
}

#[test]
fn a_worker_whose_handle_shuts_down_stops_its_jobs_and_closes() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "handledown");
    let m = master(&s);
    let w = join(&server.url(), "handledown", opts());
    wait_active(&m);
    for i in 0..2 {
        m.add_job(&i).unwrap();
    }
    wait_in_step(&m, &[&w], 10 * SEC);
    w._swarm.shutdown();
    assert!(support::wait_until(10 * SEC, || w
        .seen
        .events()
        .last()
        .is_some_and(|e| matches!(e, ClusterEvent::Closed))));
    assert_eq!(w.seen.held().len(), 0);
    assert!(w
        .seen
        .deletions()
        .iter()
        .all(|d| d.1 == DeleteReason::LeaseLost));
    // Its lease is no longer renewed: the jobs move to a new worker.
    let other = join(&server.url(), "handledown", opts());
    wait_in_step(&m, &[&other], REASSIGN_BOUND + 10 * SEC);
    assert_eq!(other.seen.held().len(), 2);
}

/// A cluster worker process for the death tests: prints `joined <id>`, then
/// `added <id> <token>` / `deleted <id> <token> <reason>` per event.
#[test]
fn child_cluster_worker_process() {
    let (Ok(url), Ok(ns)) = (std::env::var("CHILD_URL"), std::env::var("CHILD_NS")) else {
        return;
    };
    let swarm = connect(&url, &ns);
    let w = ClusterWorker::join(&swarm, "c", opts()).unwrap();
    println!("joined {}", w.id());
    let _ = std::io::stdout().flush();
    for e in w.events().iter() {
        match e {
            ClusterEvent::Added(j) => println!("added {} {}", j.id(), j.token()),
            ClusterEvent::Deleted { id, token, reason } => {
                println!("deleted {id} {token} {reason}")
            }
            ClusterEvent::Closed => return,
        }
        let _ = std::io::stdout().flush();
    }
}

/// A master process for the death tests: prints `master <id>` and waits.
#[test]
fn child_cluster_master_process() {
    let (Ok(url), Ok(ns)) = (std::env::var("CHILD_URL"), std::env::var("CHILD_MASTER_NS")) else {
        return;
    };
    let swarm = connect(&url, &ns);
    let m = master(&swarm);
    println!("master {}", m.id());
    let _ = std::io::stdout().flush();
    std::thread::sleep(600 * SEC);
}

fn spawn_child(role: &str, var: &str, url: &str, ns: &str) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = support::child_role(role)
        .env("CHILD_URL", url)
        .env(var, ns)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // libtest may print "test name ... " on the same line first.
            for word in ["joined ", "added ", "deleted ", "master "] {
                if let Some(at) = line.find(word) {
                    l.lock().push(line[at..].to_string());
                }
            }
        }
    });
    (child, lines)
}

/// The id a child announced with `<prefix> <id>`.
fn announced(lines: &Arc<Mutex<Vec<String>>>, prefix: &str) -> String {
    let mut id = None;
    assert!(
        support::wait_until(20 * SEC, || {
            id = lines
                .lock()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string));
            id.is_some()
        }),
        "child never printed `{prefix}`"
    );
    id.unwrap()
}

#[test]
fn a_killed_worker_process_jobs_are_reassigned_within_the_lease_bound_and_stay_balanced() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "sigkill");
    let m = master(&s);
    let a = join(&server.url(), "sigkill", opts());
    let b = join(&server.url(), "sigkill", opts());
    let (mut child, lines) = spawn_child(
        "child_cluster_worker_process",
        "CHILD_NS",
        &server.url(),
        "sigkill",
    );
    let victim = announced(&lines, "joined ");
    wait_active(&m);
    wait_workers(&m, 3);
    for i in 0..9 {
        m.add_job(&i).unwrap();
    }
    assert!(support::wait_until(10 * SEC, || loads(&m) == vec![3, 3, 3]));
    assert!(support::wait_until(10 * SEC, || lines
        .lock()
        .iter()
        .filter(|l| l.starts_with("added "))
        .count()
        == 3));
    let victims_jobs: HashSet<String> = assignment(&m)
        .remove(&victim)
        .unwrap()
        .into_keys()
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    assert!(
        support::wait_until(REASSIGN_BOUND, || a.seen.held().len() + b.seen.held().len()
            == 9),
        "the dead worker's jobs were not reassigned within {REASSIGN_BOUND:?}"
    );
    let took = killed.elapsed();
    assert!(
        took >= LEASE / 2,
        "reassigned before its lease could lapse ({took:?})"
    );
    wait_in_step(&m, &[&a, &b], 10 * SEC);
    assert_eq!(loads(&m), vec![4, 5], "the spread stays balanced");
    let moved: HashSet<String> = a
        .seen
        .held()
        .into_keys()
        .chain(b.seen.held().into_keys())
        .filter(|id| victims_jobs.contains(id))
        .collect();
    assert_eq!(moved, victims_jobs);
    assert!(a.seen.deletions().is_empty() && b.seen.deletions().is_empty());
}

#[test]
fn when_the_active_master_dies_a_standby_takes_over_and_workers_keep_their_jobs() {
    let server = TestRedis::start();
    let (mut child, lines) = spawn_child(
        "child_cluster_master_process",
        "CHILD_MASTER_NS",
        &server.url(),
        "failover",
    );
    let first = announced(&lines, "master ");
    let s = connect(&server.url(), "failover");
    let probe = Master::with_options(&s, "c", MasterOptions::new().assign(false)).unwrap();
    assert!(support::wait_until(10 * SEC, || probe
        .active_master()
        .unwrap()
        == Some(first.clone())));
    // The standby starts second, so the child holds the seat.
    let standby = master(&s);
    let w1 = join(&server.url(), "failover", opts());
    let w2 = join(&server.url(), "failover", opts());
    wait_workers(&probe, 2);
    for i in 0..4 {
        probe.add_job(&i).unwrap();
    }
    wait_in_step(&probe, &[&w1, &w2], 10 * SEC);
    assert!(!standby.is_active());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        support::wait_until(LEASE + 3 * SEC, || standby.is_active()),
        "the standby did not take the seat"
    );
    assert_eq!(
        probe.active_master().unwrap().as_deref(),
        Some(standby.id())
    );
    // New jobs are assigned by the new master; nobody lost anything.
    for i in 4..8 {
        standby.add_job(&i).unwrap();
    }
    assert!(support::wait_until(10 * SEC, || pending(&probe) == 0
        && loads(&probe) == vec![4, 4]));
    wait_in_step(&probe, &[&w1, &w2], 10 * SEC);
    assert!(w1.seen.deletions().is_empty() && w2.seen.deletions().is_empty());
}

#[test]
fn without_any_master_workers_keep_their_jobs_and_adds_wait_for_the_next_master() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "nomaster");
    let m = master(&s);
    let w1 = join(&server.url(), "nomaster", opts());
    let w2 = join(&server.url(), "nomaster", opts());
    wait_active(&m);
    wait_workers(&m, 2);
    for i in 0..4 {
        m.add_job(&i).unwrap();
    }
    wait_in_step(&m, &[&w1, &w2], 10 * SEC);
    m.stop();
    drop(m);
    let client = Master::with_options(&s, "c", MasterOptions::new().assign(false)).unwrap();
    assert_eq!(client.active_master().unwrap(), None);
    // Several leases long: nobody loses a job.
    std::thread::sleep(LEASE * 4);
    assert!(w1.seen.deletions().is_empty() && w2.seen.deletions().is_empty());
    wait_in_step(&client, &[&w1, &w2], SEC);
    // Adds and deletes are applied without a master; assignment waits.
    let late: Vec<String> = (0..2)
        .map(|i| client.add_job(&(100 + i)).unwrap())
        .collect();
    let victim = w1.seen.held().keys().next().unwrap().clone();
    client.delete_job(&victim).unwrap();
    assert!(support::wait_until(10 * SEC, || w1
        .seen
        .deletions()
        .iter()
        .any(|d| d.0 == victim && d.1 == DeleteReason::Deleted)));
    std::thread::sleep(LEASE);
    assert_eq!(pending(&client), 2);
    let next = master(&s);
    wait_active(&next);
    assert!(support::wait_until(10 * SEC, || pending(&client) == 0));
    wait_in_step(&client, &[&w1, &w2], 10 * SEC);
    let held: HashSet<String> = w1
        .seen
        .held()
        .into_keys()
        .chain(w2.seen.held().into_keys())
        .collect();
    assert!(late.iter().all(|id| held.contains(id)));
    assert_eq!(loads(&client), vec![2, 3]);
}

#[test]
fn a_lost_message_leaves_a_worker_out_of_step_for_at_most_one_reconcile_interval() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "lostmsg");
    let m = master(&s);
    let every = Duration::from_millis(300);
    let w = join(&server.url(), "lostmsg", opts().reconcile(every));
    wait_active(&m);
    let id = m.add_job(&"x").unwrap();
    wait_in_step(&m, &[&w], 10 * SEC);
    // What cluster_delete.lua writes, without its message to the worker.
    let k = s.keys().cluster("c").unwrap();
    let _: () = redis::pipe()
        .atomic()
        .cmd("HDEL")
        .arg(k.worker_jobs(w.worker.id()))
        .arg(&id)
        .cmd("DEL")
        .arg(k.job(&id))
        .cmd("ZREM")
        .arg(&k.jobs)
        .arg(&id)
        .query(&mut server.conn())
        .unwrap();
    let gone = Instant::now();
    assert!(support::wait_until(10 * SEC, || !w
        .seen
        .deletions()
        .is_empty()));
    let (deleted, reason, at) = w.seen.deletions().remove(0);
    assert_eq!((deleted, reason), (id, DeleteReason::Deleted));
    assert!(
        at.duration_since(gone) < every + SEC,
        "out of step for {:?} with a reconcile interval of {every:?}",
        at.duration_since(gone)
    );
}

#[test]
fn a_worker_can_delete_its_own_job() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "selfdelete");
    let m = master(&s);
    let w = join(&server.url(), "selfdelete", opts());
    wait_active(&m);
    let id = m.add_job(&"done soon").unwrap();
    let keep = m.add_job(&"stays").unwrap();
    wait_in_step(&m, &[&w], 10 * SEC);
    let job = w.seen.job(&id).unwrap();
    job.delete().unwrap();
    assert!(support::wait_until(10 * SEC, || w.seen.held().len() == 1));
    assert_eq!(w.seen.deletions()[0].0, id);
    assert_eq!(w.seen.deletions()[0].1, DeleteReason::Deleted);
    let left: Vec<String> = m.jobs().unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(left, vec![keep]);
    assert!(matches!(
        job.delete(),
        Err(Error::NotFound { what: "job", .. })
    ));
    std::thread::sleep(SEC);
    assert_eq!(
        w.seen.deletions().len(),
        1,
        "one Deleted, however it was learned"
    );
}

#[test]
fn rebalancing_on_join_moves_only_as_many_jobs_as_needed() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "rebalance");
    let m =
        Master::with_options(&s, "c", MasterOptions::new().lease(LEASE).rebalance(true)).unwrap();
    let a = join(&server.url(), "rebalance", opts());
    wait_active(&m);
    for i in 0..7 {
        m.add_job(&i).unwrap();
    }
    wait_in_step(&m, &[&a], 10 * SEC);
    let b = join(&server.url(), "rebalance", opts());
    assert!(support::wait_until(10 * SEC, || loads(&m) == vec![3, 4]));
    wait_in_step(&m, &[&a, &b], 10 * SEC);
    let moved = a.seen.deletions();
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(moved.iter().all(|d| d.1 == DeleteReason::Rebalanced));
    std::thread::sleep(SEC);
    assert_eq!(
        a.seen.deletions().len(),
        3,
        "nothing more moves once balanced"
    );
    // Without rebalancing (the default) a joining worker only gets new jobs.
    let s2 = connect(&server.url(), "norebalance");
    let m2 = master(&s2);
    let c = join(&server.url(), "norebalance", opts());
    wait_active(&m2);
    for i in 0..4 {
        m2.add_job(&i).unwrap();
    }
    wait_in_step(&m2, &[&c], 10 * SEC);
    let d = join(&server.url(), "norebalance", opts());
    wait_workers(&m2, 2);
    std::thread::sleep(SEC);
    assert!(c.seen.deletions().is_empty());
    assert_eq!(loads(&m2), vec![0, 4]);
    drop(d);
}

#[test]
fn bad_input_unknown_ids_and_corrupt_data_get_clear_errors() {
    let server = TestRedis::start();
    let s = connect(&server.url(), "errors");
    assert!(matches!(
        Master::new(&s, "a{b}"),
        Err(Error::InvalidInput {
            what: "cluster id",
            ..
        })
    ));
    assert!(matches!(
        ClusterWorker::join(&s, "nobody-made-this", opts().require_existing(true)),
        Err(Error::NotFound {
            what: "cluster",
            ..
        })
    ));
    assert!(matches!(
        ClusterWorker::join(&s, "c", opts().capacity(0)),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        ClusterWorker::join(&s, "c", opts().lease(Duration::MAX)),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        ClusterWorker::join(&s, "c", opts().lease(HEARTBEAT)),
        Err(Error::InvalidInput { .. })
    ));
    let m = Master::with_options(
        &s,
        "c",
        MasterOptions::new().lease(LEASE).max_payload_bytes(100),
    )
    .unwrap();
    assert!(matches!(
        m.add_job(&"x".repeat(200)),
        Err(Error::TooLarge { limit: 100, .. })
    ));
    assert!(matches!(
        m.delete_job("no-such-job"),
        Err(Error::NotFound { what: "job", .. })
    ));
    m.add_job_with_id("j", &1).unwrap();
    assert!(matches!(
        m.add_job_with_id("j", &2),
        Err(Error::InvalidInput { what: "job id", .. })
    ));
    // A worker forever reconciling with Duration::MAX is allowed.
    let w = ClusterWorker::join(&s, "c", opts().reconcile(Duration::MAX)).unwrap();
    w.terminate().unwrap();
    // Corrupt data: an error naming the key, and nothing half-applied.
    let keys = s.keys().cluster("c").unwrap();
    let mut conn = server.conn();
    let _: () = redis::cmd("SET")
        .arg(&keys.pending)
        .arg("oops")
        .query(&mut conn)
        .unwrap();
    match m.add_job_with_id("k", &1) {
        Err(Error::CorruptData { key, .. }) => assert_eq!(key, keys.pending),
        other => panic!("expected CorruptData, got {other:?}"),
    }
    let exists: bool = redis::cmd("EXISTS")
        .arg(keys.job("k"))
        .query(&mut conn)
        .unwrap();
    assert!(!exists, "the job was half added");
    assert_eq!(m.jobs().unwrap().len(), 1);
}

/// Tests that need a redis-server of their own, so they stay on
/// `RedisServer` whatever the backend: they kill, pause or restart it, put a
/// fault proxy in front of it, read server-wide state (INFO, CLIENT LIST)
/// or disturb every client of it (SCRIPT FLUSH, CLIENT KILL). The cluster
/// pass of CI skips them (`--skip single_server::`): the single-server pass
/// covers them.
mod single_server {
    use super::*;

    #[test]
    fn a_cut_off_worker_is_told_before_its_lease_lapses_its_jobs_move_and_it_rejoins() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = connect(&server.url(), "cutoff");
        let m = master(&s);
        let cut = join(&proxy.url(), "cutoff", opts());
        let other = join(&server.url(), "cutoff", opts());
        wait_active(&m);
        wait_workers(&m, 2);
        for i in 0..6 {
            m.add_job(&i).unwrap();
        }
        wait_in_step(&m, &[&cut, &other], 10 * SEC);
        let lost: BTreeMap<String, u64> = cut.seen.held();
        assert_eq!(lost.len(), 3);
        let cut_id = cut.worker.id().to_string();
        let keys = s.keys().cluster("c").unwrap();
        let mut conn = server.conn();
        let lease_deadline = |conn: &mut redis::Connection| -> Option<f64> {
            redis::cmd("ZSCORE")
                .arg(&keys.workers)
                .arg(&cut_id)
                .query(conn)
                .unwrap()
        };
        std::thread::sleep(HEARTBEAT * 3);
        // Redis's clock against ours, to place the events on Redis's clock.
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
        let (redis_ms, at) = ((secs * 1000 + micros / 1000) as f64, Instant::now());
        proxy.blackhole();
        // No renewal gets through any more: the last deadline Redis holds is
        // the moment the lease lapses there.
        let mut deadline: Option<f64> = None;
        assert!(
            support::wait_until(LEASE * 4, || {
                if let Some(d) = lease_deadline(&mut conn) {
                    deadline = Some(deadline.map_or(d, |old| old.max(d)));
                }
                cut.seen.deletions().len() == 3
            }),
            "the cut-off worker was not told"
        );
        let deadline = deadline.expect("the worker's lease in Redis");
        let told: HashMap<String, Instant> = cut
            .seen
            .deletions()
            .into_iter()
            .map(|(id, reason, at)| {
                assert_eq!(reason, DeleteReason::LeaseLost);
                (id, at)
            })
            .collect();
        assert_eq!(told.len(), 3);
        assert!(lost.keys().all(|id| told.contains_key(id)));
        for (id, when) in &told {
            let told_ms = redis_ms + when.duration_since(at).as_secs_f64() * 1000.0;
            assert!(
                told_ms < deadline,
                "job {id}: told at {told_ms:.0} ms, after its lease lapsed in Redis at {deadline:.0} ms"
            );
        }
        // The others get them, each only after the cut-off worker was told.
        assert!(support::wait_until(REASSIGN_BOUND, || other
            .seen
            .held()
            .len()
            == 6));
        for id in lost.keys() {
            let added = other.seen.added_at(id).unwrap();
            assert!(added > told[id], "job {id} ran on two workers at once");
        }
        // Back online: it joins again and takes new work.
        proxy.pass();
        wait_workers(&m, 2);
        for i in 6..12 {
            m.add_job(&i).unwrap();
        }
        assert!(support::wait_until(10 * SEC, || pending(&m) == 0 && loads(&m) == vec![6, 6]));
        wait_in_step(&m, &[&cut, &other], 10 * SEC);
        assert!(cut
            .seen
            .held()
            .values()
            .all(|t| lost.values().all(|old| t > old)));
    }

    #[test]
    fn messages_lost_while_the_subscriber_reconnects_are_made_good_by_reconciling() {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let s = connect(&server.url(), "resub");
        let m = master(&s);
        // A lease longer than the outage below: this is about messages, not leases.
        let w = join(
            &proxy.url(),
            "resub",
            opts().lease(5 * SEC).reconcile(30 * SEC),
        );
        wait_active(&m);
        wait_workers(&m, 1);
        let early: Vec<String> = (0..4).map(|i| m.add_job(&i).unwrap()).collect();
        wait_in_step(&m, &[&w], 10 * SEC);
        // Cut every connection of the worker for less than its lease: its
        // pub/sub connection drops and everything published meanwhile is lost.
        proxy.cut();
        let late: Vec<String> = (4..8).map(|i| m.add_job(&i).unwrap()).collect();
        m.delete_job(&early[0]).unwrap();
        m.delete_job(&early[1]).unwrap();
        assert!(support::wait_until(5 * SEC, || pending(&m) == 0));
        std::thread::sleep(HEARTBEAT * 2);
        proxy.pass();
        // The reconcile interval is 30 s: only the reconnect can bring it in step.
        wait_in_step(&m, &[&w], 5 * SEC);
        let held = w.seen.held();
        assert!(late.iter().all(|id| held.contains_key(id)));
        assert!(!held.contains_key(&early[0]) && !held.contains_key(&early[1]));
        assert!(w
            .seen
            .deletions()
            .iter()
            .all(|d| d.1 == DeleteReason::Deleted));
    }

    #[test]
    fn after_a_script_flush_and_an_aof_restart_the_cluster_is_consistent() {
        let mut server = RedisServer::builder().aof(true).start();
        let s = connect(&server.url(), "restart");
        let m = master(&s);
        let w1 = join(&server.url(), "restart", opts());
        let w2 = join(&server.url(), "restart", opts());
        wait_active(&m);
        wait_workers(&m, 2);
        for i in 0..4 {
            m.add_job(&i).unwrap();
        }
        wait_in_step(&m, &[&w1, &w2], 10 * SEC);
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut server.conn())
            .unwrap();
        for i in 4..8 {
            m.add_job(&i).unwrap();
        }
        assert!(support::wait_until(10 * SEC, || pending(&m) == 0));
        wait_in_step(&m, &[&w1, &w2], 10 * SEC);
        server.kill();
        server.restart();
        for i in 8..10 {
            // By id: a retry after a lost reply adds nothing twice.
            assert!(support::wait_until(10 * SEC, || m
                .add_job_with_id(&format!("late-{i}"), &i)
                .is_ok()));
        }
        // Whatever the outage did to leases (workers may have fenced and
        // rejoined), every job ends up with exactly one worker that knows it.
        assert!(support::wait_until(20 * SEC, || m
            .jobs()
            .is_ok_and(
                |j| j.len() == 10 && j.iter().all(|j| j.worker.is_some())
            )
            && in_step(&m, &[&w1, &w2], 0)));
        let a = w1.seen.held();
        let b = w2.seen.held();
        assert_eq!(a.len() + b.len(), 10);
        assert!(a.keys().all(|id| !b.contains_key(id)));
    }
}

#[test]
fn add_job_whose_reply_is_lost_adds_the_job_once() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let s = connect(&proxy.url(), "lostadd");
    let m = master(&s);
    // The first add reaches Redis; its reply is lost and the connection
    // closed. `add_job` asks again under the same id, so the job is added
    // once and the call succeeds (a caller retrying after an error would
    // have added it twice, under a new random id).
    proxy.drop_reply_to(b"lost-reply-needle");
    let id = m
        .add_job(&json!({ "unique": "lost-reply-needle" }))
        .unwrap();
    assert_eq!(proxy.dropped_replies(), 1, "no reply was dropped");
    let jobs = m.jobs().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].id, id);
}
