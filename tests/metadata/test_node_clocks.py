"""Nodes whose clocks disagree, on one PostgreSQL database: whether a job lease has lapsed and
whether a server is still serving is decided by the database's clock, so a node whose own
clock runs a minute ahead (or behind) neither takes over a lease another node holds nor sees
a live server as gone.

The nodes are two `Leases` or a `Presence` and a reader in this process, its clock set off
around what the "other node" does (a node's clock is the one thing the test cannot have two
of)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from types import ModuleType

import pytest
from sqlalchemy import text

import berth.jobs.leases
import berth.metadata.presence
import berth.metadata.tables
from berth.jobs.leases import Leases
from berth.metadata.database import Database
from berth.metadata.presence import LIVE_SECONDS, Presence, live_processes_sync
from tests.databases import on_new_tables
from tests.servers import PostgresCluster

JOB = "storage-scrub"
# Where Berth reads this machine's clock.
CLOCK_READERS: tuple[ModuleType, ...] = (
    berth.metadata.tables,
    berth.jobs.leases,
    berth.metadata.presence,
)


@contextlib.contextmanager
def clock_off_by(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """This node's clock runs `seconds` ahead (behind when negative) while in the block."""
    real = berth.metadata.tables.utcnow

    def off() -> dt.datetime:
        return real() + dt.timedelta(seconds=seconds)

    with monkeypatch.context() as patch:
        for module in CLOCK_READERS:
            patch.setattr(module, "utcnow", off, raising=False)
        yield


@pytest.fixture
def database_url(postgres: PostgresCluster | None) -> str:
    """A new PostgreSQL database, for the two nodes."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    return postgres.create_database()


def test_a_node_whose_clock_is_off_takes_over_no_live_lease(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(db: Database) -> None:
        node_a, node_b = Leases(db, "node-a"), Leases(db, "node-b")
        await node_a.ensure(JOB)
        assert await node_a.claim(JOB, 30)

        with clock_off_by(monkeypatch, 60):  # node b, a minute ahead
            assert not await node_b.claim(JOB, 30)
            seen = (await node_b.read([JOB]))[JOB]
            assert seen.holder == "node-a"
            assert 20 < seen.remaining <= 30  # as node a holds it, not lapsed 30 s ago
            assert 20 < (await node_b.due_in(JOB) or 0) <= 30
        assert await node_a.renew(JOB, 30)  # still node a's, its run goes on

        assert await node_a.release(JOB)
        with clock_off_by(monkeypatch, -60):  # node b, a minute behind, takes the job
            assert await node_b.claim(JOB, 30)
        # Node a's clock is right: node b's lease is live, not one that ended 30 s ago.
        assert not await node_a.claim(JOB, 30)
        assert (await node_a.read([JOB]))[JOB].holder == "node-b"

    on_new_tables(database_url, scenario)


def test_a_node_whose_clock_is_off_sees_a_live_server_as_live(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(db: Database) -> None:
        serving = Presence(db, node_name="node-a", version="test")
        with clock_off_by(monkeypatch, -60):  # the serving node, a minute behind
            await serving.renew()
        async with db.read() as conn:
            with clock_off_by(monkeypatch, 60):  # `berth status` on a node a minute ahead
                live = await conn.run_sync(live_processes_sync)
            assert [process.holder for process in live] == [serving.holder]
            # What it wrote is the database's time, not its own.
            behind = await conn.scalar(
                text("SELECT extract(epoch FROM now() - seen_at) FROM serving_processes")
            )
            assert behind is not None and abs(float(behind)) < LIVE_SECONDS / 3

    on_new_tables(database_url, scenario)
