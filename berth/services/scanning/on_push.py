"""The scan a push queues: one insert, in the push's own transaction, when its repository
scans on push (`scan_mode` auto)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, literal, select

from berth.metadata.tables import repositories, scans, utcnow
from berth.services.scanning.results import COUNTED


def queue_on_push(manifest_id: int, repository_id: int, actor: str) -> Any:
    """The one insert a push runs in its own transaction: queue a scan of the manifest it
    stored, when its repository scans on push."""
    now = utcnow()
    values = select(
        literal(manifest_id),
        literal("queued"),
        *(literal(0) for _ in (*COUNTED, "packages")),
        literal(actor[:64]),
        literal(now, scans.c.requested_at.type),
    ).where(repositories.c.id == repository_id, repositories.c.scan_mode == "auto")
    return insert(scans).from_select(
        ["manifest_id", "state", *COUNTED, "packages", "requested_by", "requested_at"], values
    )
