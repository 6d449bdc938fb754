"""Apply Alembic migrations programmatically (at `berth serve` and `berth init`). What an
admin verb checks (that the schema is the one this Berth reads: a verb never migrates, an
older server may still be serving on the database) is in revisions.py, without Alembic."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from berth.metadata.database import read_once
from berth.metadata.presence import LIVE_SECONDS, ServingProcess, live_processes_sync
from berth.metadata.revisions import (
    MIGRATIONS,
    Revisions,
    current_revision,
    refuse_unknown,
)

# The PostgreSQL advisory lock every node takes around its migrations ("berth" in ASCII):
# nodes started together, on a fresh database or after an upgrade, migrate one at a time,
# and the later ones find the schema current.
MIGRATION_LOCK = 0x6265727468
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE
# How often a node about to migrate looks again whether the older servers have gone.
WAIT_STEP_SECONDS = 1.0


class ServersServing(RuntimeError):
    """Server processes of an older version still serve on the database this Berth would
    migrate (their rows in `serving_processes` kept being renewed while it waited)."""

    def __init__(self, processes: list[ServingProcess], current: str, head: str) -> None:
        self.processes = processes
        listed = "; ".join(process.describe() for process in processes)
        several = len(processes) != 1
        super().__init__(
            f"{len(processes)} server process{'es' if several else ''} of an older Berth "
            f"still serve{'' if several else 's'} on this database ({listed}). Migrating its "
            f"schema from revision {current} to {head} under {'them' if several else 'it'} "
            "would break it: stop every node of the "
            'older version first, then start this one (README, "Upgrading"); `berth status` '
            "lists the processes serving"
        )


class MissingPrivilege(RuntimeError):
    """The database user may not create or change Berth's tables (PostgreSQL's message)."""


def alembic_config(database_url: str, migrations: Path = MIGRATIONS) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@dataclass(frozen=True)
class Migrated:
    """What an upgrade did: the schema's revision before (None: the database had no schema)
    and after."""

    before: str | None
    after: str


# Where env.py leaves the revisions it found and left, for upgrade() to say.
BEFORE, AFTER = "berth_revision_before", "berth_revision_after"


def refuse_unknown_revisions(current: Iterable[str], script: ScriptDirectory) -> None:
    """As `refuse_unknown`, for the revisions of the migrations Alembic runs (env.py)."""
    known = {revision.revision for revision in script.walk_revisions()}
    refuse_unknown(current, Revisions(frozenset(known), str(script.get_current_head())))


def upgrade(
    database_url: str,
    *,
    migrations: Path = MIGRATIONS,
    waiting: Callable[[list[ServingProcess]], None] | None = None,
    patience: float = LIVE_SECONDS + 2 * WAIT_STEP_SECONDS,
) -> Migrated | None:
    """Bring the schema up to date, saying from which revision to which (None when it was
    current already); NewerSchema if a newer Berth has moved it past this one,
    MissingPrivilege if the database user may not, ServersServing if servers of the older
    version still serve on it after waiting `patience` seconds for them (`waiting` is told
    whom it waits for)."""
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    _wait_for_older_servers(database_url, migrations, waiting, patience)
    config = alembic_config(database_url, migrations)
    try:
        command.upgrade(config, "head")
    except DBAPIError as exc:
        refusal = exc.orig
        if refusal is None or getattr(refusal, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        # The driver's own exception says it without the adapter's class name.
        raise MissingPrivilege(str(refusal.__cause__ or refusal)) from None
    # Read under the migration lock (env.py): a node that found the schema current, another
    # node having just migrated it, says nothing.
    before, after = config.attributes.get(BEFORE), config.attributes[AFTER]
    return None if before == after else Migrated(before, after)


def _wait_for_older_servers(
    database_url: str,
    migrations: Path,
    waiting: Callable[[list[ServingProcess]], None] | None,
    patience: float,
) -> None:
    """Before a migration: wait until no server process of the older version is left on the
    database (a process killed without stopping counts as gone once its row has not been
    renewed for LIVE_SECONDS), or refuse. Nothing to wait for on a new database, on one at
    this Berth's revision, or on one a newer Berth migrated (refused as such)."""
    current = current_revision(database_url)
    script = ScriptDirectory(str(migrations))
    head = str(script.get_current_head())
    known = {revision.revision for revision in script.walk_revisions()}
    if current is None or current == head or current not in known:
        return
    deadline = time.monotonic() + patience
    try:
        processes = live_processes_at(database_url)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
            return  # a user who may not read Berth's tables: the migration refuses it, saying so
        raise
    if processes and waiting is not None:
        waiting(processes)
    while processes and time.monotonic() < deadline:
        time.sleep(WAIT_STEP_SECONDS)
        processes = live_processes_at(database_url)
    if processes:
        raise ServersServing(processes, current, head)


def live_processes_at(database_url: str) -> list[ServingProcess]:
    """The server processes serving on the database now (none before the schema had them)."""
    return read_once(database_url, live_processes_sync)
