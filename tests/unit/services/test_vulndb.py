"""The vulnerability database (`berth.services.vulndb`) on a real SQLite database, with the
genuine OSV records of tests/fixtures/osv (README.md there says where each came from)."""

from __future__ import annotations

import asyncio
import json
import shutil
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from berth.domain.errors import InvalidValue
from berth.domain.vulns import InstalledPackage
from berth.metadata.database import Database
from berth.services.vulndb import MAX_RECORD_FILE, VulnDb

RECORDS = Path(__file__).parents[2] / "fixtures" / "osv"
T = TypeVar("T")

AFFECTED = [
    InstalledPackage("PyPI", "requests", "2.30.0"),
    InstalledPackage("npm", "ms", "0.7.0"),
    InstalledPackage("npm", "mixin-deep", "1.3.1"),
    InstalledPackage("Alpine:v3.8", "openssl", "1.0.2p-r0"),
]


def with_vulndb(database_url: str, work: Callable[[VulnDb], Awaitable[T]]) -> T:
    async def run() -> T:
        db = Database(database_url)
        try:
            return await work(VulnDb(db))
        finally:
            await db.dispose()

    return asyncio.run(run())


def copy_records(into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for record in RECORDS.glob("*.json"):
        shutil.copyfile(record, into / record.name)
    return into


def test_an_import_is_idempotent_and_status_says_what_is_there(database_url: str) -> None:
    async def work(vulndb: VulnDb) -> Any:
        first = await vulndb.import_path(RECORDS, "test")
        again = await vulndb.import_path(RECORDS, "test")
        return first, again, await vulndb.status()

    first, again, status = with_vulndb(database_url, work)

    assert (first.added, first.replaced, first.unchanged, first.refused) == (6, 0, 0, [])
    assert (again.added, again.replaced, again.unchanged) == (0, 0, 6)
    assert status.records == 6
    counts = {e.ecosystem: e.records for e in status.ecosystems}
    assert counts["npm"] == 3 and counts["PyPI"] == 1 and counts["Go"] == 1
    assert counts["Alpine:v3.8"] == 1
    newest = {s.source: (s.records, s.newest_modified.isoformat()) for s in status.sources}
    assert newest["PYSEC"] == (1, "2023-06-05T01:13:00.534973+00:00")
    assert newest["GHSA"] == (3, "2021-09-22T20:19:52+00:00")
    # The second import changed nothing: the state a scan records is the first import's.
    assert status.state == 1


def test_a_newer_record_replaces_an_older_one_and_an_older_never_does(
    database_url: str, tmp_path: Path
) -> None:
    published = json.loads((RECORDS / "GHSA-3fx5-fwvr-xrjg.json").read_text())
    # The same advisory as a later revision would be: a newer `modified`, the fix moved.
    revised = json.loads(json.dumps(published))
    revised["modified"] = "2030-01-01T00:00:00Z"
    revised["affected"][0]["ranges"][0]["events"][1]["fixed"] = "0.7.2"
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "r.json").write_text(json.dumps(revised))

    async def work(vulndb: VulnDb) -> Any:
        await vulndb.import_path(RECORDS, "test")
        newer = await vulndb.import_path(tmp_path / "new", "test")
        after_newer = await vulndb.findings([InstalledPackage("npm", "ms", "0.7.1")])
        older = await vulndb.import_path(RECORDS / "GHSA-3fx5-fwvr-xrjg.json", "test")
        after_older = await vulndb.findings([InstalledPackage("npm", "ms", "0.7.1")])
        return newer, after_newer, older, after_older, await vulndb.status()

    newer, after_newer, older, after_older, status = with_vulndb(database_url, work)

    assert (newer.added, newer.replaced) == (0, 1)
    assert [(f.advisory_id, f.fixed) for f in after_newer] == [("GHSA-3fx5-fwvr-xrjg", "0.7.2")]
    assert (older.replaced, older.unchanged) == (0, 1)
    assert after_older == after_newer
    assert status.records == 6
    assert {s.source: s.records for s in status.sources}["GHSA"] == 3


