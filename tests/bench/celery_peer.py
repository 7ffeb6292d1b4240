#!/usr/bin/env python3
"""Celery peer of `jobmesh bench`: the same workload through Celery.

Runs N no-op jobs with C submissions in flight through a Celery stack, then M
jobs one at a time, and prints the figures under the same keys as
``jobmesh bench --json``. Two set-ups (``--profile``):

- ``durable`` (default): the way users set Celery up for durable jobs —
  RabbitMQ broker with durable queues, persistent messages and publisher
  confirms, ``task_acks_late=True``, ``worker_prefetch_multiplier=1``,
  PostgreSQL result backend;
- ``redis``: the set-up most Celery users run — Redis as broker and result
  backend with Celery's defaults (ack on receipt, prefetch 4), which keeps
  nothing durable.

The script starts its own worker (``celery -A celery_peer worker``, prefork
pool), waits until it answers a ping, runs the phases and stops it (SIGTERM,
then SIGKILL of its process group if it has not gone after a grace period).
Every phase is bounded in time, and a watchdog ends the whole run if it
overruns.

This module is also the Celery app the worker imports: the broker and result
backend URLs reach the worker through CELERY_PEER_* environment variables.

    python tests/bench/celery_peer.py --jobs 2000 --concurrency 32 --round-trips 100 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from celery import Celery

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_BACKEND = "db+postgresql+psycopg2://postgres@127.0.0.1:5432/celery_peer"
DEFAULT_REDIS = "redis://127.0.0.1:6379/5"
QUEUE = "celery_peer"
TASK_NAME = "bench.noop"
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


def settings_from_env() -> dict:
    """Celery settings, shared by this client and the worker it starts."""
    broker = os.environ.get("CELERY_PEER_BROKER", DEFAULT_BROKER)
    durable = os.environ.get("CELERY_PEER_PROFILE", "durable") == "durable"
    conf = {
        "broker_url": broker,
        "result_backend": os.environ.get("CELERY_PEER_BACKEND", DEFAULT_BACKEND),
        # Durable jobs: a job's message is removed from the broker only after
        # the task has run (and its result is stored), and a worker process
        # holds at most one unstarted message. The `redis` profile keeps
        # Celery's defaults (ack on receipt, prefetch 4), as most users run it.
        "task_acks_late": durable,
        "worker_prefetch_multiplier": 1 if durable else 4,
        # Durable queue (kombu's default for Queue) and persistent messages
        # (Celery's default delivery mode), stated explicitly.
        "task_default_queue": QUEUE,
        "task_queues": None,
        "task_default_delivery_mode": "persistent",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_track_started": os.environ.get("CELERY_PEER_TRACK_STARTED") == "1",
        # One producer connection per submitting thread (default pool is 10).
        "broker_pool_limit": int(os.environ.get("CELERY_PEER_POOL_LIMIT", "10")),
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": True,
        "worker_send_task_events": False,
    }
    if broker.startswith(("amqp", "pyamqp")):
        # Publisher confirms: apply_async returns only once RabbitMQ has taken
        # responsibility for the (persistent) message, i.e. "durably stored
        # before the reply", as jobmesh's SubmitJob.
        conf["broker_transport_options"] = {"confirm_publish": True}
    return conf


app = Celery("celery_peer")
app.conf.update(settings_from_env())


@app.task(name="bench.progress", bind=True)
def progress(self, i, steps):
    """The progress workload: ``steps`` ``update_state`` calls, then done (the
    peer of ``jobmesh bench --task demo.sleep --args '{"seconds": 0, "steps": N}'``)."""
    for step in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"step": step, "of": steps})
    return i


@app.task(name=TASK_NAME)
def noop(*args, **kwargs):
    """The job: does nothing, returns its args."""
    return args


# ---------------------------------------------------------------------------
# Client side: everything below runs only when this file is run as a script.


def percentile(sorted_values: list[float], p: float) -> float:
    """Same rank rule as jobmesh bench (nearest rank, rounded)."""
    if not sorted_values:
        return math.nan
    rank = round((p / 100.0) * (len(sorted_values) - 1))
    return sorted_values[min(rank, len(sorted_values) - 1)]


def log(msg: str) -> None:
    print(f"[celery_peer] {msg}", file=sys.stderr, flush=True)


class SqlResults:
    """Results in a database backend's ``celery_taskmeta`` table."""

    def __init__(self, backend_url: str):
        import sqlalchemy as sa
        from celery.backends.database.session import ResultModelBase

        self.sa = sa
        url = sa_url(backend_url)
        ensure_database(url)
        self.kind = sa.engine.make_url(url).drivername
        self.engine = sa.create_engine(url, pool_size=2)
        ResultModelBase.metadata.create_all(self.engine)  # celery_taskmeta, celery_tasksetmeta

    def count_done(self, prefix: str, ids: list[str]) -> int:
        like = self.sa.text(
            "SELECT count(*) FROM celery_taskmeta WHERE task_id LIKE :p AND status = ANY(:t)")
        with self.engine.connect() as conn:
            return conn.execute(like, {"p": f"{prefix}-0%", "t": list(TERMINAL)}).scalar()

    def finished(self, prefix: str, ids: list[str]) -> list[tuple[str, str, float | None]]:
        # date_done is the worker's clock (datetime.now(utc)) at the moment it
        # stored the result, in a column without zone: psycopg2 sends it as
        # timestamptz, so it is kept in the server's TimeZone, read back so.
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(self.sa.text(
                "SELECT task_id, status, extract(epoch FROM date_done AT TIME ZONE "
                "current_setting('TimeZone'))::float8 FROM celery_taskmeta WHERE task_id LIKE :p"),
                {"p": f"{prefix}-0%"}).all()]

    def delete(self, prefix: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.sa.text("DELETE FROM celery_taskmeta WHERE task_id LIKE :p"),
                         {"p": f"{prefix}-%"})

    def close(self) -> None:
        self.engine.dispose()


