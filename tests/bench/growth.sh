#!/usr/bin/env bash
# Does a full table slow the job path? On a fresh `jobmesh dev` (release build,
# its own database): RUNS rounds of PROBES submits, GetJobs and first ListJobs
# pages one at a time on an empty table; then ROWS finished jobs of the same
# tenant are added (ids in creation order, as UUIDv7s are, the last two hours)
# and the table vacuumed and analysed, and the same rounds run again. Prints the
# medians and the ratio full / empty.
#
#   tests/bench/growth.sh [RUNS=3] [ROWS=1000000] [PROBES=300]
#
# Needs PostgreSQL and NATS (JetStream) running locally.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3} ROWS=${2:-1000000} PROBES=${3:-300}
BIN=${JOBMESH_BIN:-target/release/jobmesh}
[ -n "${JOBMESH_BIN:-}" ] || cargo build --release --locked -q -p jobmesh-cli
OUT=$(mktemp -d)
DEV=
trap '[ -z "$DEV" ] || { kill -INT $DEV 2>/dev/null; wait $DEV 2>/dev/null || true; }' EXIT
GATEWAY=http://127.0.0.1:27151
DB=jobmesh_growth
SQL() { psql -h 127.0.0.1 -U postgres -qAt "$@"; }

SQL -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" postgres
JOBMESH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB "$BIN" dev \
    --listen 127.0.0.1:27151 --job-store-listen 127.0.0.1:27152 \
    --dispatcher-listen 127.0.0.1:27153 --metrics-listen 127.0.0.1:27154 \
    --nats-prefix "growth_$$" >"$OUT/dev.log" 2>&1 &
DEV=$!
for _ in $(seq 1 60); do "$BIN" tasks --gateway $GATEWAY >/dev/null 2>&1 && break; sleep 1; done

probe() { # name
    for run in $(seq 1 "$RUNS"); do
        echo "$1: round $run/$RUNS" >&2
        "$BIN" bench --gateway $GATEWAY --latency "$PROBES" --json >>"$OUT/$1.jsonl"
    done
}
probe empty
echo "adding $ROWS finished jobs" >&2
start=$(date +%s)
SQL -d $DB <<SQL
INSERT INTO jobs (id, tenant, task, args, state, progress_percent, result, max_attempts,
    retry_initial_ms, retry_max_ms, retry_multiplier, retry_jitter, worker_id,
    create_time, start_time, finish_time, update_time, version)
SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
    'dev', 'demo.echo', '{"n": 1}', 'succeeded', 100, '{"echo": {"n": 1}}', 3,
    1000, 60000, 2, 0.2, 'growth', t, t, t, t, 3
FROM (SELECT md5(i::text) AS h,
             (extract(epoch FROM now()) * 1000)::bigint - 60000 - ($ROWS - i) * 7 AS ms,
             now() - interval '1 minute' - ($ROWS - i) * interval '7 ms' AS t
      FROM generate_series(1, $ROWS) AS i) AS s;
VACUUM ANALYZE jobs;
SQL
echo "added in $(( $(date +%s) - start )) s; jobs: $(SQL -d $DB -c 'SELECT count(*) FROM jobs')" >&2
probe full
kill -INT $DEV; wait $DEV 2>/dev/null || true; DEV=

python3 - "$OUT" "$RUNS" "$ROWS" "$PROBES" <<'PY'
import json, statistics, sys
out, runs, rows, probes = sys.argv[1:]
load = lambda name: [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
empty, full = load("empty"), load("full")
print(f"median of {runs} rounds of {probes} calls each, one at a time; full = {int(rows):,} finished jobs added")
print("| call | empty p50 (ms) | full p50 (ms) | full / empty | empty p99 | full p99 | rounds full p50 |")
print("|---|---|---|---|---|---|---|")
for label, key in [("SubmitJob", "submit"), ("GetJob", "get"), ("ListJobs, first page", "list")]:
    e50 = statistics.median(r[f"{key}_p50_ms"] for r in empty)
    f50 = statistics.median(r[f"{key}_p50_ms"] for r in full)
    e99 = statistics.median(r[f"{key}_p99_ms"] for r in empty)
    f99 = statistics.median(r[f"{key}_p99_ms"] for r in full)
    each = " / ".join(f"{r[f'{key}_p50_ms']:.2f}" for r in full)
    print(f"| {label} | {e50:.2f} | {f50:.2f} | {f50 / e50:.2f} | {e99:.2f} | {f99:.2f} | {each} |")
PY
