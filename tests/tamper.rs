//! Tampered Redis contents under a running swarm, at random from a printed
//! seed (`REDSWARM_CHAOS_SEED` replays it): a task record's field gets a bad
//! value, or a queue-level key is replaced by a value of the wrong type for
//! a while. The worker must never panic, never spin, never lose a good task,
//! and end a task whose own record is unusable in the failed set with
//! `FailedBy::CorruptData` naming its key.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redswarm::{
    Config, FailedBy, Queue, Redswarm, SwarmWorker, TaskOptions, TaskOutcome, TaskState,
    WorkerOptions,
};
use serde_json::json;
use support::RedisServer;

const SEC: Duration = Duration::from_secs(1);

/// xorshift64*: a seed replays the schedule.
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
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn connect(server: &RedisServer) -> Redswarm {
    Redswarm::connect(
        Config::builder()
            .url(server.url())
            .namespace("tamper")
            .heartbeat_interval(Duration::from_millis(200))
            .command_timeout(Duration::from_millis(200))
            .node_ttl(SEC)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn cmd(server: &RedisServer, args: &[&str]) {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    let _: redis::Value = c.query(&mut server.conn()).unwrap();
}

/// EVALSHA + EVAL calls Redis has served so far.
fn script_calls(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

fn wait_ended(q: &Queue, ids: &[String], within: Duration) -> bool {
    support::wait_until(within, || {
        ids.iter()
            .all(|id| matches!(q.get(id), Ok(Some(t)) if t.state.is_end()))
    })
}

/// Bad values for the fields the scripts read from a task record.
const FIELDS: [&str; 8] = [
    "attempts",
    "max_attempts",
    "fence",
    "timeout_ms",
    "backoff_ms",
    "state",
    "data",
    "pscore",
];
const VALUES: [Option<&str>; 7] = [
    None,
    Some("x"),
    Some("-1"),
    Some("1e999"),
    Some("99999999999999999999999"),
    Some(""),
    Some("{not json"),
];
/// Queue-level keys and a wrong-typed stand-in.
const QUEUE_KEYS: [&str; 5] = ["ready", "delayed", "running", "ended", "failed"];

#[test]
fn tampered_keys_under_a_running_swarm_lose_no_good_task() {
    let seed: u64 = std::env::var("REDSWARM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1);
    eprintln!("tamper: seed {seed} (replay with REDSWARM_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let server = RedisServer::start();
    let swarm = connect(&server);
    for round in 0..8 {
        let q = swarm.queue(&format!("q{round}")).unwrap();
        let keys = q.keys().clone();
        let good: Vec<String> = (0..12)
            .map(|i| {
                q.push_with(&json!({ "n": i }), &TaskOptions::new().max_attempts(2))
                    .unwrap()
            })
            .collect();
        // One more task whose own record gets a bad field before any worker
        // sees it.
        let victim = q
            .push_with(
                &json!({ "victim": true }),
                &TaskOptions::new().max_attempts(2),
            )
            .unwrap();
        let field = *rng.pick(&FIELDS);
        let value = *rng.pick(&VALUES);
        let task_key = keys.task(&victim);
        match value {
            Some(v) => cmd(&server, &["HSET", &task_key, field, v]),
            None => cmd(&server, &["HDEL", &task_key, field]),
        }
        // And, half the time, a queue-level key of the wrong type for a
        // while (its content kept aside and put back).
        let broken = (rng.next() % 2 == 0).then(|| *rng.pick(&QUEUE_KEYS));
        let broken_key = broken.map(|k| match k {
            "ready" => keys.ready.clone(),
            "delayed" => keys.delayed.clone(),
            "running" => keys.running.clone(),
            "ended" => keys.ended.clone(),
            _ => keys.failed.clone(),
        });
        if let Some(k) = &broken_key {
            let _: redis::RedisResult<()> = redis::cmd("RENAME")
                .arg(k)
                .arg("tamper:aside")
                .query(&mut server.conn());
            cmd(&server, &["SET", k, "not a zset"]);
        }
        let worker = SwarmWorker::start(
            &q,
            WorkerOptions::new()
                .threads(2)
                .lease(SEC)
                .reap_every(Duration::from_millis(300)),
            |ctx| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(json!(ctx.attempt()))
            },
        )
        .unwrap();
        if let Some(k) = &broken_key {
            std::thread::sleep(Duration::from_millis(700));
            // Put the real set back (RENAME fails if the set was empty and
            // so never existed: then just drop the stand-in).
            cmd(&server, &["DEL", k]);
            let _: redis::RedisResult<()> = redis::cmd("RENAME")
                .arg("tamper:aside")
                .arg(k)
                .query(&mut server.conn());
        }
        let what = format!(
            "round {round}: field `{field}` = {value:?}, broken queue key {broken:?} (seed {seed})"
        );
        assert!(
            wait_ended(&q, &good, 20 * SEC),
            "good tasks did not all end: {what}; counts {:?}",
            q.counts()
        );
        for id in &good {
            let t = q.get(id).unwrap().unwrap();
            assert_eq!(t.state, TaskState::End(TaskOutcome::Ok), "{id}: {what}");
        }
        // The victim ends: ok when the bad value was harmless for what the
        // scripts read, else failed as corrupt, naming its key.
        assert!(
            support::wait_until(20 * SEC, || {
                let raw: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(&keys.failed)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut server.conn())
                    .unwrap_or_default();
                raw.iter().any(|(id, _)| id == &victim)
                    || matches!(q.get(&victim), Ok(Some(t)) if t.state.is_end())
            }),
            "the tampered task never ended: {what}"
        );
        if let Ok(Some(t)) = q.get(&victim) {
            if t.state == TaskState::End(TaskOutcome::Failed) {
                assert_eq!(t.failed_by, Some(FailedBy::CorruptData), "{what}");
                let error = t.error.unwrap_or_default();
                assert!(error.contains(&task_key), "{what}: {error}");
            }
        } else {
            // Queue::get refuses a record it cannot read: the raw reason
            // must still name the key.
            let reason: Option<String> = redis::cmd("HGET")
                .arg(&task_key)
                .arg("error")
                .query(&mut server.conn())
                .unwrap();
            assert!(
                reason.as_deref().is_some_and(|r| r.contains(&task_key)),
                "{what}: {reason:?}"
            );
        }
        // Never spins: an idle worker makes next to no script calls.
        std::thread::sleep(Duration::from_millis(300));
        let before = script_calls(&server);
        let idle = Instant::now();
        std::thread::sleep(SEC);
        let calls = script_calls(&server) - before;
        // One heartbeat script per beat (200 ms) and the odd reap; a
        // spinning claim loop would make hundreds.
        assert!(
            calls <= 20,
            "{calls} script calls in {:?} of idle: {what}",
            idle.elapsed()
        );
        worker.shutdown();
    }
}