class RedisResults:
    """Results in a Redis backend: one ``celery-task-meta-<id>`` key per job."""

    kind = "redis"

    def __init__(self, backend_url: str):
        import redis

        self.redis = redis.Redis.from_url(backend_url)
        self.redis.ping()

    def _metas(self, ids: list[str]):
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            values = self.redis.mget([f"celery-task-meta-{i}" for i in chunk])
            for task_id, value in zip(chunk, values):
                yield task_id, (json.loads(value) if value else None)

    def count_done(self, prefix: str, ids: list[str]) -> int:
        return sum(1 for _, meta in self._metas(ids) if meta and meta.get("status") in TERMINAL)

    def finished(self, prefix: str, ids: list[str]) -> list[tuple[str, str, float | None]]:
        from datetime import datetime, timezone

        rows = []
        for task_id, meta in self._metas(ids):
            if not meta:
                continue
            done = meta.get("date_done")
            when = None
            if done:
                parsed = datetime.fromisoformat(done)
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=timezone.utc)
                when = parsed.timestamp()
            rows.append((task_id, meta.get("status"), when))
        return rows

    def delete(self, prefix: str) -> None:
        keys = list(self.redis.scan_iter(match=f"celery-task-meta-{prefix}-*", count=1000))
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start:start + 1000])

    def close(self) -> None:
        self.redis.close()


def sa_url(backend_url: str) -> str:
    """The SQLAlchemy URL behind Celery's ``db+...`` result backend URL."""
    if not backend_url.startswith("db+"):
        raise SystemExit(
            f"--result-backend must be a database backend (db+postgresql://...), got {backend_url}"
        )
    return backend_url[len("db+"):]


def pin_psycopg2(backend_url: str) -> str:
    """``postgresql://`` names psycopg 3 from SQLAlchemy 2.1 on (psycopg2 before):
    name the driver, psycopg2, unless psycopg 3 is what is installed."""
    for plain in ("db+postgresql://", "db+postgres://"):
        if backend_url.startswith(plain):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                return "db+postgresql+psycopg2://" + backend_url[len(plain):]
    return backend_url


def ensure_database(url: str) -> None:
    """Create the result backend's database if it is missing."""
    import sqlalchemy as sa

    target = sa.engine.make_url(url)
    if not target.get_backend_name().startswith("postgresql"):
        return
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            ).scalar()
            if not exists:
                log(f"creating database {target.database}")
                conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def check_broker(timeout: float) -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3, interval_start=0.2, interval_step=0.5,
                               timeout=timeout)


