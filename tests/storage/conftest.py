"""Storage drivers against real stores: a SeaweedFS S3 server, shared by a test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3 import SeaweedFS, seaweedfs_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the event loop the server uses


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
