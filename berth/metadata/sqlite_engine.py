"""SQLite's engines: one writer connection that takes the write lock up front (BEGIN
IMMEDIATE), and a pool of readers through a memory map; every connection with Berth's pragmas,
the database in WAL mode. And the point reader, for single-row reads on the event loop's
thread."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite
from sqlalchemy import Select, event
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

# How long a write waits for SQLite's write lock (held by another process) and for this
# process's writer connection, before it is refused as "busy, retry" (503 + Retry-After).
WRITE_LOCK_SECONDS = 5
WRITER_QUEUE_SECONDS = 10
READERS = 16  # SQLite reader connections kept open (more open when busy)
SQLITE_CANNOT_OPEN = "unable to open database file"

_SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout={WRITE_LOCK_SECONDS * 1000}",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
WAL_SWITCH_PAUSE_SECONDS = 0.01  # between tries of the switch to WAL (see _use_wal)
# A reader reads the database file through a memory map: its pages stay in the kernel's page
# cache, one copy shared by every connection of every worker, instead of each connection
# copying what it reads into a page cache of its own (SQLite's default, up to 2 MB each: tens
# of connections a worker). Pages a reader finds in the WAL still go to its own page cache,
# bounded small. bench/findings.md, "A serving worker's growth taken apart".
READER_MAP_BYTES = 256 * 1024 * 1024
READER_PAGE_CACHE_KIB = 256

_SQLITE_READER_PRAGMAS = (
    f"PRAGMA mmap_size={READER_MAP_BYTES}",
    f"PRAGMA cache_size=-{READER_PAGE_CACHE_KIB}",
)


def _use_wal(execute: Callable[[str], Any], pause: Callable[[float], None]) -> None:
    """Put the database in WAL mode (once per database: the mode stays in the file; a no-op
    after). The switch takes the write lock from within a read, and SQLite does not wait for
    that lock (waiting could deadlock, so the busy timeout does not apply): a connection
    opening beside another that switches (processes or nodes starting at once on a new
    database) is told "database is locked" at once. It tries again, for as long as a write
    waits for the write lock."""
    deadline = time.monotonic() + WRITE_LOCK_SECONDS
    while True:
        try:
            execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "database is locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        pause(WAL_SWITCH_PAUSE_SECONDS)


async def _open_aiosqlite(*args: Any, **kwargs: Any) -> aiosqlite.Connection:
    """aiosqlite's connect, as SQLAlchemy calls it, but for a database that cannot be opened
    (its directory gone): aiosqlite then stops the connection's thread without waiting for
    it, and the thread reports its end to this event loop, which may be closed by then (an
    `asyncio.run` returning after the refusal): "Exception in thread ... Event loop is
    closed". The thread is waited for here, while the loop still runs."""
    connection = aiosqlite.connect(*args, **kwargs)
    connection._thread.daemon = True  # as SQLAlchemy's own connect: never holds up an exit
    try:
        return await connection
    except BaseException:
        await asyncio.to_thread(connection._thread.join)
        raise


def sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=1 if writer else READERS,
        max_overflow=0 if writer else 48,
        pool_timeout=WRITER_QUEUE_SECONDS if writer else 30,
        connect_args={"timeout": WRITE_LOCK_SECONDS},
    )

    @event.listens_for(engine.sync_engine, "do_connect")
    def _open(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=_open_aiosqlite, **cparams)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS if writer else (*_SQLITE_PRAGMAS, *_SQLITE_READER_PRAGMAS):
            cursor.execute(pragma)
        # On the event loop's thread (the statements run on aiosqlite's): pause without
        # holding up the loop.
        _use_wal(cursor.execute, lambda seconds: await_(asyncio.sleep(seconds)))
        cursor.close()

    if writer:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_NAMED_SQLITE = sqlite.dialect(paramstyle="named")


class SqlitePointReader:
    """Single-row reads on the event-loop thread itself.

    A WAL read of an indexed row takes tens of microseconds; handing it to aiosqlite's thread
    and back costs several times that, and it is what every pull does. Only for statements that
    read plain columns (no type conversion happens here).
    """

    def __init__(self, path: str, unreachable: Callable[[BaseException], Exception]) -> None:
        self._path = path
        self._unreachable = unreachable
        self._connection: sqlite3.Connection | None = None
        self._compiled: dict[Select[Any], str] = {}

    def first(self, statement: Select[Any], params: dict[str, Any]) -> tuple[Any, ...] | None:
        if self._connection is None:
            try:
                connection = sqlite3.connect(self._path, isolation_level=None)
                for pragma in (*_SQLITE_PRAGMAS, *_SQLITE_READER_PRAGMAS):
                    connection.execute(pragma)
                _use_wal(connection.execute, time.sleep)
                connection.execute("PRAGMA query_only=1")
            except sqlite3.OperationalError as exc:
                if SQLITE_CANNOT_OPEN not in str(exc):
                    raise
                raise self._unreachable(exc) from None
            self._connection = connection
        sql = self._compiled.get(statement)
        if sql is None:
            sql = self._compiled[statement] = str(statement.compile(dialect=_NAMED_SQLITE))
        row: tuple[Any, ...] | None = self._connection.execute(sql, params).fetchone()
        return row

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
