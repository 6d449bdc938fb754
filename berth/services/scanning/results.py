"""What a scan shows: its findings, their counts by severity, the summary image listings
show (`scan_summaries`) and a scan's result, read from `scans` rows (a result made while the
vulnerability database was empty is `no_data`, never a clean result)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.metadata.tables import scans, vulndb_imports
from berth.services.records import Record

ScanState = Literal["queued", "scanning", "done", "no_data", "failed"]
COUNTED = ("critical", "high", "medium", "low", "unknown")


class ScanFinding(Record):
    purl: str
    name: str
    installed: str
    fixed: str | None
    advisory_id: str
    aliases: list[str]
    summary: str
    severity: str
    link: str | None


class SeverityCounts(Record):
    critical: int
    high: int
    medium: int
    low: int
    unknown: int


# Why a `no_data` result is no result: what a reader sees in its `reason`.
NO_DATA_REASON = (
    "no vulnerability data: the vulnerability database was empty when this image was scanned, "
    "so nothing was checked; it is scanned again when OSV records are imported "
    "(berth vulndb import)"
)
STATE_DESCRIPTION = (
    "`queued`, `scanning`, `done`, `failed` (see `reason`), or `no_data`: scanned while the "
    "vulnerability database was empty, so nothing was checked (no counts, not a clean result; "
    "`reason` says so); the first import that adds records queues it again"
)
COUNTS_DESCRIPTION = (
    "findings by severity of the result made at {at}: while a rescan is `queued` or "
    "`scanning`, the previous scan's (zero when there is none); null when that result was made "
    "with no vulnerability data (`no_data`)"
)


class ScanSummary(Record):
    status: Literal["not_scanned", "queued", "scanning", "done", "no_data", "failed"] = Field(
        description=f"`not_scanned`, or the scan's state: {STATE_DESCRIPTION}"
    )
    reason: str | None = Field(
        description="why a `failed` scan could not finish, or why a `no_data` one checked nothing"
    )
    counts: SeverityCounts | None = Field(description=COUNTS_DESCRIPTION.format(at="`scanned_at`"))
    stale: bool = Field(
        description="vulnerability data was imported after this scan (the next rescan "
        "scans it again)"
    )
    scanned_at: dt.datetime | None = Field(
        description="when the result (`done`) or failure (`failed`) was made; while `queued` or "
        "`scanning`, when the previous result was (null: there is none)"
    )


NOT_SCANNED = ScanSummary(
    status="not_scanned",
    reason=None,
    counts=SeverityCounts(critical=0, high=0, medium=0, low=0, unknown=0),
    stale=False,
    scanned_at=None,
)


def made_without_data(row: Any) -> bool:
    """Whether the result a `scans` row shows (its own, or while a rescan is queued or running
    the previous one's) was made while the vulnerability database was empty: no result."""
    return (
        row.state in ("done", "queued", "scanning")
        and row.finished_at is not None
        and not row.vulndb_state
    )


def shown_state(row: Any) -> Any:
    """A `scans` row's state as readers see it: `no_data` for a result made without data."""
    return "no_data" if row.state == "done" and made_without_data(row) else row.state


def is_stale(state: str, vulndb_state: int | None, current: int | None) -> bool:
    """A finished result made before the latest import that changed the vulnerability data
    (`rescan_stale` says the same in SQL)."""
    return state == "done" and (vulndb_state or 0) < (current or 0)


def counts_of(row: Any) -> SeverityCounts | None:
    """The severity counts of a `scans` row (None: its result was made without data)."""
    if made_without_data(row):
        return None
    return SeverityCounts(**{c: getattr(row, c) for c in COUNTED})


def reason_of(row: Any) -> str | None:
    return NO_DATA_REASON if shown_state(row) == "no_data" else row.reason


async def scan_summaries(conn: AsyncConnection, manifest_ids: list[int]) -> dict[int, ScanSummary]:
    """The scan state of each of these manifests (absent: never scanned), in one query: the
    database's current state rides along to say which results are stale."""
    if not manifest_ids:
        return {}
    current = (
        select(func.max(vulndb_imports.c.id))
        .where(vulndb_imports.c.added + vulndb_imports.c.replaced > 0)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(
            scans.c.manifest_id,
            scans.c.state,
            scans.c.reason,
            *(scans.c[c] for c in COUNTED),
            scans.c.vulndb_state,
            scans.c.finished_at,
            current.label("current"),
        ).where(scans.c.manifest_id.in_(manifest_ids))
    )
    return {
        int(row.manifest_id): ScanSummary(
            status=shown_state(row),
            reason=reason_of(row),
            counts=counts_of(row),
            stale=is_stale(row.state, row.vulndb_state, row.current),
            scanned_at=row.finished_at,
        )
        for row in rows
    }


class ScanResult(Record):
    digest: str
    state: ScanState = Field(description=STATE_DESCRIPTION)
    reason: str | None = Field(
        description="why a `failed` scan could not finish, or why a `no_data` one checked nothing"
    )
    stale: bool  # vulnerability data was imported after this result was made
    counts: SeverityCounts | None = Field(description=COUNTS_DESCRIPTION.format(at="`finished_at`"))
    packages: int
    vulndb_state: int | None = Field(
        description="the vulnerability database's state the result was matched against (the "
        "newest import that changed records; 0: the database was empty, `no_data`)"
    )
    requested_by: str
    requested_at: dt.datetime
    finished_at: dt.datetime | None = Field(
        description="when the result or failure was made; while `queued` or `scanning`, when "
        "the previous result was (null: there is none)"
    )
    findings: list[ScanFinding] = Field(
        description="most severe first; while `queued` or `scanning`, the previous result's"
    )
