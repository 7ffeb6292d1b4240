#!/usr/bin/env bash
# jobmesh vs two Celery set-ups on this machine, in one run: RUNS rounds, each
# running the same workload through `jobmesh bench`, the durable Celery (RabbitMQ
# with confirms, PostgreSQL results, acks_late, prefork 16) and the Celery most
# users run (Redis broker and results, Celery's defaults, prefork = cores), then
# the median of each figure and jobmesh's ratio to each peer.
#
#   tests/bench/compare.sh [RUNS=3] [JOBS=5000] [CONCURRENCY=64] [ROUND_TRIPS=100]
#   STEPS=10 tests/bench/compare.sh …   # the progress workload: 10 progress updates per job
#                                        # (jobmesh: demo.sleep, every job watched, watch lag;
#                                        # Celery: 10 update_state calls per task)
#
# Needs PostgreSQL, NATS (JetStream) and RabbitMQ running locally; uses the Redis
# on 127.0.0.1:6379 when it answers and starts its own (port 6390, no
# persistence) otherwise. Builds jobmesh in release mode and installs Celery into
# a virtualenv ($CELERY_VENV, default ~/.cache/jobmesh/celery-venv) on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3} JOBS=${2:-5000} CONCURRENCY=${3:-64} ROUND_TRIPS=${4:-100}
WORKER_SLOTS=16
CORES=$(nproc)
STEPS=${STEPS:-0}
JOBMESH_WORKLOAD=() CELERY_WORKLOAD=()
if [ "$STEPS" -gt 0 ]; then
    JOBMESH_WORKLOAD=(--task demo.sleep --args "{\"seconds\": 0, \"steps\": $STEPS}" --watch)
    CELERY_WORKLOAD=(--steps "$STEPS")
fi
VENV=${CELERY_VENV:-$HOME/.cache/jobmesh/celery-venv}
OUT=$(mktemp -d)

cargo build --release --locked -p jobmesh-cli >&2
JOBMESH=${CARGO_TARGET_DIR:-target}/release/jobmesh
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r tests/bench/requirements.txt
fi

export JOBMESH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/jobmesh_compare
psql -h 127.0.0.1 -U postgres -qc 'DROP DATABASE IF EXISTS jobmesh_compare WITH (FORCE)' postgres
"$JOBMESH" dev --listen 127.0.0.1:59051 --job-store-listen 127.0.0.1:59052 \
    --dispatcher-listen 127.0.0.1:59053 --nats-prefix "compare_$$" \
    --worker-slots "$WORKER_SLOTS" >"$OUT/dev.log" 2>&1 &
DEV=$!
REDIS_PID=
trap 'kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null || true; [ -z "$REDIS_PID" ] || kill $REDIS_PID 2>/dev/null || true' EXIT
REDIS_URL=redis://127.0.0.1:6379/5
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    REDIS_URL=redis://127.0.0.1:6390/5
    for _ in $(seq 1 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
for _ in $(seq 1 60); do "$JOBMESH" tasks --gateway http://127.0.0.1:59051 >/dev/null 2>&1 && break; sleep 1; done

for run in $(seq 1 "$RUNS"); do
    echo "round $run/$RUNS: jobmesh" >&2
    "$JOBMESH" bench --gateway http://127.0.0.1:59051 --jobs "$JOBS" --concurrency "$CONCURRENCY" \
        --round-trips "$ROUND_TRIPS" --json ${JOBMESH_WORKLOAD[@]+"${JOBMESH_WORKLOAD[@]}"} >>"$OUT/jobmesh.jsonl"
    echo "round $run/$RUNS: celery (durable)" >&2
    "$VENV/bin/python" tests/bench/celery_peer.py --jobs "$JOBS" --concurrency "$CONCURRENCY" \
        --round-trips "$ROUND_TRIPS" --worker-concurrency "$WORKER_SLOTS" --json \
        ${CELERY_WORKLOAD[@]+"${CELERY_WORKLOAD[@]}"} >>"$OUT/celery.jsonl"
    echo "round $run/$RUNS: celery (redis)" >&2
    "$VENV/bin/python" tests/bench/celery_peer.py --profile redis --broker "$REDIS_URL" \
        --jobs "$JOBS" --concurrency "$CONCURRENCY" --round-trips "$ROUND_TRIPS" \
        --worker-concurrency "$CORES" --worker-loglevel WARNING --json \
        ${CELERY_WORKLOAD[@]+"${CELERY_WORKLOAD[@]}"} >>"$OUT/celery_redis.jsonl"
done

python3 - "$OUT" "$RUNS" "$JOBS" "$CONCURRENCY" "$ROUND_TRIPS" "$WORKER_SLOTS" "$CORES" <<'PY'
import json, statistics, sys
out, runs, jobs, conc, rts, slots, cores = sys.argv[1:]
load = lambda name: [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
names = ("jobmesh", "celery", "celery_redis")
systems = {name: load(name) for name in names}
# (label, key, format, higher is better)
rows = [
    ("submit rate (jobs/s)", "submit_per_second", "{:.0f}", True),
    ("end-to-end (jobs/s)", "e2e_jobs_per_second", "{:.0f}", True),
    ("submit → finished p50 (ms)", "latency_p50_ms", "{:.0f}", False),
    ("submit → finished p99 (ms)", "latency_p99_ms", "{:.0f}", False),
    ("round trip p50 (ms)", "round_trip_p50_ms", "{:.1f}", False),
    ("round trip p99 (ms)", "round_trip_p99_ms", "{:.1f}", False),
    ("watch lag p50 (ms, jobmesh only)", "watch_lag_p50_ms", "{:.1f}", False),
    ("watch lag p99 (ms, jobmesh only)", "watch_lag_p99_ms", "{:.1f}", False),
]
def median(name, key):
    values = [r[key] for r in systems[name] if r.get(key) is not None]
    return statistics.median(values) if values else None
def ratio(ours, theirs, higher):
    if ours is None or theirs is None or ours == 0 or theirs == 0:
        return "n/a"
    return f"{(ours / theirs) if higher else (theirs / ours):.1f}×"
workload = systems["jobmesh"][0].get("task", "?") if systems["jobmesh"] else "?"
print(f"median of {runs} runs; {jobs} jobs ({workload}), {conc} in flight, {rts} round trips")
print(f"| figure | jobmesh ({slots} slots) | Celery durable (RabbitMQ + PostgreSQL, prefork {slots}) "
      f"| Celery + Redis (prefork {cores}) | jobmesh vs durable | jobmesh vs Redis |")
print("|---|---|---|---|---|---|")
for label, key, fmt, higher in rows:
    values = [median(name, key) for name in names]
    cells = [fmt.format(v) if v is not None else "n/a" for v in values]
    print(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} "
          f"| {ratio(values[0], values[1], higher)} | {ratio(values[0], values[2], higher)} |")
print("(ratios: how many times better jobmesh is; above 1 is better)")
PY
