"""The vulnerability database: OSV records the operator imports (Berth never fetches any: it
runs where there is no network), what is in it, and the findings of installed packages.

An import takes a JSON file (one record, or a list of them), a directory of such files, or a
zip archive of them (OSV.dev's per-ecosystem `all.zip`). It is idempotent: a record is kept
once per ID; one with a newer `modified` replaces it, an older or equal one changes nothing.
Each file is read and checked whole before anything of it is written, so a malformed file is
refused, naming the file and the field, and nothing of it is imported; the other files are.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import InvalidValue
from berth.domain.vulns import (
    Advisory,
    AdvisoryIndex,
    Finding,
    InstalledPackage,
    MalformedRecord,
    findings_for,
    package_key,
    parse_advisory,
)
from berth.metadata.database import Database
from berth.metadata.tables import scans, utcnow, vuln_advisories, vuln_packages, vulndb_imports
from berth.services.records import Record

# A record file larger than this is refused unread (OSV records are kilobytes; the largest,
# with long explicit version lists, well under a megabyte): an archive member that inflates
# without end is not read into memory.
MAX_RECORD_FILE = 16 * 1024 * 1024
TOO_LARGE = (
    f"larger than {MAX_RECORD_FILE // (1024 * 1024)} MiB, the most one file may hold; "
    "import its records as a directory of files or a zip of them (one record per file, "
    "as OSV's all.zip has them)"
)
# Records written per transaction: large imports neither hold the write lock for minutes
# nor pay a commit per record.
BATCH = 500
# Packages looked up per query when matching (bound parameters stay well under limits).
LOOKUP_BATCH = 400


class RefusedFile(Record):
    file: str
    field: str
    problem: str


class ImportReport(Record):
    path: str
    added: int
    replaced: int
    unchanged: int
    refused: list[RefusedFile]


class EcosystemCount(Record):
    ecosystem: str
    records: int


class SourceState(Record):
    source: str
    records: int
    newest_modified: dt.datetime


class VulnDbStatus(Record):
    records: int
    ecosystems: list[EcosystemCount]
    sources: list[SourceState]
    last_import_at: dt.datetime | None
    state: int  # the newest import that changed records (0: none); what a scan records


@dataclass
class _Parsed:
    advisory: Advisory
    text: str


def _read_limited(handle: Any, name: str) -> bytes:
    data: bytes = handle.read(MAX_RECORD_FILE + 1)
    if len(data) > MAX_RECORD_FILE:
        raise MalformedRecord("(file)", TOO_LARGE)
    return data


def _documents(path: Path) -> Iterator[tuple[str, bytes | MalformedRecord]]:
    """(name to report, content or why it cannot be read) of every record file under
    `path`, in a stable order."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*.json") if p.is_file()):
            yield from _documents(file)
        return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in sorted(archive.infolist(), key=lambda m: m.filename):
                if member.is_dir() or not member.filename.endswith(".json"):
                    continue
                name = f"{path.name}:{member.filename}"
                if member.file_size > MAX_RECORD_FILE:
                    yield name, MalformedRecord("(file)", TOO_LARGE)
                    continue
                try:
                    with archive.open(member) as handle:
                        yield name, _read_limited(handle, name)
                except MalformedRecord as exc:
                    yield name, exc
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    yield name, MalformedRecord("(file)", f"cannot be read: {exc}")
        return
    # Its size is known before a byte is read: an oversized file is refused at once, not
    # after reading the first 16 MiB of it.
    if path.stat().st_size > MAX_RECORD_FILE:
        yield str(path), MalformedRecord("(file)", TOO_LARGE)
        return
    try:
        with path.open("rb") as handle:
            yield str(path), _read_limited(handle, str(path))
    except MalformedRecord as exc:
        yield str(path), exc


