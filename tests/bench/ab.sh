#!/usr/bin/env bash
# A/B of two jobmesh builds on this machine: RUNS alternating rounds, each
# starting a fresh `jobmesh dev` of one build (its own database and NATS
# prefix) and running the same `jobmesh bench` against it, then the median of
# each figure per build. What a change bought is measured this way, in one run.
#
#   tests/bench/ab.sh A_BINARY B_BINARY [RUNS=3] [JOBS=5000] [CONCURRENCY=64] [ROUND_TRIPS=100] [BENCH_ARGS...]
#
# Needs PostgreSQL and NATS (JetStream) running locally.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1 B=$2
RUNS=${3:-3} JOBS=${4:-5000} CONCURRENCY=${5:-64} ROUND_TRIPS=${6:-100}
shift $(( $# < 6 ? $# : 6 ))
EXTRA=("$@")
OUT=$(mktemp -d)
DEV=
trap '[ -z "$DEV" ] || { kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null || true; }' EXIT

round() { # name binary
    local name=$1 bin=$2 db=jobmesh_ab_$1
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
    JOBMESH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db "$bin" dev \
        --listen 127.0.0.1:27151 --job-store-listen 127.0.0.1:27152 \
        --dispatcher-listen 127.0.0.1:27153 --nats-prefix "ab_${name}_$$_$RANDOM" \
        --worker-slots 16 >"$OUT/dev-$name.log" 2>&1 &
    DEV=$!
    for _ in $(seq 1 60); do "$bin" tasks --gateway http://127.0.0.1:27151 >/dev/null 2>&1 && break; sleep 1; done
    "$bin" bench --gateway http://127.0.0.1:27151 --jobs "$JOBS" --concurrency "$CONCURRENCY" \
        --round-trips "$ROUND_TRIPS" --json ${EXTRA[@]+"${EXTRA[@]}"} >>"$OUT/$name.jsonl"
    kill -INT $DEV; wait $DEV 2>/dev/null || true; DEV=
}

for run in $(seq 1 "$RUNS"); do
    echo "round $run/$RUNS: A" >&2; round a "$A"
    echo "round $run/$RUNS: B" >&2; round b "$B"
done

python3 - "$OUT" "$RUNS" "$JOBS" "$CONCURRENCY" <<'PY'
import json, statistics, sys
out, runs, jobs, conc = sys.argv[1:]
load = lambda name: [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
a, b = load("a"), load("b")
print(f"median of {runs} alternating rounds; {jobs} jobs, {conc} in flight")
print("| figure | A | B | rounds A | rounds B |")
print("|---|---|---|---|---|")
for label, key in [("submit rate (jobs/s)", "submit_per_second"), ("end-to-end (jobs/s)", "e2e_jobs_per_second"),
                   ("submit → finished p50 (ms)", "latency_p50_ms"), ("round trip p50 (ms)", "round_trip_p50_ms"),
                   ("round trip p99 (ms)", "round_trip_p99_ms"),
                   ("watch lag p50 (ms)", "watch_lag_p50_ms"), ("watch lag p99 (ms)", "watch_lag_p99_ms"),
                   ("watch updates seen", "watch_updates")]:
    va = [r[key] for r in a if r.get(key) is not None]
    vb = [r[key] for r in b if r.get(key) is not None]
    med = lambda v: f"{statistics.median(v):.1f}" if v else "n/a"
    each = lambda v: " / ".join(f"{x:.0f}" for x in v)
    print(f"| {label} | {med(va)} | {med(vb)} | {each(va)} | {each(vb)} |")
PY
