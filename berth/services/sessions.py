"""The web console's sessions: a random token in an HttpOnly cookie, its SHA-256 in the
database, and a CSRF token that unsafe requests must echo in a header."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from berth.access.policy import Principal
from berth.metadata.database import Database
from berth.metadata.tables import console_sessions, users, utcnow

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
        now = utcnow()
        session = ConsoleSession(
            id=session_id(token),
            user_id=principal.user_id,
            user=principal.user,
            is_admin=principal.is_admin,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=now + dt.timedelta(seconds=ttl_seconds or self.ttl),
        )
        async with self.db.write() as conn:
            await conn.execute(
                console_sessions.insert().values(
                    id=session.id,
                    user_id=session.user_id,
                    csrf_token=session.csrf_token,
                    created_at=now,
                    expires_at=session.expires_at,
                    last_seen_at=now,
                )
            )
        return token, session

    async def lookup(self, token: str) -> ConsoleSession | None:
        """The unexpired session of a cookie's token (with its user as they are now)."""
        if not token or len(token) > 256:
            return None
        now = utcnow()
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
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
        if row is None or row.expires_at <= now:
            return None
        if row.last_seen_at is None or now - row.last_seen_at > LAST_SEEN_RESOLUTION:
            await self._seen(row.id, now)
        return ConsoleSession(
            row.id,
            row.user_id,
            row.name,
            row.is_admin,
            row.csrf_token,
            row.expires_at.astimezone(dt.UTC),
        )

    async def _seen(self, id_: str, now: dt.datetime) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    update(console_sessions)
                    .where(console_sessions.c.id == id_)
                    .values(last_seen_at=now)
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
                delete(console_sessions).where(console_sessions.c.expires_at <= utcnow())
            )
        return int(result.rowcount or 0)
