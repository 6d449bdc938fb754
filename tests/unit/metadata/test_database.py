"""The metadata database's write path (`berth.metadata.database`), on a real SQLite file,
and what a database that cannot be reached is (SQLite and PostgreSQL)."""

from __future__ import annotations

import _sqlite3
import asyncio
import ctypes
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import Integer, bindparam, func, select, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from berth.domain.errors import Unavailable
from berth.metadata import database, sqlite_engine
from berth.metadata.database import Database
from tests.servers import PostgresCluster, free_port


def test_a_write_queued_behind_this_process_writer_for_too_long_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: one writer connection per process; a write that waits too long for it is
    refused as busy (503, Retry-After), not a server error."""
    monkeypatch.setattr(sqlite_engine, "WRITER_QUEUE_SECONDS", 0.2)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}")

    async def queue() -> Unavailable:
        try:
            async with db.write():  # holds the writer
                with pytest.raises(Unavailable) as refused:
                    async with db.write():
                        pass
            return refused.value
        finally:
            await db.dispose()

    refused = asyncio.run(queue())
    assert refused.status == 503 and refused.headers["Retry-After"].isdigit()


def _sqlite_heap_bytes() -> int:
    """The bytes SQLite has allocated in this process (sqlite3_memory_used), every connection
    together: the library Python's sqlite3 module (and aiosqlite with it) runs on."""
    library = ctypes.CDLL(_sqlite3.__file__)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    used: int = library.sqlite3_memory_used()
    return used


def test_reading_a_large_database_keeps_little_in_each_reader_connection(tmp_path: Path) -> None:
    """A worker keeps up to 16 reader connections open: reading a database far larger than
    their bound leaves each with a small page cache, not a copy of what it read (SQLite's
    default page cache holds up to 2 MB a connection)."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'large.db'}")
    rows, row_bytes, readers = 2048, 4096, 4  # 8 MiB of rows, read whole by each reader

    async def fill_then_read() -> int:
        try:
            async with db.write() as connection:
                await connection.exec_driver_sql("CREATE TABLE layer (id INTEGER, data BLOB)")
                for i in range(rows):
                    await connection.exec_driver_sql(
                        "INSERT INTO layer VALUES (?, randomblob(?))", (i, row_bytes)
                    )
            before = _sqlite_heap_bytes()

            async def read_all() -> int:
                async with db.read() as connection:
                    result = await connection.exec_driver_sql("SELECT sum(length(data)) FROM layer")
                    total: int = result.scalar_one()
                    await asyncio.sleep(0.1)  # every reader open at once: none reused
                    return total

            totals = await asyncio.gather(*(read_all() for _ in range(readers)))
            assert totals == [rows * row_bytes] * readers
            return _sqlite_heap_bytes() - before
        finally:
            await db.dispose()

    grown = asyncio.run(fill_then_read())
    assert grown < readers * 512 * 1024, f"{grown / readers / 1024:.0f} KiB a reader"


def _refused_as_unreachable(db: Database, *attempts: Callable[[], Awaitable[object]]) -> None:
    """Each of `attempts` (on `db`) is refused as the database being unreachable."""

    async def run() -> None:
        try:
            for attempt in attempts:
                with pytest.raises(Unavailable) as refused:
                    await attempt()
                assert refused.value.status == 503
                assert refused.value.headers["Retry-After"] == str(database.RETRY_AFTER_SECONDS)
                assert "unreachable" in refused.value.message
        finally:
            await db.dispose()

    asyncio.run(run())


def test_an_sqlite_file_that_cannot_be_opened_is_a_503(tmp_path: Path) -> None:
    """The data directory gone (a volume unmounted under the server): reads, point reads and
    writes are refused as unavailable, not failed as server errors."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'berth.db'}")

    async def read() -> None:
        async with db.read() as connection:
            await connection.execute(text("SELECT 1"))

    async def write() -> None:
        async with db.write() as connection:
            await connection.execute(text("SELECT 1"))

    async def first() -> None:
        await db.first(select(bindparam("x", type_=Integer)), x=1)

    _refused_as_unreachable(db, read, write, first)


