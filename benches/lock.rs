//! Lock and semaphore costs, next to the raw redis-rs baseline
//! (`SET NX PX` + `DEL`) on the same server.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

fn benches(c: &mut Criterion) {
    let redis = support::BenchRedis::start();
    let swarm = redis.connect("bench-lock");
    let mut g = c.benchmark_group("lock");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    g.bench_function("baseline: raw SET NX PX + DEL", |b| {
        b.iter(|| {
            let ok: Option<String> = redis::cmd("SET")
                .arg("raw-lock")
                .arg("token")
                .arg("NX")
                .arg("PX")
                .arg(10_000)
                .query(&mut raw)
                .unwrap();
            black_box(ok);
            let _: i64 = redis::cmd("DEL").arg("raw-lock").query(&mut raw).unwrap();
        })
    });

    g.bench_function("try_lock + release (uncontended)", |b| {
        b.iter(|| {
            let guard = swarm
                .try_lock("uncontended", Duration::from_secs(10))
                .unwrap()
                .unwrap();
            black_box(guard.fencing_token());
            guard.release().unwrap();
        })
    });

    let other = redis.connect("bench-lock");
    g.bench_function("hand-off latency: release -> waiter acquires", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let held = swarm
                    .try_lock("handoff", Duration::from_secs(10))
                    .unwrap()
                    .unwrap();
                let waiter_swarm = other.clone();
                let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
                let waiter = std::thread::spawn(move || {
                    let _ = ready_tx.send(());
                    let g = waiter_swarm
                        .lock("handoff", Duration::from_secs(10), Duration::from_secs(10))
                        .unwrap();
                    let at = Instant::now();
                    g.release().unwrap();
                    at
                });
                ready_rx.recv().unwrap();
                // Let the waiter subscribe and block.
                std::thread::sleep(Duration::from_millis(5));
                let released = Instant::now();
                held.release().unwrap();
                let acquired = waiter.join().unwrap();
                total += acquired.saturating_duration_since(released);
            }
            total
        })
    });

    let sem = swarm
        .semaphore("bench", 4)
        .unwrap()
        .ttl(Duration::from_secs(10));
    g.bench_function("semaphore try_acquire + release", |b| {
        b.iter(|| {
            let p = sem.try_acquire().unwrap().unwrap();
            black_box(p.fencing_token());
            p.release().unwrap();
        })
    });
    g.finish();
}

criterion_group!(lock_benches, benches);
criterion_main!(lock_benches);
