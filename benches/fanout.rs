//! Fan-out: latency from the leader's completion to the last of N waiters
//! holding the result (N = 1, 10, 100), waiters spread over two handles.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use redswarm::{Push, Waited};

fn benches(c: &mut Criterion) {
    let redis = support::BenchRedis::start();
    let handles = [redis.connect("bench-fanout"), redis.connect("bench-fanout")];
    let mut g = c.benchmark_group("fanout");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let mut round = 0u64;
    for n in [1usize, 10, 100] {
        g.bench_with_input(
            BenchmarkId::new("complete -> last waiter notified", n),
            &n,
            |b, &n| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        let id = format!("job-{round}");
                        let fanout = handles[0]
                            .fanout_options()
                            .result_ttl(Duration::from_millis(200));
                        let Push::Lead(completer) = fanout.push::<u64, String>(&id).unwrap() else {
                            panic!("first caller leads");
                        };
                        let ready = Arc::new(Barrier::new(n + 1));
                        let waiters: Vec<_> = (0..n)
                            .map(|i| {
                                let swarm = handles[i % 2].clone();
                                let (id, ready) = (id.clone(), ready.clone());
                                std::thread::spawn(move || {
                                    let push =
                                        swarm.fanout_options().push::<u64, String>(&id).unwrap();
                                    ready.wait();
                                    let Push::Wait(w) = push else {
                                        panic!("leader exists")
                                    };
                                    match w.wait(Duration::from_secs(10)).unwrap() {
                                        Waited::Done(r) => {
                                            assert_eq!(r.unwrap(), 42);
                                            Instant::now()
                                        }
                                        Waited::Promoted(_) => panic!("leader is alive"),
                                    }
                                })
                            })
                            .collect();
                        ready.wait();
                        std::thread::sleep(Duration::from_millis(2));
                        let completed = Instant::now();
                        completer.complete(Ok(42)).unwrap();
                        let last = waiters
                            .into_iter()
                            .map(|w| w.join().unwrap())
                            .max()
                            .unwrap_or(completed);
                        total += last.saturating_duration_since(completed);
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(fanout_benches, benches);
criterion_main!(fanout_benches);
