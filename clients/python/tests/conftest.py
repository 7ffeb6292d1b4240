"""The tests talk to a running jobmesh (what .ci/run starts with `jobmesh dev`):

    JOBMESH_GATEWAY=127.0.0.1:50051 JOBMESH_DISPATCHER=127.0.0.1:50053 \\
    JOBMESH_TOKEN=$(jobmesh token) JOBMESH_WORKER_TOKEN=$(jobmesh token --scope worker) \\
    python -m pytest clients/python/tests

Nothing is mocked: the client calls the real gateway, the workers connect to the
real dispatcher, jobs are stored in PostgreSQL and delivered through NATS.
"""

import os
import uuid

import pytest

import jobmesh


def _need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"set {name} (see clients/python/tests/conftest.py)")
    return value


@pytest.fixture(scope="session")
def gateway() -> str:
    return os.environ.get("JOBMESH_GATEWAY", "127.0.0.1:50051")


@pytest.fixture(scope="session")
def dispatcher() -> str:
    return os.environ.get("JOBMESH_DISPATCHER", "127.0.0.1:50053")


@pytest.fixture(scope="session")
def worker_token() -> str:
    return _need("JOBMESH_WORKER_TOKEN")


@pytest.fixture()
def client(gateway):
    with jobmesh.Client(gateway, _need("JOBMESH_TOKEN")) as client:
        yield client


@pytest.fixture()
def unique() -> str:
    """A suffix that keeps this test's task names its own."""
    return uuid.uuid4().hex[:10]
