//! `/metrics`: the admin rows as Prometheus metrics, read from Redis at
//! each scrape (the server keeps no counters of its own, so any number of
//! status servers report the same figures).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `redswarm_nodes` | gauge | `state` (`live`, `lapsed`) | nodes whose lease is live / ran out recently |
//! | `redswarm_queue_tasks` | gauge | `queue`, `state` (`ready`, `delayed`, `running`, `ended`, `failed`) | tasks per set |
//! | `redswarm_queue_ended_last_minute` | gauge | `queue` | tasks that ended ok or cancelled in the last 60 s |
//! | `redswarm_queue_failed_last_minute` | gauge | `queue` | tasks that ended failed in the last 60 s |
//! | `redswarm_locks_held` | gauge | | locks held now |
//! | `redswarm_lock_waiters` | gauge | | fair-mode waiters over all locks |
//! | `redswarm_semaphore_permits_held` | gauge | `semaphore` | live permits |
//! | `redswarm_semaphore_waiters` | gauge | `semaphore` | fair-mode waiters |
//! | `redswarm_cluster_jobs` | gauge | `cluster` | jobs |
//! | `redswarm_cluster_pending_jobs` | gauge | `cluster` | jobs waiting for a worker |
//! | `redswarm_cluster_workers` | gauge | `cluster` | workers |
//! | `redswarm_cluster_master_up` | gauge | `cluster` | 1 while a master holds the lease |
//! | `redswarm_tracker_tasks` | gauge | `tracker`, `state` (`released`, `processing`, `locked`) | tracker tasks per state |
//! | `redswarm_tracker_completed_total` | counter | `tracker` | tasks completed since the tracker began |
//! | `redswarm_tracker_failed_total` | counter | `tracker` | tasks failed since the tracker began |
//! | `redswarm_unreadable` | gauge | `kind`, `name` | 1 for each thing whose keys hold data of the wrong shape |
//!
//! Locks are counted, not labelled: lock names are often per item (one
//! per order id) and would make a series each.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::admin;
use crate::error::Result;
use crate::handle::Redswarm;

