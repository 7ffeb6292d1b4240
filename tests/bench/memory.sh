#!/usr/bin/env bash
# The whole mesh's resident memory (gateway, job-store, dispatcher and a worker
# in one `jobmesh dev` process): idle, at its peak during a burst of jobs, and
# with WATCHES watches open. RUNS rounds, each on a fresh `jobmesh dev` (release
# build) with its own database; prints the median of each figure.
#
#   tests/bench/memory.sh [RUNS=3] [JOBS=5000] [CONCURRENCY=64] [WATCHES=10000]
#
# Needs PostgreSQL and NATS (JetStream) running locally.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3} JOBS=${2:-5000} CONCURRENCY=${3:-64} WATCHES=${4:-10000}
BIN=${JOBMESH_BIN:-target/release/jobmesh}
[ -n "${JOBMESH_BIN:-}" ] || cargo build --release --locked -q -p jobmesh-cli
OUT=$(mktemp -d)
DEV=
trap '[ -z "$DEV" ] || { kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null || true; }' EXIT
GATEWAY=http://127.0.0.1:27151
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

for run in $(seq 1 "$RUNS"); do
    echo "round $run/$RUNS" >&2
    db=jobmesh_memory
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
    JOBMESH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db "$BIN" dev \
        --listen 127.0.0.1:27151 --job-store-listen 127.0.0.1:27152 \
        --dispatcher-listen 127.0.0.1:27153 --metrics-listen 127.0.0.1:27154 \
        --nats-prefix "memory_$$_$run" --max-streams $((WATCHES + 1024)) \
        >"$OUT/dev-$run.log" 2>&1 &
    DEV=$!
    for _ in $(seq 1 60); do "$BIN" tasks --gateway $GATEWAY >/dev/null 2>&1 && break; sleep 1; done
    sleep 3
    idle=$(kib $DEV VmRSS)
    "$BIN" bench --gateway $GATEWAY --jobs "$JOBS" --concurrency "$CONCURRENCY" --round-trips 0 \
        --json >"$OUT/burst-$run.json"
    peak=$(kib $DEV VmHWM)
    after=$(kib $DEV VmRSS)
    "$BIN" bench --gateway $GATEWAY --hold-watches "$WATCHES" --watch-pid $DEV --json \
        >"$OUT/watches-$run.json"
    echo "{\"idle_kib\": $idle, \"burst_peak_kib\": $peak, \"after_burst_kib\": $after}" >"$OUT/rss-$run.json"
    kill -INT $DEV; wait $DEV 2>/dev/null || true; DEV=
done

python3 - "$OUT" "$RUNS" "$JOBS" "$CONCURRENCY" "$WATCHES" <<'PY'
import json, statistics, sys
out, runs, jobs, conc, watches = sys.argv[1:]
runs = int(runs)
rss = [json.load(open(f"{out}/rss-{r}.json")) for r in range(1, runs + 1)]
held = [json.load(open(f"{out}/watches-{r}.json")) for r in range(1, runs + 1)]
med = lambda v: statistics.median(v)
each = lambda v: " / ".join(f"{x:.0f}" for x in v)
rows = [
    ("idle (MiB)", [r["idle_kib"] / 1024 for r in rss], "≤ 50"),
    (f"peak during {jobs} jobs, {conc} in flight (MiB)", [r["burst_peak_kib"] / 1024 for r in rss], "≤ 100"),
    (f"with {watches} watches open (MiB)", [h["rss_with_watches_mib"] for h in held], "≤ 300"),
    ("per watch (KiB)", [h["kib_per_watch"] for h in held], ""),
]
print(f"median of {runs} rounds, each on a fresh `jobmesh dev`")
print("| figure | median | target | rounds |")
print("|---|---|---|---|")
for label, values, target in rows:
    print(f"| {label} | {med(values):.1f} | {target} | {each(values)} |")
PY
