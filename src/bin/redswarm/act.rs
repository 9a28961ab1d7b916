//! The commands that change state: retry, cancel, delete, purge. Each
//! change is one library call whose script only touches what it names
//! (see `redswarm::admin` and `Queue`); the destructive ones ask first.

use redswarm::admin::{self, PurgeSet, RetryOutcome};
use serde_json::json;

use crate::{Confirm, Ctx, Exit, Failure, Outcome};

/// Failed tasks `retry --all` re-queues per script call.
const RETRY_BATCH: usize = 1000;

pub fn retry(ctx: &Ctx, queue: &str, ids: &[String], all: bool, confirm: &Confirm) -> Outcome {
    let q = ctx.swarm.queue(queue)?;
    if all {
        let failed = q.counts()?.failed;
        ctx.confirm(
            confirm,
            &format!(
                "re-queue all {} of queue `{queue}`",
                tasks(failed, "failed task")
            ),
        )?;
        // Bounded by the count seen when asked: tasks failing again while
        // this runs are not retried in a loop.
        let mut requeued = 0u64;
        while requeued < failed {
            let left = usize::try_from(failed - requeued).unwrap_or(usize::MAX);
            let n = q.requeue_failed(left.min(RETRY_BATCH))?;
            if n == 0 {
                break;
            }
            requeued += n;
        }
        if ctx.json {
            ctx.print_json(&json!({ "queue": queue, "requeued": requeued }))?;
        } else {
            ctx.print(&format!(
                "re-queued {} of queue `{queue}`\n",
                tasks(requeued, "failed task")
            ))?;
        }
        return Ok(Exit::Ok);
    }
    // Check every id before changing anything, so a bad one cannot leave
    // the others half done and unreported.
    for id in ids {
        redswarm::keys::validate_name("task id", id)?;
    }
    let mut exit = Exit::Ok;
    let mut results = Vec::new();
    for id in ids {
        let outcome = admin::retry_task(&q, id)?;
        let (text, code) = match outcome {
            RetryOutcome::Requeued => ("re-queued", Exit::Ok),
            RetryOutcome::NotFailed => ("not failed; left as it is", Exit::NotDone),
            RetryOutcome::Missing => ("not found", Exit::NotFound),
        };
        // The most telling code wins: not found, then not done.
        exit = match (exit, code) {
            (Exit::NotFound, _) | (_, Exit::NotFound) => Exit::NotFound,
            (Exit::NotDone, _) | (_, Exit::NotDone) => Exit::NotDone,
            _ => Exit::Ok,
        };
        results.push((id, outcome, text));
    }
    if ctx.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(id, outcome, _)| json!({ "id": id, "outcome": outcome }))
            .collect();
        ctx.print_json(&json!({ "queue": queue, "tasks": rows }))?;
    } else {
        let mut out = String::new();
        for (id, _, text) in &results {
            out.push_str(&format!("task `{id}`: {text}\n"));
        }
        ctx.print(&out)?;
    }
    Ok(exit)
}

pub fn cancel(ctx: &Ctx, queue: &str, id: &str, confirm: &Confirm) -> Outcome {
    let q = ctx.swarm.queue(queue)?;
    ctx.confirm(confirm, &format!("cancel task `{id}` of queue `{queue}`"))?;
    let outcome = q.cancel(id)?;
    let (text, exit) = match outcome.as_str() {
        "cancelled" => ("cancelled", Exit::Ok),
        "signalled" => ("running; its worker was told to stop, it ends cancelled", Exit::Ok),
        "unheard" => (
            "running; marked cancelled (no worker heard the message: it ends cancelled when its run ends or its lease lapses)",
            Exit::Ok,
        ),
        "ended" => ("already ended; left as it is", Exit::NotDone),
        "missing" => {
            return Err(Failure::new(
                Exit::NotFound,
                format!("task `{id}` not found in queue `{queue}`"),
            ))
        }
        other => {
            return Err(Failure::new(
                Exit::Failure,
                format!("cancel answered {other:?}"),
            ))
        }
    };
    if ctx.json {
        ctx.print_json(&json!({ "queue": queue, "id": id, "outcome": outcome }))?;
    } else {
        ctx.print(&format!("task `{id}`: {text}\n"))?;
    }
    Ok(exit)
}

pub fn delete(ctx: &Ctx, queue: &str, id: &str, confirm: &Confirm) -> Outcome {
    let q = ctx.swarm.queue(queue)?;
    ctx.confirm(confirm, &format!("delete task `{id}` of queue `{queue}`"))?;
    if !q.delete(id)? {
        return Err(Failure::new(
            Exit::NotFound,
            format!("task `{id}` not found in queue `{queue}`"),
        ));
    }
    if ctx.json {
        ctx.print_json(&json!({ "queue": queue, "id": id, "outcome": "deleted" }))?;
    } else {
        ctx.print(&format!("task `{id}`: deleted\n"))?;
    }
    Ok(Exit::Ok)
}

pub fn purge(ctx: &Ctx, queue: &str, ended: bool, failed: bool, confirm: &Confirm) -> Outcome {
    let q = ctx.swarm.queue(queue)?;
    let mut sets = Vec::new();
    if ended {
        sets.push((PurgeSet::Ended, "ended"));
    }
    if failed {
        sets.push((PurgeSet::Failed, "failed"));
    }
    let what = sets
        .iter()
        .map(|(_, w)| *w)
        .collect::<Vec<_>>()
        .join(" and ");
    ctx.confirm(
        confirm,
        &format!("delete the {what} tasks of queue `{queue}`"),
    )?;
    let mut report = serde_json::Map::new();
    let mut out = String::new();
    for (set, word) in sets {
        let n = admin::purge(&q, set)?;
        report.insert(word.to_string(), json!(n));
        out.push_str(&format!(
            "deleted {} of queue `{queue}`\n",
            tasks(n, &format!("{word} task"))
        ));
    }
    if ctx.json {
        report.insert("queue".into(), json!(queue));
        ctx.print_json(&report)?;
    } else {
        ctx.print(&out)?;
    }
    Ok(Exit::Ok)
}

/// `n` and `what`, plural unless `n` is 1: `1 failed task`, `3 failed tasks`.
fn tasks(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
