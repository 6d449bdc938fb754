"""Engines and transactions.

SQLite gets one writer connection that takes the write lock up front (BEGIN IMMEDIATE, so two
writers never deadlock upgrading a read lock) and a pool of readers in WAL mode, in autocommit:
each read statement sees the latest commit, with no BEGIN/ROLLBACK round trips. PostgreSQL
gets one pool for both.

A service that keeps what it read in memory (the manifest cache) learns of changes through
`after_commit`: every insert, update or delete a write transaction runs is noted by its table,
so no change can forget to say it changed something.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select, Table, event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert, UpdateBase
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.util import await_

from berth.database_tls import TLS_PARAMETERS, database_tls
from berth.domain.errors import StorageFull, StorageReadOnly, Unavailable
from berth.metadata.sqlite_engine import (
    READERS,
    SQLITE_CANNOT_OPEN,
    WRITE_LOCK_SECONDS,
    WRITER_QUEUE_SECONDS,
    SqlitePointReader,
    sqlite_engine,
)
from berth.metadata.tables import database_clock
from berth.observability import metrics
from berth.write_checks import on_read_only_disk

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from berth.config import Settings

# What a write refused as busy, or a request the database could not answer, is told to wait.
RETRY_AFTER_SECONDS = 5
# How long a PostgreSQL statement waits for a row lock (`lock_timeout` of every connection):
# a transaction holding one may be on a node that hangs, and the server notices a peer that
# went silent only after hours. Then refused as "busy, retry" (503 + Retry-After), like SQLite.
LOCK_WAIT_SECONDS = WRITE_LOCK_SECONDS + WRITER_QUEUE_SECONDS  # berth.config's too
# How long opening a PostgreSQL connection may take, and a pooled connection may take to answer
# the ping it gets before each use: a server whose packets are dropped (a firewall, a host that
# is gone) otherwise holds each request for asyncpg's 60 s connect timeout, or for as long as
# the kernel retransmits (about 15 minutes) on a connection opened before it went away.
CONNECT_SECONDS = 5.0
# How long any one PostgreSQL statement may take before the client gives up on it: a bound on
# a server that stops answering in the middle of a transaction. Longer than the lock wait (a
# statement waiting for a row lock is refused by the server first), and than any statement
# Berth's jobs run on a large install.
STATEMENT_SECONDS = 60.0
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock wait that timed out
# PostgreSQL's SQLSTATE for a write its disk has no room for (a table or index it could not
# extend), whatever language its messages are in (lc_messages).
DISK_FULL = "53100"
# PostgreSQL's SQLSTATEs of a server that is not there to answer: class 08 (connection
# exception), and the server shutting down, crashed or still starting (57P01-57P03).
CONNECTION_LOST_STATES = ("08", "57P01", "57P02", "57P03")
UNREACHABLE_LOG_SECONDS = 10.0  # one warning per this long while the database stays away


logger = logging.getLogger("berth.database")
_WRITTEN = "berth.written_tables"  # in a connection's info: tables its transaction changed


def _note_written_table(connection: Any, statement: Any, *_args: Any) -> None:
    if isinstance(statement, UpdateBase):  # an insert, update or delete
        table = statement.table
        name = table.name if isinstance(table, TableClause) else str(table)
        connection.info.setdefault(_WRITTEN, set()).add(name)


def _write_condition(exc: DBAPIError, sqlite_file: str | None) -> Exception | None:
    """The registry error a lock, full-disk or read-only-disk failure stands for, if it is
    one (`sqlite_file`: the SQLite database's path, None on PostgreSQL)."""
    message = str(exc.orig if exc.orig is not None else exc).lower()
    if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        return Unavailable(
            "the database is busy: what this request changes stayed locked by another "
            "request too long; try again shortly",
            RETRY_AFTER_SECONDS,
        )
    if "database is locked" in message or "database is busy" in message:
        return Unavailable(
            f"the database is locked by another writer (waited {WRITE_LOCK_SECONDS} s); "
            "try again shortly",
            RETRY_AFTER_SECONDS,
        )
    if "database or disk is full" in message or getattr(exc.orig, "sqlstate", None) == DISK_FULL:
        return StorageFull("the database's disk is full; nothing was stored")
    # SQLite says `disk I/O error` (its write-ahead log cannot be written) or `attempt to
    # write a readonly database`, as for a failing disk: the filesystem's flags tell.
    if (
        sqlite_file is not None
        and isinstance(exc.orig, sqlite3.OperationalError)
        and on_read_only_disk(sqlite_file)
    ):
        return StorageReadOnly(READ_ONLY_DATABASE)
    return None


READ_ONLY_DATABASE = "the database's disk is read-only; nothing was stored"


def _connection_lost(exc: BaseException, *, connecting: bool) -> bool:
    """Whether `exc` says the database cannot be reached (so trying again later may work), as
    opposed to a statement or program at fault (those stay server errors). `connecting`: it
    was raised while a connection was being taken from the pool (opened, pinged, begun), where
    only the driver runs: an OSError there is the driver's (refused, reset, timed out, no such
    host); in a transaction's body it may be anything's (a blob store's), so it is not taken."""
    if isinstance(exc, StatementUnanswered):
        return True
    if isinstance(exc, OSError):
        return connecting
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:  # the dialect found the connection closed under it
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(state, str) and state.startswith(CONNECTION_LOST_STATES):
        return True
    if SQLITE_CANNOT_OPEN in str(exc.orig if exc.orig is not None else exc):
        return True
    return connecting and isinstance(exc.orig, OSError)


class _Unreachable:
    """The answer to a request while the database cannot be reached: 503 with Retry-After,
    as for a lock held too long. Why is logged (no more than every few seconds per database:
    every request fails alike), never told to the client (it may name hosts and paths)."""

    def __init__(self) -> None:
        self._logged_at: float | None = None

    def __call__(self, exc: BaseException) -> Unavailable:
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= UNREACHABLE_LOG_SECONDS:
            self._logged_at = now
            logger.warning(
                "the database cannot be reached: %s: %s", type(exc).__name__, _one_line(exc)
            )
        return unreachable()


def _one_line(exc: BaseException) -> str:
    """What the driver said, on one line: SQLAlchemy's text of a DBAPIError adds its statement
    and a documentation link on lines of their own, which a line-based log would split off from
    the node, level and time of the warning."""
    said = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(said).split()) or "(no message)"