def test_an_osv_all_zip_imports_like_its_files(database_url: str, tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for record in sorted(RECORDS.glob("*.json")):
            out.write(record, record.name)

    async def work(vulndb: VulnDb) -> Any:
        report = await vulndb.import_path(archive, "test")
        return report, await vulndb.findings(AFFECTED)

    report, found = with_vulndb(database_url, work)

    assert (report.added, report.refused) == (6, [])
    assert sorted((f.package, f.advisory_id, f.fixed) for f in found) == [
        ("mixin-deep", "GHSA-fhjf-83wg-r2j9", "1.3.2"),
        ("ms", "GHSA-3fx5-fwvr-xrjg", "0.7.1"),
        ("openssl", "CVE-2018-5407", "1.0.2q-r0"),
        ("requests", "PYSEC-2023-74", "2.31.0"),
    ]


def test_a_malformed_file_is_refused_by_name_and_field_and_nothing_of_it_is_imported(
    database_url: str, tmp_path: Path
) -> None:
    folder = copy_records(tmp_path / "osv")
    # A list of two records whose second lacks `modified`: the first is not imported either.
    good = json.loads((RECORDS / "PYSEC-2023-74.json").read_text())
    bad = json.loads((RECORDS / "GO-2020-0001.json").read_text())
    del bad["modified"]
    (folder / "PYSEC-2023-74.json").unlink()
    (folder / "GO-2020-0001.json").unlink()
    (folder / "both.json").write_text(json.dumps([good, bad]))
    (folder / "broken.json").write_text('{"id": "X-1",')

    async def work(vulndb: VulnDb) -> Any:
        report = await vulndb.import_path(folder, "test")
        return report, await vulndb.status(), await vulndb.findings(AFFECTED)

    report, status, found = with_vulndb(database_url, work)

    refused = {(Path(r.file).name, r.field) for r in report.refused}
    assert refused == {("both.json", "[1].modified"), ("broken.json", "(file)")}
    assert report.added == 4
    assert status.records == 4
    assert "PYSEC-2023-74" not in {f.advisory_id for f in found}


def test_without_records_nothing_is_found(database_url: str) -> None:
    found = with_vulndb(database_url, lambda vulndb: vulndb.findings(AFFECTED))

    assert found == []


def test_a_missing_path_is_refused(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidValue, match="no such file"):
        with_vulndb(database_url, lambda v: v.import_path(tmp_path / "nothing", "test"))


def test_a_file_past_the_size_limit_or_unreadable_is_refused_and_the_others_imported(
    database_url: str, tmp_path: Path
) -> None:
    """Each file stands alone: one too large (loose or in an archive, judged before it is
    read) or damaged inside the archive is refused by name, and the records beside it are
    imported."""
    oversized = b'{"id": "X-1", "details": "' + b"a" * MAX_RECORD_FILE + b'"}'
    folder = copy_records(tmp_path / "osv")
    (folder / "huge.json").write_bytes(oversized)
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("huge.json", oversized, zipfile.ZIP_DEFLATED)
        out.writestr("damaged.json", (RECORDS / "GO-2020-0001.json").read_bytes())
        for record in sorted(RECORDS.glob("PYSEC-*.json")):
            out.write(record, record.name, zipfile.ZIP_DEFLATED)
    # Flip one byte of the stored (uncompressed) member: its CRC no longer matches.
    data = bytearray(archive.read_bytes())
    at = data.index(b'"GO-2020-0001"')
    data[at + 1] ^= 0x20
    archive.write_bytes(bytes(data))

    async def work(vulndb: VulnDb) -> Any:
        return await vulndb.import_path(folder, "test"), await vulndb.import_path(archive, "t")

    from_folder, from_archive = with_vulndb(database_url, work)

    assert from_folder.added == 6
    too_large = (
        "larger than 16 MiB, the most one file may hold; import its records as a directory of "
        "files or a zip of them (one record per file, as OSV's all.zip has them)"
    )
    assert [(Path(r.file).name, r.problem) for r in from_folder.refused] == [
        ("huge.json", too_large)
    ]
    assert sorted((r.file, r.problem.split(":")[0]) for r in from_archive.refused) == [
        ("all.zip:damaged.json", "cannot be read"),
        ("all.zip:huge.json", too_large.split(":")[0]),
    ]
    assert from_archive.unchanged == 1  # PYSEC-2023-74, imported from the folder already
