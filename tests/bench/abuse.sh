#!/usr/bin/env bash
# The edge under abuse (#11): a well-behaved client's round trip (submit →
# finished, one job at a time) and health checks alone, then while each abuse
# runs against the same `jobmesh dev` mesh, with the mesh's resident memory.
# Prints per abuse the medians over ROUNDS rounds of SECONDS each.
#
#   tests/bench/abuse.sh [ROUNDS=3] [SECONDS=10] [ABUSES=all]
#
# Needs PostgreSQL and NATS as for `jobmesh dev`; builds the release binary.
# The `idle` abuse connects from 127.0.0.2 (Linux answers all of 127/8).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECONDS_PER_ABUSE=${2:-10}
ABUSES=${3:-all}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p jobmesh-cli >/dev/null
JOBMESH="$CARGO_TARGET_DIR/release/jobmesh"
WORK=$(mktemp -d)
export JOBMESH_DEV_KEY_FILE="$WORK/dev.key"
export JOBMESH_GATEWAY_URL=http://127.0.0.1:59061
db="jobmesh_abuse_$$"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
# Each service of `jobmesh dev` shares the process's file descriptors: room for
# the gateway's connection limit and the streams behind it.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
"$JOBMESH" dev --listen 127.0.0.1:59061 --job-store-listen 127.0.0.1:59062 \
    --dispatcher-listen 127.0.0.1:59063 --nats-prefix "abuse_$$" \
    --database-url "postgres://postgres@127.0.0.1:5432/$db" >"$WORK/dev.log" 2>&1 &
dev=$!
cleanup() {
    kill -INT "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 1 60); do "$JOBMESH" tasks >/dev/null 2>&1 && break; sleep 0.5; done
"$JOBMESH" bench --abuse "$ABUSES" --abuse-seconds "$SECONDS_PER_ABUSE" \
    --rounds "$ROUNDS" --watch-pid "$dev"
