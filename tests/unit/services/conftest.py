"""A real SQLite metadata database per test, migrated to the current schema."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from berth.metadata.migrate import upgrade


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated once a session (migrations take seconds); each test gets a copy."""
    path = tmp_path_factory.mktemp("schema") / "berth.db"
    upgrade(sqlite_url(path))
    return path


@pytest.fixture
def database_url(migrated_database: Path, tmp_path: Path) -> str:
    """An empty database of this test's own, as `berth init` leaves it."""
    copy = tmp_path / "berth.db"
    shutil.copyfile(migrated_database, copy)
    return sqlite_url(copy)
