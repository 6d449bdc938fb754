"""Checking a credential: an access key's ID and secret, or a user's name and password.

What an access key ID may look like lives here too: the management API's path pattern, the
throttle's and the token endpoint's shape checks all derive from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from berth.access.expiring import ExpiringCache
from berth.access.keyring import Keyring
from berth.access.passwords import Passwords
from berth.access.policy import Principal
from berth.access.roles import CACHE_ENTRIES, CACHE_SECONDS, has_role
from berth.domain.errors import StorageRefused, Unauthorized
from berth.metadata.database import Database
from berth.metadata.tables import access_keys, users, utcnow

LAST_USED_RESOLUTION = 60.0
KEY_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
KEY_ID_LENGTH = 20
# Every key ID shape check derives from these (ASCII only: str.isalnum and str.isupper also
# accept other scripts' letters and digits).
# What a key ID may be at all (the management API's path pattern for one, too): anything else
# names no key and is refused before a lookup or the throttle remembers it.
KEY_ID_PATTERN = r"^[A-Za-z0-9]{1,32}$"
_ANY_KEY_ID = re.compile(KEY_ID_PATTERN)
# What `keys.new_key_id` makes: `BK` and 18 characters of the alphabet.
_KEY_ID = re.compile(rf"^BK[{KEY_ID_ALPHABET}]{{{KEY_ID_LENGTH - 2}}}$")
# A key ID, perhaps mistyped: `BK` and 18 capitals or digits, which no user name has.
_KEY_ID_LIKE = re.compile(rf"^BK[A-Z0-9]{{{KEY_ID_LENGTH - 2}}}$")


def new_secret_text(nbytes: int) -> str:
    """`nbytes` random bytes as URL-safe base64 (letters, digits, `-` and `_`), never starting
    with `-`: secrets are pasted after options (`--password SECRET`), and some option parsers
    (Python's argparse, for one) take a value with a leading dash for another option and
    refuse the command. One draw in 64 starts with it and is drawn again."""
    while (secret := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return secret


# What a registry client that signed in with a user name and password is told.
NOT_A_KEY = (
    "invalid access key ID or secret access key: registry clients (docker, podman, ...) sign "
    "in with an access key ID (BK...) and its secret, not with a user name and password; "
    "create an access key under Access keys in the web console"
)


class KeyNotUsable(Unauthorized):
    """The right secret for a key that is disabled, expired or orphaned: not a guess, so it
    does not count toward the failed-login throttle."""


def has_key_id_format(value: str) -> bool:
    """`BK` and 18 characters of the key ID alphabet: what `new_key_id` makes."""
    return _KEY_ID.fullmatch(value) is not None


def looks_like_key_id(text: str) -> bool:
    """The shape of an access key ID (`BK` and 18 capitals or digits), which no user name has:
    whether a failed sign-in is told that registry clients take an access key, not a password.
    Looser than `has_key_id_format` (a mistyped key is still a key)."""
    return _KEY_ID_LIKE.fullmatch(text) is not None


def may_be_key_id(text: str) -> bool:
    """Could name an access key at all (ASCII letters and digits, at most 32): anything else
    is refused without a lookup."""
    return _ANY_KEY_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    user_id: int
    user: str
    is_admin: bool
    project_id: int
    secret_hash: str
    expires_at: dt.datetime | None
    disabled: bool
    has_role: bool
    # Whether it had expired when it was read, by the database's clock: a node whose own clock
    # ran behind would otherwise go on accepting it. Read with the key, so it costs no round
    # trip; a cached record is at most CACHE_SECONDS old, as for its other fields.
    expired: bool

    @property
    def active(self) -> bool:
        return not self.disabled and self.has_role and not self.expired


class Credentials:
    """Access keys and passwords, checked. Key lookups are kept for a second, like roles."""

    def __init__(self, db: Database, keyring: Keyring, passwords: Passwords) -> None:
        self.db = db
        self.keyring = keyring
        self.passwords = passwords  # argon2id
        self._keys: ExpiringCache[str, KeyRecord | None] = ExpiringCache(
            CACHE_ENTRIES, CACHE_SECONDS
        )
        self._last_used: dict[str, float] = {}

    def forget(self) -> None:
        """Drop cached keys (after some changed)."""
        self._keys.clear()

    async def key_record(self, key_id: str) -> KeyRecord | None:
        try:
            return self._keys[key_id]  # None too: no such key, as read a moment ago
        except KeyError:
            pass
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        access_keys,
                        users.c.name.label("user"),
                        users.c.is_admin,
                        (access_keys.c.expires_at <= self.db.clock()).label("expired"),
                    )
                    .join(users, users.c.id == access_keys.c.user_id)
                    .where(access_keys.c.id == key_id)
                )
            ).first()
            record = None
            if row is not None:
                role = bool(row.is_admin) or await has_role(conn, row.project_id, row.user_id)
                record = KeyRecord(
                    row.id,
                    row.user_id,
                    row.user,
                    row.is_admin,
                    row.project_id,
                    row.secret_hash,
                    row.expires_at,
                    row.disabled,
                    role,
                    bool(row.expired),  # NULL: no expiry
                )
        self._keys[key_id] = record
        return record

    async def authenticate_key(self, key_id: str, secret: str) -> Principal:
        """The principal behind an access key, or UNAUTHORIZED saying what is wrong."""
        record = await self.key_record(key_id) if may_be_key_id(key_id) else None
        # Compare against a stand-in hash when the key is unknown, so timing tells nothing.
        stored = record.secret_hash if record else self.keyring.hash_secret("\0")
        if not self.keyring.secret_matches(secret, stored) or record is None:
            if not looks_like_key_id(key_id):
                raise Unauthorized(NOT_A_KEY)
            raise Unauthorized("invalid access key ID or secret access key")
        if record.disabled:
            raise KeyNotUsable(f"access key {key_id} is disabled; enable it or create another")
        if record.expired:
            raise KeyNotUsable(f"access key {key_id} expired on {record.expires_at:%Y-%m-%d}")
        if not record.has_role:
            raise KeyNotUsable(f"access key {key_id} belongs to a user who left the project")
        await self._touch(key_id)
        return Principal(record.user_id, record.user, record.is_admin, key_id, record.project_id)

    async def token_principal(self, user_id: int, user: str, key_id: str) -> Principal | None:
        """The principal a token issued for `key_id` acts as, while that key still works
        (checked each request, through the short-lived key cache); None once it does not."""
        record = await self.key_record(key_id)
        if record is None or not record.active:
            return None
        return Principal(user_id, user, record.is_admin, key_id, record.project_id)

    async def key_project_id(self, key_id: str) -> int | None:
        record = await self.key_record(key_id) if may_be_key_id(key_id) else None
        return record.project_id if record else None

    async def verify_password(self, name: str, password: str) -> Principal | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
        if row is None or row.password_hash is None:
            # same cost whether or not the user exists
            await self.passwords.hash(password)
            return None
        if not await self.passwords.verify(row.password_hash, password):
            return None
        return Principal(row.id, row.name, row.is_admin, None, None)

    async def user_exists(self, name: str) -> bool:
        async with self.db.read() as conn:
            found = await conn.execute(select(users.c.id).where(users.c.name == name))
            return found.first() is not None

    async def _touch(self, key_id: str) -> None:
        """Record last use, at most once a minute per key per process (not a write per request)."""
        now = time.monotonic()
        if now - self._last_used.get(key_id, -LAST_USED_RESOLUTION) < LAST_USED_RESOLUTION:
            return
        self._last_used[key_id] = now
        # A record kept for convenience: a disk full or read-only (which the log says) must
        # not refuse the pulls of a key, nor its tokens.
        with contextlib.suppress(StorageRefused):
            async with self.db.write() as conn:
                await conn.execute(
                    update(access_keys)
                    .where(access_keys.c.id == key_id)
                    .values(last_used_at=utcnow())
                )