def unreachable() -> Unavailable:
    return Unavailable("the database is unreachable; try again shortly", RETRY_AFTER_SECONDS)


class StatementUnanswered(TimeoutError):
    """No answer to a PostgreSQL statement within its bound (`statement_seconds`)."""


_FRESH = "berth.fresh"  # in a pool entry's info: opened, not yet used (no ping needed)


T = TypeVar("T")


def open_engine(
    url: str, *, connect_args: dict[str, Any] | None = None, **options: Any
) -> AsyncEngine:
    """SQLAlchemy's engine of `url`, but with a PostgreSQL URL's libpq TLS parameters
    (sslmode, sslrootcert, sslcert, sslkey) given to asyncpg as its `ssl` argument, which it
    takes instead of them (berth.database_tls). Every engine on a database_url is opened here."""
    parsed = make_url(url)
    tls = database_tls(parsed.query) if parsed.get_backend_name() == "postgresql" else None
    if tls is not None:
        parsed = parsed.difference_update_query(TLS_PARAMETERS)
        connect_args = {**(connect_args or {}), "ssl": tls.asyncpg_ssl()}
    return create_async_engine(parsed, connect_args=connect_args or {}, **options)


def read_once(url: str, read: Callable[[Connection], T]) -> T:
    """`read` run on a connection of its own to `url` (no pool, closed after), from code that
    is not async: what start-up and the CLI read before any service runs."""
    from sqlalchemy import pool

    async def run() -> T:
        engine = open_engine(url, poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _postgresql_engine(
    url: str, *, lock_wait_seconds: float, connect_seconds: float, statement_seconds: float
) -> AsyncEngine:
    engine = open_engine(
        url,
        pool_size=10,
        max_overflow=10,
        connect_args={
            "timeout": connect_seconds,
            "command_timeout": statement_seconds,
            "server_settings": {"lock_timeout": f"{round(lock_wait_seconds * 1000)}ms"},
        },
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: Any) -> Exception | None:
        if not isinstance(context.original_exception, TimeoutError):
            return None
        # The connection is of no more use (its answer may still come, or never): closed,
        # rather than rolled back, which would wait for an answer as long again.
        context.is_disconnect = True
        return StatementUnanswered(f"no answer to a statement within {statement_seconds:g} s")

    # Instead of SQLAlchemy's pre-ping, which waits for the answer as long as any statement may
    # take (`statement_seconds`): this one waits as long as a new connection may take to open.
    @event.listens_for(engine.sync_engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop(_FRESH, False):
            return
        driver = dbapi_connection.driver_connection
        try:
            await_(driver.fetchval("SELECT 1", timeout=connect_seconds))
        except TimeoutError:
            # Unanswered: the server is gone or its packets are dropped. Opening another
            # connection would likely wait as long again; the request is refused now (503),
            # the connection dropped at once (a polite close would wait for an answer too).
            driver.terminate()
            raise
        except Exception as exc:  # closed under it (a server restarted): open a new one
            driver.terminate()
            raise DisconnectionError(f"a pooled connection failed its ping: {exc!r}") from exc

    return engine


class Database:
    def __init__(
        self,
        url: str,
        lock_wait_seconds: float | None = None,
        *,
        connect_seconds: float | None = None,
        statement_seconds: float | None = None,
    ) -> None:
        """PostgreSQL's bounds, each None for its default: `lock_wait_seconds`, the row lock
        wait (`database_lock_timeout`, `LOCK_WAIT_SECONDS`); `connect_seconds`, opening or
        pinging a connection (`database_connect_timeout`, `CONNECT_SECONDS`);
        `statement_seconds`, any statement (`database_statement_timeout`,
        `STATEMENT_SECONDS`)."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._point_reader: SqlitePointReader | None = None
        self._unreachable = _Unreachable()
        self._closed_by: float | None = None  # while disposing: by when all must be closed
        self._stopping = False
        self._given_up = False  # stopping, and the database was found unreachable
        self._sqlite_file: str | None = None
        self._read_only_said = False  # the log said its disk is read-only (until a write)
        if self.is_sqlite:
            self._sqlite_file = url.split(":///", 1)[1]
            self.writer = sqlite_engine(url, writer=True)
            self.reader = sqlite_engine(url, writer=False)
            self._point_reader = SqlitePointReader(self._sqlite_file, self._unreachable)
            metrics.watch_pool(self.writer.sync_engine, "writer", 1)
            metrics.watch_pool(self.reader.sync_engine, "reader", READERS)
        else:
            self.writer = self.reader = _postgresql_engine(
                url,
                lock_wait_seconds=lock_wait_seconds or LOCK_WAIT_SECONDS,
                connect_seconds=connect_seconds or CONNECT_SECONDS,
                statement_seconds=statement_seconds or STATEMENT_SECONDS,
            )
            metrics.watch_pool(self.writer.sync_engine, "shared", 10)
            self._connect_seconds = connect_seconds or CONNECT_SECONDS
            event.listen(self.writer.sync_engine, "close", self._close_within_bound)
        event.listen(self.writer.sync_engine, "after_execute", _note_written_table)
        self._after_commit: list[tuple[frozenset[str], Callable[[], None]]] = []

    def _close_within_bound(self, dbapi_connection: Any, _record: Any) -> None:
        """While disposing (PostgreSQL): close a connection politely if the server answers
        before the deadline, else drop it; once `stopping` found the database unreachable,
        drop any connection closed (one a cancelled task leaves), without waiting. A polite
        close waits for the server's answer (for as long as any statement may take, one
        pooled connection after another; 2 s after a cancellation). SQLAlchemy's own close
        then finds it closed."""
        driver = dbapi_connection.driver_connection
        if self._given_up:
            driver.terminate()
            return
        if self._closed_by is None:
            return  # not disposing (an overflow connection returned): SQLAlchemy closes it
        left = self._closed_by - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            await_(driver.close(timeout=left))
        except Exception:  # unanswered (or closed under it): dropped at once
            driver.terminate()

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        """The database the settings name, with their bounds."""
        return cls(
            settings.resolved_database_url,
            settings.database_lock_timeout,
            connect_seconds=settings.database_connect_timeout,
            statement_seconds=settings.database_statement_timeout,
        )

    def after_commit(self, tables: Iterable[str], hook: Callable[[], None]) -> None:
        """Call `hook` once a write transaction that inserted, updated or deleted rows of any
        of `tables` has committed (rows a cascade removed count as their parent's table's)."""
        self._after_commit.append((frozenset(tables), hook))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on success, rolled back on any exception.

        A write lock held elsewhere for too long, or a full disk, is a clear error (503 with
        Retry-After, 507), not a bare server error; so is a database that cannot be reached
        (503 with Retry-After)."""
        if self._given_up:
            raise unreachable()
        begun = False
        try:
            async with self.writer.begin() as connection:
                begun = True
                written: set[str] = connection.info.setdefault(_WRITTEN, set())
                written.clear()  # what a transaction rolled back on this connection noted
                yield connection
                changed = frozenset(written)
        except (DBAPIError, OSError) as exc:
            condition = (
                _write_condition(exc, self._sqlite_file) if isinstance(exc, DBAPIError) else None
            )
            if condition is None and _connection_lost(exc, connecting=not begun):
                condition = self._lost(exc)
            if condition is None:
                raise
            if isinstance(condition, StorageReadOnly):
                self._say_read_only()
            raise condition from None
        except PoolTimeout:
            raise Unavailable(
                "the database is busy with other writes; try again shortly", RETRY_AFTER_SECONDS
            ) from None
        # A write that changed no page commits on a read-only disk too: the disk tells.
        if self._read_only_said and not on_read_only_disk(self._sqlite_file or "."):
            self._read_only_said = False
            logger.info("the database's disk takes writes again")
        for tables, hook in self._after_commit:
            if tables & changed:
                hook()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; a database that cannot be reached is refused as `write`
        refuses it (503 with Retry-After)."""
        if self._given_up:
            raise unreachable()
        connected = False
        try:
            async with self.reader.connect() as connection:
                connected = True
                yield connection
        except (DBAPIError, OSError) as exc:
            if not _connection_lost(exc, connecting=not connected):
                raise
            raise self._lost(exc) from None

    def _say_read_only(self) -> None:
        """Once until a write succeeds again: every write fails alike meanwhile."""
        if not self._read_only_said:
            self._read_only_said = True
            logger.warning(
                "the database's disk is read-only (%s): writes are refused (507 "
                "STORAGE_READ_ONLY) and reads served until it is writable again",
                self._sqlite_file,
            )

    def _lost(self, exc: BaseException) -> Unavailable:
        if self._stopping:
            self._given_up = True
        return self._unreachable(exc)

    def stopping(self) -> None:
        """This process is stopping. Once the database is then found unreachable, whatever is
        left to write on the way out (its presence row, job leases, counters) is refused at
        once, rather than after waiting `connect_seconds` again each, and `dispose` drops the
        connections without waiting for a server that does not answer."""
        self._stopping = True

    async def first(self, statement: Select[Any], **params: Any) -> Any:
        """One row of a read statement built with bindparam()s, by the fastest path there is."""
        if self._point_reader is not None:
            return self._point_reader.first(statement, params)
        async with self.read() as connection:
            return (await connection.execute(statement, params)).first()

    @property
    def dialect_package(self) -> Any:
        """SQLAlchemy's package of this database's dialect (its INSERT ... ON CONFLICT).
        PostgreSQL's is imported only on PostgreSQL: 1-2 MB of every worker on SQLite."""
        if self.is_sqlite:
            return sqlite
        from sqlalchemy.dialects import postgresql

        return postgresql

    def clock(self, seconds_from_now: float = 0.0) -> ColumnElement[dt.datetime]:
        """Now, or `seconds_from_now` later, by the database's clock (`database_clock`)."""
        return database_clock("sqlite" if self.is_sqlite else "postgresql", seconds_from_now)

    def insert_ignore(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING, for rows two writers may add at once."""
        insert: Insert = self.dialect_package.insert(table).on_conflict_do_nothing()
        return insert

    def upsert(self, table: Table, keys: list[str], update: dict[str, Any]) -> Any:
        return self.dialect_package.insert(table).on_conflict_do_update(
            index_elements=keys, set_=update
        )

    async def dispose(self) -> None:
        """Close every connection. On PostgreSQL within `connect_seconds` in all, even when
        the server no longer answers (at once when `stopping` found it unreachable): a server
        stopping during an outage is not held up."""
        if self._point_reader is not None:
            self._point_reader.close()
        metrics.forget_pool(self.writer.sync_engine)
        if self.reader is not self.writer:
            metrics.forget_pool(self.reader.sync_engine)
        if not self.is_sqlite:
            self._closed_by = time.monotonic() + (0.0 if self._given_up else self._connect_seconds)
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