def parse_document(content: bytes) -> list[_Parsed]:
    """The records of one file, all checked (MalformedRecord on the first bad one: its field
    is prefixed with the record's place in a list)."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRecord("(file)", f"not JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested thousands deep: no OSV record
        raise MalformedRecord("(file)", "not an OSV record: JSON nested too deeply") from None
    items = data if isinstance(data, list) else [data]
    parsed: list[_Parsed] = []
    for index, item in enumerate(items):
        try:
            advisory = parse_advisory(item)
        except MalformedRecord as exc:
            if isinstance(data, list):
                raise MalformedRecord(f"[{index}].{exc.field}", exc.problem) from None
            raise
        text = json.dumps(item, separators=(",", ":"))
        # Kept as published, where it is UTF-8 (JSON may also come as UTF-16).
        if len(items) == 1:
            with contextlib.suppress(UnicodeDecodeError):
                text = content.decode("utf-8")
        parsed.append(_Parsed(advisory, text))
    return parsed


def _package_rows(row_id: int, advisory: Advisory) -> list[dict[str, Any]]:
    keys = {a.key for a in advisory.affected}
    return [
        {"advisory_id": row_id, "ecosystem": ecosystem, "name": name}
        for ecosystem, name in sorted(keys)
    ]


def _advisory_values(parsed: _Parsed, now: dt.datetime) -> dict[str, Any]:
    advisory = parsed.advisory
    return {
        "advisory_id": advisory.id,
        "source": advisory.source[:64],
        "modified": advisory.modified,
        "withdrawn": advisory.withdrawn,
        "severity": advisory.severity.label,
        "summary": advisory.summary,
        "record": parsed.text,
        "imported_at": now,
    }


class VulnDb:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def import_path(self, path: Path, actor: str) -> ImportReport:
        """Import every record file under `path`; InvalidValue when there is nothing there."""
        if not path.exists():
            raise InvalidValue(f"{path}: no such file or directory")
        started = utcnow()
        refused: list[RefusedFile] = []
        counts = {"added": 0, "replaced": 0, "unchanged": 0}
        pending: dict[str, _Parsed] = {}
        for name, content in _documents(path):
            try:
                if isinstance(content, MalformedRecord):
                    raise content
                records = parse_document(content)
            except MalformedRecord as exc:
                refused.append(RefusedFile(file=name, field=exc.field, problem=exc.problem))
                continue
            for parsed in records:
                known = pending.get(parsed.advisory.id)
                if known is None or parsed.advisory.modified > known.advisory.modified:
                    pending[parsed.advisory.id] = parsed
            if len(pending) >= BATCH:
                await self._write(pending.values(), counts)
                pending = {}
        if pending:
            await self._write(pending.values(), counts)
        async with self.db.write() as conn:
            if counts["added"] or counts["replaced"]:
                await self._queue_results_without_data(conn, actor)
            await conn.execute(
                insert(vulndb_imports).values(
                    path=str(path),
                    actor=actor,
                    started_at=started,
                    finished_at=utcnow(),
                    refused=len(refused),
                    **counts,
                )
            )
        return ImportReport(path=str(path), refused=refused, **counts)

    @staticmethod
    async def _queue_results_without_data(conn: AsyncConnection, actor: str) -> None:
        """Queue again every scan made while the database was empty (services/scanning/scans:
        `done` at state 0, shown as `no_data`), in the transaction that records the import:
        they checked nothing, so they are scanned now rather than at the next daily rescan of
        stale results. Only those: results made with data wait for that rescan."""
        await conn.execute(
            update(scans)
            .where(scans.c.state == "done", func.coalesce(scans.c.vulndb_state, 0) == 0)
            .values(state="queued", requested_by=actor[:64], requested_at=utcnow())
        )

    async def _write(self, batch: Iterable[_Parsed], counts: dict[str, int]) -> None:
        records = list(batch)
        now = utcnow()
        async with self.db.write() as conn:
            existing = {
                row.advisory_id: (row.id, row.modified)
                for row in await conn.execute(
                    select(
                        vuln_advisories.c.id,
                        vuln_advisories.c.advisory_id,
                        vuln_advisories.c.modified,
                    ).where(vuln_advisories.c.advisory_id.in_([r.advisory.id for r in records]))
                )
            }
            new = [r for r in records if r.advisory.id not in existing]
            newer = [
                r
                for r in records
                if r.advisory.id in existing and r.advisory.modified > existing[r.advisory.id][1]
            ]
            counts["unchanged"] += len(records) - len(new) - len(newer)
            counts["added"] += len(new)
            counts["replaced"] += len(newer)
            if new:
                await conn.execute(insert(vuln_advisories), [_advisory_values(r, now) for r in new])
                ids = await self._ids(conn, [r.advisory.id for r in new])
                await self._insert_packages(conn, [(ids[r.advisory.id], r) for r in new])
            for parsed in newer:
                row_id = existing[parsed.advisory.id][0]
                await conn.execute(
                    update(vuln_advisories)
                    .where(vuln_advisories.c.id == row_id)
                    .values(**_advisory_values(parsed, now))
                )
                await conn.execute(
                    delete(vuln_packages).where(vuln_packages.c.advisory_id == row_id)
                )
                await self._insert_packages(conn, [(row_id, parsed)])

    @staticmethod
    async def _ids(conn: AsyncConnection, advisory_ids: list[str]) -> dict[str, int]:
        rows = await conn.execute(
            select(vuln_advisories.c.id, vuln_advisories.c.advisory_id).where(
                vuln_advisories.c.advisory_id.in_(advisory_ids)
            )
        )
        return {row.advisory_id: row.id for row in rows}

    @staticmethod
    async def _insert_packages(conn: AsyncConnection, rows: list[tuple[int, _Parsed]]) -> None:
        values = [v for row_id, parsed in rows for v in _package_rows(row_id, parsed.advisory)]
        if values:
            await conn.execute(insert(vuln_packages), values)

    async def status(self) -> VulnDbStatus:
        async with self.db.read() as conn:
            ecosystems = [
                EcosystemCount(ecosystem=row.ecosystem, records=row.records)
                for row in await conn.execute(
                    select(
                        vuln_packages.c.ecosystem,
                        func.count(func.distinct(vuln_packages.c.advisory_id)).label("records"),
                    )
                    .group_by(vuln_packages.c.ecosystem)
                    .order_by(vuln_packages.c.ecosystem)
                )
            ]
            sources = [
                SourceState(source=row.source, records=row.records, newest_modified=row.newest)
                for row in await conn.execute(
                    select(
                        vuln_advisories.c.source,
                        func.count().label("records"),
                        func.max(vuln_advisories.c.modified).label("newest"),
                    )
                    .group_by(vuln_advisories.c.source)
                    .order_by(vuln_advisories.c.source)
                )
            ]
            total = (await conn.execute(select(func.count()).select_from(vuln_advisories))).scalar()
            last = (await conn.execute(select(func.max(vulndb_imports.c.finished_at)))).scalar()
            state = (
                await conn.execute(
                    select(func.max(vulndb_imports.c.id)).where(
                        vulndb_imports.c.added + vulndb_imports.c.replaced > 0
                    )
                )
            ).scalar()
        return VulnDbStatus(
            records=int(total or 0),
            ecosystems=ecosystems,
            sources=sources,
            last_import_at=last,
            state=int(state or 0),
        )

    async def state(self) -> int:
        """The newest import that changed records (0: none): `VulnDbStatus.state`, read alone."""
        async with self.db.read() as conn:
            state = (
                await conn.execute(
                    select(func.max(vulndb_imports.c.id)).where(
                        vulndb_imports.c.added + vulndb_imports.c.replaced > 0
                    )
                )
            ).scalar()
        return int(state or 0)

    async def advisories_for(self, packages: Iterable[InstalledPackage]) -> list[Advisory]:
        """The imported records that name any of `packages` (by ecosystem and name)."""
        keys = sorted(
            {
                (p.ecosystem, package_key(p.ecosystem, name))
                for p in packages
                for name in (p.name, *p.sources)
            }
        )
        texts: dict[int, str] = {}
        async with self.db.read() as conn:
            for start in range(0, len(keys), LOOKUP_BATCH):
                chunk = keys[start : start + LOOKUP_BATCH]
                wanted = select(vuln_packages.c.advisory_id).where(
                    tuple_(vuln_packages.c.ecosystem, vuln_packages.c.name).in_(chunk)
                )
                rows = await conn.execute(
                    select(vuln_advisories.c.id, vuln_advisories.c.record).where(
                        vuln_advisories.c.id.in_(wanted)
                    )
                )
                texts.update({row.id: row.record for row in rows})
        return [parse_advisory(json.loads(text)) for _, text in sorted(texts.items())]

    async def findings(self, packages: list[InstalledPackage]) -> list[Finding]:
        """Every finding among `packages`, package by package."""
        index = AdvisoryIndex(await self.advisories_for(packages))
        found: list[Finding] = []
        for package in packages:
            found.extend(findings_for(package, index))
        return found
