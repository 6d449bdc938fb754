"""Users: creating them (and the first administrator), finding them, setting passwords,
deleting them. Signing in with a password is checked in `berth.access.credentials`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.credentials import new_secret_text
from berth.access.passwords import Passwords
from berth.access.permissions import ProjectRole
from berth.domain.errors import Conflict, Denied, InvalidValue, NameInvalid
from berth.domain.names import MAX_USER_NAME_LENGTH, USER_NAME_RULE, is_valid_component
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_user_row
from berth.metadata.tables import (
    access_keys,
    console_sessions,
    memberships,
    projects,
    repositories,
    repository_grants,
    users,
    utcnow,
)
from berth.services.members import refuse_leaving_no_admin

MIN_PASSWORD_LENGTH = 8
# A member picker's search: shorter parts of a name find only the user of exactly that name,
# so someone who may only add members cannot list the server's users a letter at a time.
MIN_MEMBER_SEARCH = 3
MAX_PASSWORD_LENGTH = 1024  # what sign-in accepts


def _user_row(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "admin": row.is_admin,
        "service_account": row.is_service_account,
        "created_at": row.created_at.isoformat(),
    }


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidValue(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", "password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidValue(f"password must be at most {MAX_PASSWORD_LENGTH} characters", "password")


class Users:
    def __init__(
        self, db: Database, passwords: Passwords, forget_access: Callable[[], None]
    ) -> None:
        self.db = db
        self.passwords = passwords  # argon2id
        self._forget_access = forget_access  # a deleted user's keys and roles stop working

    async def create_user(
        self,
        name: str,
        password: str | None,
        *,
        is_admin: bool = False,
        service_account: bool = False,
        actor: str,
        client: str | None = None,
    ) -> dict[str, Any]:
        """Create a user; returns it as `get_user` does."""
        if not is_valid_component(name) or len(name) > MAX_USER_NAME_LENGTH:
            raise NameInvalid(f"invalid user name {name!r}: {USER_NAME_RULE}")
        if password is None and not service_account:
            raise InvalidValue("a user needs a password (service accounts have none)", "password")
        if password is not None:
            _check_password(password)
        password_hash = await self.passwords.hash(password) if password is not None else None
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
            await write_audit_entry(
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
            password = generated = new_secret_text(18)
        try:
            await self.create_user("admin", password, is_admin=True, actor="server")
        except Conflict:
            return None  # another node or worker got there first
        return "admin", generated

    async def get_user(self, name: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
        return None if row is None else _user_row(row)

    async def list_users(self) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(users).order_by(users.c.name))
            return [_user_row(r) for r in rows]

    async def search_users(
        self, query: str = "", *, page: int = 1, per_page: int = 20
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the users whose name contains `query` (every user when empty), by name,
        and how many match in all: the server administrators' list."""
        matching = select(users)
        if query:
            matching = matching.where(users.c.name.contains(query.lower(), autoescape=True))
        return await self._page(matching, page, per_page)

    async def find_for_membership(
        self, query: str, *, page: int = 1, per_page: int = 20
    ) -> tuple[list[dict[str, Any]], int]:
        """Users to add as members, for a project admin, a page at a time with how many match:
        those whose name contains `query` of at least `MIN_MEMBER_SEARCH` characters, else only
        the one of exactly that name."""
        query = query.lower()
        if not query:
            raise InvalidValue(
                f"name the user to find: at least {MIN_MEMBER_SEARCH} characters of the name, "
                "or all of it",
                "query",
            )
        if len(query) >= MIN_MEMBER_SEARCH:
            return await self.search_users(query, page=page, per_page=per_page)
        return await self._page(select(users).where(users.c.name == query), page, per_page)

    async def _page(
        self, matching: Select[Any], page: int, per_page: int
    ) -> tuple[list[dict[str, Any]], int]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                matching.order_by(users.c.name).limit(per_page).offset((page - 1) * per_page)
            )
            found = [_user_row(r) for r in rows]
            total = await conn.execute(select(func.count()).select_from(matching.subquery()))
        return found, int(total.scalar() or 0)

    async def set_password(
        self,
        name: str,
        password: str,
        *,
        actor: str,
        keep_session: str | None = None,
        client: str | None = None,
    ) -> None:
        """Set a user's password (their own change, or an administrator's reset). The user's
        console sessions end, but for `keep_session` (the one that changed it)."""
        _check_password(password)
        password_hash = await self.passwords.hash(password)
        async with self.db.write() as conn:
            row = await require_user_row(conn, name)
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
            await write_audit_entry(
                conn,
                actor,
                "user.password",
                target=name,
                detail={"by": "self" if actor == name else "administrator"},
                client=client,
            )

    async def require_user(self, name: str) -> None:
        """Refuse a user that does not exist, as the verbs naming one would."""
        async with self.db.read() as conn:
            await require_user_row(conn, name)

    async def require_deletable(self, name: str, *, actor: str) -> None:
        """Refuse as `delete_user` would (a user that does not exist, yourself, the last
        server administrator, a project's last admin): asked before a delete is confirmed."""
        async with self.db.read() as conn:
            await _refuse_deleting(conn, await require_user_row(conn, name), name, actor)

    async def delete_user(self, name: str, *, actor: str, client: str | None = None) -> None:
        """Delete a user: their access keys, console sessions and roles go with them at once
        (the database cascades them). Each project they had a role in audits it (and each key
        deleted)."""
        async with self.db.write() as conn:
            row = await require_user_row(conn, name)
            await _refuse_deleting(conn, row, name, actor)
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
                await write_audit_entry(
                    conn,
                    actor,
                    "key.delete",
                    project_id=key.project_id,
                    target=key.id,
                    detail={"reason": "user deleted", "user": name},
                    client=client,
                )
            for project_id in sorted({None, *project_ids}, key=lambda p: p or 0):
                await write_audit_entry(
                    conn, actor, "user.delete", project_id=project_id, target=name, client=client
                )
        self._forget_access()


async def _refuse_deleting(conn: AsyncConnection, row: Row[Any], name: str, actor: str) -> None:
    """What keeps a user from being deleted: being who asks, the last server administrator,
    or a project's last admin (it would be left with none, as demoting them would)."""
    if name == actor:
        raise Denied("you cannot delete yourself; another administrator can")
    if row.is_admin:
        admins = (
            await conn.execute(select(func.count()).select_from(users).where(users.c.is_admin))
        ).scalar()
        if (admins or 0) <= 1:
            raise Denied(f"user {name!r} is the last server administrator")
    administered = await conn.execute(
        select(projects.c.id, projects.c.name)
        .join(memberships, memberships.c.project_id == projects.c.id)
        .where(memberships.c.user_id == row.id, memberships.c.role == ProjectRole.ADMIN)
    )
    for project_id, project in administered.all():
        await refuse_leaving_no_admin(conn, project_id, project, row.id, name)
