"""The audit entry of a change to a repository's content (an image, tag or blob deleted, a tag
restored), written by the service in the change's own transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.references import RepositoryRef
from berth.metadata.audit import write_audit_entry


async def audit_content_change(
    conn: AsyncConnection,
    action: str,
    repo: RepositoryRef,
    image: str,
    reference: str,
    *,
    actor: str,
    client: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """`reference` is a digest or a tag; the target names it as a client would:
    `repository[/image]@digest` or `repository[/image]:tag`."""
    name = f"{repo.name}/{image}" if image else repo.name
    separator = "@" if ":" in reference else ":"
    await write_audit_entry(
        conn,
        actor,
        action,
        project_id=repo.project_id,
        target=f"{name}{separator}{reference}"[:255],
        detail=detail,
        client=client,
    )
