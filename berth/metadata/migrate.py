"""Apply Alembic migrations programmatically (at `berth serve` and before CLI verbs)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).parent / "migrations"

# The PostgreSQL advisory lock every node takes around its migrations ("berth" in ASCII):
# nodes started together, on a fresh database or after an upgrade, migrate one at a time,
# and the later ones find the schema current.
MIGRATION_LOCK = 0x6265727468
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE


class NewerSchema(RuntimeError):
    """The database was migrated by a newer Berth than this one."""


class MissingPrivilege(RuntimeError):
    """The database user may not create or change Berth's tables (PostgreSQL's message)."""


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def refuse_unknown_revisions(current: Iterable[str], script: ScriptDirectory) -> None:
    """Refuse a schema at a revision this Berth has no migration for: a newer Berth made it,
    and this one would misread tables it does not know (or fail deep inside Alembic)."""
    known = {revision.revision for revision in script.walk_revisions()}
    for revision in current:
        if revision not in known:
            raise NewerSchema(
                f"the database's schema is at revision {revision}, which this Berth does not "
                f"know (its newest is {script.get_current_head()}): a newer version of Berth "
                'has migrated it. Run that version here too (README, "Upgrading"); a schema '
                "cannot be taken back to an older version except by restoring a backup of the "
                "database"
            )


def upgrade(database_url: str) -> None:
    """Bring the schema up to date; NewerSchema if a newer Berth has moved it past this one,
    MissingPrivilege if the database user may not."""
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        command.upgrade(alembic_config(database_url), "head")
    except DBAPIError as exc:
        refusal = exc.orig
        if refusal is None or getattr(refusal, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        # The driver's own exception says it without the adapter's class name.
        raise MissingPrivilege(str(refusal.__cause__ or refusal)) from None
