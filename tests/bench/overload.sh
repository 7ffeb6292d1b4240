#!/usr/bin/env bash
# Overload of the gateway: 10× more submitters than its in-flight cap, for a
# while, RUNS times. Reports per run what `jobmesh bench --overload-seconds`
# measures (accepted/refused per second, latency of each answer, timeouts) and the
# mesh process's peak resident memory, then the medians.
#
#   tests/bench/overload.sh [RUNS=3] [CAP=64] [SECONDS=15]
#
# Needs PostgreSQL and NATS as for `jobmesh dev`; builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
CAP=${2:-64}
SECONDS_PER_RUN=${3:-15}
SUBMITTERS=$((CAP * 10))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p jobmesh-cli >/dev/null
JOBMESH="$CARGO_TARGET_DIR/release/jobmesh"
WORK=$(mktemp -d)
export JOBMESH_DEV_KEY_FILE="$WORK/dev.key"
export JOBMESH_GATEWAY_URL=http://127.0.0.1:59051
results=()
for run in $(seq 1 "$RUNS"); do
    db="jobmesh_overload_$run"
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
    "$JOBMESH" dev --listen 127.0.0.1:59051 --job-store-listen 127.0.0.1:59052 \
        --dispatcher-listen 127.0.0.1:59053 --nats-prefix "overload_$$_$run" \
        --database-url "postgres://postgres@127.0.0.1:5432/$db" \
        --max-inflight "$CAP" >"$WORK/dev-$run.log" 2>&1 &
    dev=$!
    for _ in $(seq 1 60); do "$JOBMESH" tasks >/dev/null 2>&1 && break; sleep 0.5; done
    rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$dev/status")
    peak=$rss_before
    ( while kill -0 "$dev" 2>/dev/null; do
          awk '/VmRSS/ {print $2}' "/proc/$dev/status" 2>/dev/null
          sleep 0.5
      done ) >"$WORK/rss-$run" &
    sampler=$!
    figures=$("$JOBMESH" bench --overload-seconds "$SECONDS_PER_RUN" \
        --concurrency "$SUBMITTERS" --json)
    kill "$sampler" 2>/dev/null || true
    peak=$(sort -n "$WORK/rss-$run" | tail -1)
    kill -INT "$dev"; wait "$dev" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
    line=$(python3 -c 'import json,sys; f=json.loads(sys.argv[1]); f["rss_idle_mib"]=int(sys.argv[2])/1024; f["rss_peak_mib"]=int(sys.argv[3])/1024; print(json.dumps(f))' "$figures" "$rss_before" "$peak")
    echo "run $run: $line"
    results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
keys = ["accepted_per_second", "refused_per_second", "accepted_p50_ms", "accepted_p99_ms",
        "refused_p50_ms", "refused_p99_ms", "timeouts", "other_errors", "rss_idle_mib", "rss_peak_mib"]
print("median of %d runs, %d submitters against an in-flight cap of '"$CAP"':" % (len(runs), runs[0]["concurrency"]))
for k in keys:
    print("  %-22s %10.1f" % (k, statistics.median(r[k] for r in runs)))
'
rm -rf "$WORK"
