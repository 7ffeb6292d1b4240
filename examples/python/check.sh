#!/usr/bin/env bash
# Smoke test of the Python example against a running mesh (what CI runs after
# `pip install -q -r requirements.txt`):
#
#   JOBMESH_GATEWAY=127.0.0.1:50051 ./check.sh
#
# 1. demo.sleep must succeed (exit 0) and stream progress: at least one RUNNING
#    line with a non-zero percent. (A bare "100%" would prove nothing: a job
#    that SUCCEEDED always shows 100%, even if its handler never reported.)
# 2. demo.fail must end FAILED (exit 1) with the handler's message.
set -euo pipefail
cd "$(dirname "$0")"

export JOBMESH_GATEWAY="${JOBMESH_GATEWAY:-127.0.0.1:50051}"
passed=0
failed=0

./generate.sh

# check NAME EXPECTED_EXIT REGEX [submit_and_watch.py options...]
# Runs the example; passes if it exits with EXPECTED_EXIT and a line of its
# output (stdout and stderr) matches the extended regex REGEX.
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

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