/// The content type of what [`render`] writes (OpenMetrics text, which
/// Prometheus reads natively).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A gauge family registered under `name`.
fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// Reads everything from Redis into a fresh registry (see [`text`]).
pub(crate) fn collect(swarm: &Redswarm) -> Result<Registry> {
    let nodes = admin::nodes(swarm)?;
    let queues = admin::queues(swarm)?;
    let locks = admin::locks(swarm)?;
    let semaphores = admin::semaphores(swarm)?;
    let clusters = admin::clusters(swarm)?;
    let trackers = admin::trackers(swarm)?;

    let mut registry = Registry::with_prefix("redswarm");
    let unreadable = gauges(
        &mut registry,
        "unreadable",
        "1 for each thing whose keys hold data of the wrong shape",
    );
    let mark = |kind: &str, name: &str, problem: &Option<String>| {
        if problem.is_some() {
            unreadable
                .get_or_create(&labels(&[("kind", kind), ("name", name)]))
                .set(1);
        }
    };

    let node_gauge = gauges(&mut registry, "nodes", "Nodes by lease state");
    for state in ["live", "lapsed"] {
        node_gauge
            .get_or_create(&labels(&[("state", state)]))
            .set(0);
    }
    for n in &nodes {
        let state = match n.state {
            admin::NodeState::Live => "live",
            admin::NodeState::Lapsed => "lapsed",
        };
        node_gauge.get_or_create(&labels(&[("state", state)])).inc();
    }

    let tasks = gauges(&mut registry, "queue_tasks", "Tasks per queue and set");
    let ended = gauges(
        &mut registry,
        "queue_ended_last_minute",
        "Tasks that ended ok or cancelled in the last 60 s",
    );
    let failed = gauges(
        &mut registry,
        "queue_failed_last_minute",
        "Tasks that ended failed in the last 60 s",
    );
    for q in &queues {
        mark("queue", &q.name, &q.problem);
        let c = &q.counts;
        for (state, n) in [
            ("ready", c.ready),
            ("delayed", c.delayed),
            ("running", c.running),
            ("ended", c.ended),
            ("failed", c.failed),
        ] {
            tasks
                .get_or_create(&labels(&[("queue", &q.name), ("state", state)]))
                .set(clamp(n));
        }
        let q_label = labels(&[("queue", &q.name)]);
        ended
            .get_or_create(&q_label)
            .set(clamp(q.ended_last_minute));
        failed
            .get_or_create(&q_label)
            .set(clamp(q.failed_last_minute));
    }

    let held = Gauge::<i64>::default();
    registry.register("locks_held", "Locks held now", held.clone());
    let lock_waiters = Gauge::<i64>::default();
    registry.register(
        "lock_waiters",
        "Fair-mode waiters over all locks",
        lock_waiters.clone(),
    );
    for l in &locks {
        mark("lock", &l.name, &l.problem);
        if l.holder_node.is_some() || l.fencing_token.is_some() {
            held.inc();
        }
        lock_waiters.inc_by(clamp(l.waiters));
    }

    let permits = gauges(
        &mut registry,
        "semaphore_permits_held",
        "Live permits per semaphore",
    );
    let sem_waiters = gauges(
        &mut registry,
        "semaphore_waiters",
        "Fair-mode waiters per semaphore",
    );
    for s in &semaphores {
        mark("semaphore", &s.name, &s.problem);
        let l = labels(&[("semaphore", &s.name)]);
        permits.get_or_create(&l).set(clamp(s.permits.len() as u64));
        sem_waiters.get_or_create(&l).set(clamp(s.waiters));
    }

    let jobs = gauges(&mut registry, "cluster_jobs", "Jobs per cluster");
    let pending = gauges(
        &mut registry,
        "cluster_pending_jobs",
        "Jobs waiting for a worker",
    );
    let workers = gauges(&mut registry, "cluster_workers", "Workers per cluster");
    let master = gauges(
        &mut registry,
        "cluster_master_up",
        "1 while a master holds the lease",
    );
    for c in &clusters {
        mark("cluster", &c.name, &c.problem);
        let l = labels(&[("cluster", &c.name)]);
        jobs.get_or_create(&l).set(clamp(c.jobs));
        pending.get_or_create(&l).set(clamp(c.pending));
        workers.get_or_create(&l).set(clamp(c.workers.len() as u64));
        let up = c.master_lease_left_ms.is_some_and(|left| left > 0);
        master.get_or_create(&l).set(i64::from(up));
    }

    let tracker_tasks = gauges(&mut registry, "tracker_tasks", "Tracker tasks per state");
    let completed = Family::<Labels, Counter>::default();
    registry.register(
        "tracker_completed",
        "Tasks completed since the tracker began",
        completed.clone(),
    );
    let tracker_failed = Family::<Labels, Counter>::default();
    registry.register(
        "tracker_failed",
        "Tasks failed since the tracker began",
        tracker_failed.clone(),
    );
    for t in &trackers {
        mark("tracker", &t.name, &t.problem);
        for (state, n) in [
            ("released", t.released),
            ("processing", t.processing),
            ("locked", t.locked),
        ] {
            tracker_tasks
                .get_or_create(&labels(&[("tracker", &t.name), ("state", state)]))
                .set(clamp(n));
        }
        let l = labels(&[("tracker", &t.name)]);
        completed.get_or_create(&l).inc_by(t.completed);
        tracker_failed.get_or_create(&l).inc_by(t.failed);
    }

    Ok(registry)
}

/// The registry in the text format (fails only if a metric cannot be
/// encoded: a bug of ours, not the caller's).
pub(crate) fn text(registry: &Registry) -> std::result::Result<String, std::fmt::Error> {
    let mut out = String::new();
    encode(&mut out, registry)?;
    Ok(out)
}
