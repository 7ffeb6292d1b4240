"""Schemathesis hooks for jobmesh's REST shim (loaded with SCHEMATHESIS_HOOKS=hooks).

Server streams (`GET /v1/jobs/{job_id}:watch`) answer newline-delimited JSON: one
object per line, each `{"result": ...}` or `{"error": ...}`. Schemathesis has no
built-in deserializer for `application/x-ndjson`; this one checks every line has
exactly that shape and hands the last line to the schema check (the document's
schema describes one line).
"""

import json

import schemathesis


@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    lines = [line for line in response.content.decode("utf-8").split("\n") if line]
    if not lines:
        raise ValueError("an empty stream: a watch sends at least the job's snapshot")
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