class Worker:
    """A `celery -A celery_peer worker` subprocess in its own process group."""

    def __init__(self, args: argparse.Namespace, env: dict, logdir: Path):
        self.node = f"celery_peer_{uuid.uuid4().hex[:8]}@%h"
        self.logfile = args.worker_log or logdir / "worker.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_peer", "worker",
            "--pool", args.worker_pool,
            "--concurrency", str(args.worker_concurrency),
            "--queues", QUEUE,
            "--hostname", self.node,
            "--loglevel", args.worker_loglevel,
        ]
        self._log = open(self.logfile, "wb")

        def die_with_parent():
            # Linux: the worker gets SIGTERM if this client dies without
            # stopping it (SIGKILL, say), instead of running on.
            try:
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            except Exception:  # noqa: BLE001 - best effort, not on Linux
                pass

        self.proc = subprocess.Popen(
            cmd,
            cwd=str(Path(__file__).resolve().parent),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log(f"worker pid {self.proc.pid}: {' '.join(cmd[1:])} (log {self.logfile})")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        node = self.node.replace("%h", os.uname().nodename)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            replies = app.control.ping(destination=[node], timeout=0.5)
            if any(node in r for r in replies):
                return
        raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"worker still up {grace:.0f}s after SIGTERM, killing its process group")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        # Children that outlived a clean exit of the main process, if any.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        log(f"worker stopped (exit {self.proc.returncode})")


