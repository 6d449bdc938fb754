"""A project's immutable tag rules: making, listing and removing them (audited), and the rules
every change of a tag consults (`Registry` refuses to move or remove a protected tag;
retention never deletes an image a protected tag names)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import Conflict, InvalidValue, NotFound
from berth.domain.tag_rules import (
    MAX_RULES,
    ImmutableTagRule,
    TagImmutable,
    check_repository_pattern,
    check_tag_pattern,
    full_name,
    protecting_rule,
)
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import immutable_tag_rules, repositories, tags, utcnow
from berth.services.records import Record


class TagRule(Record):
    """An immutable tag rule of a project: a tag matching `tag_pattern`, in a repository
    matching `repository_pattern`, cannot be moved to another image or removed by any client,
    and retention never deletes its image."""

    id: int
    project: str
    tag_pattern: str = Field(description="glob matched against the whole tag, e.g. v* or release-*")
    repository_pattern: str | None = Field(
        description="glob matched against the repository name or the full name "
        "(repository/image); null: every repository of the project"
    )
    created_by: str
    created_at: dt.datetime


def _record(row: Any, project: str) -> TagRule:
    return TagRule(
        id=row.id,
        project=project,
        tag_pattern=row.tag_pattern,
        repository_pattern=row.repository_pattern,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _rule(row: Any) -> ImmutableTagRule:
    return ImmutableTagRule(row.id, row.tag_pattern, row.repository_pattern)


async def _rules_in(conn: AsyncConnection, project_id: int) -> list[ImmutableTagRule]:
    rows = await conn.execute(
        select(
            immutable_tag_rules.c.id,
            immutable_tag_rules.c.tag_pattern,
            immutable_tag_rules.c.repository_pattern,
        )
        .where(immutable_tag_rules.c.project_id == project_id)
        .order_by(immutable_tag_rules.c.id)
    )
    return [_rule(row) for row in rows]


async def immutable_rules(
    db: Database | AsyncConnection, project_id: int
) -> list[ImmutableTagRule]:
    """The project's rules in the order they were made (the first that matches is the one a
    refusal names). Pass a connection to read them inside its transaction."""
    if isinstance(db, AsyncConnection):
        return await _rules_in(db, project_id)
    async with db.read() as conn:
        return await _rules_in(conn, project_id)


async def refuse_protected_repository(
    conn: AsyncConnection, project_id: int, repository: str
) -> None:
    """TagImmutable when deleting the repository would take a protected tag with it."""
    rules = await _rules_in(conn, project_id)
    if not rules:
        return
    rows = await conn.execute(
        select(tags.c.image, tags.c.name)
        .join(repositories, repositories.c.id == tags.c.repository_id)
        .where(repositories.c.project_id == project_id, repositories.c.name == repository)
        .order_by(tags.c.image, tags.c.name)
    )
    for image, tag in rows:
        name = full_name(repository, image)
        rule = protecting_rule(rules, name, tag)
        if rule is not None:
            shown = tag if name == repository else f"{name}:{tag}"
            raise TagImmutable(
                shown,
                rule,
                f"deleted with repository {repository}; remove the rule first to delete it",
            )


class TagRules:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_rules(self, project: str) -> list[TagRule]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            rows = await conn.execute(
                select(immutable_tag_rules)
                .where(immutable_tag_rules.c.project_id == project_id)
                .order_by(immutable_tag_rules.c.id)
            )
            return [_record(row, project) for row in rows]

    async def create(
        self,
        project: str,
        tag_pattern: str,
        repository_pattern: str | None = None,
        *,
        actor: str,
        client: str | None = None,
    ) -> TagRule:
        """Add a rule; from now on matching tags cannot move or go. Audited
        (`immutable_tag_rule.create`)."""
        check_tag_pattern(tag_pattern)
        if repository_pattern is not None:
            check_repository_pattern(repository_pattern)
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            existing = await _rules_in(conn, project_id)
            if len(existing) >= MAX_RULES:
                raise InvalidValue(
                    f"project {project!r} has {MAX_RULES} immutable tag rules, the most it may "
                    "have; remove one first"
                )
            for rule in existing:
                if (rule.tag_pattern, rule.repository_pattern) == (tag_pattern, repository_pattern):
                    raise Conflict(
                        f"project {project!r} already has this {rule.describe()} (id {rule.id})",
                        {"id": rule.id},
                    )
            result: Any = await conn.execute(
                immutable_tag_rules.insert().values(
                    project_id=project_id,
                    tag_pattern=tag_pattern,
                    repository_pattern=repository_pattern,
                    created_by=actor[:64],
                    created_at=utcnow(),
                )
            )
            rule_id = int(result.inserted_primary_key[0])
            await write_audit_entry(
                conn,
                actor,
                "immutable_tag_rule.create",
                project_id=project_id,
                target=tag_pattern,
                detail={
                    "id": rule_id,
                    "tag_pattern": tag_pattern,
                    "repository_pattern": repository_pattern,
                },
                client=client,
            )
            row = await self._row(conn, project_id, project, rule_id)
        return _record(row, project)

    async def _row(self, conn: AsyncConnection, project_id: int, project: str, rule_id: int) -> Any:
        row = (
            await conn.execute(
                select(immutable_tag_rules).where(
                    immutable_tag_rules.c.id == rule_id,
                    immutable_tag_rules.c.project_id == project_id,
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"project {project!r} has no immutable tag rule {rule_id}")
        return row

    async def require_rule(self, project: str, rule_id: int) -> None:
        """Refuse as `delete` would a rule the project does not have (or a project that does
        not exist): asked before a removal is confirmed."""
        async with self.db.read() as conn:
            await self._row(conn, await require_project(conn, project), project, rule_id)

    async def delete(
        self, project: str, rule_id: int, *, actor: str, client: str | None = None
    ) -> None:
        """Remove a rule: its tags can move and go again (unless another rule or the
        repository's tag overwrite switch fixes them). Audited."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            row = await self._row(conn, project_id, project, rule_id)
            await conn.execute(
                delete(immutable_tag_rules).where(immutable_tag_rules.c.id == rule_id)
            )
            await write_audit_entry(
                conn,
                actor,
                "immutable_tag_rule.delete",
                project_id=project_id,
                target=row.tag_pattern,
                detail={
                    "id": rule_id,
                    "tag_pattern": row.tag_pattern,
                    "repository_pattern": row.repository_pattern,
                },
                client=client,
            )
