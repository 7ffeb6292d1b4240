#!/usr/bin/env bash
# Smoke test of the Python examples against a running mesh, with the jobmesh
# package installed (`pip install ./clients/python`); what CI runs:
#
#   JOBMESH_GATEWAY=127.0.0.1:50051 JOBMESH_TOKEN=… \
#   JOBMESH_DISPATCHER=127.0.0.1:50053 JOBMESH_WORKER_TOKEN=… ./check.sh
#
# 1. demo.sleep must succeed (exit 0) and stream progress: at least one RUNNING
#    line with a non-zero percent (a bare "100%" would prove nothing).
# 2. demo.fail must end FAILED (exit 1) with the handler's message.
# 3. worker.py serves example.wordcount: a job of it succeeds with its counts.
set -euo pipefail
cd "$(dirname "$0")"

export JOBMESH_GATEWAY="${JOBMESH_GATEWAY:-127.0.0.1:50051}"
: "${JOBMESH_WORKER_TOKEN:?set JOBMESH_WORKER_TOKEN (jobmesh token --scope worker) for worker.py}"
: "${JOBMESH_DISPATCHER:?set JOBMESH_DISPATCHER (the dispatcher worker.py connects to)}"
python3 -c 'import jobmesh' 2>/dev/null || { echo "install the package first: pip install ./clients/python"; exit 1; }
passed=0
failed=0

# check NAME EXPECTED_EXIT REGEX [submit_and_watch.py options...]
check() {
  local name=$1 want_rc=$2 want_re=$3
  shift 3
  local out rc=0
  out=$(python3 submit_and_watch.py --timeout 60 "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | sed "s/^/  [$name] /"
  if [[ $rc -ne $want_rc ]]; then
    echo "FAIL $name: exit code $rc, want $want_rc"
    failed=$((failed + 1))
  elif ! grep -qE -- "$want_re" <<<"$out"; then
    echo "FAIL $name: no output line matches /$want_re/"
    failed=$((failed + 1))
  else
    echo "ok   $name"
    passed=$((passed + 1))
  fi
}

check sleep-succeeds 0 '^RUNNING +[1-9][0-9]*%' \
  --task demo.sleep --args '{"seconds": 2, "steps": 4}'
check fail-fails 1 'expected failure' \
  --task demo.fail --args '{"message": "expected failure"}'

python3 worker.py >worker.log 2>&1 &
worker=$!
# (Struct numbers are doubles, and jsonb orders the keys its own way.)
check worker-serves 0 '^result: \{"counts": \{.*"to": 2(\.0)?[,}]' \
  --task example.wordcount --args '{"text": "to be or not to be"}'
kill -TERM "$worker"
if wait "$worker"; then
  echo "ok   worker-drains-on-sigterm"
  passed=$((passed + 1))
else
  echo "FAIL worker-drains-on-sigterm: worker.py exited $?"; sed 's/^/  [worker] /' worker.log
  failed=$((failed + 1))
fi
rm -f worker.log

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
