#!/usr/bin/env python3
"""Structural checks of jobmesh's shipping artifacts, run by deploy/check.sh.

Each check prints one line, `PASS: ...` or `FAIL: ...`; check.sh counts them. The
process exits 1 if any check failed.

    checks.py compose RENDERED.yaml        # compose.yaml after `docker-compose config`
    checks.py yaml FILE...                 # every document parses
    checks.py dockerfile                   # deploy/Dockerfile covers the workspace
    checks.py prometheus                   # scrape jobs, rule files, alerts' metrics
    checks.py grafana                      # dashboards use provisioned data sources
    checks.py k8s dev|prod|base FILE...   # rendered overlay, or the base's files
    checks.py nats-conf OUT_DIR            # writes the NATS configs to test, prints versions
    checks.py dashboard-queries OUT.yml    # writes the dashboards' PromQL as rules for promtool
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FAILED = 0


def result(ok: bool, what: str, detail: str = "") -> None:
    global FAILED
    if ok:
        print(f"PASS: {what}")
    else:
        FAILED += 1
        print(f"FAIL: {what}{': ' + detail if detail else ''}")


def load_all(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------- compose

JOBMESH_SERVICES = {
    # service: port its healthcheck must probe (the one it listens on)
    "job-store": "50052",
    "dispatcher": "50053",
    "gateway": "50051",
    "worker": "50054",
}
REQUIRED_SERVICES = {"postgres", "nats", "jaeger", "prometheus", "grafana", "keygen", *JOBMESH_SERVICES}
# One-shot service that writes the signing key and the tokens into this volume.
KEYGEN = "keygen"
# service -> container ports it may publish (on 127.0.0.1 only)
ALLOWED_PORTS = {"gateway": {"50051"}, "grafana": {"3000"}, "jaeger": {"16686"}}
# Every jobmesh service serves Prometheus text at /metrics on this port.
METRICS_PORT = 9464
METRICS_LISTEN = f"0.0.0.0:{METRICS_PORT}"


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def published(port) -> tuple[str, str, str]:
    """(host_ip, host_port, container_port) of a short or long port entry."""
    if isinstance(port, dict):
        return (
            str(port.get("host_ip", "")),
            str(port.get("published", "")),
            str(port.get("target", "")),
        )
    spec = str(port).split("/", 1)[0]
    parts = spec.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


def one_shot(svc: dict) -> bool:
    """A service that runs to completion (`restart: "no"`), such as keygen."""
    return str(svc.get("restart", "")) == "no"


def mounts(svc: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's volumes, short or long syntax."""
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((str(vol.get("source", "")), str(vol.get("target", "")), bool(vol.get("read_only"))))
        else:
            parts = str(vol).split(":")
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0], ro))
    return out


