"""Storage drivers against real stores: the S3 servers of the session (`seaweedfs` and `rgw`,
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3 import S3TestServer, SeaweedFS, seaweedfs_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the event loop the server uses


@pytest.fixture(
    scope="module", params=["seaweedfs", pytest.param("rgw", marks=pytest.mark.ceph_rgw)]
)
def object_store(request: pytest.FixtureRequest) -> S3TestServer:
    """Each S3 server of the tests in turn: SeaweedFS, then Ceph RGW."""
    server: S3TestServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of the test's own, for tests that kill it (the session's is shared)."""
    with seaweedfs_server(tmp_path / "seaweedfs") as server:
        yield server
