//! The read-only commands: listings (table or `--json`) and `watch`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redswarm::admin::{self, QueueStatus, TaskRow};

use crate::table::{ago, duration, opt, short, Table};
use crate::{Ctx, Exit, Failure, Outcome};

/// Adds a PROBLEM column to `headers` when any row has a problem.
fn with_problem<'a>(headers: &[&'a str], any: bool) -> Vec<&'a str> {
    let mut h = headers.to_vec();
    if any {
        h.push("PROBLEM");
    }
    h
}

fn push_problem(cells: &mut Vec<String>, any: bool, problem: &Option<String>) {
    if any {
        cells.push(opt(problem.as_deref()));
    }
}

pub fn nodes(ctx: &Ctx) -> Outcome {
    // The tool is a node while it runs; it is not one worth listing.
    let rows: Vec<_> = admin::nodes(&ctx.swarm)?
        .into_iter()
        .filter(|n| !n.is_self)
        .collect();
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&[
        "NODE", "HOST", "PID", "UPTIME", "PEER", "STATE", "LEASE", "LOCKS", "PERMITS", "TASKS",
        "JOBS",
    ]);
    for n in &rows {
        t.row(vec![
            n.id.clone(),
            n.host.clone(),
            n.pid.to_string(),
            duration(i64::try_from(n.uptime_ms).unwrap_or(i64::MAX)),
            opt(n.peer_addr.as_deref()),
            serde_json::to_value(n.state)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
            duration(n.lease_left_ms),
            if n.holds.locks.is_empty() {
                "-".into()
            } else {
                n.holds.locks.join(",")
            },
            n.holds.permits.len().to_string(),
            n.holds.running_tasks.to_string(),
            n.holds.cluster_jobs.to_string(),
        ]);
    }
    ctx.print(&t.render("no nodes"))?;
    Ok(Exit::Ok)
}

pub fn queues(ctx: &Ctx, only: Option<&str>) -> Outcome {
    let rows: Vec<QueueStatus> = match only {
        Some(name) => vec![admin::queue_status(&ctx.swarm.queue(name)?)?],
        None => admin::queues(&ctx.swarm)?,
    };
    if ctx.json {
        match only {
            Some(_) => ctx.print_json(&rows[0])?,
            None => ctx.print_json(&rows)?,
        }
        return Ok(Exit::Ok);
    }
    let any = rows.iter().any(|r| r.problem.is_some());
    let mut t = Table::new(&with_problem(
        &[
            "QUEUE",
            "READY",
            "DELAYED",
            "RUNNING",
            "ENDED",
            "FAILED",
            "ENDED/MIN",
            "FAILED/MIN",
        ],
        any,
    ));
    for q in &rows {
        let c = q.counts;
        let mut cells = vec![
            q.name.clone(),
            c.ready.to_string(),
            c.delayed.to_string(),
            c.running.to_string(),
            c.ended.to_string(),
            c.failed.to_string(),
            q.ended_last_minute.to_string(),
            q.failed_last_minute.to_string(),
        ];
        push_problem(&mut cells, any, &q.problem);
        t.row(cells);
    }
    ctx.print(&t.render("no queues"))?;
    Ok(Exit::Ok)
}

fn task_problem(row: &TaskRow) -> String {
    match (&row.task, &row.problem) {
        (_, Some(p)) => p.clone(),
        (None, None) => "record gone".into(),
        (Some(_), None) => String::new(),
    }
}

pub fn failed(ctx: &Ctx, queue: &str, limit: usize) -> Outcome {
    let rows = admin::failed_tasks(&ctx.swarm.queue(queue)?, limit)?;
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let now = ctx.swarm.redis_time_ms()?;
    let mut t = Table::new(&["TASK", "FAILED", "ATTEMPTS", "LOST", "BY", "ERROR"]);
    for r in &rows {
        let cells = match &r.task {
            Some(task) => vec![
                r.id.clone(),
                ago(r.at_ms, now),
                format!("{}/{}", task.failures, task.max_attempts),
                format!("{}/{}", task.lost_runs, task.max_lost_runs),
                opt(task.failed_by),
                short(task.error.as_deref().unwrap_or("-"), 80),
            ],
            None => vec![
                r.id.clone(),
                ago(r.at_ms, now),
                "-".into(),
                "-".into(),
                "-".into(),
                short(&task_problem(r), 80),
            ],
        };
        t.row(cells);
    }
    ctx.print(&t.render(&format!("no failed tasks in queue `{queue}`")))?;
    Ok(Exit::Ok)
}

