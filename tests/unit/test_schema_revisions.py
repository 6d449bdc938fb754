"""What an admin verb checks a schema against, read without Alembic: the same head and known
revisions as Alembic's own reading of the migrations, and the same revision of a database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from berth.metadata.database import open_engine
from berth.metadata.migrate import upgrade
from berth.metadata.revisions import (
    MIGRATIONS,
    NewerSchema,
    OlderSchema,
    current_revision,
    require_revision_current,
    revision_sync,
    revisions,
    schema_head,
)


def test_the_migration_files_name_the_revisions_alembic_finds() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    assert schema_head() == script.get_current_head()
    assert revisions().known == {revision.revision for revision in script.walk_revisions()}
    assert len(revisions().known) > 20


def test_a_directory_of_migrations_with_two_heads_is_refused(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    for name, down in (("a", None), ("b", "a"), ("c", "a")):
        (tmp_path / "versions" / f"{name}.py").write_text(
            f'revision: str = "{name}"\ndown_revision: str | None = {down and repr(down)}\n'
        )
    with pytest.raises(RuntimeError, match=r"one head revision, found \['b', 'c'\]"):
        revisions(tmp_path)


def both_readings(url: str) -> tuple[str | None, str | None]:
    """The database's revision as Berth reads it, and as Alembic does."""

    def alembic_reading(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async def read() -> tuple[str | None, str | None]:
        engine = open_engine(url)
        try:
            async with engine.connect() as connection:
                ours = await connection.run_sync(revision_sync)
                theirs = await connection.run_sync(alembic_reading)
                return ours, theirs
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_database_s_revision_is_read_as_alembic_reads_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}"
    assert both_readings(url) == (None, None)  # no schema yet: no alembic_version table
    with pytest.raises(OlderSchema, match=r"at revision \(none\), older than this Berth's"):
        require_revision_current(current_revision(url))
    upgrade(url)
    assert both_readings(url) == (schema_head(), schema_head())
    assert require_revision_current(current_revision(url)) == schema_head()


def test_a_revision_no_migration_names_is_a_newer_berth_s() -> None:
    with pytest.raises(NewerSchema, match="revision 9999_later, which this Berth does not know"):
        require_revision_current("9999_later")
    with pytest.raises(OlderSchema, match="at revision 0001, older"):
        require_revision_current("0001")
