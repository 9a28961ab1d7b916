//! Redis Cluster readiness of the scripts (issue #16): every Lua script
//! call must touch keys of ONE hash slot, or a cluster refuses it
//! (`CROSSSLOT`) or runs it on a node that does not own the other keys.
//!
//! For every script call site (the `.key(..)` calls next to `prepare()` in
//! `src/`), [`single_slot_calls`] lists the keys that call hands the script,
//! built through the public `Keys` API for sample names, plus the keys the
//! script derives in Lua from a prefix in ARGV (e.g. `<queue>:task:<id>`
//! from `task_prefix`): Redis Cluster accepts those only on the node that
//! owns their slot, so they must share the slot too. The test asks a
//! cluster node `CLUSTER KEYSLOT` for each key.
//!
//! One script is split on a cluster: `heartbeat.lua` renews the membership
//! and every lease of the process in one call on a single server, and in
//! one call per slot on a cluster ([`SPLIT_ON_CLUSTER`]); a test checks that
//! its calls need the split and that each call of the split touches one
//! slot, and another that every script in `src/scripts/` is classified.

mod support;

use std::collections::BTreeSet;

use redswarm::keys::Keys;
use support::RedisCluster;

/// Scripts whose single-server call crosses slots, and which redswarm
/// splits into one call per slot on a Redis Cluster.
const SPLIT_ON_CLUSTER: &[(&str, &str)] = &[(
    "heartbeat.lua",
    "one call per beat on one server renews the node's membership in \
     `{ns:nodes}` AND every lease the process holds, each under its own hash \
     tag. On a cluster `BeatRequest::new` (src/heartbeat.rs) makes one \
     membership call on `{ns:nodes}` plus one lease-only call per slot.",
)];

/// Scripts that are only ever loaded together with another one
/// (`lua_script!(.., with "..")`), never called on their own.
const LIBRARIES: &[&str] = &[
    "prelude.lua",
    "queue_lib.lua",
    "tracker_lib.lua",
    "cluster_prelude.lua",
];

/// One script call site and every key it touches.
struct Call {
    script: &'static str,
    site: &'static str,
    keys: Vec<String>,
}

fn call(script: &'static str, site: &'static str, keys: Vec<String>) -> Call {
    Call { script, site, keys }
}

