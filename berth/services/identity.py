"""Users, project memberships, repository grants, access keys and the audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.auth.keyring import Keyring
from berth.auth.policy import PROJECT_ROLES, REPOSITORY_ROLES, Principal, repository_actions
from berth.domain.errors import (
    Conflict,
    Denied,
    InvalidValue,
    NameInvalid,
    NameUnknown,
    NotFound,
    Unauthorized,
)
from berth.domain.names import is_valid_component
from berth.domain.references import RepositoryRef
from berth.jobs.periodic import Periodic
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import (
    access_keys,
    audit_log,
    console_sessions,
    memberships,
    projects,
    repositories,
    repository_grants,
    users,
    utcnow,
)
from berth.services.repositories import Repositories

# Access checks reuse a lookup this long; a removed member or a disabled key stops working
# within it on every node.
CACHE_SECONDS = 1.0
AUDIT_FLUSH_SECONDS = 0.25
LAST_USED_RESOLUTION = 60.0
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # what sign-in accepts
logger = logging.getLogger(__name__)
_KEY_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_KEY_ID_LENGTH = 20
# Every key ID shape check derives from these (ASCII only: str.isalnum and str.isupper also
# accept other scripts' letters and digits).
# What a key ID may be at all (the management API's path pattern for one, too): anything else
# names no key and is refused before a lookup or the throttle remembers it.
KEY_ID_PATTERN = r"^[A-Za-z0-9]{1,32}$"
_ANY_KEY_ID = re.compile(KEY_ID_PATTERN)
# What `new_key_id` makes: `BK` and 18 characters of the alphabet.
_KEY_ID = re.compile(rf"^BK[{_KEY_ID_ALPHABET}]{{{_KEY_ID_LENGTH - 2}}}$")
# A key ID, perhaps mistyped: `BK` and 18 capitals or digits, which no user name has.
_KEY_ID_LIKE = re.compile(rf"^BK[A-Z0-9]{{{_KEY_ID_LENGTH - 2}}}$")


class KeyNotUsable(Unauthorized):
    """The right secret for a key that is disabled, expired or orphaned: not a guess, so it
    does not count toward the failed-login throttle."""


@dataclass(frozen=True, slots=True)
class _KeyRecord:
    key_id: str
    user_id: int
    user: str
    is_admin: bool
    project_id: int
    secret_hash: str
    expires_at: dt.datetime | None
    disabled: bool
    has_role: bool


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key_id: str
    secret: str
    user: str
    project: str
    expires_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_key_id": self.key_id,
            "secret_access_key": self.secret,
            "user": self.user,
            "project": self.project,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


class _TTLCache:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return False, None
        return True, item[1]

    def put(self, key: Any, value: Any) -> None:
        if len(self._items) > 50_000:
            self._items.clear()
        self._items[key] = (time.monotonic() + self.seconds, value)

    def clear(self) -> None:
        self._items.clear()


# What the audit log names instead of a failed login's key ID when that value cannot be one
# (a secret pasted into the ID field must not be stored), and as the actor of any failed login
# (an unverified name is nobody).
NOT_A_KEY_ID = "(not a key ID)"
UNVERIFIED_ACTOR = "(unverified)"


def _user_row(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "admin": row.is_admin,
        "service_account": row.is_service_account,
        "created_at": row.created_at.isoformat(),
    }


def new_key_id() -> str:
    return "BK" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(_KEY_ID_LENGTH - 2))


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


# What a registry client that signed in with a user name and password is told.
NOT_A_KEY = (
    "invalid access key ID or secret access key: registry clients (docker, podman, ...) sign "
    "in with an access key ID (BK...) and its secret, not with a user name and password; "
    "create an access key under Access keys in the web console"
)


def new_secret() -> str:
    return secrets.token_urlsafe(30)


class Identity:
    def __init__(self, db: Database, keyring: Keyring, max_keys_per_project: int) -> None:
        self.db = db
        self.keyring = keyring
        self.max_keys = max_keys_per_project
        self.passwords = PasswordHasher()  # argon2id
        self._keys = _TTLCache(CACHE_SECONDS)
        self._roles = _TTLCache(CACHE_SECONDS)
        self._last_used: dict[str, float] = {}
        self._pending: list[dict[str, Any]] = []
        self._flusher = Periodic(
            "audit flush",
            AUDIT_FLUSH_SECONDS,
            self.flush_audit,
            failure="could not write audit entries",
        )

    # ------------------------------------------------------------------ audit

    async def _audit(
        self,
        conn: AsyncConnection,
        actor: str,
        action: str,
        *,
        project_id: int | None = None,
        target: str = "",
        detail: dict[str, Any] | None = None,
        client: str | None = None,
    ) -> None:
        await write_audit_entry(
            conn,
            actor,
            action,
            project_id=project_id,
            target=target,
            detail=detail,
            client=client,
        )

    async def record(self, actor: str, action: str, **fields: Any) -> None:
        """Audit an event that changes nothing else (a login). In a server these are written
        in batches a few times a second: one transaction per token request would cap the token
        endpoint at the writer's commit rate. A crash can lose the last fraction of a second."""
        entry = {"at": utcnow(), "actor": actor, "action": action, "target": "", **fields}
        if "detail" in entry:
            entry["detail"] = json.dumps(entry["detail"])
        if not self._flusher.running:
            async with self.db.write() as conn:
                await conn.execute(audit_log.insert().values(**entry))
        else:
            self._pending.append(entry)

    def forget_cached(self) -> None:
        """Drop cached keys and roles (after some were deleted)."""
        self._keys.clear()
        self._roles.clear()

    async def delete_project(
        self,
        repositories: Repositories,
        project: str,
        *,
        confirm: str | None = None,
        actor: str = "cli",
        client: str | None = None,
    ) -> int:
        """Delete a project with everything in it and audit it (server-wide: the project's own
        audit log goes with it) in one transaction; returns how many repositories it held.
        Refused as `Repositories.delete_project_rows` says. The scratch files of uploads that
        were in progress go with the hourly orphan-uploads job."""
        async with self.db.write() as conn:
            held = await repositories.delete_project_rows(conn, project, confirm=confirm)
            await self._audit(
                conn,
                actor,
                "project.delete",
                target=project,
                detail={"repositories": held},
                client=client,
            )
        repositories.forget_project(project)
        self.forget_cached()
        return held

    async def record_content_change(
        self,
        actor: str,
        action: str,
        repo: RepositoryRef,
        image: str,
        reference: str,
        client: str | None = None,
    ) -> None:
        """Audit an image delete (`reference` a digest) or a tag delete or restore (a tag);
        the target names it as a client would: `repository[/image]@digest` or `...:tag`."""
        name = f"{repo.name}/{image}" if image else repo.name
        separator = "@" if ":" in reference else ":"
        await self.record(
            actor,
            action,
            project_id=repo.project_id,
            target=f"{name}{separator}{reference}"[:255],
            client=client,
        )

    async def flush_audit(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            async with self.db.write() as conn:
                await conn.execute(
                    audit_log.insert(),
                    [{"project_id": None, "detail": None, "client": None, **e} for e in pending],
                )

    def start(self) -> None:
        self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        await self.flush_audit()

    async def audit_entries(
        self, project: str, limit: int = 200, offset: int = 0
    ) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            return await _audit_page(conn, audit_log.c.project_id == project_id, limit, offset)

    async def server_audit_entries(
        self, limit: int = 200, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries outside any project (users created, passwords set, projects deleted),
        newest first, and how many there are."""
        outside = audit_log.c.project_id.is_(None)
        async with self.db.read() as conn:
            entries = await _audit_page(conn, outside, limit, offset)
            count = await conn.execute(select(func.count()).select_from(audit_log).where(outside))
            return entries, int(count.scalar() or 0)

    async def count_audit_entries(self, project: str) -> int:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            count = await conn.execute(
                select(func.count())
                .select_from(audit_log)
                .where(audit_log.c.project_id == project_id)
            )
            return int(count.scalar() or 0)

    # ------------------------------------------------------------------ users

    async def create_user(
        self,
        name: str,
        password: str | None,
        *,
        is_admin: bool = False,
        service_account: bool = False,
        actor: str = "cli",
        client: str | None = None,
    ) -> dict[str, Any]:
        """Create a user; returns it as `get_user` does."""
        if not is_valid_component(name) or len(name) > 64:
            raise NameInvalid(
                f"invalid user name {name!r}: lowercase letters, digits, '.', '_' or '-'"
            )
        if password is None and not service_account:
            raise InvalidValue("a user needs a password (service accounts have none)", "password")
        if password is not None:
            _check_password(password)
        password_hash = (
            await asyncio.to_thread(self.passwords.hash, password) if password is not None else None
        )
        async with self.db.write() as conn:
            exists = (await conn.execute(select(users.c.id).where(users.c.name == name))).first()
            if exists:
                raise Conflict(f"user {name!r} already exists")
            created = (
                await conn.execute(
                    users.insert()
                    .values(
                        name=name,
                        password_hash=password_hash,
                        is_admin=is_admin,
                        is_service_account=service_account,
                        created_at=utcnow(),
                    )
                    .returning(users)
                )
            ).one()
            await self._audit(
                conn,
                actor,
                "user.create",
                target=name,
                detail={"admin": is_admin, "service_account": service_account},
                client=client,
            )
        return _user_row(created)

    async def has_users(self) -> bool:
        async with self.db.read() as conn:
            return bool((await conn.execute(select(func.count()).select_from(users))).scalar())

    async def bootstrap_admin(self, password: str | None) -> tuple[str, str | None] | None:
        """On an empty server, create `admin`; returns (name, generated password or None)."""
        if await self.has_users():
            return None
        generated = None
        if not password:
            password = generated = secrets.token_urlsafe(18)
        try:
            await self.create_user("admin", password, is_admin=True, actor="server")
        except Conflict:
            return None  # another node or worker got there first
        return "admin", generated

    async def verify_password(self, name: str, password: str) -> Principal | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
        # argon2 takes tens of milliseconds of CPU: in a worker thread, not on the event loop.
        if row is None or row.password_hash is None:
            # same cost whether or not the user exists
            await asyncio.to_thread(self.passwords.hash, password)
            return None
        try:
            await asyncio.to_thread(self.passwords.verify, row.password_hash, password)
        except (VerifyMismatchError, InvalidHashError):
            return None
        return Principal(row.id, row.name, row.is_admin, None, None)

    async def get_user(self, name: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
        return None if row is None else _user_row(row)

    async def list_users(self) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(users).order_by(users.c.name))
            return [_user_row(r) for r in rows]

    async def search_users(self, query: str = "", limit: int = 20) -> list[dict[str, Any]]:
        """Users whose name contains `query`, by name: what a member picker offers."""
        statement = select(users).order_by(users.c.name).limit(limit)
        if query:
            statement = statement.where(users.c.name.contains(query.lower(), autoescape=True))
        async with self.db.read() as conn:
            rows = await conn.execute(statement)
            return [_user_row(r) for r in rows]

    async def set_password(
        self,
        name: str,
        password: str,
        *,
        actor: str = "cli",
        keep_session: str | None = None,
        client: str | None = None,
    ) -> None:
        """Set a user's password (their own change, or an administrator's reset). The user's
        console sessions end, but for `keep_session` (the one that changed it)."""
        _check_password(password)
        password_hash = await asyncio.to_thread(self.passwords.hash, password)
        async with self.db.write() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
            if row is None:
                raise NotFound(f"user {name!r} does not exist")
            if row.is_service_account:
                raise Denied(
                    f"user {name!r} is a service account: it signs in with access keys only"
                )
            await conn.execute(
                update(users).where(users.c.id == row.id).values(password_hash=password_hash)
            )
            ended = delete(console_sessions).where(console_sessions.c.user_id == row.id)
            if keep_session is not None:
                ended = ended.where(console_sessions.c.id != keep_session)
            await conn.execute(ended)
            await self._audit(
                conn,
                actor,
                "user.password",
                target=name,
                detail={"by": "self" if actor == name else "administrator"},
                client=client,
            )

    async def delete_user(
        self, name: str, *, actor: str = "cli", client: str | None = None
    ) -> None:
        """Delete a user: their access keys, console sessions and roles go with them at once
        (the database cascades them). Each project they had a role in audits it (and each key
        deleted)."""
        async with self.db.write() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
            if row is None:
                raise NotFound(f"user {name!r} does not exist")
            if name == actor:
                raise Denied("you cannot delete yourself; another administrator can")
            if row.is_admin:
                admins = (
                    await conn.execute(
                        select(func.count()).select_from(users).where(users.c.is_admin)
                    )
                ).scalar()
                if (admins or 0) <= 1:
                    raise Denied(f"user {name!r} is the last server administrator")
            keys = (
                await conn.execute(
                    delete(access_keys)
                    .where(access_keys.c.user_id == row.id)
                    .returning(access_keys.c.id, access_keys.c.project_id)
                )
            ).all()
            project_ids = {int(r.project_id) for r in keys}
            project_ids.update(
                (
                    await conn.execute(
                        select(memberships.c.project_id).where(memberships.c.user_id == row.id)
                    )
                ).scalars()
            )
            project_ids.update(
                (
                    await conn.execute(
                        select(repositories.c.project_id)
                        .join(
                            repository_grants,
                            repository_grants.c.repository_id == repositories.c.id,
                        )
                        .where(repository_grants.c.user_id == row.id)
                    )
                ).scalars()
            )
            await conn.execute(delete(users).where(users.c.id == row.id))
            for key in keys:
                await self._audit(
                    conn,
                    actor,
                    "key.delete",
                    project_id=key.project_id,
                    target=key.id,
                    detail={"reason": "user deleted", "user": name},
                    client=client,
                )
            for project_id in sorted({None, *project_ids}, key=lambda p: p or 0):
                await self._audit(
                    conn, actor, "user.delete", project_id=project_id, target=name, client=client
                )
        self.forget_cached()

    # ------------------------------------------------------------------ roles

    async def add_member(self, project: str, user: str, role: str, *, actor: str = "cli") -> None:
        if role not in PROJECT_ROLES:
            raise InvalidValue(f"project role must be one of {', '.join(PROJECT_ROLES)}", "role")
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            user_id = await _user_id(conn, user)
            await conn.execute(
                self.db.upsert(memberships, ["project_id", "user_id"], {"role": role}).values(
                    project_id=project_id, user_id=user_id, role=role, created_at=utcnow()
                )
            )
            await self._audit(
                conn, actor, "member.add", project_id=project_id, target=user, detail={"role": role}
            )
        self._roles.clear()

    async def remove_member(
        self, project: str, user: str, *, actor: str = "cli", client: str | None = None
    ) -> None:
        """Remove a user from a project; their access keys there stop working at once."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            user_id = await _user_id(conn, user)
            result = await conn.execute(
                delete(memberships).where(
                    memberships.c.project_id == project_id, memberships.c.user_id == user_id
                )
            )
            if result.rowcount == 0:
                raise NameUnknown(f"user {user!r} is not a member of project {project!r}")
            await self._delete_keys_without_role(conn, project_id, user_id, actor, client)
            await self._audit(
                conn, actor, "member.remove", project_id=project_id, target=user, client=client
            )
        self.forget_cached()

    async def _delete_keys_without_role(
        self,
        conn: AsyncConnection,
        project_id: int,
        user_id: int,
        actor: str,
        client: str | None = None,
    ) -> None:
        if await _has_role(conn, project_id, user_id):
            return
        is_admin = (
            await conn.execute(select(users.c.is_admin).where(users.c.id == user_id))
        ).scalar()
        if is_admin:
            return  # a server administrator's keys need no project role
        deleted = await conn.execute(
            delete(access_keys)
            .where(access_keys.c.project_id == project_id, access_keys.c.user_id == user_id)
            .returning(access_keys.c.id)
        )
        for key_id in deleted.scalars():
            await self._audit(
                conn,
                actor,
                "key.delete",
                project_id=project_id,
                target=key_id,
                detail={"reason": "user left the project"},
                client=client,
            )

    async def list_members(self, project: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            rows = await conn.execute(
                select(users.c.name, memberships.c.role, memberships.c.created_at)
                .join(users, users.c.id == memberships.c.user_id)
                .where(memberships.c.project_id == project_id)
                .order_by(users.c.name)
            )
            return [
                {"user": r.name, "role": r.role, "since": r.created_at.isoformat()} for r in rows
            ]

    async def grant(
        self, project: str, repository: str, user: str, role: str, *, actor: str = "cli"
    ) -> None:
        if role not in REPOSITORY_ROLES:
            raise InvalidValue(
                f"repository role must be one of {', '.join(REPOSITORY_ROLES)}", "role"
            )
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            repository_id = await _repository_id(conn, project_id, project, repository)
            user_id = await _user_id(conn, user)
            await conn.execute(
                self.db.upsert(
                    repository_grants, ["repository_id", "user_id"], {"role": role}
                ).values(
                    repository_id=repository_id, user_id=user_id, role=role, created_at=utcnow()
                )
            )
            await self._audit(
                conn,
                actor,
                "repository.grant",
                project_id=project_id,
                target=f"{repository}:{user}",
                detail={"role": role},
            )
        self._roles.clear()

    async def revoke(
        self,
        project: str,
        repository: str,
        user: str,
        *,
        actor: str = "cli",
        client: str | None = None,
    ) -> None:
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            repository_id = await _repository_id(conn, project_id, project, repository)
            user_id = await _user_id(conn, user)
            result = await conn.execute(
                delete(repository_grants).where(
                    repository_grants.c.repository_id == repository_id,
                    repository_grants.c.user_id == user_id,
                )
            )
            if result.rowcount == 0:
                raise NameUnknown(f"user {user!r} has no role on {project}/{repository}")
            await self._delete_keys_without_role(conn, project_id, user_id, actor, client)
            await self._audit(
                conn,
                actor,
                "repository.revoke",
                project_id=project_id,
                target=f"{repository}:{user}",
                client=client,
            )
        self.forget_cached()

    async def project_roles(self, user_id: int) -> dict[int, str]:
        """project id -> the user's role there, for every project they are a member of."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(memberships.c.project_id, memberships.c.role).where(
                    memberships.c.user_id == user_id
                )
            )
            return {int(r.project_id): str(r.role) for r in rows}

    async def list_grants(self, project: str, repository: str) -> list[dict[str, Any]]:
        """Users with a role on one repository (not through a project role)."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            repository_id = await _repository_id(conn, project_id, project, repository)
            rows = await conn.execute(
                select(users.c.name, repository_grants.c.role, repository_grants.c.created_at)
                .join(users, users.c.id == repository_grants.c.user_id)
                .where(repository_grants.c.repository_id == repository_id)
                .order_by(users.c.name)
            )
            return [
                {"user": r.name, "role": r.role, "since": r.created_at.isoformat()} for r in rows
            ]

    async def has_any_role(self, user_id: int, project_id: int) -> bool:
        """A project role or a role on one of the project's repositories."""
        async with self.db.read() as conn:
            return await _has_role(conn, project_id, user_id)

    async def project_role(self, user_id: int, project_id: int) -> str | None:
        hit, role = self._roles.get(("p", user_id, project_id))
        if hit:
            return role  # type: ignore[no-any-return]
        async with self.db.read() as conn:
            role = (
                await conn.execute(
                    select(memberships.c.role).where(
                        memberships.c.user_id == user_id, memberships.c.project_id == project_id
                    )
                )
            ).scalar()
        self._roles.put(("p", user_id, project_id), role)
        return role

    async def repository_role(self, user_id: int, repository_id: int) -> str | None:
        hit, role = self._roles.get(("r", user_id, repository_id))
        if hit:
            return role  # type: ignore[no-any-return]
        async with self.db.read() as conn:
            role = (
                await conn.execute(
                    select(repository_grants.c.role).where(
                        repository_grants.c.user_id == user_id,
                        repository_grants.c.repository_id == repository_id,
                    )
                )
            ).scalar()
        self._roles.put(("r", user_id, repository_id), role)
        return role

    async def sees_project(self, principal: Principal | None, project_id: int) -> bool:
        """Project-wide standing (admin, member, reader or server admin with a key for this
        project), as opposed to roles on single repositories."""
        if principal is None or principal.key_project_id not in (None, project_id):
            return False
        return (
            principal.is_admin or await self.project_role(principal.user_id, project_id) is not None
        )

    async def actions(
        self, principal: Principal | None, project_id: int, repo: RepositoryRef | None
    ) -> frozenset[str]:
        """What `principal` may do on `repo` (or, with None, on a repository not yet created)."""
        project_role = repository_role = None
        if principal is not None:
            project_role = await self.project_role(principal.user_id, project_id)
            if repo is not None:
                repository_role = await self.repository_role(principal.user_id, repo.id)
        return repository_actions(
            principal,
            project_id=project_id,
            public=repo.public if repo is not None else False,
            project_role=project_role,
            repository_role=repository_role,
        )

    # ------------------------------------------------------------------ access keys

    async def create_key(
        self,
        user: str,
        project: str,
        *,
        expires_at: dt.datetime | None = None,
        actor: str = "cli",
    ) -> CreatedKey:
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidValue("the expiry date must be in the future", "expires_at")
        secret = new_secret()
        key_id = new_key_id()
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            user_row = (await conn.execute(select(users).where(users.c.name == user))).first()
            if user_row is None:
                raise NotFound(f"user {user!r} does not exist")
            if not user_row.is_admin and not await _has_role(conn, project_id, user_row.id):
                raise Denied(
                    f"user {user!r} has no role in project {project!r}; add them as a member "
                    "or grant them a repository role first"
                )
            count = (
                await conn.execute(
                    select(func.count())
                    .select_from(access_keys)
                    .where(
                        access_keys.c.user_id == user_row.id,
                        access_keys.c.project_id == project_id,
                    )
                )
            ).scalar()
            if (count or 0) >= self.max_keys:
                raise Denied(
                    f"user {user!r} already has {count} access keys in project {project!r}, "
                    f"the maximum (max_access_keys = {self.max_keys}); delete one first"
                )
            await conn.execute(
                access_keys.insert().values(
                    id=key_id,
                    user_id=user_row.id,
                    project_id=project_id,
                    secret_hash=self.keyring.hash_secret(secret),
                    created_at=utcnow(),
                    expires_at=expires_at,
                    disabled=False,
                )
            )
            await self._audit(
                conn,
                actor,
                "key.create",
                project_id=project_id,
                target=key_id,
                detail={"user": user},
            )
        return CreatedKey(key_id, secret, user, project, expires_at)

    async def list_keys(
        self, *, user: str | None = None, project: str | None = None
    ) -> list[dict[str, Any]]:
        query = (
            select(access_keys, users.c.name.label("user"), projects.c.name.label("project"))
            .join(users, users.c.id == access_keys.c.user_id)
            .join(projects, projects.c.id == access_keys.c.project_id)
            .order_by(access_keys.c.created_at)
        )
        if user:
            query = query.where(users.c.name == user)
        if project:
            query = query.where(projects.c.name == project)
        now = utcnow()
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "access_key_id": r.id,
                "user": r.user,
                "project": r.project,
                "created_at": r.created_at.isoformat(),
                "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "state": "disabled"
                if r.disabled
                else "expired"
                if r.expires_at and r.expires_at <= now
                else "active",
            }
            for r in rows
        ]

    async def key_owner(self, key_id: str) -> dict[str, Any] | None:
        """Whose key it is and where it works: user, service_account, project, project_id."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        users.c.name.label("user"),
                        users.c.is_service_account,
                        projects.c.name.label("project"),
                        access_keys.c.project_id,
                    )
                    .join(users, users.c.id == access_keys.c.user_id)
                    .join(projects, projects.c.id == access_keys.c.project_id)
                    .where(access_keys.c.id == key_id)
                )
            ).first()
        if row is None:
            return None
        return {
            "user": row.user,
            "service_account": row.is_service_account,
            "project": row.project,
            "project_id": row.project_id,
        }

    async def set_key_disabled(self, key_id: str, disabled: bool, *, actor: str = "cli") -> None:
        async with self.db.write() as conn:
            project_id = await _key_project(conn, key_id)
            await conn.execute(
                update(access_keys).where(access_keys.c.id == key_id).values(disabled=disabled)
            )
            await self._audit(
                conn,
                actor,
                "key.disable" if disabled else "key.enable",
                project_id=project_id,
                target=key_id,
            )
        self._keys.clear()

    async def delete_key(
        self, key_id: str, *, actor: str = "cli", client: str | None = None
    ) -> None:
        async with self.db.write() as conn:
            project_id = await _key_project(conn, key_id)
            await conn.execute(delete(access_keys).where(access_keys.c.id == key_id))
            await self._audit(
                conn, actor, "key.delete", project_id=project_id, target=key_id, client=client
            )
        self._keys.clear()

    async def _key_record(self, key_id: str) -> _KeyRecord | None:
        hit, record = self._keys.get(key_id)
        if hit:
            return record  # type: ignore[no-any-return]
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(access_keys, users.c.name.label("user"), users.c.is_admin)
                    .join(users, users.c.id == access_keys.c.user_id)
                    .where(access_keys.c.id == key_id)
                )
            ).first()
            record = None
            if row is not None:
                has_role = bool(row.is_admin) or await _has_role(conn, row.project_id, row.user_id)
                record = _KeyRecord(
                    row.id,
                    row.user_id,
                    row.user,
                    row.is_admin,
                    row.project_id,
                    row.secret_hash,
                    row.expires_at,
                    row.disabled,
                    has_role,
                )
        self._keys.put(key_id, record)
        return record  # type: ignore[no-any-return]

    async def authenticate_key(self, key_id: str, secret: str) -> Principal:
        """The principal behind an access key, or UNAUTHORIZED saying what is wrong."""
        record = await self._key_record(key_id) if may_be_key_id(key_id) else None
        # Compare against a stand-in hash when the key is unknown, so timing tells nothing.
        stored = record.secret_hash if record else self.keyring.hash_secret("\0")
        if not self.keyring.secret_matches(secret, stored) or record is None:
            if not looks_like_key_id(key_id):
                raise Unauthorized(NOT_A_KEY)
            raise Unauthorized("invalid access key ID or secret access key")
        if record.disabled:
            raise KeyNotUsable(f"access key {key_id} is disabled; enable it or create another")
        if record.expires_at is not None and record.expires_at <= utcnow():
            raise KeyNotUsable(f"access key {key_id} expired on {record.expires_at:%Y-%m-%d}")
        if not record.has_role:
            raise KeyNotUsable(f"access key {key_id} belongs to a user who left the project")
        await self._touch(key_id)
        return Principal(record.user_id, record.user, record.is_admin, key_id, record.project_id)

    async def key_is_active(self, key_id: str) -> bool:
        """For bearer tokens: the key they were issued for still works (checked each request)."""
        record = await self._key_record(key_id)
        return (
            record is not None
            and not record.disabled
            and record.has_role
            and (record.expires_at is None or record.expires_at > utcnow())
        )

    async def key_project_id(self, key_id: str) -> int | None:
        record = await self._key_record(key_id) if may_be_key_id(key_id) else None
        return record.project_id if record else None

    async def principal_for_token(self, user_id: int, user: str, key_id: str | None) -> Principal:
        record = await self._key_record(key_id) if key_id else None
        is_admin = record.is_admin if record else False
        return Principal(user_id, user, is_admin, key_id, record.project_id if record else None)

    async def _touch(self, key_id: str) -> None:
        """Record last use, at most once a minute per key per process (not a write per request)."""
        now = time.monotonic()
        if now - self._last_used.get(key_id, -LAST_USED_RESOLUTION) < LAST_USED_RESOLUTION:
            return
        self._last_used[key_id] = now
        async with self.db.write() as conn:
            await conn.execute(
                update(access_keys).where(access_keys.c.id == key_id).values(last_used_at=utcnow())
            )


async def _audit_page(
    conn: AsyncConnection, where: ColumnElement[bool], limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(audit_log)
        .where(where)
        .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [
        {
            "at": r.at.isoformat(),
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "detail": json.loads(r.detail) if r.detail else None,
            "client": r.client,
        }
        for r in rows
    ]


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidValue(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", "password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidValue(f"password must be at most {MAX_PASSWORD_LENGTH} characters", "password")


async def _user_id(conn: AsyncConnection, user: str) -> int:
    user_id = (await conn.execute(select(users.c.id).where(users.c.name == user))).scalar()
    if user_id is None:
        raise NotFound(f"user {user!r} does not exist")
    return int(user_id)


async def _repository_id(
    conn: AsyncConnection, project_id: int, project: str, repository: str
) -> int:
    repository_id = (
        await conn.execute(
            select(repositories.c.id).where(
                repositories.c.project_id == project_id, repositories.c.name == repository
            )
        )
    ).scalar()
    if repository_id is None:
        raise NameUnknown(f"repository {project}/{repository} does not exist")
    return int(repository_id)


async def _key_project(conn: AsyncConnection, key_id: str) -> int:
    project_id = (
        await conn.execute(select(access_keys.c.project_id).where(access_keys.c.id == key_id))
    ).scalar()
    if project_id is None:
        raise NotFound(f"access key {key_id!r} does not exist")
    return int(project_id)


async def _has_role(conn: AsyncConnection, project_id: int, user_id: int) -> bool:
    member = (
        await conn.execute(
            select(memberships.c.role).where(
                memberships.c.project_id == project_id, memberships.c.user_id == user_id
            )
        )
    ).first()
    if member is not None:
        return True
    grant = (
        await conn.execute(
            select(repository_grants.c.role)
            .join(repositories, repositories.c.id == repository_grants.c.repository_id)
            .where(repositories.c.project_id == project_id, repository_grants.c.user_id == user_id)
            .limit(1)
        )
    ).first()
    return grant is not None