def submit_phase(args, prefix: str) -> tuple[list[float], float]:
    """apply_async N jobs from C threads. Returns per-job submit wall times."""
    submitted_at = [0.0] * args.jobs
    next_index = iter(range(args.jobs))
    lock = threading.Lock()
    errors: list[BaseException] = []
    lanes = min(args.concurrency, args.jobs)
    ready = threading.Barrier(lanes + 1, timeout=120)
    go = threading.Event()

    def lane():
        # Celery keeps the result backend per thread (app.backend is a
        # thread-local), and a database backend's first use in a thread
        # connects and reflects the tables: a long-running client's threads
        # have paid that already, so pay it before the clock starts.
        app.backend  # noqa: B018
        ready.wait()
        go.wait()
        while not errors:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            submitted_at[i] = time.time()
            try:
                if args.steps:
                    progress.apply_async(args=(i, args.steps), task_id=f"{prefix}-{i:08d}")
                else:
                    noop.apply_async(args=(i,), task_id=f"{prefix}-{i:08d}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=lane, daemon=True) for _ in range(lanes)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    submit_seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"submit failed: {errors[0]!r}") from errors[0]
    return submitted_at, submit_seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2000, help="jobs in the throughput phase")
    p.add_argument("--concurrency", type=int, default=32,
                   help="submitting client threads (submissions in flight)")
    p.add_argument("--round-trips", type=int, default=100,
                   help="jobs run one at a time in the round-trip phase")
    p.add_argument("--worker-concurrency", type=int, default=16,
                   help="worker pool size (default 16)")
    p.add_argument("--worker-pool", default="prefork",
                   choices=["prefork", "threads", "solo", "gevent", "eventlet"],
                   help="worker pool (default prefork, Celery's default)")
    p.add_argument("--profile", default="durable", choices=["durable", "redis"],
                   help="durable: RabbitMQ with confirms, PostgreSQL results, acks_late, "
                        "prefetch 1 (default); redis: Redis broker and results, Celery's defaults")
    p.add_argument("--broker",
                   help=f"broker URL (default {DEFAULT_BROKER}; with --profile redis "
                        f"{DEFAULT_REDIS})")
    p.add_argument("--result-backend",
                   help=f"result backend URL: db+postgresql://… or redis://… (default "
                        f"{DEFAULT_BACKEND}; with --profile redis the broker's URL)")
    p.add_argument("--rt-poll-interval", type=float, default=0.01,
                   help="AsyncResult.get(interval=...) in the round-trip phase, seconds "
                        "(Celery's default is 0.5; the database backend can only poll)")
    p.add_argument("--drain-poll-interval", type=float, default=0.05,
                   help="how often the drain wait counts finished jobs, seconds")
    p.add_argument("--track-started", action="store_true",
                   help="task_track_started=True (one more result-row write per job)")
    p.add_argument("--timeout-seconds", type=float, default=600,
                   help="give up waiting for the jobs after this many seconds")
    p.add_argument("--worker-start-timeout", type=float, default=60)
    p.add_argument("--stop-grace", type=float, default=45,
                   help="seconds the worker gets after SIGTERM before its process group is "
                        "killed (billiard's pool processes may wait up to 30 s at shutdown)")
    p.add_argument("--worker-loglevel", default="INFO",
                   help="worker --loglevel (default INFO, which logs two lines per task)")
    p.add_argument("--worker-log", type=Path,
                   help="write the worker's log here (default: a temporary file, "
                        "deleted after a successful run)")
    p.add_argument("--keep-results", action="store_true",
                   help="keep this run's rows in celery_taskmeta (deleted by default)")
    p.add_argument("--steps", type=int, default=0,
                   help="the progress workload: each job of the throughput phase calls "
                        "update_state this many times (default 0: no-op jobs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.jobs < 1 or args.concurrency < 1 or args.round_trips < 0:
        p.error("--jobs and --concurrency must be at least 1, --round-trips at least 0")

    # SIGTERM/SIGHUP (a harness's timeout, say) unwind like Ctrl-C, so that
    # the worker is stopped and the queue and rows cleaned up.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    # Configuration shared with the worker through the environment.
    if args.broker is None:
        args.broker = DEFAULT_REDIS if args.profile == "redis" else DEFAULT_BROKER
    if args.result_backend is None:
        args.result_backend = args.broker if args.profile == "redis" else DEFAULT_BACKEND
    os.environ["CELERY_PEER_PROFILE"] = args.profile
    os.environ["CELERY_PEER_BROKER"] = args.broker
    args.result_backend = pin_psycopg2(args.result_backend)
    os.environ["CELERY_PEER_BACKEND"] = args.result_backend
    os.environ["CELERY_PEER_TRACK_STARTED"] = "1" if args.track_started else "0"
    os.environ["CELERY_PEER_POOL_LIMIT"] = str(max(10, args.concurrency + 2))
    app.conf.update(settings_from_env())
    worker_env = dict(os.environ)
    worker_env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent)] + [x for x in [os.environ.get("PYTHONPATH")] if x])

    import celery
    import kombu

    if args.result_backend.startswith("redis"):
        results = RedisResults(args.result_backend)
    else:
        results = SqlResults(args.result_backend)
    check_broker(timeout=10)

    # Hard bound on the whole run, whatever hangs (a blocked publish, say).
    worker: Worker | None = None
    budget = args.worker_start_timeout + 2 * args.timeout_seconds + 60 * (1 + args.round_trips / 100)

    def overrun():
        log(f"run exceeded {budget:.0f}s, stopping")
        if worker is not None:
            try:
                os.killpg(worker.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(3)

    watchdog = threading.Timer(budget, overrun)
    watchdog.daemon = True
    watchdog.start()

    run_id = uuid.uuid4().hex[:12]
    prefix = f"cpeer-{run_id}"
    logdir = Path(tempfile.mkdtemp(prefix="celery_peer_"))
    failed = False
    try:
        # Leftovers of an aborted run would be run before ours: drop them.
        purged = app.control.purge()
        if purged:
            log(f"purged {purged} stale message(s) from queue {QUEUE}")
        worker = Worker(args, worker_env, logdir)
        worker.wait_ready(args.worker_start_timeout)
        # Warm-up, as a long-running client and worker would be: open one
        # producer connection per submitting thread (the pool fills lazily
        # otherwise, inside the timed phase), and run a job in each pool
        # process so that it has its database connection.
        producers = [app.producer_pool.acquire(block=True, timeout=30)
                     for _ in range(min(args.concurrency, args.jobs))]
        warm = []
        try:
            for i in range(max(len(producers), args.worker_concurrency)):
                warm.append(noop.apply_async(args=("warmup",), task_id=f"{prefix}-warm-{i}",
                                             producer=producers[i % len(producers)]))
        finally:
            for producer in producers:
                producer.release()
        for r in warm:
            r.get(timeout=60, interval=0.05)
        log(f"worker ready ({args.worker_pool} x {args.worker_concurrency}); "
            f"submitting {args.jobs} jobs from {args.concurrency} threads")

        # Phase 1: N jobs, C in flight.
        t_start = time.perf_counter()
        submitted_at, submit_seconds = submit_phase(args, prefix)

        deadline = time.monotonic() + args.timeout_seconds
        ids = [f"{prefix}-{i:08d}" for i in range(args.jobs)]
        while True:
            done = results.count_done(prefix, ids)
            if done >= args.jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{args.jobs - done} jobs still pending after {args.timeout_seconds:g}s")
            time.sleep(args.drain_poll_interval)
        drained_seconds = time.perf_counter() - t_start
        rows = results.finished(prefix, ids)
        latencies: list[float] = []
        succeeded = 0
        first_submit = min(submitted_at)
        last_finish = -math.inf
        for task_id, status, finished in rows:
            if status == "SUCCESS":
                succeeded += 1
            if finished is None:
                continue
            i = int(task_id.rsplit("-", 1)[1])
            latencies.append(finished - submitted_at[i])
            last_finish = max(last_finish, finished)
        latencies.sort()
        e2e_seconds = max(last_finish - first_submit, sys.float_info.epsilon)
        if latencies and (latencies[0] < 0 or latencies[-1] > drained_seconds + 1):
            log(f"warning: latencies {latencies[0]:.3f}s..{latencies[-1]:.3f}s do not fit in "
                f"the {drained_seconds:.3f}s run: clock or time zone skew in date_done?")

        # Phase 2: one at a time, apply_async(...).get().
        log(f"{succeeded}/{args.jobs} succeeded in {drained_seconds:.2f}s; "
            f"{args.round_trips} round trips")
        round_trips: list[float] = []
        for i in range(args.round_trips):
            t0 = time.perf_counter()
            noop.apply_async(args=(i,), task_id=f"{prefix}-rt-{i:06d}").get(
                timeout=60, interval=args.rt_poll_interval)
            round_trips.append(time.perf_counter() - t0)
        round_trips.sort()
    except BaseException:
        failed = True
        if worker is not None:
            log(f"worker log tail:\n{worker.tail()}")
        raise
    finally:
        if worker is not None:
            worker.stop(grace=args.stop_grace)
            if failed:
                # An interrupted run leaves its jobs in the queue: drop them.
                try:
                    app.control.purge()
                except Exception as exc:  # noqa: BLE001 - cleanup only
                    log(f"could not purge queue {QUEUE}: {exc!r}")
        if not args.keep_results:
            try:
                results.delete(prefix)
            except Exception as exc:  # noqa: BLE001 - cleanup only
                log(f"could not delete this run's result rows: {exc!r}")
        results.close()
        watchdog.cancel()
        if not failed:
            for f in logdir.iterdir():
                f.unlink()
            logdir.rmdir()

    broker_kind = args.broker.split(":", 1)[0]
    figures = {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "task": "bench.progress" if args.steps else TASK_NAME,
        "steps": args.steps,
        "succeeded": succeeded,
        "submit_per_second": args.jobs / submit_seconds,
        "e2e_jobs_per_second": len(latencies) / e2e_seconds,
        "drained_seconds": drained_seconds,
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "round_trips": args.round_trips,
        "round_trip_p50_ms": percentile(round_trips, 50) * 1000,
        "round_trip_p99_ms": percentile(round_trips, 99) * 1000,
        # Peer-only context (not in jobmesh bench's output).
        "system": "celery",
        "celery_version": celery.__version__,
        "kombu_version": kombu.__version__,
        "broker": broker_kind,
        "result_backend": results.kind,
        "profile": args.profile,
        "worker_pool": args.worker_pool,
        "worker_concurrency": args.worker_concurrency,
        "rt_poll_interval_ms": args.rt_poll_interval * 1000,
    }
    if args.json:
        # NaN (no round trips) as null, like serde_json.
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v
                          for k, v in figures.items()}))
    else:
        f = figures
        print(
            f"celery {f['celery_version']} (kombu {f['kombu_version']}), broker {broker_kind}, "
            f"result backend {f['result_backend']}, worker {args.worker_pool} x {args.worker_concurrency}\n"
            f"jobs {args.jobs} ({succeeded} succeeded), concurrency {args.concurrency}, task {f['task']}\n"
            f"submit rate          {f['submit_per_second']:>10.0f} jobs/s\n"
            f"end-to-end           {f['e2e_jobs_per_second']:>10.0f} jobs/s "
            f"(first submit → last date_done, host clock)\n"
            f"submit → finished    p50 {f['latency_p50_ms']:>8.1f} ms   p99 {f['latency_p99_ms']:>8.1f} ms\n"
            f"round trip (1 at a time, apply_async → get(interval={args.rt_poll_interval}s) over "
            f"{args.round_trips} jobs)\n"
            f"                     p50 {f['round_trip_p50_ms']:>8.1f} ms   p99 {f['round_trip_p99_ms']:>8.1f} ms"
        )
    if succeeded != args.jobs:
        log(f"only {succeeded} of {args.jobs} jobs succeeded")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
