"""jobmesh for Python: a client of the gateway and a worker serving plain
functions as tasks. See clients/python/README.md."""

__version__ = "0.1.0"

from ._errors import JobmeshError, NonRetryable  # noqa: E402
from .client import STATES, TERMINAL, Client, Job, LogLine  # noqa: E402
from .worker import Context, Worker  # noqa: E402

__all__ = ["Client", "Context", "Job", "JobmeshError", "LogLine", "NonRetryable", "STATES", "TERMINAL", "Worker"]
