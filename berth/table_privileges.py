"""A PostgreSQL user that may not read or write Berth's tables (a node or admin verb given
another role than the one that made them): said with their owner and the fix, exit status 2,
instead of the driver's traceback (which systemd would restart, to fail again)."""

from __future__ import annotations

import contextlib

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from berth.config import Settings
from berth.data_location import shown_database
from berth.metadata.migrate import INSUFFICIENT_PRIVILEGE


def lacks_privilege(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL's refusal of a statement to a user without the privilege."""
    return isinstance(exc, DBAPIError) and (
        getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE
    )


def _tables_owner(connection: Connection) -> str | None:
    # pg_tables is readable by every user, whatever they may do with the tables.
    owner = connection.execute(
        text(
            "SELECT tableowner FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename = 'alembic_version'"
        )
    ).scalar()
    return None if owner is None else str(owner)


def no_privilege(settings: Settings, exc: DBAPIError) -> str:
    """What to tell the operator of a user that may not use the tables (`exc`)."""
    from berth.metadata.database import read_once

    url = make_url(settings.resolved_database_url)
    user, database = url.username or "(the user the driver defaults to)", url.database or "berth"
    refusal = exc.orig
    problem = str(getattr(refusal, "__cause__", None) or refusal or exc).splitlines()[0]
    owner = None
    with contextlib.suppress(Exception):  # cannot tell: said without the owner
        owner = read_once(settings.resolved_database_url, _tables_owner)
    said = (
        f"the user {user} may not use Berth's tables in the database {database} "
        f"({shown_database(settings)}): {problem}. Berth uses its tables as their owner"
    )
    if owner is None:
        return said + ": give berth the database_url of the user that owns them"
    return said + (
        f", the user {owner}: give berth the database_url of {owner} (the other nodes' "
        f"BERTH_DATABASE_URL), or make {user} a member of that role (GRANT {owner} TO {user})"
    )
