"""Facts every node of one install must agree on, kept in the database."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, delete, select

from berth.metadata.database import Database
from berth.metadata.presence import live_processes_sync, newest_addressed_process
from berth.metadata.tables import blobs, column_width, install_facts, utcnow

KEY_FINGERPRINT = "key_fingerprint"


# install_facts.value's width: a longer fact is cut short or not recorded (PostgreSQL would
# refuse it).
LONGEST_FACT = column_width(install_facts.c.value)


async def recorded_key_fingerprint(db: Database, fingerprint: str) -> str:
    """The fingerprint of the install's keys: `fingerprint` if this is the first node to
    start (it is recorded now), else the one the first node recorded."""
    return await _record_first(db, KEY_FINGERPRINT, fingerprint)


STORAGE_LOCATION = "storage_location"


async def recorded_storage_location(db: Database, location: str) -> str:
    """Where the install's blobs are stored: `location` if no node has said yet (it is
    recorded now: the first start, or the first since an upgrade that began recording it),
    else the one recorded."""
    return await _record_first(db, STORAGE_LOCATION, location)


async def storage_location(db: Database) -> str | None:
    """Where the install's blobs are stored, if a node has recorded it."""
    return await _fact(db, STORAGE_LOCATION)


async def some_recorded_blobs(db: Database, count: int) -> list[str]:
    """Up to `count` digests of blobs the database says are stored (none: no blob yet),
    spread over the digests: the first at or after each of `count` evenly spaced sha256
    digests, then the lowest ones if that found fewer. The lowest `count` alone would all be
    gone when the blobs lost together are the lowest (deleted by hand in a listing's order,
    the tree's first directory lost), though the store holds every other."""
    starts = [f"sha256:{index * 0x10000 // count:04x}" for index in range(count)]
    found: list[str] = []
    async with db.read() as conn:
        for start in starts:  # one index lookup each
            digest = await conn.scalar(
                select(blobs.c.digest)
                .where(blobs.c.digest >= start)
                .order_by(blobs.c.digest)
                .limit(1)
            )
            if digest is not None and str(digest) not in found:
                found.append(str(digest))
        if len(found) < count:
            lowest = await conn.execute(
                select(blobs.c.digest).order_by(blobs.c.digest).limit(count)
            )
            found.extend(str(digest) for digest in lowest.scalars() if str(digest) not in found)
    return found[:count]


async def key_fingerprint(db: Database) -> str | None:
    """The fingerprint of the install's keys, if a node has recorded them."""
    return await _fact(db, KEY_FINGERPRINT)


async def forget_key_fingerprint(db: Database, fingerprint: str) -> None:
    """Take back `fingerprint`'s record (a first node that recorded its keys and then could
    not write them): the next node to start records its own."""
    async with db.write() as conn:
        await conn.execute(
            delete(install_facts).where(
                install_facts.c.name == KEY_FINGERPRINT, install_facts.c.value == fingerprint
            )
        )


# Facts of the last start, for the CLI run beside a server started with other settings (its
# own environment, flags): where it answers and which hosts name projects there, for the
# commands the CLI prints.
SERVED_AT = "served_at"
SERVED_PROJECT_HOST_SUFFIX = "served_project_host_suffix"
SERVED_URL = "served_url"


async def record_served_at(db: Database, host: str, project_host_suffix: str, url: str) -> None:
    """Note the host (and port) this server is reached at, the suffix of its project hosts
    (`.{region}.{domain}`) and its URL (`public_url`, a balancer's, or its own): the last node
    to start wins. One longer than LONGEST_FACT is removed instead: the last server's would
    be taken for this one's (`berth status` asking another server's URL)."""
    facts = {SERVED_AT: host, SERVED_PROJECT_HOST_SUFFIX: project_host_suffix, SERVED_URL: url}
    async with db.write() as conn:
        for name, value in facts.items():
            if len(value) > LONGEST_FACT:
                await conn.execute(delete(install_facts).where(install_facts.c.name == name))
                continue
            await conn.execute(
                db.upsert(
                    install_facts, ["name"], {"value": value, "recorded_at": utcnow()}
                ).values(name=name, value=value, recorded_at=utcnow())
            )


async def served_at(db: Database) -> str | None:
    """The host (and port) the last server to start is reached at, if one has started."""
    return await _fact(db, SERVED_AT)


async def served_url(db: Database) -> str | None:
    """The URL the last server to start is reached at (with its scheme), if one has recorded
    it (a server of an older Berth recorded only `served_at`)."""
    return await _fact(db, SERVED_URL)


async def served_project_host_suffix(db: Database) -> str | None:
    """The project host suffix of the last server to start, if one has recorded it (a server
    of an older Berth recorded only `served_at`)."""
    return await _fact(db, SERVED_PROJECT_HOST_SUFFIX)


@dataclass(frozen=True, slots=True)
class ServedAt:
    """Where clients reach this install's servers, for the commands the CLI prints."""

    host: str
    project_host_suffix: str | None  # None: the server recorded none (an older Berth)
    # Whether a server serves there now: False when none does (it is where the last server to
    # start was reached), None when unknown (a live server that recorded no address).
    serving: bool | None


async def where_served(db: Database) -> ServedAt | None:
    """Where the live server process that started last is reached; with none serving (or
    none that recorded it), where the last server to start was; None before any started."""
    async with db.read() as conn:
        live = await conn.run_sync(live_processes_sync)
    newest = newest_addressed_process(live)
    if newest is not None and newest.served_at is not None:
        return ServedAt(newest.served_at, newest.project_host_suffix, serving=True)
    host = await served_at(db)
    if host is None:
        return None
    suffix = await served_project_host_suffix(db)
    return ServedAt(host, suffix, serving=None if live else False)


def fact_value(name: str) -> Select[str]:
    """The statement that reads the fact `name`'s value (no row: not recorded), the one
    every reader runs, the CLI's synchronous ones (`berth data copy`) too."""
    return select(install_facts.c.value).where(install_facts.c.name == name)


async def _fact(db: Database, name: str) -> str | None:
    async with db.read() as conn:
        value = (await conn.execute(fact_value(name))).scalar()
        return None if value is None else str(value)


async def _record_first(db: Database, name: str, value: str) -> str:
    """The fact `name`: `value` if none was recorded (it is now, by an insert only one of
    nodes starting at once wins), else the recorded one."""
    async with db.write() as conn:
        await conn.execute(
            db.insert_ignore(install_facts).values(name=name, value=value, recorded_at=utcnow())
        )
        return str((await conn.execute(fact_value(name))).scalar_one())
