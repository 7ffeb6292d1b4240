#!/usr/bin/env python3
"""Structural checks of jobmesh's shipping artifacts, run by deploy/check.sh.

Each check prints one line, `PASS: ...` or `FAIL: ...`; check.sh counts them. The
process exits 1 if any check failed.

    checks.py compose RENDERED.yaml        # compose.yaml after `docker-compose config`
    checks.py yaml FILE...                 # every document parses
    checks.py dockerfile                   # deploy/Dockerfile covers the workspace
    checks.py grafana                      # dashboards use provisioned data sources
    checks.py k8s dev|prod|base FILE...   # rendered overlay, or the base's files
    checks.py nats-conf OUT_DIR            # writes the NATS configs to test, prints versions
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
REQUIRED_SERVICES = {"postgres", "nats", "jaeger", "prometheus", "grafana", *JOBMESH_SERVICES}
# service -> container ports it may publish (on 127.0.0.1 only)
ALLOWED_PORTS = {"gateway": {"50051"}, "grafana": {"3000"}, "jaeger": {"16686"}}


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

    bad = []
    for name, svc in services.items():
        hc = svc.get("healthcheck") or {}
        test = hc.get("test")
        if hc.get("disable") or not test or test in (["NONE"], "NONE"):
            bad.append(name)
    result(not bad, "every compose service has a healthcheck", ", ".join(bad))

    bad = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                bad.append(f"{name}->{dep} (no such service)")
            elif services[dep].get("healthcheck") and spec.get("condition") != "service_healthy":
                bad.append(f"{name}->{dep} ({spec.get('condition')})")
    result(not bad, "every depends_on waits for service_healthy", ", ".join(bad))

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
        if not str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).startswith("http://jaeger:4317"):
            bad.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT")
        if not env.get("OTEL_SERVICE_NAME"):
            bad.append(f"{name}: OTEL_SERVICE_NAME")
        names.add(env.get("OTEL_SERVICE_NAME"))
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
    result(not bad, "jobmesh services: OTEL to jaeger, own service name, healthcheck on their own port", "; ".join(bad))

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


# ---------------------------------------------------------------- grafana


def check_grafana() -> None:
    uids = set()
    for f in sorted((ROOT / "deploy/grafana/provisioning/datasources").glob("*.y*ml")):
        for doc in load_all(f):
            uids.update(d.get("uid") for d in doc.get("datasources", []))
    dashboards = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
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

    providers = []
    for f in sorted((ROOT / "deploy/grafana/provisioning/dashboards").glob("*.y*ml")):
        for doc in load_all(f):
            providers += [p.get("options", {}).get("path") for p in doc.get("providers", [])]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = [str(v) for v in compose["services"]["grafana"].get("volumes", [])]
    ok = bool(providers) and all(any(m.endswith(":" + p + ":ro") or m.endswith(":" + p) for m in mounts) for p in providers)
    result(ok, "Grafana's dashboard provider reads the directory compose mounts", f"providers {providers}, mounts {mounts}")


# ---------------------------------------------------------------- kubernetes


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def selects(selector: dict, labels: dict) -> bool:
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
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" not in (c.get(probe) or {}):
                    bad.append(f"{n}/{c['name']}: no gRPC {probe}")
            res = c.get("resources") or {}
            if not (res.get("requests") and res.get("limits")):
                bad.append(f"{n}/{c['name']}: resources")
            csc = c.get("securityContext") or {}
            if csc.get("allowPrivilegeEscalation") is not False or "ALL" not in (csc.get("capabilities") or {}).get("drop", []):
                bad.append(f"{n}/{c['name']}: securityContext")
    result(not bad, f"[{flavour}] jobmesh Deployments: gRPC readiness/liveness probes, requests+limits, non-root, no privileges", "; ".join(bad))

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

    pdbs = by_kind.get("PodDisruptionBudget", [])
    bad = []
    for kind in ("Deployment", "StatefulSet"):
        for d in by_kind.get(kind, []):
            labels = d["spec"]["template"]["metadata"].get("labels", {})
            if name(d) != "postgres" and not any(selects(p["spec"]["selector"], labels) for p in pdbs):
                bad.append(name(d))
    result(not bad, f"[{flavour}] a PodDisruptionBudget covers every replicated workload", ", ".join(bad))

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

    # References to ConfigMaps and Secrets resolve, except the prod database Secret,
    # which is created outside git on purpose.
    have = {("ConfigMap", name(c)) for c in by_kind.get("ConfigMap", [])} | {("Secret", name(s)) for s in by_kind.get("Secret", [])}
    external = {("Secret", "jobmesh-database")} if flavour in ("prod", "base") else set()
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
            bad += [f"{name(d)} -> {k}/{n}" for k, n in refs if (k, n) not in have and (k, n) not in external]
    result(not bad, f"[{flavour}] every ConfigMap/Secret a workload uses is defined" + (" (prod: jobmesh-database is created outside git)" if flavour == "prod" else ""), "; ".join(bad))

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
    elif cmd == "grafana":
        check_grafana()
    elif cmd == "k8s":
        check_k8s(args[0], args[1:])
    elif cmd == "nats-conf":
        nats_conf(args[0])
        return
    else:
        sys.exit(f"unknown command {cmd}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
