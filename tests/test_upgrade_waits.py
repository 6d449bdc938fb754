"""An upgrade never migrates the schema under a server of the older version: every serving
process says it serves (`serving_processes`, renewed every few seconds, deleted when it stops),
`berth status` lists them, and a newer Berth's migration waits for them to be gone, or refuses
(README, "Upgrading")."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from berth.metadata.migrate import Migrated, ServersServing, live_processes_at, upgrade
from berth.metadata.presence import ServingProcess
from berth.metadata.revisions import MIGRATIONS, current_revision, schema_head
from tests.servers import BerthServer, running_server, wait_for

NEXT = "0999_a_newer_berth"


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    with running_server(request, "older") as server:
        wait_for(lambda: live_processes_at(database_url(server)), 30, "the server's presence row")
        yield server


@pytest.fixture
def newer_migrations(tmp_path: Path) -> Path:
    """The migrations of a Berth one revision newer than this one: this Berth's, and one more
    that adds a table."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "versions" / f"{NEXT}.py").write_text(
        f'''"""a newer Berth's migration"""
import sqlalchemy as sa
from alembic import op

revision = "{NEXT}"
down_revision = "{schema_head()}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("newer_berth", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("newer_berth")
'''
    )
    return directory


def database_url(server: BerthServer) -> str:
    return f"sqlite+aiosqlite:///{server.data_dir / 'berth.db'}"


def test_berth_status_lists_the_processes_serving(server: BerthServer) -> None:
    (worker,) = server.worker_pids()
    serving = server.cli_json("status")["serving_processes"]
    assert [process["holder"].rsplit(":", 1)[1] for process in serving] == [str(worker)]
    assert serving[0]["schema_revision"] == schema_head()
    assert f":{worker} (Berth " in server.cli("status").stdout
    server.stop()
    assert server.cli_json("status")["serving_processes"] == []  # it removed its row


def test_a_newer_berth_refuses_to_migrate_under_an_older_server(
    server: BerthServer, newer_migrations: Path
) -> None:
    (worker,) = server.worker_pids()
    seen: list[list[ServingProcess]] = []
    with pytest.raises(ServersServing) as refused:
        upgrade(database_url(server), migrations=newer_migrations, waiting=seen.append, patience=2)
    assert f":{worker} (Berth " in str(refused.value)
    assert "stop every node of the older version first" in str(refused.value)
    assert [[process.holder for process in found] for found in seen] == [
        [process.holder for process in refused.value.processes]
    ]
    assert current_revision(database_url(server)) == schema_head()  # nothing migrated
    assert httpx.get(f"{server.url}/v2/").status_code == 401  # and it still serves


def test_a_newer_berth_migrates_once_the_older_server_has_stopped(
    server: BerthServer, newer_migrations: Path
) -> None:
    outcome: list[Migrated | Exception | None] = []
    waiting = threading.Event()

    def migrate() -> None:
        try:
            outcome.append(
                upgrade(
                    database_url(server),
                    migrations=newer_migrations,
                    waiting=lambda _: waiting.set(),
                )
            )
        except Exception as exc:
            outcome.append(exc)

    migrating = threading.Thread(target=migrate)
    migrating.start()
    assert waiting.wait(60)
    assert not outcome  # waiting while the server serves
    server.stop()
    migrating.join(60)
    assert outcome == [Migrated(schema_head(), NEXT)]


def test_a_server_killed_on_this_machine_is_not_waited_for(
    server: BerthServer, newer_migrations: Path
) -> None:
    (worker,) = server.worker_pids()
    server.kill()  # its row stays, but its process is gone
    wait_for(lambda: not Path(f"/proc/{worker}").exists(), 20, "the worker to be gone")
    assert upgrade(database_url(server), migrations=newer_migrations, patience=0) == Migrated(
        schema_head(), NEXT
    )
