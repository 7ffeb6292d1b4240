"""A client of the jobmesh gateway: submit, read, list, count, watch, cancel
jobs and read their logs, over gRPC, with every refusal raised as a
``JobmeshError``."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from ._errors import JobmeshError
from .v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

#: Job states by their short names (``"queued"`` … ``"cancelled"``).
STATES = {
    "queued": job_pb2.JOB_STATE_QUEUED,
    "running": job_pb2.JOB_STATE_RUNNING,
    "succeeded": job_pb2.JOB_STATE_SUCCEEDED,
    "failed": job_pb2.JOB_STATE_FAILED,
    "cancelled": job_pb2.JOB_STATE_CANCELLED,
}
_NAMES = {number: name for name, number in STATES.items()}
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _to_struct(values: Optional[Dict[str, Any]]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if values:
        out.update(values)
    return out


def _from_struct(value: struct_pb2.Struct) -> Dict[str, Any]:
    return json_format.MessageToDict(value)


def _time(value: timestamp_pb2.Timestamp) -> Optional[_dt.datetime]:
    if not value.seconds and not value.nanos:
        return None
    return value.ToDatetime(tzinfo=_dt.timezone.utc)


@dataclass
class Job:
    """A job as the gateway returned it (``raw`` is the protobuf message)."""

    id: str
    task: str
    state: str
    args: Dict[str, Any]
    result: Optional[Dict[str, Any]]
    error: Optional[str]
    percent: int
    message: str
    attempt: int
    max_attempts: int
    labels: Dict[str, str]
    cancel_requested: bool
    version: int
    create_time: Optional[_dt.datetime]
    start_time: Optional[_dt.datetime]
    finish_time: Optional[_dt.datetime]
    trace_id: str
    raw: job_pb2.Job = field(repr=False)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def of(cls, job: job_pb2.Job) -> "Job":
        return cls(
            id=job.id,
            task=job.task,
            state=_NAMES.get(job.state, "unspecified"),
            args=_from_struct(job.args),
            result=_from_struct(job.result) if job.HasField("result") else None,
            error=job.error.message if job.HasField("error") else None,
            percent=job.progress.percent,
            message=job.progress.message,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            labels=dict(job.labels),
            cancel_requested=job.cancel_requested,
            version=job.version,
            create_time=_time(job.create_time),
            start_time=_time(job.start_time),
            finish_time=_time(job.finish_time),
            trace_id=job.trace_id,
            raw=job,
        )


@dataclass
class LogLine:
    """One line a job's attempt printed."""

    sequence: int
    attempt: int
    time: Optional[_dt.datetime]
    line: str
    stream: str
    truncated: bool


def _call(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except grpc.RpcError as error:
        raise JobmeshError.from_rpc_error(error) from None


def _stream(responses) -> Iterator[Any]:
    try:
        yield from responses
    except grpc.RpcError as error:
        raise JobmeshError.from_rpc_error(error) from None


class Client:
    """``Client("127.0.0.1:50051", token)``: the gateway's address and a bearer
    token (``jobmesh token``). ``timeout`` is the deadline of each unary call,
    in seconds; streams run until they end or are closed."""

    def __init__(self, address: str = "127.0.0.1:50051", token: Optional[str] = None, *,
                 timeout: float = 30.0, channel: Optional[grpc.Channel] = None):
        self._channel = channel or grpc.insecure_channel(address)
        self._jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _unary(self, method, request):
        return _call(method, request, metadata=self._metadata, timeout=self._timeout)

    def submit(self, task: str, args: Optional[Dict[str, Any]] = None, *,
               labels: Optional[Dict[str, str]] = None, priority: int = 0,
               max_attempts: int = 0, timeout: Optional[float] = None,
               schedule_time: Optional[_dt.datetime] = None,
               idempotency_key: str = "") -> Job:
        """Submits a job; it is durably stored when this returns. ``timeout`` is
        the execution timeout of one attempt, in seconds."""
        request = job_service_pb2.SubmitJobRequest(
            task=task, args=_to_struct(args), labels=labels or {}, priority=priority,
            max_attempts=max_attempts, idempotency_key=idempotency_key)
        if timeout is not None:
            request.timeout.CopyFrom(duration_pb2.Duration(
                seconds=int(timeout), nanos=int((timeout % 1) * 1e9)))
        if schedule_time is not None:
            request.schedule_time.FromDatetime(schedule_time.astimezone(_dt.timezone.utc))
        return Job.of(self._unary(self._jobs.SubmitJob, request).job)

    def get(self, job_id: str) -> Job:
        return Job.of(self._unary(self._jobs.GetJob, job_service_pb2.GetJobRequest(job_id=job_id)).job)

    def list(self, *, task: str = "", state: str = "", labels: Optional[Dict[str, str]] = None,
             page_size: int = 100) -> Iterator[Job]:
        """Every matching job, newest first, a page at a time."""
        token = ""
        wanted = [f"{k}={v}" for k, v in (labels or {}).items()]
        while True:
            page = self._unary(self._jobs.ListJobs, job_service_pb2.ListJobsRequest(
                page_size=page_size, page_token=token, task=task,
                state=STATES.get(state, job_pb2.JOB_STATE_UNSPECIFIED), labels=wanted))
            for job in page.jobs:
                yield Job.of(job)
            token = page.next_page_token
            if not token:
                return

    def count(self, *, task: str = "", labels: Optional[Dict[str, str]] = None) -> Dict[str, int]:
        """How many jobs are in each state (each count stops at 10 000)."""
        answer = self._unary(self._jobs.CountJobs, job_service_pb2.CountJobsRequest(
            task=task, labels=[f"{k}={v}" for k, v in (labels or {}).items()]))
        return {_NAMES.get(c.state, "unspecified"): c.count for c in answer.counts}

    def cancel(self, job_id: str) -> Job:
        return Job.of(self._unary(self._jobs.CancelJob, job_service_pb2.CancelJobRequest(job_id=job_id)).job)

    def watch(self, job_id: str) -> Iterator[Job]:
        """The job now, then after each change, until it has ended."""
        responses = self._jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id),
                                        metadata=self._metadata)
        for message in _stream(responses):
            yield Job.of(message.job)

    def wait(self, job_id: str, timeout: Optional[float] = None) -> Job:
        """Blocks until the job has ended (or ``timeout`` seconds passed: then
        ``JobmeshError`` DEADLINE_EXCEEDED) and returns it."""
        responses = self._jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id),
                                        metadata=self._metadata, timeout=timeout)
        last = None
        for message in _stream(responses):
            last = Job.of(message.job)
        if last is None:
            raise JobmeshError(grpc.StatusCode.UNKNOWN, "the watch ended without a snapshot")
        return last

    def logs(self, job_id: str, *, follow: bool = False, attempt: int = 0,
             after_sequence: int = 0) -> Iterator[LogLine]:
        """The job's log lines; with ``follow``, new ones as they come until it ends."""
        responses = self._jobs.ReadJobLogs(job_service_pb2.ReadJobLogsRequest(
            job_id=job_id, follow=follow, attempt=attempt, after_sequence=after_sequence),
            metadata=self._metadata)
        for message in _stream(responses):
            entry = message.entry
            yield LogLine(sequence=entry.sequence, attempt=entry.attempt, time=_time(entry.time),
                          line=entry.line, stream=job_pb2.LogStream.Name(entry.stream),
                          truncated=entry.truncated)


__all__: List[str] = ["Client", "Job", "LogLine", "STATES", "TERMINAL"]