pub fn running(ctx: &Ctx, queue: &str, limit: usize) -> Outcome {
    let rows = admin::running_tasks(&ctx.swarm.queue(queue)?, limit)?;
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let now = ctx.swarm.redis_time_ms()?;
    let mut t = Table::new(&[
        "TASK", "WORKER", "STARTED", "LEASE", "ATTEMPT", "FENCE", "NOTE",
    ]);
    for r in &rows {
        let lease =
            duration(i64::try_from(r.at_ms).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(0));
        let cells = match &r.task {
            Some(task) => vec![
                r.id.clone(),
                opt(task.worker.as_deref()),
                task.started_ms.map_or("-".into(), |s| ago(s, now)),
                lease,
                task.attempts.to_string(),
                task.fencing_token.to_string(),
                String::new(),
            ],
            None => vec![
                r.id.clone(),
                "-".into(),
                "-".into(),
                lease,
                "-".into(),
                "-".into(),
                short(&task_problem(r), 80),
            ],
        };
        t.row(cells);
    }
    ctx.print(&t.render(&format!("no running tasks in queue `{queue}`")))?;
    Ok(Exit::Ok)
}

pub fn inspect(ctx: &Ctx, queue: &str, id: &str) -> Outcome {
    let Some(info) = ctx.swarm.queue(queue)?.get(id)? else {
        return Err(Failure::new(
            Exit::NotFound,
            format!("task `{id}` not found in queue `{queue}`"),
        ));
    };
    let details = admin::TaskDetails::from(&info);
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "id": id, "queue": queue, "task": details }))?;
        return Ok(Exit::Ok);
    }
    let now = ctx.swarm.redis_time_ms()?;
    let when = |t: Option<u64>| t.map_or("-".into(), |t| format!("{} ({t})", ago(t, now)));
    let lines = [
        ("task", id.to_string()),
        ("queue", queue.to_string()),
        ("state", details.state.to_string()),
        ("priority", details.priority.to_string()),
        (
            "attempts",
            format!(
                "{} runs, {}/{} failures, {}/{} lost runs",
                details.attempts,
                details.failures,
                details.max_attempts,
                details.lost_runs,
                details.max_lost_runs
            ),
        ),
        ("failed by", opt(details.failed_by)),
        ("error", opt(details.error.as_deref())),
        ("worker", opt(details.worker.as_deref())),
        ("fencing token", details.fencing_token.to_string()),
        ("created", when(Some(details.created_ms))),
        ("started", when(details.started_ms)),
        ("updated", when(Some(details.updated_ms))),
        ("ended", when(details.ended_ms)),
        ("run at", when(details.run_at_ms)),
        ("data", details.data.to_string()),
        ("result", opt(details.result.as_ref())),
    ];
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{:<14} {v}\n", format!("{k}:")));
    }
    ctx.print(&out)?;
    Ok(Exit::Ok)
}

pub fn locks(ctx: &Ctx) -> Outcome {
    let rows = admin::locks(&ctx.swarm)?;
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let any = rows.iter().any(|r| r.problem.is_some());
    let mut t = Table::new(&with_problem(
        &["LOCK", "HOLDER", "TTL", "FENCE", "WAITERS"],
        any,
    ));
    for l in &rows {
        let mut cells = vec![
            l.name.clone(),
            opt(l.holder_node.as_deref()),
            l.ttl_left_ms.map_or("-".into(), duration),
            opt(l.fencing_token),
            l.waiters.to_string(),
        ];
        push_problem(&mut cells, any, &l.problem);
        t.row(cells);
    }
    ctx.print(&t.render("no locks held"))?;
    Ok(Exit::Ok)
}

pub fn semaphores(ctx: &Ctx) -> Outcome {
    let rows = admin::semaphores(&ctx.swarm)?;
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let any = rows.iter().any(|r| r.problem.is_some());
    let mut t = Table::new(&with_problem(
        &[
            "SEMAPHORE",
            "HOLDER",
            "TTL",
            "FENCE",
            "HELD",
            "EXPIRED",
            "WAITERS",
        ],
        any,
    ));
    for s in &rows {
        let counts = [
            s.permits.len().to_string(),
            s.expired.to_string(),
            s.waiters.to_string(),
        ];
        if s.permits.is_empty() {
            let mut cells = vec![s.name.clone(), "-".into(), "-".into(), "-".into()];
            cells.extend(counts.iter().cloned());
            push_problem(&mut cells, any, &s.problem);
            t.row(cells);
        }
        for p in &s.permits {
            let mut cells = vec![
                s.name.clone(),
                opt(p.node.as_deref()),
                duration(p.ttl_left_ms),
                opt(p.fencing_token),
            ];
            cells.extend(counts.iter().cloned());
            push_problem(&mut cells, any, &s.problem);
            t.row(cells);
        }
    }
    ctx.print(&t.render("no semaphore permits held"))?;
    Ok(Exit::Ok)
}

