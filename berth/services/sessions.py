"""The web console's sessions: a random token in an HttpOnly cookie, its SHA-256 in the
database, and a CSRF token that unsafe requests must echo in a header.

A session's times are written and compared by the database's clock (`Database.clock`), not a
node's own: one node signs a user in and any other checks the cookie, and a node whose clock
ran behind would otherwise accept a session that has expired. The lookup that every console
request makes reads the database's now in the same statement: it costs no round trip.

While the database's disk is full a session cannot be recorded, and a user could not sign in
to look at their registry (which reads only). The session is then carried whole by its cookie,
signed as registry tokens are (any node verifies it), for at most UNRECORDED_SECONDS: it ends
with a change of the user's password (it names a digest of the password's hash) or the user's
deletion, but signing out ends it only in the browser. Purging expired sessions and
recording a session's last use are bookkeeping, skipped while there is no room."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from berth.access.policy import Principal
from berth.access.tokens import InvalidToken, Tokens
from berth.domain.errors import StorageRefused, Unavailable
from berth.metadata.database import Database
from berth.metadata.tables import console_sessions, users

# last_seen_at is written at most this often per session (a read otherwise costs no write).
LAST_SEEN_RESOLUTION = dt.timedelta(minutes=5)
# The longest a session the database had no room to record lasts: nothing can end it early
# but a password change (or the user's deletion).
UNRECORDED_SECONDS = 3600
MAX_TOKEN_CHARS = 2048  # a signed session's (a recorded one's is 43)
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


def _password_digest(password_hash: str | None) -> str:
    """What a signed session keeps of its user's password hash: it ends when that changes."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:32]


class Sessions:
    def __init__(self, db: Database, ttl_seconds: int, tokens: Tokens) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self.tokens = tokens
        self._unrecorded_said = False  # the log said sessions go unrecorded (until one is recorded)

    async def sign_in(
        self, principal: Principal, previous_token: str | None
    ) -> tuple[str, ConsoleSession]:
        """A new session for a user who gave their password, ending the browser's previous
        one (`previous_token`, its cookie's), purging expired ones; on a full database disk
        a signed session, without the bookkeeping."""
        try:
            if previous_token:
                await self.delete(session_id(previous_token))
            await self.purge()
            return await self.create(principal)
        except StorageRefused as exc:
            self._say_unrecorded(exc)
            return await self._signed(principal)

    def _say_unrecorded(self, exc: StorageRefused) -> None:
        if self._unrecorded_said:
            return
        self._unrecorded_said = True
        logger.warning(
            "%s: console sign-ins get a session carried by its cookie, not recorded (for at "
            "most %d s; signing out ends it in the browser only), and expired sessions are not "
            "purged nor a session's last use recorded, until the database takes writes again",
            exc.message,
            UNRECORDED_SECONDS,
        )

    async def _signed(self, principal: Principal) -> tuple[str, ConsoleSession]:
        async with self.db.read() as conn:
            password_hash = (
                await conn.execute(
                    select(users.c.password_hash).where(users.c.id == principal.user_id)
                )
            ).scalar_one()
        csrf_token = secrets.token_urlsafe(32)
        token, expires = self.tokens.issue_console_session(
            {
                "sub": principal.user,
                "uid": principal.user_id,
                "csrf": csrf_token,
                "pwd": _password_digest(password_hash),
            },
            min(self.ttl, UNRECORDED_SECONDS),
        )
        session = ConsoleSession(
            id=session_id(token),
            user_id=principal.user_id,
            user=principal.user,
            is_admin=principal.is_admin,
            csrf_token=csrf_token,
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )
        return token, session

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
        self._unrecorded_said = False
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
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        if "." in token:  # signed (a recorded session's token is base64url, without dots)
            return await self._signed_session(token)
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

    async def _signed_session(self, token: str) -> ConsoleSession | None:
        try:
            claims = self.tokens.verify_console_session(token)
        except InvalidToken:
            return None
        async with self.db.read() as conn:
            user = (
                await conn.execute(
                    select(users.c.name, users.c.is_admin, users.c.password_hash).where(
                        users.c.id == int(claims["uid"])
                    )
                )
            ).first()
        if user is None or _password_digest(user.password_hash) != claims.get("pwd"):
            return None  # deleted, or its password changed since
        return ConsoleSession(
            session_id(token),
            int(claims["uid"]),
            user.name,
            user.is_admin,
            str(claims["csrf"]),
            dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
        )

    async def _seen(self, id_: str) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    update(console_sessions)
                    .where(console_sessions.c.id == id_)
                    .values(last_seen_at=self.db.clock())
                )
        except StorageRefused as exc:
            self._say_unrecorded(exc)
        except Unavailable as exc:  # its own log said why
            logger.debug("could not record a console session's last use: %s", exc.message)
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
