"""A node's hold on a job lease, on a SQLite database: renewing it, and renewing it only with
time to spare (the GC fence before a removal from the store)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import update

from berth.jobs.leases import Lease, Leases
from berth.metadata.database import Database
from berth.metadata.tables import job_leases, utcnow
from tests.databases import on_new_tables

JOB = "gc:1"


async def lease_ending_in(db: Database, seconds: float) -> Lease:
    """This node's lease on `JOB`, ending `seconds` from now (in the past when negative)."""
    node = Leases(db, "node-a")
    await node.ensure(JOB)
    async with db.write() as conn:
        await conn.execute(
            update(job_leases).values(
                holder=node.holder, expires_at=utcnow() + dt.timedelta(seconds=seconds)
            )
        )
    return (await node.read([JOB]))[JOB]


def test_renew_holds_the_lease_again_while_it_is_this_node_s(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        await lease_ending_in(db, -1)  # lapsed, but nobody took it over: still this node's
        node, other = Leases(db, "node-a"), Leases(db, "node-b")
        assert await node.renew(JOB, 30)
        held = (await node.read([JOB]))[JOB]
        assert held.holder == "node-a"
        assert held.expires_at > utcnow() + dt.timedelta(seconds=25)
        assert not await other.renew(JOB, 30)  # not its lease
        assert (await node.read([JOB]))[JOB] == held

    on_new_tables(f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}", scenario)


def test_renew_with_a_margin_refuses_a_lease_with_less_time_left(tmp_path: Path) -> None:
    """The fence: a lease about to lapse may be taken over any moment, so an act that another
    holder must not see done late is not started on it, and the lease is left as it was."""

    async def scenario(db: Database) -> None:
        node = Leases(db, "node-a")
        short = await lease_ending_in(db, 5)
        assert not await node.renew(JOB, 30, margin=10)
        assert (await node.read([JOB]))[JOB] == short
        await lease_ending_in(db, 20)
        assert await node.renew(JOB, 30, margin=10)
        assert (await node.read([JOB]))[JOB].expires_at > utcnow() + dt.timedelta(seconds=25)
        assert not await Leases(db, "node-b").renew(JOB, 30, margin=10)

    on_new_tables(f"sqlite+aiosqlite:///{tmp_path / 'berth.db'}", scenario)