/// Every single-slot script call, with keys for the given sample names.
fn single_slot_calls(ns: &str, name: &str, id: &str) -> Vec<Call> {
    let keys = Keys::new(ns);
    let lock = keys.lock(name).unwrap();
    let sem = keys.semaphore(name).unwrap();
    let fan = keys.fanout(id).unwrap();
    let paired = keys.paired(id).unwrap();
    let phash = keys.paired_in_hash(name, id).unwrap();
    let q = keys.queue(name).unwrap();
    let c = keys.cluster(name).unwrap();
    let t = keys.tracker(name).unwrap();
    let node = "node-1";
    let task = q.task(id);
    let claim = q.claim("claim-token-1");
    let job = c.job(id);
    let worker = c.worker("w1");
    let worker_jobs = c.worker_jobs("w1");
    let ttask = t.task(id).unwrap();
    let tchunks = t.chunks(id).unwrap();
    let queue_keys = || {
        vec![
            q.ready.clone(),
            q.delayed.clone(),
            q.running.clone(),
            q.marker.clone(),
            q.failed.clone(),
            q.ended.clone(),
        ]
    };
    let with = |mut base: Vec<String>, more: &[&String]| {
        base.extend(more.iter().map(|k| (*k).clone()));
        base
    };
    let paired_keys = vec![paired.record, paired.fence, paired.owner];
    let mut phash_keys = vec![phash.record, phash.fence, phash.owner];
    phash_keys.extend(phash.leases);

    vec![
        // Membership: `{ns:nodes}` and the info hashes `node_list.lua`
        // builds from the `node_info("")` prefix.
        call(
            "node_list.lua",
            "membership.rs",
            vec![keys.nodes(), keys.node_info(node)],
        ),
        call(
            "node_leave.lua",
            "heartbeat.rs",
            vec![keys.nodes(), keys.node_info(node)],
        ),
        // The heartbeat on a cluster: the membership call, then one call
        // per slot of leases (`heartbeat_lease_groups` checks those).
        call(
            "heartbeat.lua",
            "heartbeat.rs membership call",
            vec![keys.nodes(), keys.node_info(node)],
        ),
        // Locks (a multi-lock runs these once per lock, never one script
        // for several locks).
        call(
            "lock_acquire.lua",
            "lock.rs attempt",
            vec![
                lock.owner.clone(),
                lock.fence,
                lock.queue.clone(),
                lock.tickets.clone(),
            ],
        ),
        call(
            "lock_release.lua",
            "lock.rs release_token",
            vec![lock.owner.clone(), lock.queue.clone(), lock.tickets.clone()],
        ),
        call(
            "lock_leave_queue.lua",
            "lock.rs",
            vec![lock.queue, lock.tickets],
        ),
        call("lock_extend.lua", "lock.rs LockGuard", vec![lock.owner]),
        // Semaphores.
        call(
            "semaphore_acquire.lua",
            "semaphore.rs",
            vec![
                sem.holders.clone(),
                sem.fence,
                sem.queue.clone(),
                sem.tickets.clone(),
                sem.grants.clone(),
            ],
        ),
        call(
            "semaphore_count.lua",
            "semaphore.rs",
            vec![sem.holders.clone()],
        ),
        call(
            "semaphore_leave_queue.lua",
            "semaphore.rs",
            vec![sem.queue, sem.tickets],
        ),
        call(
            "semaphore_extend.lua",
            "semaphore.rs",
            vec![sem.holders.clone()],
        ),
        call(
            "semaphore_release.lua",
            "semaphore.rs",
            vec![sem.holders, sem.grants],
        ),
        // Fan-out.
        call(
            "fanout_claim.lua",
            "fanout.rs",
            vec![fan.leader.clone(), fan.result.clone(), fan.fence],
        ),
        call(
            "fanout_complete.lua",
            "fanout.rs",
            vec![fan.leader.clone(), fan.result],
        ),
        call("fanout_abandon.lua", "fanout.rs", vec![fan.leader]),
        // Paired tasks, key form and hash form (`Paired::prepare`).
        call(
            "paired_join.lua",
            "paired/mod.rs (key form)",
            paired_keys.clone(),
        ),
        call("paired_report.lua", "paired/job.rs (key form)", paired_keys),
        call(
            "paired_join.lua",
            "paired/mod.rs (hash form)",
            phash_keys.clone(),
        ),
        call("paired_report.lua", "paired/job.rs (hash form)", phash_keys),
        // Queues; task hashes come from `task_prefix` in ARGV.
        call(
            "queue_push.lua",
            "swarm/queue.rs push",
            vec![
                q.ready.clone(),
                q.delayed.clone(),
                q.marker.clone(),
                q.seq.clone(),
                task.clone(),
            ],
        ),
        call(
            "queue_step.lua",
            "swarm/claim.rs step",
            with(queue_keys(), &[&claim, &task]),
        ),
        call(
            "queue_unclaim.lua",
            "swarm/claim.rs",
            vec![
                claim.clone(),
                q.running.clone(),
                q.delayed.clone(),
                q.marker.clone(),
                q.ended.clone(),
                task.clone(),
            ],
        ),
        call(
            "queue_reap.lua",
            "swarm/queue.rs reap_expired",
            with(queue_keys(), &[&task]),
        ),
        call(
            "queue_cancel.lua",
            "swarm/queue.rs cancel",
            vec![
                task.clone(),
                q.ready.clone(),
                q.delayed.clone(),
                q.ended.clone(),
            ],
        ),
        call(
            "queue_requeue_failed.lua",
            "swarm/queue.rs",
            vec![
                q.failed.clone(),
                q.delayed.clone(),
                q.marker.clone(),
                task.clone(),
            ],
        ),
        call(
            "queue_delete.lua",
            "swarm/queue.rs delete",
            vec![
                task.clone(),
                q.ready.clone(),
                q.delayed.clone(),
                q.running.clone(),
                q.ended.clone(),
                q.failed.clone(),
            ],
        ),
        call(
            "queue_retry.lua",
            "admin/actions.rs",
            vec![
                task.clone(),
                q.failed.clone(),
                q.delayed.clone(),
                q.marker.clone(),
            ],
        ),
        call(
            "queue_purge.lua",
            "admin/actions.rs (ended)",
            vec![q.ended.clone(), task.clone()],
        ),
        call(
            "queue_purge.lua",
            "admin/actions.rs (failed)",
            vec![q.failed.clone(), task],
        ),
        // Job clusters; job and worker records come from prefixes in ARGV.
        call(
            "cluster_open.lua",
            "cluster/master.rs",
            vec![c.meta.clone()],
        ),
        call(
            "cluster_add.lua",
            "cluster/master.rs add",
            vec![
                c.jobs.clone(),
                c.pending.clone(),
                c.seq.clone(),
                job.clone(),
            ],
        ),
        call(
            "cluster_jobs.lua",
            "cluster/master.rs",
            vec![c.jobs.clone(), job.clone()],
        ),
        call(
            "cluster_workers.lua",
            "cluster/master.rs",
            vec![c.workers.clone(), worker.clone(), worker_jobs.clone()],
        ),
        call(
            "cluster_delete.lua",
            "cluster/master.rs delete",
            vec![
                c.jobs.clone(),
                c.pending.clone(),
                job.clone(),
                worker.clone(),
                worker_jobs.clone(),
            ],
        ),
        call(
            "cluster_elect.lua",
            "cluster/master.rs",
            vec![c.master.clone()],
        ),
        call(
            "cluster_sweep.lua",
            "cluster/master.rs",
            vec![
                c.master.clone(),
                c.meta.clone(),
                c.pending.clone(),
                c.workers.clone(),
                c.fence.clone(),
                job.clone(),
                worker.clone(),
                worker_jobs.clone(),
            ],
        ),
        call("cluster_resign.lua", "cluster/master.rs", vec![c.master]),
        call(
            "cluster_leave.lua",
            "cluster/worker.rs",
            vec![
                c.workers.clone(),
                c.pending.clone(),
                worker.clone(),
                worker_jobs.clone(),
                job.clone(),
            ],
        ),
        call(
            "cluster_join.lua",
            "cluster/worker.rs",
            vec![
                c.meta,
                c.workers.clone(),
                c.pending,
                c.fence.clone(),
                worker.clone(),
                worker_jobs.clone(),
                job.clone(),
            ],
        ),
        call(
            "cluster_sync.lua",
            "cluster/worker.rs",
            vec![c.workers, worker, worker_jobs, c.fence, job],
        ),
        // Chunk trackers; task and chunk records come from prefixes in ARGV.
        call(
            "tracker_lock.lua",
            "tracker.rs lock",
            vec![
                ttask.clone(),
                tchunks.clone(),
                t.locks.clone(),
                t.since.clone(),
            ],
        ),
        call(
            "tracker_unlock.lua",
            "tracker.rs unlock",
            vec![
                ttask.clone(),
                tchunks.clone(),
                t.locks.clone(),
                t.since.clone(),
                t.released.clone(),
            ],
        ),
        call(
            "tracker_close.lua",
            "tracker.rs close",
            vec![ttask.clone(), tchunks.clone(), t.released.clone()],
        ),
        call(
            "tracker_claim.lua",
            "tracker.rs claim",
            vec![t.released.clone(), t.processing.clone(), ttask.clone()],
        ),
        call(
            "tracker_done.lua",
            "tracker.rs done",
            vec![
                ttask.clone(),
                t.processing.clone(),
                t.released.clone(),
                t.stats.clone(),
            ],
        ),
        call(
            "tracker_sweep.lua",
            "tracker.rs sweep",
            vec![
                t.locks,
                t.since,
                t.processing,
                t.released,
                t.stats,
                ttask,
                tchunks,
            ],
        ),
    ]
}

