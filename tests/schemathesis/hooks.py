"""Schemathesis hooks for jobmesh's REST shim (loaded with SCHEMATHESIS_HOOKS=hooks).

Server streams (`GET /v1/jobs/{job_id}:watch`, `/v1/jobs/{job_id}/logs`,
`/v1/jobs:watch`) answer newline-delimited JSON: one
object per line, each `{"result": ...}` or `{"error": ...}`. Schemathesis has no
built-in deserializer for `application/x-ndjson`; this one checks every line has
exactly that shape and hands the last line to the schema check (the document's
schema describes one line).
"""

import json

import schemathesis


# Streams with no end of their own (every change of all jobs) or that follow a job
# no worker runs: a short deadline keeps each call short. The stream then ends with
# its DEADLINE_EXCEEDED line, which the checks read like any other line.
SHORT_DEADLINE = {"/v1/jobs:watch": "1S", "/v1/jobs/{job_id}/logs": "1S"}


@schemathesis.hook
def before_call(ctx, case, kwargs):
    deadline = SHORT_DEADLINE.get(case.operation.path)
    if deadline is None:
        return
    if case.headers is None:
        case.headers = {}
    case.headers["Grpc-Timeout"] = deadline
    headers = kwargs.get("headers") if isinstance(kwargs, dict) else None
    if isinstance(headers, dict):
        headers["Grpc-Timeout"] = deadline


@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    lines = [line for line in response.content.decode("utf-8").split("\n") if line]
    if not lines:
        path = getattr(getattr(response, "request", None), "url", "") or ""
        if path.split("?")[0].endswith(":watch") and "/v1/jobs/" in path:
            raise ValueError("an empty stream: a watch sends at least the job's snapshot")
        # A job's log with no lines is an empty stream: no line to check.
        return {}
    last = None
    for number, line in enumerate(lines, start=1):
        value = json.loads(line)
        if not isinstance(value, dict) or len(value) != 1 or not (
            "result" in value or "error" in value
        ):
            raise ValueError(f"line {number} is not {{'result': ...}} or {{'error': ...}}: {line}")
        if "error" in value and number != len(lines):
            raise ValueError(f"line {number} is an error but the stream goes on")
        last = value
    return last
