"""What a finished scan leaves: its findings' rows and counts by severity, its line in the
server's log, and its `scan.finished` webhook event."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from sqlalchemy import Exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.events import SCAN_FINISHED
from berth.domain.names import joined_name
from berth.domain.wording import counted
from berth.metadata.tables import manifest_references, manifests, projects, repositories, scans
from berth.services.scanning.results import COUNTED, NO_DATA_REASON, ScanFinding
from berth.services.webhook_events import EventData, ScanOutcome, enqueue_event

logger = logging.getLogger("berth.scans")


def finding_row(scan_id: int, finding: ScanFinding) -> dict[str, Any]:
    row = finding.model_dump()
    row["aliases"] = json.dumps(finding.aliases)
    row["scan_id"] = scan_id
    return row


def counts_by_severity(findings: list[ScanFinding]) -> dict[str, int]:
    counts = dict.fromkeys(COUNTED, 0)
    for finding in findings:
        counts[finding.severity if finding.severity in counts else "unknown"] += 1
    return counts


def covered_by_an_index() -> Exists:
    """For a row of `manifests`: an index of the same repository and image lists it and has
    a scan of its own (queued, running or finished), whose `scan.finished` event covers it:
    a platform manifest that a push into an auto-scan repository queued before its index
    arrived (clients push the platforms first) sends no event of its own."""
    parent = manifests.alias("parent")
    parent_scan = scans.alias("parent_scan")
    return (
        select(manifest_references.c.digest)
        .join(parent, parent.c.id == manifest_references.c.manifest_id)
        .join(parent_scan, parent_scan.c.manifest_id == parent.c.id)
        .where(
            manifest_references.c.is_manifest,
            manifest_references.c.digest == manifests.c.digest,
            parent.c.repository_id == manifests.c.repository_id,
            parent.c.image == manifests.c.image,
        )
        .exists()
    )


async def scanned_image(conn: AsyncConnection, scan_id: int) -> Any:
    """The project, repository, image and digest of a scan (None: the image was deleted),
    and whether an index's scan covers it (`covered`)."""
    return (
        await conn.execute(
            select(
                repositories.c.project_id,
                projects.c.name.label("project"),
                repositories.c.name.label("repository"),
                manifests.c.image,
                manifests.c.digest,
                scans.c.requested_by,
                covered_by_an_index().label("covered"),
            )
            .select_from(scans)
            .join(manifests, manifests.c.id == scans.c.manifest_id)
            .join(repositories, repositories.c.id == manifests.c.repository_id)
            .join(projects, projects.c.id == repositories.c.project_id)
            .where(scans.c.id == scan_id)
        )
    ).first()


def log_outcome(
    scanned: Any,
    scan_id: int,
    found: list[ScanFinding],
    packages: int,
    reason: str | None,
    *,
    with_data: bool,
) -> None:
    """One line per finished scan in the server's log, as the other jobs write theirs."""
    if scanned is None:
        image = f"scan {scan_id} (image deleted meanwhile)"
    else:
        image = f"{scanned.project}/{joined_name(scanned.repository, scanned.image)}"
        image += f"@{scanned.digest}"
    if reason is not None:
        logger.warning("scan of %s: failed: %s", image, reason)
        return
    if not with_data:
        logger.warning("scan of %s: %s", image, NO_DATA_REASON)
        return
    counts = counts_by_severity(found)
    logger.info(
        "scan of %s: done, %s in %s (%s)",
        image,
        counted(len(found), "finding"),
        counted(packages, "package"),
        ", ".join(f"{counts[c]} {c}" for c in COUNTED),
    )


async def announce_finished(
    conn: AsyncConnection,
    row: Any,
    found: list[ScanFinding],
    packages: int,
    reason: str | None,
    *,
    with_data: bool,
) -> None:
    """Queue the `scan.finished` webhook event in the transaction that stored the result (if
    an endpoint of the image's project takes it)."""
    repo_path = (
        f"/projects/{quote(row.project, safe='')}/repositories/{quote(row.repository, safe='')}"
    )
    image_param = f"image={quote(row.image, safe='')}" if row.image else ""
    image_query = f"?{image_param}" if image_param else ""
    findings_query = f"findings={row.digest}" + (f"&{image_param}" if image_param else "")
    name = joined_name(row.repository, row.image)
    data = EventData(
        project=row.project,
        repository=row.repository,
        image=row.image,
        digest=row.digest,
        actor=row.requested_by,
        scan=ScanOutcome(
            status="failed" if reason else "done" if with_data else "no_data",
            reason=reason if reason or with_data else NO_DATA_REASON,
            # A scan that checked nothing has no counts: zeros would read as a clean image.
            counts=counts_by_severity(found) if with_data or reason else None,
            findings=len(found) if with_data or reason else None,
            packages=packages,
            api_path=f"/api/v1{repo_path}/images/{row.digest}/scan{image_query}",
            console_path=f"/console/#{repo_path}/images?{findings_query}",
        ),
    )
    await enqueue_event(conn, row.project_id, SCAN_FINISHED, data, f"{name}@{row.digest}")
