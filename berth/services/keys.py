"""Access keys: creating, listing, disabling and deleting them. Checking one is
`berth.access.credentials`."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.credentials import (
    KEY_ID_ALPHABET,
    KEY_ID_LENGTH,
    Credentials,
    new_secret_text,
)
from berth.access.roles import has_role
from berth.domain.errors import Denied, InvalidValue, NotFound
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project, require_user_row
from berth.metadata.tables import access_keys, projects, users, utcnow
from berth.services.records import Record


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


class AccessKey(Record):
    """An access key as its owner and project admins see it (never its secret)."""

    access_key_id: str
    user: str
    project: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    state: Literal["active", "disabled", "expired"]


def new_key_id() -> str:
    return "BK" + "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH - 2))


def new_secret() -> str:
    return new_secret_text(30)


class Keys:
    def __init__(self, db: Database, credentials: Credentials, max_keys_per_project: int) -> None:
        self.db = db
        self.credentials = credentials  # its cached key lookups are dropped on each change
        self.keyring = credentials.keyring
        self.max_keys = max_keys_per_project

    async def create_key(
        self,
        user: str,
        project: str,
        *,
        expires_at: dt.datetime | None = None,
        actor: str,
        client: str | None = None,
    ) -> CreatedKey:
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidValue("the expiry date must be in the future", "expires_at")
        secret = new_secret()
        key_id = new_key_id()
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            user_row = await require_user_row(conn, user)
            if not user_row.is_admin and not await has_role(conn, project_id, user_row.id):
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
            await write_audit_entry(
                conn,
                actor,
                "key.create",
                project_id=project_id,
                target=key_id,
                detail={"user": user},
                client=client,
            )
        return CreatedKey(key_id, secret, user, project, expires_at)

    async def list_keys(
        self, *, user: str | None = None, project: str | None = None
    ) -> list[AccessKey]:
        query = (
            select(
                access_keys,
                users.c.name.label("user"),
                projects.c.name.label("project"),
                # By the database's clock, as a key is checked (`Credentials.key_record`).
                (access_keys.c.expires_at <= self.db.clock()).label("expired"),
            )
            .join(users, users.c.id == access_keys.c.user_id)
            .join(projects, projects.c.id == access_keys.c.project_id)
            .order_by(access_keys.c.created_at)
        )
        if user:
            query = query.where(users.c.name == user)
        if project:
            query = query.where(projects.c.name == project)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AccessKey(
                access_key_id=r.id,
                user=r.user,
                project=r.project,
                created_at=r.created_at,
                last_used_at=r.last_used_at,
                expires_at=r.expires_at,
                state="disabled" if r.disabled else "expired" if r.expired else "active",
            )
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

    async def set_key_disabled(
        self, key_id: str, disabled: bool, *, actor: str, client: str | None = None
    ) -> None:
        async with self.db.write() as conn:
            project_id = await _key_project(conn, key_id)
            await conn.execute(
                update(access_keys).where(access_keys.c.id == key_id).values(disabled=disabled)
            )
            await write_audit_entry(
                conn,
                actor,
                "key.disable" if disabled else "key.enable",
                project_id=project_id,
                target=key_id,
                client=client,
            )
        self.credentials.forget()

    async def require_key(self, key_id: str) -> None:
        """Refuse as `delete_key` would a key that does not exist: asked before a delete is
        confirmed."""
        async with self.db.read() as conn:
            await _key_project(conn, key_id)

    async def delete_key(self, key_id: str, *, actor: str, client: str | None = None) -> None:
        async with self.db.write() as conn:
            project_id = await _key_project(conn, key_id)
            await conn.execute(delete(access_keys).where(access_keys.c.id == key_id))
            await write_audit_entry(
                conn, actor, "key.delete", project_id=project_id, target=key_id, client=client
            )
        self.credentials.forget()


async def _key_project(conn: AsyncConnection, key_id: str) -> int:
    project_id = (
        await conn.execute(select(access_keys.c.project_id).where(access_keys.c.id == key_id))
    ).scalar()
    if project_id is None:
        raise NotFound(f"access key {key_id!r} does not exist")
    return int(project_id)
