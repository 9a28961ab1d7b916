#!/usr/bin/env bash
# Side-by-side peer benchmarks: BullMQ, bee-queue and redlock (Node.js)
# measured the way `examples/loadgen.rs` measures redswarm.
#
#   REDIS_URL=redis://127.0.0.1:6379/ benches/peers/run.sh
#       every scenario, $ROUNDS rounds (default 3), medians as a markdown table
#   REDIS_URL=... benches/peers/run.sh --one queue.js|lock.js [ARGS...]
#       one round of one script; prints its one line of JSON (loadgen --peers)
#
# Knobs: ROUNDS (3), COUNT (20000 jobs per `tasks` round, as loadgen),
# ROUND_SECONDS (3: enqueue-one and the lock), LOCK_CLIENTS (8). Installs
# the pinned packages with `npm ci` when node_modules is missing or older
# than package-lock.json.
# Writes to the server at REDIS_URL (queues and a lock key of its own, deleted
# afterwards); use a throwaway server.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${REDIS_URL:-}" ]; then
  echo "run.sh: REDIS_URL is required (e.g. redis://127.0.0.1:6379/; use a throwaway server)" >&2
  exit 2
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "run.sh: node and npm are required (Node.js 20 or later)" >&2
  exit 2
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "run.sh: installing the pinned packages (npm ci)" >&2
  # stdout stays for results: loadgen reads the JSON line from it.
  npm ci --no-audit --no-fund >&2
fi

if [ "${1:-}" = "--one" ]; then
  shift
  case "${1:-}" in
    queue.js | lock.js) exec node "$@" ;;
    *)
      echo "run.sh: --one takes queue.js or lock.js, then its arguments" >&2
      exit 2
      ;;
  esac
fi
if [ $# -gt 0 ]; then
  echo "usage: REDIS_URL=... $0 [--one queue.js|lock.js ARGS...]" >&2
  exit 2
fi

ROUNDS="${ROUNDS:-3}"
COUNT="${COUNT:-20000}"
ROUND_SECONDS="${ROUND_SECONDS:-3}"
LOCK_CLIENTS="${LOCK_CLIENTS:-8}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT

# measure LABEL SCRIPT ARGS...: $ROUNDS rounds, each result line tagged with LABEL.
measure() {
  local label="$1"
  shift
  for round in $(seq 1 "$ROUNDS"); do
    echo "run.sh: $label, round $round of $ROUNDS" >&2
    line="$(node "$@")"
    printf '%s\t%s\n' "$label" "$line" >>"$results"
  done
}

for lib in bullmq bee; do
  for c in 1 8 32; do
    measure "$lib: $COUNT no-op jobs, 1 worker process, concurrency $c (jobs/s)" \
      queue.js --lib "$lib" --scenario tasks --concurrency "$c" --count "$COUNT"
  done
done
measure "bullmq: addBulk, batches of 1,000 (jobs/s)" queue.js --lib bullmq --scenario enqueue-batch
measure "bee: saveAll, batches of 1,000 (jobs/s)" queue.js --lib bee --scenario enqueue-batch
measure "bullmq: add one by one (jobs/s)" \
  queue.js --lib bullmq --scenario enqueue-one --seconds "$ROUND_SECONDS"
measure "bee: createJob().save() one by one (jobs/s)" \
  queue.js --lib bee --scenario enqueue-one --seconds "$ROUND_SECONDS"
measure "redlock: $LOCK_CLIENTS clients contend for one lock (cycles/s)" \
  lock.js --clients "$LOCK_CLIENTS" --seconds "$ROUND_SECONDS"

node - "$results" "$ROUNDS" <<'EOF'
// Medians per label, in the order measured.
const fs = require('fs');
const [file, rounds] = process.argv.slice(2);
const rows = new Map();
for (const line of fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
  const tab = line.indexOf('\t');
  const label = line.slice(0, tab);
  if (!rows.has(label)) rows.set(label, []);
  rows.get(label).push(JSON.parse(line.slice(tab + 1)));
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const fmt = (v) => (v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(v >= 1 ? 2 : 3));
const version = (p) => JSON.parse(fs.readFileSync(`node_modules/${p}/package.json`, 'utf8')).version;
const versions = ['bullmq', 'bee-queue', 'redlock', 'ioredis'].map((p) => `${p} ${version(p)}`);
console.log(`\npeers, median of ${rounds} rounds (node ${process.version}; ${versions.join(', ')})\n`);
console.log('| peer scenario | median | spread (min – max) | notes |');
console.log('|---|---:|---:|---|');
for (const [label, rs] of rows) {
  const rates = rs.map((r) => r.rate);
  const spread = `${fmt(Math.min(...rates))} – ${fmt(Math.max(...rates))}`;
  let notes = '';
  if (rs[0].redis_cpu_us_per_task !== undefined) {
    notes = `Redis CPU ${fmt(median(rs.map((r) => r.redis_cpu_us_per_task)))} µs/job`;
  } else if (rs[0].handoff_p50_ms !== undefined) {
    const p = (k) => fmt(median(rs.map((r) => r[k])));
    const stalls = rs.reduce((a, r) => a + r.stalls_over_50ms, 0);
    const least = Math.min(...rs.map((r) => r.cycles_per_client_min));
    const most = Math.max(...rs.map((r) => r.cycles_per_client_max));
    notes =
      `hand-off p50 ${p('handoff_p50_ms')} ms, p99 ${p('handoff_p99_ms')} ms, ` +
      `stalls > 50 ms: ${stalls}; cycles per client per round ${least} – ${most}`;
  }
  console.log(`| ${label} | ${fmt(median(rates))} | ${spread} | ${notes} |`);
}
EOF
