//! Task swarm: latency of one task from push to its worker's report, and
//! throughput of 1,000 no-op tasks through one worker (4 threads), next to a
//! raw `LPUSH` + `RPOP` baseline on the same server.

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redswarm::{SwarmWorker, WorkerOptions};
use serde_json::Value;

fn benches(c: &mut Criterion) {
    let redis = support::BenchRedis::start();
    let swarm = redis.connect("bench-swarm");
    let mut g = c.benchmark_group("swarm");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));

    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    g.bench_function("baseline: raw LPUSH + RPOP", |b| {
        b.iter(|| {
            let _: i64 = redis::cmd("LPUSH")
                .arg("raw-q")
                .arg("task")
                .query(&mut raw)
                .unwrap();
            let _: Option<String> = redis::cmd("RPOP").arg("raw-q").query(&mut raw).unwrap();
        })
    });

    let queue = swarm.queue("latency").unwrap();
    let worker =
        SwarmWorker::start(&queue, WorkerOptions::new().threads(1), |_| Ok(Value::Null)).unwrap();
    let finished = worker.finished();
    g.bench_function("one task: push -> claimed -> completed -> reported", |b| {
        b.iter(|| {
            queue.push(&1).unwrap();
            finished.recv_timeout(Duration::from_secs(10)).unwrap();
        })
    });
    drop(worker);

    let queue = swarm.queue("throughput").unwrap();
    let worker =
        SwarmWorker::start(&queue, WorkerOptions::new().threads(4), |_| Ok(Value::Null)).unwrap();
    let finished = worker.finished();
    let items: Vec<u32> = (0..1000).collect();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1,000 no-op tasks through one worker (4 threads)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                queue.push_many(&items).unwrap();
                for _ in 0..items.len() {
                    finished.recv_timeout(Duration::from_secs(30)).unwrap();
                }
                total += started.elapsed();
            }
            total
        })
    });
    drop(worker);
    g.finish();
}

criterion_group!(swarm_benches, benches);
criterion_main!(swarm_benches);