pub fn clusters(ctx: &Ctx) -> Outcome {
    let rows = admin::clusters(&ctx.swarm)?;
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let any = rows.iter().any(|r| r.problem.is_some());
    let mut t = Table::new(&with_problem(
        &[
            "CLUSTER",
            "JOBS",
            "PENDING",
            "MASTER",
            "WORKER",
            "NODE",
            "CAPACITY",
            "WORKER JOBS",
            "LEASE",
        ],
        any,
    ));
    for c in &rows {
        let head = [
            c.name.clone(),
            c.jobs.to_string(),
            c.pending.to_string(),
            c.master_lease_left_ms
                .map_or("none".into(), |ms| format!("up {}", duration(ms))),
        ];
        if c.workers.is_empty() {
            let mut cells = head.to_vec();
            cells.extend(["-", "-", "-", "-", "-"].map(String::from));
            push_problem(&mut cells, any, &c.problem);
            t.row(cells);
        }
        for w in &c.workers {
            let mut cells = head.to_vec();
            cells.extend([
                w.id.clone(),
                opt(w.node.as_deref()),
                if w.capacity == 0 {
                    "-".into()
                } else {
                    w.capacity.to_string()
                },
                w.jobs.to_string(),
                duration(w.lease_left_ms),
            ]);
            push_problem(&mut cells, any, &c.problem);
            t.row(cells);
        }
    }
    ctx.print(&t.render("no job clusters"))?;
    Ok(Exit::Ok)
}

pub fn trackers(ctx: &Ctx) -> Outcome {
    let rows = admin::trackers(&ctx.swarm)?;
    if ctx.json {
        ctx.print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    let any = rows.iter().any(|r| r.problem.is_some());
    let mut t = Table::new(&with_problem(
        &[
            "TRACKER",
            "RELEASED",
            "PROCESSING",
            "LOCKED",
            "COMPLETED",
            "FAILED",
        ],
        any,
    ));
    for r in &rows {
        let mut cells = vec![
            r.name.clone(),
            r.released.to_string(),
            r.processing.to_string(),
            r.locked.to_string(),
            r.completed.to_string(),
            r.failed.to_string(),
        ];
        push_problem(&mut cells, any, &r.problem);
        t.row(cells);
    }
    ctx.print(&t.render("no chunk trackers"))?;
    Ok(Exit::Ok)
}

/// Prints the queue's events until `count` events, `seconds`, or an
/// interrupt (Ctrl-C, SIGTERM), whichever comes first.
pub fn watch(ctx: &Ctx, queue: &str, count: Option<u64>, seconds: Option<u64>) -> Outcome {
    let events = ctx.swarm.queue(queue)?.events()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Stop cleanly so the tool's node deregisters instead of lapsing.
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        log::debug!("no interrupt handler ({e}); an interrupt ends the process at once");
    }
    let started = Instant::now();
    let until = seconds.map(|s| started + Duration::from_secs(s));
    if !ctx.json {
        eprintln!("watching queue `{queue}` (Ctrl-C to stop)");
    }
    let mut seen = 0u64;
    while !stop.load(Ordering::SeqCst) && count.is_none_or(|c| seen < c) {
        let now = Instant::now();
        if until.is_some_and(|u| now >= u) {
            break;
        }
        let wait = until.map_or(Duration::from_millis(200), |u| {
            (u - now).min(Duration::from_millis(200))
        });
        let Some(e) = events.next_event(wait) else {
            continue;
        };
        seen += 1;
        if ctx.json {
            ctx.print(&format!("{}\n", serde_json::to_string(&e)?))?;
            continue;
        }
        let kind = serde_json::to_value(e.kind)?
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        let mut line = format!(
            "{:>9}  {:<10} {}",
            format!("+{:.3}s", started.elapsed().as_secs_f64()),
            kind,
            e.task
        );
        if let Some(a) = e.attempt {
            line.push_str(&format!("  attempt {a}"));
        }
        if let Some(n) = &e.node {
            line.push_str(&format!("  on {n}"));
        }
        if let Some(err) = &e.error {
            line.push_str(&format!("  error: {}", short(err, 200)));
        }
        if let Some(d) = &e.data {
            line.push_str(&format!("  {}", short(&d.to_string(), 200)));
        }
        ctx.print(&format!("{line}\n"))?;
    }
    Ok(Exit::Ok)
}
