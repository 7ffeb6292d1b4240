"""The client against a real gateway: submit, watch, list, count, cancel, logs,
and refusals raised with the details a program reads."""

import time

import grpc
import pytest

import jobmesh


def test_submit_watch_and_read_back(client, unique):
    job = client.submit("demo.sleep", {"seconds": 1, "steps": 4}, labels={"run": unique})
    assert job.state == "queued" and job.task == "demo.sleep"
    seen = list(client.watch(job.id))
    assert seen[-1].state == "succeeded"
    assert any(0 < s.percent < 100 for s in seen if s.state == "running"), [s.percent for s in seen]
    assert client.get(job.id).result is not None
    listed = list(client.list(labels={"run": unique}))
    assert [j.id for j in listed] == [job.id]
    counts = client.count(labels={"run": unique})
    assert counts["succeeded"] == 1 and counts["queued"] == 0


def test_wait_logs_and_args_round_trip(client):
    job = client.submit("demo.logs", {"lines": 3, "interval_ms": 10, "text": "from python"})
    done = client.wait(job.id, timeout=30)
    assert done.state == "succeeded", done
    lines = list(client.logs(job.id))
    assert len(lines) == 3 and all("from python" in line.line for line in lines), lines
    assert [line.sequence for line in lines] == [1, 2, 3]
    echo = client.wait(client.submit("demo.echo", {"n": 3, "words": ["a", "b"]}).id, timeout=30)
    assert echo.result == {"n": 3, "words": ["a", "b"]}, echo.result


def test_cancel_a_running_job(client):
    job = client.submit("demo.sleep", {"seconds": 60, "steps": 60})
    deadline = time.time() + 20
    while client.get(job.id).state != "running":
        assert time.time() < deadline, "the job never started"
        time.sleep(0.05)
    client.cancel(job.id)
    assert client.wait(job.id, timeout=30).state == "cancelled"


def test_refusals_carry_their_reason_and_field(client):
    with pytest.raises(jobmesh.JobmeshError) as refused:
        client.submit("demo.echo", priority=5000)
    error = refused.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_FIELD"
    assert error.field_violations == [("priority", "5000 is not between -1000 and 1000")]
    with pytest.raises(jobmesh.JobmeshError) as refused:
        client.get("01a209d6-0000-7000-8000-000000000000")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    assert refused.value.reason == "JOB_NOT_FOUND"
    assert refused.value.metadata == {"job_id": "01a209d6-0000-7000-8000-000000000000"}
    with pytest.raises(jobmesh.JobmeshError) as refused:
        client.submit("demo.echo", {"x": float("nan")})
    assert refused.value.field_violations[0][0] == "args"
