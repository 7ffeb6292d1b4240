#!/usr/bin/env bash
# jobmesh vs Celery (RabbitMQ + PostgreSQL result backend) on this machine, in one
# run: RUNS alternating rounds of `jobmesh bench` and `celery_peer.py` with the same
# workload, then the median of each figure.
#
#   tests/bench/compare.sh [RUNS=3] [JOBS=3000] [CONCURRENCY=32] [ROUND_TRIPS=100]
#
# Needs PostgreSQL, NATS (JetStream) and RabbitMQ running locally. Builds jobmesh in
# release mode and installs Celery into a virtualenv ($CELERY_VENV, default
# ~/.cache/jobmesh/celery-venv) on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3} JOBS=${2:-3000} CONCURRENCY=${3:-32} ROUND_TRIPS=${4:-100}
WORKER_SLOTS=16
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
trap 'kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do "$JOBMESH" tasks --gateway http://127.0.0.1:59051 >/dev/null 2>&1 && break; sleep 1; done

for run in $(seq 1 "$RUNS"); do
    echo "round $run/$RUNS: jobmesh" >&2
    "$JOBMESH" bench --gateway http://127.0.0.1:59051 --jobs "$JOBS" --concurrency "$CONCURRENCY" \
        --round-trips "$ROUND_TRIPS" --json >>"$OUT/jobmesh.jsonl"
    echo "round $run/$RUNS: celery" >&2
    "$VENV/bin/python" tests/bench/celery_peer.py --jobs "$JOBS" --concurrency "$CONCURRENCY" \
        --round-trips "$ROUND_TRIPS" --worker-concurrency "$WORKER_SLOTS" --json >>"$OUT/celery.jsonl"
done

python3 - "$OUT" "$RUNS" "$JOBS" "$CONCURRENCY" "$ROUND_TRIPS" "$WORKER_SLOTS" <<'PY'
import json, statistics, sys
out, runs, jobs, conc, rts, slots = sys.argv[1:]
load = lambda name: [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
systems = {"jobmesh": load("jobmesh"), "celery": load("celery")}
rows = [
    ("submit rate (jobs/s)", "submit_per_second", "{:.0f}"),
    ("end-to-end (jobs/s)", "e2e_jobs_per_second", "{:.0f}"),
    ("submit → finished p50 (ms)", "latency_p50_ms", "{:.0f}"),
    ("submit → finished p99 (ms)", "latency_p99_ms", "{:.0f}"),
    ("round trip p50 (ms)", "round_trip_p50_ms", "{:.1f}"),
    ("round trip p99 (ms)", "round_trip_p99_ms", "{:.1f}"),
]
print(f"median of {runs} runs; {jobs} no-op jobs, {conc} in flight, {rts} round trips, {slots} worker slots each")
print(f"| figure | jobmesh | celery (RabbitMQ + PostgreSQL results, prefork) |")
print(f"|---|---|---|")
for label, key, fmt in rows:
    cells = []
    for name in ("jobmesh", "celery"):
        values = [r[key] for r in systems[name] if r.get(key) is not None]
        cells.append(fmt.format(statistics.median(values)) if values else "n/a")
    print(f"| {label} | {cells[0]} | {cells[1]} |")
PY
