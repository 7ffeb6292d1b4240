"""A jobmesh worker serving plain Python functions as tasks.

    worker = Worker("127.0.0.1:50053", token, slots=4)

    @worker.task("images.resize")
    def resize(args, ctx):
        ctx.progress(50, "half way")
        ctx.log("resizing")
        return {"width": args["width"] // 2}

    worker.run()   # until SIGTERM or Ctrl-C, then drains

A function gets the job's args (a dict) and a ``Context``; its return value (a
dict, or anything JSON, wrapped as ``{"value": …}``) is the result; raising fails
the attempt (retried while attempts remain), raising ``NonRetryable`` fails the
job at once. ``async def`` functions work too. It speaks the protocol of
docs/workers.md: heartbeats, the log window, cancellations, drain, and
reconnection with backoff.

``python -m jobmesh.worker module:function …`` serves functions without code
changes (see ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import queue
import random
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import grpc
from google.protobuf import json_format, struct_pb2

from . import __version__
from ._errors import NonRetryable
from .v1 import job_pb2
from .v1 import worker_service_pb2 as pb
from .v1 import worker_service_pb2_grpc

log = logging.getLogger("jobmesh.worker")

#: Reports waiting to be sent; a full queue slows the functions down.
OUTBOUND = 1024
#: Longest wait between reconnection attempts, in seconds.
MAX_BACKOFF = 5.0
#: Longest progress message the protocol carries, in bytes.
MAX_PROGRESS_MESSAGE = 4096

Attempt = Tuple[str, int]


class Context:
    """What a running function may do: report progress, print log lines, and
    notice that it was cancelled (``cancelled`` is a ``threading.Event``)."""

    def __init__(self, worker: "Worker", assignment: pb.JobAssignment, window: Optional[threading.Semaphore]):
        self._worker = worker
        self._window = window
        self.job_id = assignment.job_id
        self.attempt = assignment.attempt
        self.task = assignment.task
        self.labels = dict(assignment.labels)
        self.max_attempts = assignment.max_attempts
        self.timeout = assignment.timeout.ToTimedelta().total_seconds() if assignment.HasField("timeout") else None
        self.cancelled = threading.Event()

    def progress(self, percent: float, message: str = "") -> None:
        """Reports progress, kept between 0 and 100 (the message is cut to 4096 bytes)."""
        data = message.encode()[:MAX_PROGRESS_MESSAGE].decode(errors="ignore")
        self._worker._send(pb.ConnectRequest(progress=pb.JobProgress(
            job_id=self.job_id, attempt=self.attempt, percent=int(max(0, min(100, percent))), message=data)))

    def log(self, line: str, *, stderr: bool = False) -> None:
        """Stores a log line with the job (readable with ``Client.logs``); waits
        while the attempt's log window is full."""
        if self._window is not None:
            while not self._window.acquire(timeout=1.0):
                if self._worker._closing.is_set():
                    return
        stream = job_pb2.LOG_STREAM_STDERR if stderr else job_pb2.LOG_STREAM_STDOUT
        self._worker._send(pb.ConnectRequest(log=pb.JobLog(
            job_id=self.job_id, attempt=self.attempt, line=str(line), stream=stream)))


@dataclass
class _Held:
    context: Context
    window: Optional[threading.Semaphore]


def _result(value: Any) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if value is None:
        return out
    if isinstance(value, dict):
        out.update(value)
    else:
        out.update({"value": value})
    return out


