"""Python functions served as tasks by jobmesh.Worker, against the real
dispatcher: results, progress and logs, retries, cancellation, async functions,
and a worker process that drains on SIGTERM."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import jobmesh


@pytest.fixture()
def serve(dispatcher, worker_token):
    """Starts a Worker with the given functions in a thread; stops it after."""
    started = []

    def start(tasks, slots=4):
        worker = jobmesh.Worker(dispatcher, worker_token, slots=slots, shutdown_grace=5)
        worker.tasks.update(tasks)
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=15)


def running(client, job_id, limit=20):
    deadline = time.time() + limit
    while client.get(job_id).state != "running":
        assert time.time() < deadline, f"{job_id} never started"
        time.sleep(0.05)


def test_a_function_reports_progress_logs_and_its_result(client, serve, unique):
    task = f"py.report{unique}"

    def report(args, ctx):
        # Struct numbers are doubles: 21 arrives as 21.0.
        ctx.log(f"working on {int(args['n'])}")
        ctx.progress(50, "half way")
        time.sleep(0.3)
        return {"doubled": args["n"] * 2}

    serve({task: report})
    job = client.submit(task, {"n": 21})
    seen = list(client.watch(job.id))
    assert seen[-1].state == "succeeded", seen[-1]
    assert seen[-1].result == {"doubled": 42}
    assert any(s.percent == 50 and s.message == "half way" for s in seen), [(s.percent, s.message) for s in seen]
    assert [line.line for line in client.logs(job.id)] == ["working on 21"]


def test_a_raised_exception_is_retried_then_fails(client, serve, unique):
    task, final = f"py.flaky{unique}", f"py.final{unique}"
    calls = []

    def flaky(args, ctx):
        calls.append(ctx.attempt)
        raise ValueError(f"bad luck on attempt {ctx.attempt}")

    def final_failure(args, ctx):
        raise jobmesh.NonRetryable("this can never work")

    serve({task: flaky, final: final_failure})
    job = client.submit(task, max_attempts=2)
    done = client.wait(job.id, timeout=30)
    assert (done.state, done.attempt) == ("failed", 2), done
    assert done.error == "ValueError: bad luck on attempt 2"
    assert calls == [1, 2]
    once = client.wait(client.submit(final, max_attempts=3).id, timeout=30)
    assert (once.state, once.attempt) == ("failed", 1), once
    assert "this can never work" in once.error


def test_cancellation_reaches_a_running_function(client, serve, unique):
    task = f"py.patient{unique}"
    noticed = threading.Event()

    def patient(args, ctx):
        ctx.cancelled.wait(30)
        noticed.set()

    serve({task: patient})
    job = client.submit(task)
    running(client, job.id)
    client.cancel(job.id)
    assert client.wait(job.id, timeout=30).state == "cancelled"
    assert noticed.is_set()


def test_async_functions_run_too(client, serve, unique):
    task = f"py.async{unique}"

    async def later(args, ctx):
        await asyncio.sleep(0.1)
        return {"awaited": args["x"]}

    serve({task: later})
    done = client.wait(client.submit(task, {"x": "yes"}).id, timeout=30)
    assert (done.state, done.result) == ("succeeded", {"awaited": "yes"})


def test_sigterm_drains_the_worker_process(client, dispatcher, worker_token, unique):
    task = f"py.slow{unique}"
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=str(here), JOBMESH_WORKER_TOKEN=worker_token)
    process = subprocess.Popen(
        [sys.executable, "-m", "jobmesh.worker", "--dispatcher", dispatcher, "--slots", "2",
         f"{task}=slow_tasks:slow"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = client.submit(task, {"steps": 4, "step_seconds": 0.5})
        running(client, first.id)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Submitted while it drains: not sent to it, so not re-queued when it leaves.
        second = client.submit(task, {"steps": 1})
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        done = client.get(first.id)
        assert (done.state, done.attempt) == ("succeeded", 1), (done, output)
        waiting = client.get(second.id)
        assert (waiting.state, waiting.attempt) == ("queued", 1), (waiting, output)
        client.cancel(second.id)
    finally:
        if process.poll() is None:
            process.kill()


def _free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that no
    outgoing connection takes it while the dispatcher is down for its restart."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    low, high = (20000, first) if first > 21000 else (first - 1000, first)
    for port in random.sample(range(low, high), min(200, high - low)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port in {low}..{high}")


def _mesh_setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"set {name}: this test starts a dispatcher of its own next to the mesh (see .ci/run)")
    return value


def test_the_worker_survives_a_dispatcher_restart(client, worker_token, unique):
    """A dispatcher process of its own, beside the mesh's (same job-store and
    NATS prefix), killed with SIGKILL and started again: the worker reconnects
    by itself and serves the next job."""
    binary = _mesh_setting("JOBMESH_BIN")
    port = _free_port()
    command = [binary, "dispatcher", "--listen", f"127.0.0.1:{port}",
               "--job-store-url", _mesh_setting("JOBMESH_JOB_STORE_URL"),
               "--nats-prefix", _mesh_setting("JOBMESH_NATS_PREFIX"),
               "--auth-hs256-secret-file", _mesh_setting("JOBMESH_DEV_KEY_FILE"),
               "--lease-ms", "3000"]
    task = f"py.after_restart{unique}"

    def answer(args, ctx):
        return {"answer": 42}

    def start():
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    dispatcher = start()
    worker = jobmesh.Worker(f"127.0.0.1:{port}", worker_token, slots=2)
    worker.tasks[task] = answer
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        first = client.wait(client.submit(task).id, timeout=30)
        assert first.state == "succeeded", first
        dispatcher.send_signal(signal.SIGKILL)
        dispatcher.wait(timeout=10)
        time.sleep(1)
        dispatcher = start()
        second = client.wait(client.submit(task).id, timeout=60)
        assert (second.state, second.result) == ("succeeded", {"answer": 42}), second
    finally:
        worker.stop()
        thread.join(timeout=15)
        dispatcher.kill()
        dispatcher.wait(timeout=10)
