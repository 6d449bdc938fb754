"""Storage drivers against real stores: the SeaweedFS S3 server of the session (`seaweedfs`,
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3 import SeaweedFS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the event loop the server uses


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of the test's own, for tests that kill it (the session's is shared)."""
    server = SeaweedFS(tmp_path / "seaweedfs").start()
    try:
        yield server
    finally:
        server.stop()