/// The keys of one lease of every kind, each lease's keys together (see
/// `LeaseTarget` in src/lease.rs and where each feature makes one): on a
/// cluster each group goes with the lease-only heartbeat call of its slot.
fn heartbeat_lease_groups(ns: &str) -> Vec<Vec<String>> {
    let keys = Keys::new(ns);
    let q = keys.queue("q").unwrap();
    let c = keys.cluster("c").unwrap();
    let t = keys.tracker("t").unwrap();
    let phash = keys.paired_in_hash("h", "f").unwrap();
    vec![
        vec![keys.lock("l").unwrap().owner],
        vec![keys.semaphore("s").unwrap().holders],
        vec![keys.fanout("f").unwrap().leader],
        vec![q.running.clone(), q.task("t1")],
        vec![keys.paired("p").unwrap().owner],
        vec![phash.leases.unwrap(), phash.owner],
        vec![t.locks.clone(), t.chunks("t1").unwrap()],
        vec![t.processing],
        vec![c.workers.clone(), c.worker("w1")],
        vec![c.master],
    ]
}

fn slot(conn: &mut redis::Connection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(conn)
        .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key:?}: {e}"))
}

fn slots(conn: &mut redis::Connection, keys: &[String]) -> BTreeSet<u16> {
    keys.iter().map(|k| slot(conn, k)).collect()
}

