"""The audit log's one writer: a service records what it changed in the same transaction as the
change, so an entry exists exactly when the change does, whichever surface asked for it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from berth.metadata.tables import audit_log, utcnow


async def write_audit_entry(
    conn: AsyncConnection,
    actor: str,
    action: str,
    *,
    project_id: int | None = None,
    target: str = "",
    detail: dict[str, Any] | None = None,
    client: str | None = None,
) -> None:
    await conn.execute(
        audit_log.insert().values(
            at=utcnow(),
            project_id=project_id,
            actor=actor,
            action=action,
            target=target,
            detail=json.dumps(detail) if detail else None,
            client=client,
        )
    )


async def write_audit_entries(
    conn: AsyncConnection, entries: list[dict[str, Any]], *, client: str | None = None
) -> None:
    """Many entries in one statement (a retention run's image deletes): each a dict of
    `actor`, `action`, `project_id`, `target`, optionally `detail`."""
    if not entries:
        return
    at = utcnow()
    await conn.execute(
        audit_log.insert(),
        [
            {
                "at": at,
                "project_id": entry.get("project_id"),
                "actor": entry["actor"],
                "action": entry["action"],
                "target": entry.get("target", ""),
                "detail": json.dumps(entry["detail"]) if entry.get("detail") else None,
                "client": client,
            }
            for entry in entries
        ],
    )
