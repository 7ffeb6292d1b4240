#!/usr/bin/env python3
"""Submit a job to a jobmesh gateway and watch it until it ends, with the
jobmesh package (`pip install ./clients/python`).

If you come from Celery, this is

    result = my_task.delay(**args)
    result.get(timeout=60)

with a live stream of the job's progress instead of polling, and no broker or
result backend to configure.

    python3 submit_and_watch.py --task demo.sleep --args '{"seconds": 2, "steps": 4}'

Exit status: 0 if the job SUCCEEDED, 1 if it ended otherwise (FAILED,
CANCELLED), 2 when the call was refused or the gateway could not be reached.
"""

import argparse
import json
import os
import sys

import jobmesh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default=os.environ.get("JOBMESH_GATEWAY", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("JOBMESH_TOKEN"), help="default: $JOBMESH_TOKEN")
    parser.add_argument("--task", default="demo.sleep")
    parser.add_argument("--args", default='{"seconds": 2, "steps": 4}', help="a JSON object")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to watch")
    options = parser.parse_args()

    with jobmesh.Client(options.gateway, options.token) as client:
        try:
            job = client.submit(options.task, json.loads(options.args))
            print(f"submitted job {job.id} ({job.task}) to {options.gateway}")
            for job in client.watch(job.id):
                print(f"{job.state.upper():<10} {job.percent:>3}%  {job.message}", flush=True)
        except jobmesh.JobmeshError as error:
            # The code and message are for people; `reason` and
            # `field_violations` are for programs.
            print(f"refused: {error} (reason {error.reason}, fields {error.field_violations})", file=sys.stderr)
            return 2
    if job.state == "succeeded":
        print("result:", json.dumps(job.result))
        return 0
    print(f"error: {job.error} (attempt {job.attempt} of {job.max_attempts})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
