"""Storage drivers against real stores: the SeaweedFS S3 server of the session (`seaweedfs`,
tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the event loop the server uses
