"""Which serving processes count as live: a row renewed in the last LIVE_SECONDS, unless its
process was on this machine and is gone; a process on another machine only by its silence."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import sqlalchemy as sa

from berth.metadata.presence import HOST, LIVE_SECONDS, live_processes_sync
from berth.metadata.tables import metadata, serving_processes, utcnow


def test_live_processes_are_the_recently_renewed_ones_still_running(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    metadata.create_all(engine)
    ended = subprocess.Popen(["true"])
    ended.wait()
    now = utcnow()
    stale = now - dt.timedelta(seconds=LIVE_SECONDS + 1)
    rows = {
        f"{HOST}:{os.getpid()}": now,  # running here
        f"{HOST}:{ended.pid}": now,  # renewed, but its process is gone
        "elsewhere:41": now,  # another machine, renewed
        "elsewhere:42": stale,  # another machine, silent too long
    }
    with engine.begin() as connection:
        for holder, seen in rows.items():
            connection.execute(
                serving_processes.insert().values(
                    holder=holder,
                    node_name="",
                    version="0.1.0",
                    schema_revision="0021_serving_processes",
                    started_at=stale,
                    seen_at=seen,
                )
            )
    with engine.connect() as connection:
        live = [process.holder for process in live_processes_sync(connection)]
    assert sorted(live) == sorted([f"{HOST}:{os.getpid()}", "elsewhere:41"])


def test_a_schema_without_the_table_has_no_live_processes(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    with engine.connect() as connection:
        assert live_processes_sync(connection) == []


def test_a_schema_before_the_addresses_still_lists_its_live_processes(tmp_path: Path) -> None:
    """A newer Berth's migration reads the rows of older servers, whose table has no
    `served_at` yet, to wait for them to stop."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    older = sa.MetaData()
    recorded_before = [
        sa.Column(column.name, column.type, primary_key=column.primary_key)
        for column in serving_processes.c
        if column.name not in ("served_at", "project_host_suffix")
    ]
    table = sa.Table(serving_processes.name, older, *recorded_before)
    older.create_all(engine)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            table.insert().values(
                holder="elsewhere:41",
                node_name="",
                version="0.1.0",
                schema_revision="0024_retention_run_state",
                started_at=now,
                seen_at=now,
            )
        )
    with engine.connect() as connection:
        [process] = live_processes_sync(connection)
    assert process.holder == "elsewhere:41" and process.served_at is None
