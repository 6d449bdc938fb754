"""Upstream's setup steps that every workflow runs, as fixtures; one server per backend for
the whole conformance suite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conformance.checks import Classic, classic_data
from tests.servers import BACKENDS, S3_BACKEND, server_fixture

if TYPE_CHECKING:
    from tests.conftest import Repo

server = server_fixture(
    "conformance",
    backends=[*BACKENDS, S3_BACKEND],
    scope="package",
    doc="A running registry per backend (blobs in S3 too), shared by every conformance workflow.",
)


@pytest.fixture
def classic() -> Classic:
    return classic_data()


@pytest.fixture
def other(repo: Repo) -> str:
    """A second repository in the same project (upstream: the cross-mount namespace)."""
    repo.server.create_repository(repo.project, "other")
    return f"{repo.project}/other"
