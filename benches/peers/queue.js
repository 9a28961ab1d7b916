#!/usr/bin/env node
// One round of a queue scenario with BullMQ or bee-queue, mirroring
// redswarm's `examples/loadgen.rs` (`fn tasks`, `fn enqueue`) so the figures
// stand next to redswarm's in one table. Prints ONE line of JSON:
//   {"lib":"bullmq","scenario":"tasks","concurrency":8,"count":20000,"rate":1234.5,...}
//
//   REDIS_URL=redis://127.0.0.1:6379/ node queue.js \
//     --lib bullmq|bee --scenario tasks|enqueue-batch|enqueue-one \
//     [--concurrency N] [--count N] [--seconds S]
//
// tasks:         pre-fill --count no-op jobs in batches of 1,000, then time
//                from the worker's creation until no job is waiting, active
//                or delayed (counts polled every 5 ms, as loadgen does); one
//                worker in this process with --concurrency.
// enqueue-batch: batches of 1,000 (BullMQ addBulk, bee-queue saveAll) for
//                1 s, as loadgen's push_many round.
// enqueue-one:   one job at a time, each awaited, for --seconds (default 3).
// Both enqueue scenarios first make one untimed call, which loads the
// libraries' Lua scripts and warms the JIT; the tasks pre-fill does that for
// the producer side of `tasks`.
//
// Every run uses a queue name of its own and deletes that queue's keys when
// done; it never flushes the database.
'use strict';

const IORedis = require('ioredis');
const { checkReachable, run } = require('./common');

const USAGE =
  'usage: node queue.js --lib bullmq|bee --scenario tasks|enqueue-batch|enqueue-one ' +
  '[--concurrency N] [--count N] [--seconds S]   (REDIS_URL required)';
const BATCH = 1000;
// redswarm's default retention of ended tasks (src/swarm/queue.rs,
// `keep_ended` / `keep_ended_for`): at most 10,000, none older than 24 h.
const KEEP_COMPLETED = { count: 10000, age: 24 * 3600 };

function parseArgs(argv) {
  const o = { concurrency: 1, count: 20000, seconds: 3 };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    const known = ['lib', 'scenario', 'concurrency', 'count', 'seconds'];
    if (!name.startsWith('--') || !known.includes(name.slice(2)) || value === undefined) {
      throw new Error(`bad argument ${JSON.stringify(name)}\n${USAGE}`);
    }
    o[name.slice(2)] = value;
  }
  for (const k of ['concurrency', 'count', 'seconds']) {
    o[k] = Number(o[k]);
    if (!(o[k] > 0)) throw new Error(`--${k} must be a positive number\n${USAGE}`);
  }
  for (const k of ['concurrency', 'count']) {
    if (!Number.isInteger(o[k])) throw new Error(`--${k} must be a whole number\n${USAGE}`);
  }
  if (!['bullmq', 'bee'].includes(o.lib)) throw new Error(`--lib bullmq|bee\n${USAGE}`);
  if (!['tasks', 'enqueue-batch', 'enqueue-one'].includes(o.scenario)) {
    throw new Error(`--scenario tasks|enqueue-batch|enqueue-one\n${USAGE}`);
  }
  o.url = process.env.REDIS_URL;
  if (!o.url) throw new Error(`REDIS_URL is not set\n${USAGE}`);
  return o;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Redis CPU seconds (user + sys) so far, as loadgen's `redis_cpu`.
async function redisCpu(conn) {
  const info = await conn.info('cpu');
  let sum = 0;
  for (const line of info.split('\n')) {
    const m = /^used_cpu_(sys|user):([\d.]+)/.exec(line.trim());
    if (m) sum += Number(m[2]);
  }
  return sum;
}

function batches(count) {
  const out = [];
  for (let i = 0; i < count; i += BATCH) {
    out.push(Array.from({ length: Math.min(BATCH, count - i) }, (_, k) => ({ n: i + k })));
  }
  return out;
}

// Both libraries behind the same four operations.
function bullmq(o, name) {
  const { Queue, Worker } = require('bullmq');
  // BullMQ's documented connection settings: workers block, so
  // maxRetriesPerRequest must be null.
  const connection = new IORedis(o.url, { maxRetriesPerRequest: null });
  const queue = new Queue(name, {
    connection,
    defaultJobOptions: { removeOnComplete: KEEP_COMPLETED },
  });
  return {
    addBatch: (items) => queue.addBulk(items.map((data) => ({ name: 'noop', data }))),
    addOne: (data) => queue.add('noop', data),
    startWorker: (concurrency) => {
      const w = new Worker(name, async () => null, { connection, concurrency });
      return () => w.close();
    },
    pending: async () => {
      const c = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
      return Object.values(c).reduce((a, b) => a + b, 0);
    },
    cleanup: async () => {
      await queue.obliterate({ force: true });
      await queue.close();
      connection.disconnect();
    },
  };
}

function bee(o, name) {
  const BeeQueue = require('bee-queue');
  // The producer neither works nor listens (bee-queue's advice for queues
  // that only create jobs); the worker keeps its defaults except events it
  // would only send to itself. removeOnSuccess stays false: finished jobs are
  // kept, as redswarm keeps ended tasks (bee-queue has no count-bounded
  // retention, so it keeps all of them).
  const producer = new BeeQueue(name, { redis: { url: o.url }, isWorker: false, getEvents: false });
  let worker = null;
  return {
    addBatch: (items) => producer.saveAll(items.map((data) => producer.createJob(data))),
    addOne: (data) => producer.createJob(data).save(),
    startWorker: (concurrency) => {
      worker = new BeeQueue(name, {
        redis: { url: o.url },
        getEvents: false,
        removeOnSuccess: false,
      });
      worker.process(concurrency, async () => null);
      return () => worker.close();
    },
    pending: async () => {
      const h = await producer.checkHealth();
      return h.waiting + h.active + h.delayed;
    },
    cleanup: async () => {
      await producer.destroy();
      await producer.close();
    },
  };
}

async function tasks(o, q, stats) {
  for (const items of batches(o.count)) await q.addBatch(items);
  const cpu0 = await redisCpu(stats);
  const started = process.hrtime.bigint();
  const stop = q.startWorker(o.concurrency);
  while ((await q.pending()) > 0) await sleep(5);
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  await stop();
  const cpu = (await redisCpu(stats)) - cpu0;
  return { rate: o.count / secs, redis_cpu_us_per_task: (cpu / o.count) * 1e6 };
}

async function enqueueFor(seconds, add) {
  await add();
  const started = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;
  let n = 0;
  while (elapsed() < seconds) n += await add();
  return { rate: n / elapsed() };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  await checkReachable(o.url);
  const name = `peers-${o.lib}-${o.scenario}-${process.pid}-${Date.now()}`;
  const q = o.lib === 'bullmq' ? bullmq(o, name) : bee(o, name);
  const stats = new IORedis(o.url);
  let result;
  try {
    if (o.scenario === 'tasks') {
      result = await tasks(o, q, stats);
    } else if (o.scenario === 'enqueue-batch') {
      const [items] = batches(BATCH);
      result = await enqueueFor(1, async () => (await q.addBatch(items), items.length));
    } else {
      result = await enqueueFor(o.seconds, async () => (await q.addOne({ n: 1 }), 1));
    }
  } finally {
    await q.cleanup();
    stats.disconnect();
  }
  const out = { lib: o.lib, scenario: o.scenario, ...result };
  if (o.scenario === 'tasks') Object.assign(out, { concurrency: o.concurrency, count: o.count });
  console.log(JSON.stringify(out));
}

run('queue.js', main);
