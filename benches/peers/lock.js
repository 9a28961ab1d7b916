#!/usr/bin/env node
// One round of the contended lock with the `redlock` package (v5, ioredis),
// mirroring `loadgen lock-contended` (examples/loadgen.rs): --clients
// clients, each with its own ioredis connection and its own Redlock, acquire
// and release ONE resource in a loop for --seconds, with --think-ms (default
// 0) between acquire and release. Prints ONE line of JSON:
//   {"lib":"redlock","scenario":"lock-contended","rate":1234.5,...}
// with cycles/s and the hand-off latency (a holder's release → the next
// holder's acquire returning; one process, so one clock).
//
//   REDIS_URL=redis://127.0.0.1:6379/ node lock.js [--clients 8] [--seconds 3] [--think-ms 0]
//
// Redlock settings (not handicapped): lock TTL 10 s as loadgen's; retries
// every 2 ms ± 1 ms (retryDelay 2, retryJitter 1) instead of the default
// 200 ± 100 ms; retryCount 15,000, so a waiter gives up after about 30 s, as
// loadgen's `lock(Duration::from_secs(30))` does.
'use strict';

const IORedis = require('ioredis');
const { checkReachable, run } = require('./common');
const { default: Redlock } = require('redlock');

const USAGE =
  'usage: node lock.js [--clients N] [--seconds S] [--think-ms MS]   (REDIS_URL required)';
const TTL_MS = 10000;
const SETTINGS = { retryCount: 15000, retryDelay: 2, retryJitter: 1 };

function parseArgs(argv) {
  const o = { clients: 8, seconds: 3, 'think-ms': 0 };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    if (!name.startsWith('--') || !(name.slice(2) in o) || value === undefined) {
      throw new Error(`bad argument ${JSON.stringify(name)}\n${USAGE}`);
    }
    o[name.slice(2)] = value;
  }
  for (const k of Object.keys(o)) {
    o[k] = Number(o[k]);
    if (!(o[k] >= 0) || (k !== 'think-ms' && o[k] === 0)) {
      throw new Error(`--${k} must be a ${k === 'think-ms' ? 'non-negative' : 'positive'} number`);
    }
  }
  if (!Number.isInteger(o.clients)) throw new Error(`--clients must be a whole number\n${USAGE}`);
  o.url = process.env.REDIS_URL;
  if (!o.url) throw new Error(`REDIS_URL is not set\n${USAGE}`);
  return o;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

async function main() {
  const o = parseArgs(process.argv.slice(2));
  await checkReachable(o.url);
  const resource = `peers-redlock-${process.pid}-${Date.now()}`;
  const conns = Array.from({ length: o.clients }, () => new IORedis(o.url));
  await Promise.all(conns.map((c) => c.ping()));
  let stop = false;
  let releasedAt = null;
  const handoffs = [];
  let failed = 0;
  let firstError = null;

  async function client(conn) {
    const redlock = new Redlock([conn], SETTINGS);
    let n = 0;
    while (!stop) {
      let lock;
      try {
        lock = await redlock.acquire([resource], TTL_MS);
      } catch (err) {
        failed += 1;
        firstError = firstError || err;
        continue;
      }
      if (releasedAt !== null) {
        handoffs.push(nowMs() - releasedAt);
        releasedAt = null;
      }
      if (o['think-ms'] > 0) await sleep(o['think-ms']);
      releasedAt = nowMs();
      try {
        await lock.release();
        n += 1;
      } catch (err) {
        failed += 1;
        firstError = firstError || err;
      }
    }
    return n;
  }

  const started = nowMs();
  const running = conns.map(client);
  await sleep(o.seconds * 1000);
  stop = true;
  // As loadgen's `rate`: cycles finished before every client stopped,
  // over the time until they all stopped.
  const perClient = await Promise.all(running);
  const cycles = perClient.reduce((a, b) => a + b, 0);
  const secs = (nowMs() - started) / 1000;
  for (const c of conns) c.disconnect();
  if (cycles === 0) throw new Error(`no lock cycle completed (${failed} failed): ${firstError}`);

  handoffs.sort((a, b) => a - b);
  const pct = (p) =>
    handoffs.length ? handoffs[Math.min(Math.floor(handoffs.length * p), handoffs.length - 1)] : 0;
  console.log(
    JSON.stringify({
      lib: 'redlock',
      scenario: 'lock-contended',
      rate: cycles / secs,
      clients: o.clients,
      seconds: o.seconds,
      think_ms: o['think-ms'],
      handoff_p50_ms: pct(0.5),
      handoff_p99_ms: pct(0.99),
      handoff_max_ms: handoffs.length ? handoffs[handoffs.length - 1] : 0,
      stalls_over_50ms: handoffs.filter((ms) => ms > 50).length,
      handoffs: handoffs.length,
      // redlock is unfair (waiters poll): how evenly the clients fared.
      cycles_per_client_min: Math.min(...perClient),
      cycles_per_client_max: Math.max(...perClient),
      failed,
    })
  );
}

run('lock.js', main);