def env_of(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return env


def check_compose(rendered_path: str) -> None:
    raw_text = (ROOT / "compose.yaml").read_text()
    raw = yaml.safe_load(raw_text)
    result("version" not in raw, "compose.yaml has no `version:` key (Compose Specification)")

    cfg = yaml.safe_load(Path(rendered_path).read_text())
    services = cfg.get("services", {})
    missing = REQUIRED_SERVICES - services.keys()
    result(not missing, "compose.yaml defines " + ", ".join(sorted(REQUIRED_SERVICES)), f"missing {sorted(missing)}")

    bad = []
    for name, svc in services.items():
        image = svc.get("image")
        tag = image_tag(image) if image else None
        if not image or not tag or tag == "latest" or not re.search(r"\d", tag):
            bad.append(f"{name}={image}")
    result(not bad, "every compose image is pinned to a version tag (none `latest`)", ", ".join(bad))

    def has_healthcheck(svc: dict) -> bool:
        hc = svc.get("healthcheck") or {}
        test = hc.get("test")
        return not hc.get("disable") and bool(test) and test not in (["NONE"], "NONE")

    def depends(svc: dict) -> dict:
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        return deps

    # One-shot services (keygen) run to completion: they have no healthcheck, and
    # `up --wait` accepts their exit only when a long-running service waits for it.
    bad = [name for name, svc in services.items() if not one_shot(svc) and not has_healthcheck(svc)]
    result(not bad, "every long-running compose service has a healthcheck", ", ".join(bad))

    bad = []
    for name, svc in services.items():
        for dep, spec in depends(svc).items():
            if dep not in services:
                bad.append(f"{name}->{dep} (no such service)")
            elif one_shot(services[dep]):
                if spec.get("condition") != "service_completed_successfully":
                    bad.append(f"{name}->{dep} ({spec.get('condition')}; {dep} is one-shot)")
            elif has_healthcheck(services[dep]) and spec.get("condition") != "service_healthy":
                bad.append(f"{name}->{dep} ({spec.get('condition')})")
    result(
        not bad,
        "every depends_on waits for service_healthy (one-shot services: service_completed_successfully)",
        ", ".join(bad),
    )

    bad = []
    for name, svc in services.items():
        if not one_shot(svc):
            continue
        waiters = [n for n, s in services.items() if not one_shot(s) and name in depends(s)]
        if not waiters:
            bad.append(f"{name}: no long-running service waits for it (`up --wait` would fail)")
        if svc.get("ports"):
            bad.append(f"{name}: publishes ports")
    result(not bad, "one-shot services are waited for by long-running ones and publish nothing", "; ".join(bad))

    bad = []
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            host_ip, host_port, target = published(port)
            if target not in ALLOWED_PORTS.get(name, set()) or host_ip != "127.0.0.1":
                bad.append(f"{name}:{port}")
    found = {n for n, s in services.items() if s.get("ports")}
    result(
        not bad and found == set(ALLOWED_PORTS),
        "only the gateway (50051), Grafana (3000) and Jaeger UI (16686) are published, on 127.0.0.1",
        ", ".join(bad) or f"published by {sorted(found)}",
    )

    bad = []
    names = set()
    for name, port in JOBMESH_SERVICES.items():
        svc = services.get(name, {})
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        # Traces to Jaeger's OTLP/gRPC receiver (the services speak gRPC only).
        if str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).rstrip("/") != "http://jaeger:4317":
            bad.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT={env.get('OTEL_EXPORTER_OTLP_ENDPOINT')}")
        if env.get("OTEL_TRACES_EXPORTER") == "none":
            bad.append(f"{name}: OTEL_TRACES_EXPORTER=none")
        # Each service's own name (a shared one would merge them in Jaeger): unset,
        # so the binary's default jobmesh-<service>, or that same name.
        service_name = env.get("OTEL_SERVICE_NAME") or f"jobmesh-{name}"
        if service_name != f"jobmesh-{name}":
            bad.append(f"{name}: OTEL_SERVICE_NAME={service_name} (want jobmesh-{name})")
        names.add(service_name)
        test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or []))
        if f"jobmesh healthcheck --addr 127.0.0.1:{port}" not in test:
            bad.append(f"{name}: healthcheck does not probe 127.0.0.1:{port}")
        listen = " ".join(map(str, svc.get("command") or []))
        if name != "worker" and f"--listen 0.0.0.0:{port}" not in listen:
            bad.append(f"{name}: does not listen on 0.0.0.0:{port}")
        if name == "worker" and env.get("JOBMESH_HEALTH_LISTEN") != f"0.0.0.0:{port}":
            bad.append("worker: JOBMESH_HEALTH_LISTEN")
        if "JOBMESH_DATABASE_URL" in env and name != "job-store":
            bad.append(f"{name}: gets the database URL (only job-store needs it)")
        if not svc.get("build"):
            bad.append(f"{name}: not built from deploy/Dockerfile")
    if len(names) != len(JOBMESH_SERVICES):
        bad.append("OTEL_SERVICE_NAME values are not distinct")
    result(not bad, "jobmesh services: traces to jaeger:4317 (OTLP/gRPC), own service name, healthcheck on their own port", "; ".join(bad))

    # Jaeger must take OTLP/gRPC on 4317 from other containers, or every trace is
    # silently lost: the v2 image (jaegertracing/jaeger) does by default from 2.1
    # (listens on 0.0.0.0 in its image); the old v1 all-in-one needs 1.35+ and,
    # to be sure of it on every 1.x, COLLECTOR_OTLP_ENABLED=true.
    jaeger = services.get("jaeger", {})
    image = str(jaeger.get("image", ""))
    m = re.match(r"v?(\d+)\.(\d+)", image_tag(image) or "")
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    repo = image.split("@", 1)[0].rsplit(":", 1)[0] if image_tag(image) else image
    v2 = repo.endswith("jaegertracing/jaeger") and version >= (2, 1)
    v1 = (
        repo.endswith("jaegertracing/all-in-one")
        and version >= (1, 35)
        and str(env_of(jaeger).get("COLLECTOR_OTLP_ENABLED", "")).lower() == "true"
    )
    result(
        v2 or v1,
        "jaeger accepts OTLP/gRPC on 4317 (jaegertracing/jaeger >= 2.1, or all-in-one >= 1.35 with COLLECTOR_OTLP_ENABLED=true)",
        image,
    )

    bad = []
    for name in JOBMESH_SERVICES:
        svc = services.get(name, {})
        listen = env_of(svc).get("JOBMESH_METRICS_LISTEN")
        if listen != METRICS_LISTEN:
            bad.append(f"{name}: JOBMESH_METRICS_LISTEN={listen}")
        if str(METRICS_PORT) not in [str(e).split("/", 1)[0] for e in svc.get("expose") or []]:
            bad.append(f"{name}: does not expose {METRICS_PORT}")
    result(
        not bad,
        f"jobmesh services serve /metrics on {METRICS_LISTEN} (JOBMESH_METRICS_LISTEN, expose; not published)",
        "; ".join(bad),
    )

    # Authentication on: keygen writes the key and tokens into a named volume; the
    # gateway and the dispatcher verify with the key, workers present the token.
    bad = []
    keygen = services.get(KEYGEN, {})
    command = [str(c) for c in keygen.get("command") or []]

    def flag(name: str) -> str:
        return command[command.index(name) + 1] if name in command[:-1] else ""

    key_file, worker_token = flag("--key-file"), flag("--worker-token-file")
    if not command or command[0] != "keygen" or not key_file or not worker_token:
        bad.append(f"{KEYGEN}: command is not `keygen --key-file … --worker-token-file …`")
    if not keygen.get("build") or keygen.get("image") != services.get("gateway", {}).get("image"):
        bad.append(f"{KEYGEN}: not the jobmesh image")
    if keygen.get("user") not in (None, "", "10001", "10001:10001"):
        bad.append(f"{KEYGEN}: runs as {keygen.get('user')}, not the services' user")
    volumes = set((cfg.get("volumes") or {}).keys())
    kg_mounts = [(src, tgt) for src, tgt, ro in mounts(keygen) if src in volumes and not ro]
    if not kg_mounts:
        bad.append(f"{KEYGEN}: writes into no named volume")

    def in_volume(svc: dict, path: str) -> bool:
        """`path` is in keygen's volume, mounted read-only where keygen mounts it."""
        return any(
            ro and (src, tgt) in kg_mounts and path.startswith(tgt.rstrip("/") + "/")
            for src, tgt, ro in mounts(svc)
        )

    for name, var, path in (
        ("gateway", "JOBMESH_AUTH_HS256_SECRET_FILE", key_file),
        ("dispatcher", "JOBMESH_AUTH_HS256_SECRET_FILE", key_file),
        ("worker", "JOBMESH_WORKER_TOKEN_FILE", worker_token),
    ):
        svc = services.get(name, {})
        env = env_of(svc)
        if str(env.get("JOBMESH_INSECURE_NO_AUTH", "")).lower() in ("1", "true", "yes", "on"):
            bad.append(f"{name}: JOBMESH_INSECURE_NO_AUTH")
        if not path or env.get(var) != path:
            bad.append(f"{name}: {var}={env.get(var)} (keygen writes {path or 'nothing'})")
        elif not in_volume(svc, path):
            bad.append(f"{name}: does not mount keygen's volume read-only at its mount point")
        if (depends(svc).get(KEYGEN) or {}).get("condition") != "service_completed_successfully":
            bad.append(f"{name}: does not wait for {KEYGEN} (service_completed_successfully)")
    for name, svc in services.items():
        env = env_of(svc)
        for var in ("JOBMESH_WORKER_TOKEN", "JOBMESH_TOKEN"):
            if env.get(var):
                bad.append(f"{name}: a token in {var} (use a file in the keys volume)")
    result(
        not bad,
        "authentication on: keygen makes the key and worker token in a volume; gateway and dispatcher "
        "verify with the key, workers present the token (mounted read-only, after keygen)",
        "; ".join(bad),
    )

    replicas = (services.get("worker", {}).get("deploy") or {}).get("replicas", 1)
    result(replicas >= 2, "compose runs 2+ worker replicas", f"replicas={replicas}")

    pg = " ".join(map(str, (services.get("postgres", {}).get("healthcheck") or {}).get("test") or []))
    vols = services.get("postgres", {}).get("volumes") or []
    result("pg_isready" in pg and bool(vols), "postgres: pg_isready healthcheck and a volume")

    conf = (ROOT / "deploy/nats/nats.conf").read_text()
    nats = services.get("nats", {})
    nats_hc = " ".join(map(str, (nats.get("healthcheck") or {}).get("test") or []))
    ok = (
        re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M) is not None
        and re.search(r"^\s*jetstream\s*\{", conf, re.M) is not None
        and re.search(r"^\s*http:\s*\S+:8222\s*$", conf, re.M) is not None
        and "8222/healthz" in nats_hc
        and bool(nats.get("volumes"))
    )
    result(ok, "nats: JetStream with sync_interval always, monitoring on 8222, /healthz healthcheck, a volume")

    bad = []
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = vol.get("source") if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            vtype = vol.get("type") if isinstance(vol, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
            if vtype == "bind" and not Path(src).exists():
                bad.append(f"{name}: {src}")
    result(not bad, "every file compose mounts exists", ", ".join(bad))

    used = set(re.findall(r"\$\{([A-Z0-9_]+)", raw_text))
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    missing = used - defined
    result(not missing, "every variable compose.yaml uses is in .env.example", f"missing {sorted(missing)}")

    ignored = (ROOT / ".gitignore").read_text().split()
    result(".env" in ignored or "/.env" in ignored, ".env (secrets) is git-ignored")
    result(
        "*.key" in ignored and "*.token" in ignored,
        "signing keys and tokens (*.key, *.token, what `jobmesh keygen` writes) are git-ignored",
    )


# ---------------------------------------------------------------- yaml


def check_yaml(files: list[str]) -> None:
    bad = []
    count = 0
    for f in files:
        try:
            count += len(load_all(Path(f)))
        except yaml.YAMLError as e:
            bad.append(f"{f}: {e}")
    result(not bad, f"{len(files)} YAML files ({count} documents) parse", "; ".join(bad))


# ---------------------------------------------------------------- dockerfile


def check_dockerfile() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    missing = [m for m in members if f"COPY {m}/Cargo.toml" not in text and f"COPY {m}/ " not in text]
    result(not missing, f"Dockerfile's dependency stage copies all {len(members)} workspace manifests", f"missing {missing}")

    ignore = (ROOT / "deploy/Dockerfile.dockerignore").read_text().split()
    needed = ["!Cargo.toml", "!Cargo.lock"] + [
        f"!{m}/" if f"COPY {m}/ " in text else f"!{m}/Cargo.toml" for m in members
    ]
    allowed = [n for n in needed if n in ignore or f"!{n.strip('!').split('/')[0]}/" in ignore]
    result(len(allowed) == len(needed), "Dockerfile.dockerignore lets in everything the build copies", f"{sorted(set(needed) - set(allowed))}")

    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    ok = (
        len(froms) >= 2
        and bool(users)
        and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]) is not None
        and re.search(r"^HEALTHCHECK .*\n?.*jobmesh\", \"healthcheck\"", text, re.M) is not None
        and re.search(r'^ENTRYPOINT \["jobmesh"\]', text, re.M) is not None
    )
    result(ok, "Dockerfile: multi-stage, numeric non-root USER, HEALTHCHECK via `jobmesh healthcheck`, jobmesh entrypoint")

    # keygen runs as the image's user and writes into a named volume: Docker gives a
    # new volume the owner of its mount point in the image, which must be that user.
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    targets = [tgt for _, tgt, ro in mounts(compose["services"].get(KEYGEN, {})) if not ro]
    uid = users[-1].split(":", 1)[0] if users else ""
    runtime = text[text.rfind("\nFROM ") :]
    owned = [
        t
        for t in targets
        if re.search(rf"install -d -o {uid} (-g \d+ )?(-m \d+ )?{re.escape(t)}\b", runtime)
        or re.search(rf"chown (-R )?{uid}(:\d+)? {re.escape(t)}\b", runtime)
    ]
    result(
        bool(targets) and owned == targets,
        f"Dockerfile's runtime stage creates keygen's mount point {targets} owned by user {uid}",
        f"owned {owned}",
    )


