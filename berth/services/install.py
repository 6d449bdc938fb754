"""Facts every node of one install must agree on, kept in the database."""

from __future__ import annotations

from sqlalchemy import select

from berth.metadata.database import Database
from berth.metadata.tables import install_facts, utcnow

KEY_FINGERPRINT = "key_fingerprint"


async def recorded_key_fingerprint(db: Database, fingerprint: str) -> str:
    """The fingerprint of the install's keys: `fingerprint` if this is the first node to
    start (it is recorded now), else the one the first node recorded."""
    async with db.write() as conn:
        await conn.execute(
            db.insert_ignore(install_facts).values(
                name=KEY_FINGERPRINT, value=fingerprint, recorded_at=utcnow()
            )
        )
        recorded = await conn.execute(
            select(install_facts.c.value).where(install_facts.c.name == KEY_FINGERPRINT)
        )
        return str(recorded.scalar_one())