def test_an_sqlite_file_that_cannot_be_opened_leaves_no_thread_behind_its_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused open starts aiosqlite's thread for the connection; it ends before the
    event loop does (a CLI verb's `asyncio.run`), rather than reporting to that loop once it
    is closed ("Exception in thread ... RuntimeError: Event loop is closed" on stderr; it did
    in about half of the tries)."""
    failed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: failed.append(hook.exc_value))

    async def read(db: Database) -> None:
        async with db.read() as connection:
            await connection.execute(text("SELECT 1"))

    for attempt in range(20):
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gone' / str(attempt) / 'berth.db'}")
        _refused_as_unreachable(db, partial(read, db))
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            thread.join(10)
    assert failed == []


def test_statement_and_other_errors_are_not_taken_for_an_unreachable_database(
    tmp_path: Path,
) -> None:
    """What a statement or the code around it gets wrong stays its own error: a table that
    does not exist, and an OSError of something else (a blob store's) inside a transaction."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'here.db'}")

    async def run() -> None:
        try:
            with pytest.raises(OperationalError, match="no such table"):
                async with db.read() as connection:
                    await connection.execute(text("SELECT * FROM no_such_table"))
            with pytest.raises(ConnectionRefusedError):
                async with db.write() as connection:
                    await connection.execute(text("SELECT 1"))
                    raise ConnectionRefusedError("the blob store refused")
        finally:
            await db.dispose()

    asyncio.run(run())


def test_a_postgresql_server_that_is_not_there_is_a_503(
    postgres: PostgresCluster | None,
) -> None:
    """Nothing listening on the database's port: the driver's refused connection is a 503;
    a statement PostgreSQL refuses on a server that is there is not."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()

    async def misspelt() -> None:
        async with there.read() as connection:
            await connection.execute(text("SELEKT 1"))

    there = Database(url)

    async def refused_statement() -> None:
        try:
            with pytest.raises(ProgrammingError):
                await misspelt()
        finally:
            await there.dispose()

    asyncio.run(refused_statement())

    nobody = Database(url.replace(f":{postgres.port}/", f":{free_port()}/"))

    async def read() -> None:
        async with nobody.read() as connection:
            await connection.execute(text("SELECT 1"))

    _refused_as_unreachable(nobody, read)


def test_a_postgresql_statement_left_unanswered_past_its_bound_is_a_503(
    postgres: PostgresCluster | None,
) -> None:
    """A statement whose answer does not come within `database_statement_timeout` (here a
    server that sleeps; a host gone mid-transaction looks the same to the client) is refused
    as the database being unreachable, in reads and writes, within about that bound; the
    server's next answers come as before (the connection it kept is not reused)."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    db = Database(postgres.create_database(), lock_wait_seconds=0.5, statement_seconds=1)

    async def sleeps(kind: str) -> float:
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable) as refused:
            async with getattr(db, kind)() as connection:
                await connection.execute(text("SELECT pg_sleep(10)"))
        assert refused.value.status == 503 and "unreachable" in refused.value.message
        return asyncio.get_running_loop().time() - started

    async def run() -> None:
        try:
            for kind in ("read", "write"):
                assert await sleeps(kind) < 5, kind
                async with db.write() as connection:
                    assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        finally:
            await db.dispose()

    asyncio.run(run())


def _opened_while_another_writes(
    path: Path, read: Callable[[Database], Awaitable[object]]
) -> object:
    """`read` on a Database opened on `path`, a new database (not yet in WAL mode) whose write
    lock another connection holds for a moment, as a start-up beside this one does."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, holder.execute, ["COMMIT"])
    release.start()
    db = Database(f"sqlite+aiosqlite:///{path}")

    async def run() -> object:
        try:
            return await read(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    finally:
        release.join()
        holder.close()


def test_a_new_database_opened_while_another_connection_writes_waits_for_the_write(
    tmp_path: Path,
) -> None:
    """A connection's first statement puts a new database in WAL mode, which takes the write
    lock from within a read: SQLite refuses that at once ("database is locked") while another
    connection holds the write lock, whatever the busy timeout. Start-ups at once on a new
    data directory (or nodes' processes) meet that; each way of reading waits for the write
    instead, and sees it."""

    async def read(db: Database) -> object:
        async with db.read() as connection:
            return (await connection.execute(text("SELECT count(*) FROM t"))).scalar()

    async def write(db: Database) -> object:
        async with db.write() as connection:
            await connection.execute(text("INSERT INTO t VALUES (2)"))
            return (await connection.execute(text("SELECT count(*) FROM t"))).scalar()

    async def first(db: Database) -> object:
        row = await db.first(select(func.count()).select_from(text("t")))
        return None if row is None else row[0]

    for way, expected in ((read, 1), (write, 2), (first, 1)):
        path = tmp_path / f"{way.__name__}.db"
        assert _opened_while_another_writes(path, way) == expected, way.__name__
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_each_database_logs_that_it_cannot_be_reached_once_a_while(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request fails alike while the database is away: one warning per database for a
    run of them, not one each; another database (another test's, another server's in one
    process) says its own."""
    caplog.set_level(logging.WARNING, logger="berth.database")

    def warnings_after_two_reads(db: Database) -> int:
        async def read() -> None:
            await db.first(select(bindparam("x", type_=Integer)), x=1)

        caplog.clear()
        _refused_as_unreachable(db, read, read)
        return sum("cannot be reached" in record.getMessage() for record in caplog.records)

    for gone in ("one", "another"):
        db = Database(f"sqlite+aiosqlite:///{tmp_path / gone / 'berth.db'}")
        assert warnings_after_two_reads(db) == 1, gone