class Worker:
    """A worker: ``dispatcher`` address, a token with the ``worker`` scope,
    ``slots`` functions at once (threads)."""

    def __init__(self, dispatcher: str = "127.0.0.1:50053", token: Optional[str] = None, *,
                 slots: int = 4, worker_id: str = "", name: str = "jobmesh-python",
                 labels: Optional[Dict[str, str]] = None, shutdown_grace: float = 30.0):
        self.dispatcher = dispatcher
        self.token = token
        self.slots = slots
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.name = name
        self.labels = labels or {}
        self.shutdown_grace = shutdown_grace
        self.tasks: Dict[str, Callable[..., Any]] = {}
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._out: "queue.Queue[Optional[pb.ConnectRequest]]" = queue.Queue(OUTBOUND)
        self._held: Dict[Attempt, _Held] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._drain_started = threading.Event()
        self._last_sent = time.monotonic()

    def task(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Registers the decorated function as the task ``name``."""
        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self.tasks[name] = function
            return function
        return register

    def stop(self) -> None:
        """Asks the worker to drain and return from ``run``."""
        self._stopping.set()

    def _send(self, request: pb.ConnectRequest) -> None:
        while not self._closing.is_set():
            try:
                self._out.put(request, timeout=1.0)
                return
            except queue.Full:
                continue

    def _requests(self, hello: pb.ConnectRequest):
        yield hello
        while True:
            request = self._out.get()
            if request is None:
                return
            self._last_sent = time.monotonic()
            yield request

    def run(self, *, install_signals: bool = True) -> None:
        """Serves until ``stop()`` (or SIGTERM / Ctrl-C), then drains: asks for
        nothing more, finishes what it holds, and closes."""
        if not self.tasks:
            raise ValueError("register at least one task with @worker.task(name)")
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        backoff = 0.1
        with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="jobmesh-task") as pool:
            while True:
                welcomed = False
                try:
                    welcomed = self._session(pool)
                    if self._stopping.is_set():
                        return
                except grpc.RpcError as error:
                    if self._stopping.is_set():
                        return
                    log.warning("session ended: %s %s", error.code().name, error.details())
                if welcomed:
                    backoff = 0.1
                delay = backoff * (0.5 + random.random())
                if self._stopping.wait(delay):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _session(self, pool: ThreadPoolExecutor) -> bool:
        self._closing.clear()
        self._drain_started.clear()
        self._out = queue.Queue(OUTBOUND)
        with self._lock:
            self._held.clear()
        channel = grpc.insecure_channel(self.dispatcher)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        hello = pb.ConnectRequest(hello=pb.WorkerHello(
            worker_id=self.worker_id, tasks=sorted(self.tasks), slots=self.slots, name=self.name,
            version=__version__, host=socket.gethostname(), labels=self.labels))
        responses = stub.Connect(self._requests(hello), metadata=metadata)
        welcomed = False
        try:
            first = next(responses)
            if not first.HasField("welcome"):
                raise RuntimeError("the dispatcher did not welcome the worker")
            welcome = first.welcome
            welcomed = True
            interval = welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5.0
            window = welcome.log_window
            log.info("connected to %s as %s (tasks %s, %d slots)", self.dispatcher,
                     welcome.worker_id, sorted(self.tasks), self.slots)
            reader = threading.Thread(target=self._read, args=(responses, pool, window), daemon=True)
            reader.start()
            self._beat(interval, reader)
            if self._stopping.is_set() and reader.is_alive():
                self._drain(reader)
            return welcomed
        finally:
            self._closing.set()
            try:
                self._out.put_nowait(None)
            except queue.Full:
                pass
            for held in list(self._held.values()):
                held.context.cancelled.set()
            channel.close()

    def _beat(self, interval: float, reader: threading.Thread) -> None:
        """Heartbeats whenever nothing else was sent for ``interval``, busy or
        idle, until the session ends or the worker is asked to stop."""
        while reader.is_alive() and not self._stopping.is_set():
            if time.monotonic() - self._last_sent >= interval:
                self._send(pb.ConnectRequest(heartbeat=pb.WorkerHeartbeat()))
            self._stopping.wait(min(interval / 2, 1.0))

    def _drain(self, reader: threading.Thread) -> None:
        log.info("draining: finishing %d jobs", len(self._held))
        self._send(pb.ConnectRequest(drain=pb.WorkerDrain()))
        deadline = time.monotonic() + self.shutdown_grace
        cancelled = False
        with self._idle:
            while reader.is_alive():
                if not self._held and self._drain_started.is_set():
                    break
                if not cancelled and time.monotonic() > deadline:
                    cancelled = True
                    for held in self._held.values():
                        held.context.cancelled.set()
                if cancelled and not self._held:
                    break
                self._idle.wait(0.2)
                if time.monotonic() - self._last_sent >= 1.0:
                    try:
                        self._out.put_nowait(pb.ConnectRequest(heartbeat=pb.WorkerHeartbeat()))
                    except queue.Full:
                        pass
        # Close our side, then read to the end so our last reports are read first.
        self._out.put(None)
        reader.join(timeout=5.0)
        log.info("drained")

    def _read(self, responses, pool: ThreadPoolExecutor, window: int) -> None:
        try:
            for message in responses:
                kind = message.WhichOneof("message")
                if kind == "assignment":
                    self._start(message.assignment, pool, window)
                elif kind == "cancellation":
                    held = self._held.get((message.cancellation.job_id, message.cancellation.attempt))
                    if held:
                        log.info("cancelling %s: %s", message.cancellation.job_id, message.cancellation.reason)
                        held.context.cancelled.set()
                elif kind == "logs_stored":
                    held = self._held.get((message.logs_stored.job_id, message.logs_stored.attempt))
                    if held and held.window is not None:
                        for _ in range(message.logs_stored.lines):
                            held.window.release()
                elif kind == "refused":
                    refused = message.refused
                    log.warning("the dispatcher refused a %s report: %s", refused.report, refused.reason)
                    if refused.report == "succeeded":
                        self._send(pb.ConnectRequest(failed=pb.JobFailed(
                            job_id=refused.job_id, attempt=refused.attempt, retryable=False,
                            message=f"the result was refused: {refused.reason}")))
                elif kind == "drain_started":
                    self._drain_started.set()
                    with self._idle:
                        self._idle.notify_all()
        except grpc.RpcError as error:
            if not self._closing.is_set():
                log.warning("the dispatcher ended the session: %s %s", error.code().name, error.details())
        finally:
            with self._idle:
                self._idle.notify_all()

    def _start(self, assignment: pb.JobAssignment, pool: ThreadPoolExecutor, window: int) -> None:
        semaphore = threading.Semaphore(window) if window > 0 else None
        context = Context(self, assignment, semaphore)
        key = (assignment.job_id, assignment.attempt)
        with self._lock:
            self._held[key] = _Held(context, semaphore)
        pool.submit(self._execute, assignment, context, key)

    def _execute(self, assignment: pb.JobAssignment, context: Context, key: Attempt) -> None:
        job_id, attempt = key
        try:
            function = self.tasks.get(assignment.task)
            if function is None:
                raise RuntimeError(f"this worker has no function for task {assignment.task!r}")
            args = json_format.MessageToDict(assignment.args)
            if inspect.iscoroutinefunction(function):
                value = asyncio.run(function(args, context))
            else:
                value = function(args, context)
            if context.cancelled.is_set():
                outcome = pb.ConnectRequest(cancelled=pb.JobCancelled(job_id=job_id, attempt=attempt))
            else:
                outcome = pb.ConnectRequest(succeeded=pb.JobSucceeded(
                    job_id=job_id, attempt=attempt, result=_result(value)))
        except Exception as error:  # the function's failure is the attempt's
            if context.cancelled.is_set():
                outcome = pb.ConnectRequest(cancelled=pb.JobCancelled(job_id=job_id, attempt=attempt))
            else:
                outcome = pb.ConnectRequest(failed=pb.JobFailed(
                    job_id=job_id, attempt=attempt, message=f"{type(error).__name__}: {error}"[:4096],
                    retryable=not isinstance(error, NonRetryable)))
        self._send(outcome)
        with self._idle:
            self._held.pop(key, None)
            self._idle.notify_all()


def _load(spec: str) -> Tuple[str, Callable[..., Any]]:
    """``[task=]module:function`` → (task name, function)."""
    name, _, target = spec.rpartition("=")
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"{spec!r}: write module:function (or task.name=module:function)")
    function: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        function = getattr(function, part)
    return name or f"{module_name}.{attribute}", function


def main(argv: Optional[list] = None) -> None:
    """``python -m jobmesh.worker [options] [task=]module:function …``: serves
    plain functions ``f(args, ctx)`` as tasks, each named after the function
    (``module.function``) unless given a name."""
    parser = argparse.ArgumentParser(prog="python -m jobmesh.worker", description=main.__doc__)
    parser.add_argument("functions", nargs="+", help="[task=]module:function")
    parser.add_argument("--dispatcher", default=os.environ.get("JOBMESH_DISPATCHER", "127.0.0.1:50053"))
    parser.add_argument("--token", default=os.environ.get("JOBMESH_WORKER_TOKEN"))
    parser.add_argument("--slots", type=int, default=int(os.environ.get("JOBMESH_WORKER_SLOTS", "4")))
    parser.add_argument("--worker-id", default=os.environ.get("JOBMESH_WORKER_ID", ""))
    parser.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.getcwd())
    worker = Worker(options.dispatcher, options.token, slots=options.slots, worker_id=options.worker_id,
                    shutdown_grace=options.shutdown_grace)
    for spec in options.functions:
        name, function = _load(spec)
        worker.tasks[name] = function
    worker.run()


if __name__ == "__main__":
    main()
