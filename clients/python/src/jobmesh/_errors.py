"""One exception for every refusal of the API, with what a program needs to act
on it: the gRPC code, the message (written for people), and the google.rpc
details the servers attach to every error (docs/api.md#errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class JobmeshError(Exception):
    """A call jobmesh refused or could not complete.

    ``reason`` (e.g. ``JOB_NOT_FOUND``, ``INVALID_FIELD``, ``TOKEN_EXPIRED``) is
    stable: match on it, not on the message. ``field_violations`` names the
    fields of an ``INVALID_ARGUMENT``; ``retry_delay`` (seconds) says when to
    try again after ``RESOURCE_EXHAUSTED`` or ``UNAVAILABLE``.
    """

    code: grpc.StatusCode
    message: str
    reason: Optional[str] = None
    metadata: Dict[str, str] = field(default_factory=dict)
    field_violations: List[Tuple[str, str]] = field(default_factory=list)
    retry_delay: Optional[float] = None

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "JobmeshError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        found = cls(code=code, message=message or "")
        status = None
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            status = None  # details that do not match the code and message
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                found.reason = info.reason
                found.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found.field_violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                found.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
        return found


class NonRetryable(Exception):
    """Raise it from a task to fail the job at once, without another attempt."""
