"""Storage tests run their coroutines on asyncio, the event loop the server uses."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
