"""The schema revision a database is at and the one this Berth brings it to, known without
Alembic (whose import is a third of an admin verb's start): the revisions are read from the
migration files' `revision` and `down_revision` lines, the database's from `alembic_version`.
migrate.py, which runs the migrations, imports Alembic."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic's table of the revision a database's schema is at (one row).
VERSION_TABLE = "alembic_version"

_REVISION_LINE = re.compile(
    r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:None|[\"']([^\"']+)[\"'])", re.MULTILINE
)


class NewerSchema(RuntimeError):
    """The database was migrated by a newer Berth than this one, to `revision`."""

    def __init__(self, message: str, revision: str) -> None:
        super().__init__(message)
        self.revision = revision


class OlderSchema(RuntimeError):
    """The database's schema is older than this Berth's: `berth serve` (of this version) has
    not migrated it yet."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current, self.head = current, head
        super().__init__(
            f"the database's schema is at revision {current or '(none)'}, older than this "
            f"Berth's {head}"
        )


@dataclass(frozen=True)
class Revisions:
    """The revisions a directory of migrations knows, and its newest (its only head)."""

    known: frozenset[str]
    head: str


@cache
def revisions(migrations: Path = MIGRATIONS) -> Revisions:
    """The revisions of the migrations in `migrations`/versions, as their files name them."""
    known: set[str] = set()
    revised: set[str] = set()
    for path in (migrations / "versions").glob("*.py"):
        named = dict((m[0], m[1]) for m in _REVISION_LINE.findall(path.read_text()))
        if named.get("revision"):
            known.add(named["revision"])
            if named.get("down_revision"):
                revised.add(named["down_revision"])
    heads = known - revised
    if len(heads) != 1:
        raise RuntimeError(f"{migrations}: expected one head revision, found {sorted(heads)}")
    return Revisions(frozenset(known), heads.pop())


def schema_head(migrations: Path = MIGRATIONS) -> str:
    """The revision this Berth brings a database's schema to."""
    return revisions(migrations).head


def refuse_unknown(current: Iterable[str], known: Revisions) -> None:
    """Refuse a schema at a revision this Berth has no migration for: a newer Berth made it,
    and this one would misread tables it does not know (or fail deep inside Alembic)."""
    for revision in current:
        if revision not in known.known:
            raise NewerSchema(
                f"the database's schema is at revision {revision}, which this Berth does not "
                f"know (its newest is {known.head}): a newer version of Berth "
                "has migrated it. Run that version here too (`berth --version` says which "
                'schema revision a Berth brings a database to; README, "Upgrading"); a schema '
                "cannot be taken back to an older version except by restoring a backup of the "
                "database",
                revision,
            )


def revision_sync(connection: Connection) -> str | None:
    """The revision the schema is at (None: it has none), read on a synchronous connection
    as Alembic reads it: its table's one row."""
    from sqlalchemy import inspect, text

    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"{VERSION_TABLE} holds several revisions: {', '.join(rows)}")
    return str(rows[0]) if rows else None


def current_revision(database_url: str) -> str | None:
    """The revision the database's schema is at (None: it has none), read without changing
    anything."""
    # Here, not above: `berth --version` says schema_head() without loading the database's.
    from berth.metadata.database import read_once

    return read_once(database_url, revision_sync)


def require_current(database_url: str) -> str:
    """The schema's revision, this Berth's; else refused without migrating it (what an admin
    verb checks): NewerSchema, or OlderSchema when this Berth's `berth serve` has yet to
    migrate it."""
    return require_revision_current(current_revision(database_url))


def require_revision_current(current: str | None) -> str:
    """`current`, a schema's revision, if it is this Berth's; else as `require_current`."""
    known = revisions()
    if current == known.head:
        return known.head
    if current is not None:
        refuse_unknown([current], known)
    raise OlderSchema(current, known.head)
