"""The MetaData every table is in (its naming convention), and the column types and clock
the tables share."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Interval,
    MetaData,
    String,
    TypeDecorator,
    func,
    literal,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


def column_width(column: Column[Any]) -> int:
    """How many characters a String column holds (PostgreSQL refuses a longer value)."""
    kind = column.type
    assert isinstance(kind, String) and kind.length is not None
    return kind.length


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def database_clock(dialect: str, seconds_from_now: float = 0.0) -> ColumnElement[dt.datetime]:
    """Now (or `seconds_from_now` later), by the database's clock, for a statement on a
    database of `dialect` to write or compare. Times every node compares (job leases, serving
    processes' heartbeats) are taken from the one clock they share: a node whose own clock runs
    ahead would otherwise see a live holder's lease or heartbeat as lapsed. PostgreSQL's is the
    time its statement started; an SQLite database is on this machine, whose clock it is."""
    if dialect == "sqlite":
        return literal(utcnow() + dt.timedelta(seconds=seconds_from_now), UTCDateTime())
    now = func.statement_timestamp(type_=UTCDateTime())
    if not seconds_from_now:
        return now
    return type_coerce(
        now + literal(dt.timedelta(seconds=seconds_from_now), Interval()), UTCDateTime()
    )


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

DIGEST = String(160)