/// Sample names: plain, with `:` (allowed inside a name), with non-ASCII.
const SAMPLES: &[(&str, &str, &str)] = &[
    ("app", "orders", "job-1"),
    ("billing.prod-2", "orders:eu:42", "a:b:c"),
    ("x", "größe", "ü:1"),
];

#[test]
fn every_feature_script_call_touches_one_slot() {
    let cluster = RedisCluster::start(3);
    let mut conn = cluster.conn(0);
    for &(ns, name, id) in SAMPLES {
        for c in single_slot_calls(ns, name, id) {
            let s = slots(&mut conn, &c.keys);
            assert_eq!(
                s.len(),
                1,
                "{} ({}) spans slots {s:?} with keys {:?}",
                c.script,
                c.site,
                c.keys
            );
        }
    }
}

#[test]
fn different_names_spread_over_slots() {
    // The check above could not fail if every key landed in one slot.
    let cluster = RedisCluster::start(3);
    let mut conn = cluster.conn(1);
    let keys = Keys::new("app");
    let owners: Vec<String> = (0..16)
        .map(|i| keys.lock(&format!("lock-{i}")).unwrap().owner)
        .collect();
    assert!(slots(&mut conn, &owners).len() > 1, "{owners:?}");
    let families = vec![
        keys.nodes(),
        keys.lock("n").unwrap().owner,
        keys.semaphore("n").unwrap().holders,
        keys.fanout("n").unwrap().leader,
        keys.queue("n").unwrap().ready,
        keys.cluster("n").unwrap().meta,
        keys.tracker("n").unwrap().locks,
    ];
    assert!(slots(&mut conn, &families).len() > 1, "{families:?}");
}

#[test]
fn the_heartbeat_needs_its_split_and_each_call_of_it_touches_one_slot() {
    let cluster = RedisCluster::start(3);
    let mut conn = cluster.conn(2);
    for &(ns, _, _) in SAMPLES {
        let keys = Keys::new(ns);
        let groups = heartbeat_lease_groups(ns);
        let mut all = vec![keys.nodes(), keys.node_info("node-1")];
        all.extend(groups.iter().flatten().cloned());
        let s = slots(&mut conn, &all);
        assert!(
            s.len() > 1,
            "one heartbeat call would now fit one slot ({s:?}): drop the split"
        );
        for group in &groups {
            let s = slots(&mut conn, group);
            assert_eq!(s.len(), 1, "lease keys {group:?} span slots {s:?}");
        }
    }
    assert_eq!(
        SPLIT_ON_CLUSTER.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        ["heartbeat.lua"]
    );
    for (script, why) in SPLIT_ON_CLUSTER {
        assert!(!why.is_empty(), "{script}: say why it is split");
    }
}

#[test]
fn every_script_is_classified() {
    // A new script must be added to `single_slot_calls` or
    // `SPLIT_ON_CLUSTER` (pure Rust: no cluster needed).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scripts");
    let mut known: BTreeSet<&str> = single_slot_calls("app", "n", "i")
        .iter()
        .map(|c| c.script)
        .collect();
    known.extend(SPLIT_ON_CLUSTER.iter().map(|(s, _)| *s));
    known.extend(LIBRARIES);
    let mut missing = Vec::new();
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".lua") {
            if !known.contains(name.as_str()) {
                missing.push(name.clone());
            }
            found.insert(name);
        }
    }
    assert!(missing.is_empty(), "scripts not classified: {missing:?}");
    let stale: Vec<&&str> = known.iter().filter(|s| !found.contains(**s)).collect();
    assert!(
        stale.is_empty(),
        "classified scripts that no longer exist: {stale:?}"
    );
}
