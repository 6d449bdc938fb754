"""The web console's sessions: a random token in an HttpOnly cookie, its SHA-256 in the
database, and a CSRF token that unsafe requests must echo in a header.

A session's times are written and compared by the database's clock (`Database.clock`), not a
node's own: one node signs a user in and any other checks the cookie, and a node whose clock
ran behind would otherwise accept a session that has expired. The lookup that every console
request makes reads the database's now in the same statement: it costs no round trip."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from berth.access.policy import Principal
from berth.metadata.database import Database
from berth.metadata.tables import console_sessions, users

# last_seen_at is written at most this often per session (a read otherwise costs no write).
LAST_SEEN_RESOLUTION = dt.timedelta(minutes=5)
logger = logging.getLogger(__name__)


def session_id(token: str) -> str:
    """What the database keeps of a session token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id: str
    user_id: int
    user: str
    is_admin: bool
    csrf_token: str
    expires_at: dt.datetime

    @property
    def principal(self) -> Principal:
        return Principal(self.user_id, self.user, self.is_admin, None, None)


class Sessions:
    def __init__(self, db: Database, ttl_seconds: int) -> None:
        self.db = db
        self.ttl = ttl_seconds

    async def create(
        self, principal: Principal, ttl_seconds: int | None = None
    ) -> tuple[str, ConsoleSession]:
        """A new session for a signed-in user: (the cookie's token, the session)."""
        token = secrets.token_urlsafe(32)
        id_, csrf_token = session_id(token), secrets.token_urlsafe(32)
        now = self.db.clock()
        async with self.db.write() as conn:
            expires_at = (
                await conn.execute(
                    console_sessions.insert()
                    .values(
                        id=id_,
                        user_id=principal.user_id,
                        csrf_token=csrf_token,
                        created_at=now,
                        expires_at=self.db.clock(ttl_seconds or self.ttl),
                        last_seen_at=now,
                    )
                    .returning(console_sessions.c.expires_at)
                )
            ).scalar_one()
        session = ConsoleSession(
            id=id_,
            user_id=principal.user_id,
            user=principal.user,
            is_admin=principal.is_admin,
            csrf_token=csrf_token,
            expires_at=expires_at.astimezone(dt.UTC),
        )
        return token, session

    async def lookup(self, token: str) -> ConsoleSession | None:
        """The unexpired session of a cookie's token (with its user as they are now)."""
        if not token or len(token) > 256:
            return None
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        self.db.clock().label("now"),
                        console_sessions.c.id,
                        console_sessions.c.user_id,
                        console_sessions.c.csrf_token,
                        console_sessions.c.expires_at,
                        console_sessions.c.last_seen_at,
                        users.c.name,
                        users.c.is_admin,
                    )
                    .join(users, users.c.id == console_sessions.c.user_id)
                    .where(console_sessions.c.id == session_id(token))
                )
            ).first()
        if row is None or row.expires_at <= row.now:
            return None
        if row.last_seen_at is None or row.now - row.last_seen_at > LAST_SEEN_RESOLUTION:
            await self._seen(row.id)
        return ConsoleSession(
            row.id,
            row.user_id,
            row.name,
            row.is_admin,
            row.csrf_token,
            row.expires_at.astimezone(dt.UTC),
        )

    async def _seen(self, id_: str) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    update(console_sessions)
                    .where(console_sessions.c.id == id_)
                    .values(last_seen_at=self.db.clock())
                )
        except Exception:
            logger.exception("could not record a console session's last use")

    async def delete(self, id_: str) -> bool:
        """End a session (by its id: `session_id(token)`); False when there was none."""
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(console_sessions).where(console_sessions.c.id == id_)
            )
        return bool(result.rowcount)

    async def purge(self) -> int:
        """Delete expired sessions; how many went."""
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(console_sessions).where(console_sessions.c.expires_at <= self.db.clock())
            )
        return int(result.rowcount or 0)