# ---------------------------------------------------------------- metrics names


def described_metrics() -> set[str]:
    """The metrics the services record: each is described in runtime's recorder
    (services/runtime/src/metrics/recorder.rs)."""
    text = (ROOT / "services/runtime/src/metrics/recorder.rs").read_text()
    return set(re.findall(r'describe_(?:counter|gauge|histogram)!\(\s*"([a-z0-9_:]+)"', text))


def metric_names(expr: str) -> set[str]:
    """The jobmesh and gRPC (server and client) metrics an expression reads (a
    histogram's _bucket, _sum and _count series as the histogram's name)."""
    names = re.findall(r"\b((?:jobmesh|grpc_server|grpc_client)_[a-z0-9_]+)", expr)
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


PLACEHOLDER = re.compile(r"placeholder|PLANNED|issue 5|not serve /metrics yet", re.I)


# ---------------------------------------------------------------- prometheus


def check_prometheus() -> None:
    prom_dir = ROOT / "deploy/prometheus"
    text = (prom_dir / "prometheus.yml").read_text()
    cfg = yaml.safe_load(text)
    result(not PLACEHOLDER.search(text), "prometheus.yml has no placeholder wording")

    bad = []
    for name in JOBMESH_SERVICES:
        jobs = [j for j in cfg.get("scrape_configs", []) if j.get("job_name") == f"jobmesh-{name}"]
        if not jobs:
            bad.append(f"no job jobmesh-{name}")
            continue
        targets = [
            (n, int(sd.get("port", 0))) for sd in jobs[0].get("dns_sd_configs") or [] for n in sd.get("names") or []
        ] + [
            (t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1]))
            for sc in jobs[0].get("static_configs") or []
            for t in sc.get("targets") or []
        ]
        if (name, METRICS_PORT) not in targets:
            bad.append(f"jobmesh-{name} does not scrape {name}:{METRICS_PORT} ({targets})")
    result(
        not bad,
        f"prometheus.yml scrapes every jobmesh service (every replica, by DNS) on {METRICS_PORT}",
        "; ".join(bad),
    )

    # Rule files exist next to prometheus.yml and compose mounts them next to it.
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    vols = [str(v) for v in compose["services"]["prometheus"].get("volumes", [])]
    config_target = next(
        (v.split(":")[1] for v in vols if v.split(":")[0] == "./deploy/prometheus/prometheus.yml"), ""
    )
    rule_files = cfg.get("rule_files") or []
    bad = []
    for rf in rule_files:
        if not (prom_dir / rf).is_file():
            bad.append(f"{rf}: no such file in deploy/prometheus")
        want = str(Path(config_target).parent / rf)
        if not any(v.split(":")[:2] == [f"./deploy/prometheus/{rf}", want] for v in vols):
            bad.append(f"{rf}: compose does not mount it at {want}")
    result(
        bool(rule_files) and bool(config_target) and not bad,
        f"prometheus.yml loads {rule_files} and compose mounts them beside it",
        "; ".join(bad) or "no rule_files",
    )

    known = described_metrics()
    rules = [r for rf in rule_files if (prom_dir / rf).is_file() for g in load_all(prom_dir / rf)[0]["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    bad = []
    for r in alerts:
        labels, ann = r.get("labels") or {}, r.get("annotations") or {}
        if labels.get("severity") not in ("critical", "warning"):
            bad.append(f"{r['alert']}: severity {labels.get('severity')}")
        if not ann.get("summary") or not ann.get("description"):
            bad.append(f"{r['alert']}: summary or description missing")
        unknown = metric_names(str(r["expr"])) - known
        if unknown:
            bad.append(f"{r['alert']}: unknown metrics {sorted(unknown)}")
    names = [r["alert"] for r in alerts]
    if len(names) != len(set(names)):
        bad.append("duplicate alert names")
    result(
        bool(alerts) and not bad,
        f"{len(alerts)} alerts: a severity, a summary and a description each, and only metrics the services record",
        "; ".join(bad),
    )

    tests = load_all(prom_dir / "alerts.test.yml")[0] if (prom_dir / "alerts.test.yml").is_file() else {}
    tested = {a["alertname"] for t in tests.get("tests", []) for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    untested = set(names) - tested
    result(not untested and bool(tested), "alerts.test.yml makes every alert fire", f"never fired: {sorted(untested)}")


# ---------------------------------------------------------------- grafana


def check_grafana() -> None:
    uids = set()
    for f in sorted((ROOT / "deploy/grafana/provisioning/datasources").glob("*.y*ml")):
        for doc in load_all(f):
            uids.update(d.get("uid") for d in doc.get("datasources", []))
    dashboards = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
    known = described_metrics()
    missing_everywhere: list[set[str]] = []
    bad = []
    for f in dashboards:
        try:
            dash = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            bad.append(f"{f.name}: {e}")
            continue
        refs = set()

        def walk(node):
            if isinstance(node, dict):
                ds = node.get("datasource")
                if isinstance(ds, dict) and "uid" in ds:
                    refs.add(ds["uid"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(dash)
        exprs = []

        def collect(node):
            if isinstance(node, dict):
                if isinstance(node.get("expr"), str):
                    exprs.append(node["expr"])
                if isinstance(node.get("query"), str):
                    exprs.append(node["query"])
                for v in node.values():
                    collect(v)
            elif isinstance(node, list):
                for v in node:
                    collect(v)

        collect(dash)
        used = set().union(*map(metric_names, exprs)) if exprs else set()
        if used - known:
            bad.append(f"{f.name}: unknown metrics {sorted(used - known)}")
        missing_everywhere.append(known - used)
        if PLACEHOLDER.search(f.read_text()):
            bad.append(f"{f.name}: placeholder wording")
        if not refs:
            bad.append(f"{f.name}: references no data source uid")
        if refs - uids:
            bad.append(f"{f.name}: unknown data source uid {sorted(refs - uids)}")
        if not dash.get("uid") or not dash.get("panels"):
            bad.append(f"{f.name}: no uid or no panels")
    result(
        bool(dashboards) and not bad,
        f"{len(dashboards)} Grafana dashboard(s) parse and use provisioned data sources {sorted(uids)}",
        "; ".join(bad),
    )
    unshown = set.intersection(*missing_everywhere) if missing_everywhere else known
    result(
        not unshown,
        f"every metric the services record ({len(known)}) is on a dashboard",
        f"not shown: {sorted(unshown)}",
    )

    providers = []
    for f in sorted((ROOT / "deploy/grafana/provisioning/dashboards").glob("*.y*ml")):
        for doc in load_all(f):
            providers += [p.get("options", {}).get("path") for p in doc.get("providers", [])]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = [str(v) for v in compose["services"]["grafana"].get("volumes", [])]
    ok = bool(providers) and all(any(m.endswith(":" + p + ":ro") or m.endswith(":" + p) for m in mounts) for p in providers)
    result(ok, "Grafana's dashboard provider reads the directory compose mounts", f"providers {providers}, mounts {mounts}")


def dashboard_queries(out_file: str) -> None:
    """Writes every PromQL expression of the dashboards as a recording rule, with
    Grafana's variables replaced, so that `promtool check rules` parses them."""
    rules = []
    for f in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        exprs = []

        def walk(node):
            if isinstance(node, dict):
                if isinstance(node.get("expr"), str) and node["expr"].strip():
                    exprs.append(node["expr"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(json.loads(f.read_text()))
        for i, expr in enumerate(exprs):
            expr = re.sub(r"\$__(rate_)?interval|\$__range", "1m", expr)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            rules.append({"record": f"dashboard:{f.stem.replace('-', '_')}:expr{i}", "expr": expr})
    Path(out_file).write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    print(len(rules))


# ---------------------------------------------------------------- kubernetes


# Signing key (`hs256.key`) and worker token (`worker.token`), made with `jobmesh
# keygen` and `kubectl create secret` (docs/deploy.md), never committed.
AUTH_SECRET = "jobmesh-auth"


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def selects(selector: dict, labels: dict) -> bool:
    # matchExpressions are not evaluated: a selector made of them selects nothing here.
    if selector.get("matchExpressions"):
        return False
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_k8s(flavour: str, files: list[str]) -> None:
    docs = [d for f in files for d in load_all(Path(f))]
    if flavour == "base":
        # What kustomize's `images:` does to the base (used when kubectl is missing).
        kust = yaml.safe_load((ROOT / "deploy/k8s/base/kustomization.yaml").read_text())
        tags = {i["name"]: i["newTag"] for i in kust.get("images", [])}
        for d in docs:
            if d.get("kind") in ("Deployment", "StatefulSet"):
                for c in d["spec"]["template"]["spec"]["containers"]:
                    if c["image"] in tags:
                        c["image"] = f"{c['image']}:{tags[c['image']]}"
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    name = lambda o: o["metadata"]["name"]  # noqa: E731
    deployments = {name(d): d for d in by_kind.get("Deployment", [])}
    statefulsets = {name(d): d for d in by_kind.get("StatefulSet", [])}
    services = {name(d): d for d in by_kind.get("Service", [])}

    want = {"gateway", "job-store", "dispatcher", "worker"}
    result(want <= deployments.keys(), f"[{flavour}] Deployments for {', '.join(sorted(want))}", f"have {sorted(deployments)}")

    bad = []
    for n, d in deployments.items():
        spec = pod_spec(d)
        psc = spec.get("securityContext") or {}
        if not psc.get("runAsNonRoot"):
            bad.append(f"{n}: runAsNonRoot")
        for c in spec["containers"]:
            # Startup and readiness follow gRPC health (NOT_SERVING while a
            # dependency is down: out of the Service); liveness must not, or an
            # outage of PostgreSQL, NATS or job-store would restart healthy pods:
            # a TCP connect to the port that health is served on.
            grpc_ports = set()
            for probe in ("startupProbe", "readinessProbe"):
                if "grpc" not in (c.get(probe) or {}):
                    bad.append(f"{n}/{c['name']}: no gRPC {probe}")
                else:
                    grpc_ports.add(c[probe]["grpc"].get("port"))
            live = c.get("livenessProbe") or {}
            if set(live) & {"grpc", "httpGet", "exec"} or "tcpSocket" not in live:
                bad.append(f"{n}/{c['name']}: livenessProbe is not a tcpSocket probe")
            elif len(grpc_ports) != 1 or live["tcpSocket"].get("port") not in grpc_ports:
                bad.append(f"{n}/{c['name']}: livenessProbe tcpSocket port {live['tcpSocket'].get('port')} is not the gRPC health port {sorted(grpc_ports)}")
            res = c.get("resources") or {}
            if not (res.get("requests") and res.get("limits")):
                bad.append(f"{n}/{c['name']}: resources")
            csc = c.get("securityContext") or {}
            if csc.get("allowPrivilegeEscalation") is not False or "ALL" not in (csc.get("capabilities") or {}).get("drop", []):
                bad.append(f"{n}/{c['name']}: securityContext")
    result(not bad, f"[{flavour}] jobmesh Deployments: gRPC startup/readiness probes, TCP liveness on the same port, requests+limits, non-root, no privileges", "; ".join(bad))

    bad = []
    for kind in ("Deployment", "StatefulSet"):
        for d in by_kind.get(kind, []):
            spec = pod_spec(d)
            for c in spec["containers"]:
                tag = image_tag(c["image"])
                if not tag or tag == "latest":
                    bad.append(f"{name(d)}: {c['image']}")
                if not (c.get("resources") or {}).get("limits"):
                    bad.append(f"{name(d)}: no limits")
            if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
                bad.append(f"{name(d)}: runAsNonRoot")
    result(not bad, f"[{flavour}] every workload runs as non-root with a pinned image and limits", "; ".join(bad))

    bad = []
    for dep in sorted(want):
        d = deployments.get(dep)
        if d is None:
            continue
        c = pod_spec(d)["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        cfg = {}
        for ef in c.get("envFrom") or []:
            for cm in by_kind.get("ConfigMap", []):
                if name(cm) == (ef.get("configMapRef") or {}).get("name"):
                    cfg.update(cm.get("data") or {})
        listen = env.get("JOBMESH_METRICS_LISTEN", cfg.get("JOBMESH_METRICS_LISTEN"))
        if listen != METRICS_LISTEN:
            bad.append(f"{dep}: JOBMESH_METRICS_LISTEN={listen}")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        if ports.get("metrics") != METRICS_PORT:
            bad.append(f"{dep}: no container port `metrics` {METRICS_PORT}")
        ann = d["spec"]["template"]["metadata"].get("annotations") or {}
        if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(METRICS_PORT):
            bad.append(f"{dep}: prometheus.io/scrape and /port annotations")
    result(
        not bad,
        f"[{flavour}] jobmesh pods serve /metrics on {METRICS_LISTEN} (port `metrics`, prometheus.io annotations)",
        "; ".join(bad),
    )

    # Traces: each service names itself (no shared OTEL_SERVICE_NAME in the
    # ConfigMap); an endpoint, when one is set, is plaintext OTLP/gRPC.
    bad = []
    for dep in sorted(want):
        d = deployments.get(dep)
        if d is None:
            continue
        c = pod_spec(d)["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        cfg = {}
        for ef in c.get("envFrom") or []:
            for cm in by_kind.get("ConfigMap", []):
                if name(cm) == (ef.get("configMapRef") or {}).get("name"):
                    cfg.update(cm.get("data") or {})
        if "OTEL_SERVICE_NAME" in cfg:
            bad.append(f"{dep}: OTEL_SERVICE_NAME in a shared ConfigMap")
        own = env.get("OTEL_SERVICE_NAME") or f"jobmesh-{dep}"
        if own != f"jobmesh-{dep}":
            bad.append(f"{dep}: OTEL_SERVICE_NAME={own}")
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", cfg.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        if endpoint is not None and not re.fullmatch(r"http://[^/\s]+:\d+/?", str(endpoint)):
            bad.append(f"{dep}: OTEL_EXPORTER_OTLP_ENDPOINT={endpoint} (want http://host:port, OTLP/gRPC)")
    result(not bad, f"[{flavour}] traces: each service its own OTEL_SERVICE_NAME, OTLP endpoint (optional) plaintext gRPC", "; ".join(bad))

    pdbs = by_kind.get("PodDisruptionBudget", [])
    bad = []
    for kind in ("Deployment", "StatefulSet"):
        for d in by_kind.get(kind, []):
            labels = d["spec"]["template"]["metadata"].get("labels", {})
            if name(d) != "postgres" and not any(selects(p["spec"]["selector"], labels) for p in pdbs):
                bad.append(name(d))
    result(not bad, f"[{flavour}] a PodDisruptionBudget covers every replicated workload", ", ".join(bad))

    # NetworkPolicies: the unauthenticated internal ports (job-store, the
    # dispatcher, NATS clients, PostgreSQL when in the cluster) admit only the
    # services that call them; each selector selects a workload and each port
    # names a container port of the pods it protects.
    workloads = [d for kind in ("Deployment", "StatefulSet") for d in by_kind.get(kind, [])]
    pod_labels = lambda d: d["spec"]["template"]["metadata"].get("labels", {})  # noqa: E731
    policies = {name(p): p for p in by_kind.get("NetworkPolicy", [])}
    walled = {"job-store": "grpc", "dispatcher": "grpc", "nats": "client"}
    if "postgres" in statefulsets:
        walled["postgres"] = "postgres"
    bad = []
    for target, port in walled.items():
        workload = deployments.get(target) or statefulsets.get(target)
        if workload is None:
            bad.append(f"{target}: no workload")
            continue
        number = {q.get("name"): q.get("containerPort") for c in pod_spec(workload)["containers"] for q in c.get("ports") or []}.get(port)
        covering = [
            p for p in policies.values()
            if "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"]) and selects(p["spec"]["podSelector"], pod_labels(workload))
        ]
        if not covering:
            bad.append(f"{target}: no NetworkPolicy restricts its ingress")
            continue
        for p in covering:
            for rule in p["spec"].get("ingress") or []:
                # A rule without ports opens every port; one without peers opens
                # the port to every pod.
                ports = {q.get("port") for q in rule.get("ports") or []}
                if (not ports or port in ports or number in ports) and not rule.get("from"):
                    bad.append(f"{name(p)}: port {port} open to every pod")
    for p in policies.values():
        protected = [d for d in workloads if selects(p["spec"]["podSelector"], pod_labels(d))]
        if not protected:
            bad.append(f"{name(p)}: selects no workload")
        names = {q.get("name") for d in protected for c in pod_spec(d)["containers"] for q in c.get("ports") or []}
        for rule in p["spec"].get("ingress") or []:
            for q in rule.get("ports") or []:
                if isinstance(q.get("port"), str) and q["port"] not in names:
                    bad.append(f"{name(p)}: port {q['port']} is not a container port of the pods it protects")
            for peer in rule.get("from") or []:
                sel = peer.get("podSelector")
                if sel is not None and not any(selects(sel, pod_labels(d)) for d in workloads):
                    bad.append(f"{name(p)}: a `from` selects no workload: {sel}")
    result(not bad, f"[{flavour}] NetworkPolicies wall off the unauthenticated ports ({', '.join(f'{t}/{p}' for t, p in walled.items())})", "; ".join(bad))

    bad = [n for n in ("job-store", "dispatcher") if (services.get(n, {}).get("spec") or {}).get("clusterIP") != "None"]
    result(not bad, f"[{flavour}] internal gRPC Services (job-store, dispatcher) are headless", ", ".join(bad))

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    ok = any(h["spec"]["scaleTargetRef"]["name"] == "worker" for h in hpas) and "replicas" not in deployments.get("worker", {}).get("spec", {})
    result(ok, f"[{flavour}] an HPA scales the worker Deployment (which leaves replicas to it)")

    nats = statefulsets.get("nats")
    conf = ""
    for cm in by_kind.get("ConfigMap", []):
        conf += (cm.get("data") or {}).get("nats.conf", "")
    routes = re.findall(r"nats://nats-\d+\.nats-headless:6222", conf)
    headless = services.get("nats-headless", {}).get("spec", {})
    ok = (
        nats is not None
        and nats["spec"].get("replicas") == 3
        and len(routes) == 3
        and re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M) is not None
        and headless.get("clusterIP") == "None"
        and headless.get("publishNotReadyAddresses") is True
        and bool(nats["spec"].get("volumeClaimTemplates"))
    )
    result(ok, f"[{flavour}] NATS: 3-server JetStream StatefulSet, routes over a headless Service, sync_interval always, volumes")

    ingresses = by_kind.get("Ingress", [])
    ok = any(
        (i["metadata"].get("annotations") or {}).get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC"
        and i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "gateway"
        for i in ingresses
    )
    result(ok, f"[{flavour}] an Ingress routes gRPC (backend-protocol GRPC) to the gateway")

    # References to ConfigMaps and Secrets resolve, except the prod database Secret
    # and the auth Secret (signing key, worker token), created outside git on purpose.
    have = {("ConfigMap", name(c)) for c in by_kind.get("ConfigMap", [])} | {("Secret", name(s)) for s in by_kind.get("Secret", [])}
    external = {("Secret", AUTH_SECRET)}
    external |= {("Secret", "jobmesh-database")} if flavour in ("prod", "base") else set()
    external |= {("Secret", "postgres")} if flavour == "base" else set()
    bad = []
    for kind in ("Deployment", "StatefulSet"):
        for d in by_kind.get(kind, []):
            spec = pod_spec(d)
            refs = []
            for c in spec["containers"]:
                for ef in c.get("envFrom") or []:
                    if "configMapRef" in ef:
                        refs.append(("ConfigMap", ef["configMapRef"]["name"]))
                    if "secretRef" in ef:
                        refs.append(("Secret", ef["secretRef"]["name"]))
                for e in c.get("env") or []:
                    vf = e.get("valueFrom") or {}
                    if "secretKeyRef" in vf:
                        refs.append(("Secret", vf["secretKeyRef"]["name"]))
                    if "configMapKeyRef" in vf:
                        refs.append(("ConfigMap", vf["configMapKeyRef"]["name"]))
            for v in spec.get("volumes") or []:
                if "configMap" in v:
                    refs.append(("ConfigMap", v["configMap"]["name"]))
                if "secret" in v:
                    refs.append(("Secret", v["secret"]["secretName"]))
            bad += [f"{name(d)} -> {k}/{n}" for k, n in refs if (k, n) not in have and (k, n) not in external]
    outside = f"{AUTH_SECRET}" + (", jobmesh-database" if flavour in ("prod", "base") else "")
    result(not bad, f"[{flavour}] every ConfigMap/Secret a workload uses is defined (created outside git: {outside})", "; ".join(bad))

    # Authentication on: the gateway and the dispatcher verify tokens with the key
    # in the Secret jobmesh-auth, workers present its worker token; the Secret
    # itself (signing key) is never in the manifests.
    bad = []
    for dep, var, key in (
        ("gateway", "JOBMESH_AUTH_HS256_SECRET_FILE", "hs256.key"),
        ("dispatcher", "JOBMESH_AUTH_HS256_SECRET_FILE", "hs256.key"),
        ("worker", "JOBMESH_WORKER_TOKEN_FILE", "worker.token"),
    ):
        d = deployments.get(dep)
        if d is None:
            bad.append(f"{dep}: missing")
            continue
        spec = pod_spec(d)
        vols = {
            v["name"]: v["secret"]
            for v in spec.get("volumes") or []
            if (v.get("secret") or {}).get("secretName") == AUTH_SECRET
        }
        c = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        cfg = {}
        for ef in c.get("envFrom") or []:
            for cm in by_kind.get("ConfigMap", []):
                if name(cm) == (ef.get("configMapRef") or {}).get("name"):
                    cfg.update(cm.get("data") or {})
        if str(env.get("JOBMESH_INSECURE_NO_AUTH", cfg.get("JOBMESH_INSECURE_NO_AUTH", ""))).lower() in ("1", "true", "yes", "on"):
            bad.append(f"{dep}: JOBMESH_INSECURE_NO_AUTH")
        path = env.get(var) or ""
        found = False
        for m in c.get("volumeMounts") or []:
            sec = vols.get(m["name"])
            if sec is None or not m.get("readOnly") or m.get("subPath"):
                continue
            files = {i["path"]: i["key"] for i in sec.get("items") or []} or None
            rel = path[len(m["mountPath"].rstrip("/")) + 1 :] if path.startswith(m["mountPath"].rstrip("/") + "/") else None
            if rel and (files is None and rel == key or files and files.get(rel) == key):
                found = True
        if not found:
            bad.append(f"{dep}: {var}={path or None} is not {AUTH_SECRET}'s {key} mounted read-only")
        if dep == "worker" and any("hs256.key" in {i["key"] for i in (s.get("items") or [])} or not s.get("items") for s in vols.values()):
            bad.append("worker: gets the signing key")
    if any(name(s).startswith(AUTH_SECRET) for s in by_kind.get("Secret", [])):
        bad.append(f"a Secret {AUTH_SECRET} is in the manifests")
    result(
        not bad,
        f"[{flavour}] authentication on: gateway and dispatcher verify with {AUTH_SECRET}'s hs256.key, workers present its worker.token (not in the manifests)",
        "; ".join(bad),
    )

    if flavour == "dev":
        result("postgres" in statefulsets and "postgres" in services, "[dev] PostgreSQL runs as a StatefulSet with a Service")
    if flavour == "prod":
        ok = "postgres" not in statefulsets and not any(name(s).startswith("jobmesh-database") for s in by_kind.get("Secret", []))
        result(ok, "[prod] no in-cluster PostgreSQL and no database password in the manifests")
        n = deployments.get("dispatcher", {}).get("spec", {}).get("replicas", 1)
        result(n >= 2, "[prod] 2+ dispatchers (they share the JetStream durable consumers)", f"replicas={n}")
        hpa = next((h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "worker"), {})
        images = {c["image"] for d in deployments.values() for c in pod_spec(d)["containers"]}
        result(len(images) == 1 and hpa.get("spec", {}).get("minReplicas", 0) >= 2, "[prod] one image for every service; 2+ workers", f"{images}")


# ---------------------------------------------------------------- nats


def nats_conf(out_dir: str) -> None:
    """Writes the compose and k8s NATS configs for `nats-server -t`; prints the
    image version (which must be the same in compose and k8s)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    compose_image = compose["services"]["nats"]["image"]
    k8s = load_all(ROOT / "deploy/k8s/base/nats.yaml")
    cm = next(d for d in k8s if d["kind"] == "ConfigMap")
    sts = next(d for d in k8s if d["kind"] == "StatefulSet")
    k8s_image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    out = Path(out_dir)
    (out / "compose-nats.conf").write_text((ROOT / "deploy/nats/nats.conf").read_text())
    (out / "k8s-nats.conf").write_text(cm["data"]["nats.conf"])
    if compose_image != k8s_image:
        print(f"FAIL: NATS image differs: compose {compose_image}, k8s {k8s_image}", file=sys.stderr)
        sys.exit(1)
    print(compose_image.split(":", 1)[1].split("-", 1)[0])


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "compose":
        check_compose(args[0])
    elif cmd == "yaml":
        check_yaml(args)
    elif cmd == "dockerfile":
        check_dockerfile()
    elif cmd == "prometheus":
        check_prometheus()
    elif cmd == "grafana":
        check_grafana()
    elif cmd == "k8s":
        check_k8s(args[0], args[1:])
    elif cmd == "dashboard-queries":
        dashboard_queries(args[0])
        return
    elif cmd == "nats-conf":
        nats_conf(args[0])
        return
    else:
        sys.exit(f"unknown command {cmd}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
