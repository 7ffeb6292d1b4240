#!/usr/bin/env python3
"""Submit a job to a jobmesh gateway and watch it until it ends.

If you come from Celery, this is the equivalent of

    result = my_task.delay(**args)
    result.get(timeout=60)

except that the client talks plain gRPC to the gateway (no broker or result
backend to configure) and gets a live stream of the job's progress instead of
polling for it.

Usage (after `pip install -r requirements.txt` and `./generate.sh`):

    python3 submit_and_watch.py --task demo.sleep --args '{"seconds": 2, "steps": 4}'

Exit status: 0 if the job SUCCEEDED, 1 if it ended in any other state (FAILED,
CANCELLED), 2 on a gRPC error (gateway unreachable, invalid request, deadline
exceeded, ...).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2

# ./generate.sh writes the stubs to jobmesh_pb/, laid out like the proto import
# paths (jobmesh/v1/..., google/api/...). Putting that directory on sys.path
# lets the generated modules import each other.
sys.path.insert(0, str(Path(__file__).resolve().parent / "jobmesh_pb"))
try:
    from jobmesh.v1 import (
        job_pb2,
        job_service_pb2,
        job_service_pb2_grpc,
        task_service_pb2,
        task_service_pb2_grpc,
    )
except ImportError as exc:
    sys.exit(f"cannot import the generated stubs ({exc}); run ./generate.sh first")

TERMINAL_STATES = {
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Submit a jobmesh job and stream its progress until it ends."
    )
    parser.add_argument(
        "--gateway",
        default=os.environ.get("JOBMESH_GATEWAY", "127.0.0.1:50051"),
        help="gateway address, host:port (default: $JOBMESH_GATEWAY or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("JOBMESH_TOKEN"),
        help="bearer token (JWT) sent as `authorization` metadata "
        "(default: $JOBMESH_TOKEN; `jobmesh dev` prints one, `jobmesh token` mints one)",
    )
    parser.add_argument(
        "--task", default="demo.sleep", help="task to run (default: %(default)s)"
    )
    parser.add_argument(
        "--args",
        default='{"seconds": 2, "steps": 4}',
        help="task arguments, a JSON object (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the job to end, submission included "
        "(default: %(default)s)",
    )
    args = parser.parse_args()

    # Task arguments travel as a google.protobuf.Struct, i.e. a JSON object.
    try:
        args.task_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        parser.error(f"--args is not valid JSON: {exc}")
    if not isinstance(args.task_args, dict):
        parser.error("--args must be a JSON object, e.g. '{\"seconds\": 2}'")
    return args


def state_name(state: int) -> str:
    """JOB_STATE_RUNNING -> RUNNING."""
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def struct_to_python(struct: struct_pb2.Struct) -> dict:
    """Converts a Struct to plain Python values.

    A Struct stores every number as a double (like JSON in JavaScript), so the
    4 you submitted comes back as 4.0; whole numbers that a double represents
    exactly are turned back into ints for readability.
    """

    def tidy(value):
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            return int(value)
        if isinstance(value, dict):
            return {key: tidy(item) for key, item in value.items()}
        if isinstance(value, list):
            return [tidy(item) for item in value]
        return value

    return tidy(json_format.MessageToDict(struct))


def describe(job: job_pb2.Job) -> str:
    """One line per watch event: state, percent, progress message."""
    line = f"{state_name(job.state):<9} {job.progress.percent:3d}%"
    if job.progress.message:
        line += f"  {job.progress.message}"
    # While a failed attempt waits for its retry, the job is QUEUED again and
    # `error` tells why the previous attempt failed.
    if job.state == job_pb2.JOB_STATE_QUEUED and job.HasField("error"):
        error = job.error
        line += f"  (attempt {error.attempt} failed: {error.message}; will retry)"
    if job.cancel_requested and job.state == job_pb2.JOB_STATE_RUNNING:
        line += "  (cancel requested)"
    return line


def warn_if_no_worker(
    channel: grpc.Channel, task: str, timeout: float, metadata: tuple
) -> None:
    """Warns when no connected worker offers the task.

    jobmesh accepts jobs for any well-formed task name and keeps them QUEUED
    until a worker offering that task connects, so a typo in --task would
    otherwise just look like a job that never starts.
    """
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    known = tasks.ListTasks(
        task_service_pb2.ListTasksRequest(), timeout=timeout, metadata=metadata
    ).tasks
    if not any(info.name == task and info.workers > 0 for info in known):
        print(
            f"warning: no connected worker offers {task!r}; "
            "the job will stay QUEUED until one does",
            file=sys.stderr,
        )


def run(opts: argparse.Namespace) -> int:
    # One deadline for the whole exchange; each call gets what is left of it.
    deadline = time.monotonic() + opts.timeout

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.0)

    # Every call carries the caller's token; the gateway takes the tenant from it.
    metadata = (("authorization", f"Bearer {opts.token}"),) if opts.token else ()

    # A channel is cheap to keep and reconnects by itself; close it when done.
    with grpc.insecure_channel(opts.gateway) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)

        # SubmitJob returns once the job is durably stored, in state QUEUED.
        request = job_service_pb2.SubmitJobRequest(
            task=opts.task,
            args=json_format.ParseDict(opts.task_args, struct_pb2.Struct()),
        )
        job = jobs.SubmitJob(request, timeout=remaining(), metadata=metadata).job
        print(f"submitted job {job.id} ({job.task}) to {opts.gateway}")
        warn_if_no_worker(channel, job.task, timeout=remaining(), metadata=metadata)

        # WatchJob streams the current snapshot first, then every change, and
        # ends after the terminal state. The deadline bounds the whole stream:
        # if the job is still running then, the call fails with
        # DEADLINE_EXCEEDED (the job itself keeps running).
        try:
            watch = jobs.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job.id),
                timeout=remaining(),
                metadata=metadata,
            )
            for event in watch:
                job = event.job
                print(describe(job), flush=True)
                if job.state in TERMINAL_STATES:
                    break
        except KeyboardInterrupt:
            # Watching is not owning: the job goes on without us. Cancelling it
            # would be jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=...)).
            print(f"\nstopped watching; job {job.id} is still {state_name(job.state)}")
            return 130

    if job.state == job_pb2.JOB_STATE_SUCCEEDED:
        print("result:", json.dumps(struct_to_python(job.result)))
        return 0
    if job.state in TERMINAL_STATES:
        error = job.error
        detail = f"attempt {error.attempt} of {job.max_attempts}"
        if job.state == job_pb2.JOB_STATE_FAILED and not error.retryable:
            detail += ", not retryable"
        print(f"error: {error.message} ({detail})")
    else:
        print(f"watch ended before the job did; last state {state_name(job.state)}")
    return 1


def main() -> int:
    opts = parse_args()
    try:
        return run(opts)
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as err:
        # Every gRPC failure carries a status code and a human-readable detail,
        # e.g. INVALID_ARGUMENT for a malformed task name, UNAVAILABLE when the
        # gateway cannot be reached, DEADLINE_EXCEEDED when --timeout ran out.
        print(f"gRPC error {err.code().name}: {err.details()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
