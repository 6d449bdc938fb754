"""Image scans on a real SQLite database and filesystem blob store: images built from the real
packages in tests/fixtures/packages, pushed through the upload and manifest services, matched
against the genuine OSV records in tests/fixtures/osv imported with the vulndb service."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from berth.domain.events import SCAN_FINISHED
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.migrate import upgrade
from berth.metadata.tables import audit_log, scans, utcnow, webhook_events, webhooks
from berth.services.images import Images
from berth.services.registry import Registry
from berth.services.repositories import Repositories
from berth.services.scanning import results as results_module
from berth.services.scanning import scans as scans_module
from berth.services.scanning.results import ScanResult
from berth.services.scanning.scans import Scans
from berth.services.uploads import Uploads
from berth.services.vulndb import VulnDb
from berth.storage.filesystem import FilesystemBlobStore
from tests.oci import OCI_LAYER_GZIP, Blob, image_config, image_index, image_manifest
from tests.servers import BACKENDS, PostgresCluster, database_url_for
from tests.unit.services.test_scanning_layers import (
    APP,
    FIXTURES,
    SITE,
    file_entry,
    layer,
    npm_package,
    pip_installed,
    vulnerable_app_layers,
    zeros_layer,
)

OSV = FIXTURES / "osv"


@dataclass
class World:
    db: Database
    store: FilesystemBlobStore
    repositories: Repositories
    registry: Registry
    uploads: Uploads
    vulndb: VulnDb
    scans: Scans


Scenario = Callable[[World], Awaitable[Any]]


def run(url: str, tmp_path: Path, scenario: Scenario) -> Any:
    async def main() -> Any:
        db = Database(url)
        store = FilesystemBlobStore(tmp_path / "blobs")
        vulndb = VulnDb(db)
        world = World(
            db,
            store,
            Repositories(db, store=store),
            Registry(db, store),
            Uploads(db, store),
            vulndb,
            Scans(db, store, vulndb),
        )
        try:
            return await scenario(world)
        finally:
            await store.close()
            await db.dispose()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def app_layers(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A Debian 12 base, then requests 2.30.0, ms 0.7.0 and mixin-deep 1.3.1 (each affected by
    a genuine record in tests/fixtures/osv)."""
    return vulnerable_app_layers(tmp_path_factory.mktemp("site") / "old")


@pytest.fixture(scope="module")
def fixed_layers(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The same releases' fixed versions: requests 2.31.0, ms 0.7.1, mixin-deep 1.3.2."""
    work = tmp_path_factory.mktemp("site")
    return [
        layer(
            pip_installed("requests-2.31.0-py3-none-any.whl", work / "new")
            + npm_package("ms-0.7.1.tgz", "ms")
            + npm_package("mixin-deep-1.3.2.tgz", "mixin-deep")
            + [file_entry(f"{APP}/.keep", b""), file_entry(f"{SITE}/.keep", b"")]
        )
    ]


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def repository(world: World, scan_mode: str = "manual") -> RepositoryRef:
    await world.repositories.create_project("p", actor="test")
    await world.repositories.create("p", "app", scan_mode=scan_mode, actor="test")
    return await world.repositories.require("p", "app")


async def push_blob(world: World, repo: RepositoryRef, blob: Blob) -> None:
    upload = await world.uploads.start(repo, "")
    await world.uploads.complete(repo, upload, blob.digest, _body(blob.data), None)


async def push_image(
    world: World, repo: RepositoryRef, layers: list[bytes], tag: str, arch: str = "amd64"
) -> Blob:
    blobs = [Blob(data, OCI_LAYER_GZIP) for data in layers]
    config = image_config(architecture=arch)
    for blob in (config, *blobs):
        await push_blob(world, repo, blob)
    manifest = image_manifest(config.descriptor(), [b.descriptor() for b in blobs])
    await world.registry.put_manifest(repo, "", tag, manifest.data, manifest.media_type)
    return manifest


async def push_platform_index(
    world: World, repo: RepositoryRef, amd64: Blob, arm64: Blob, tag: str
) -> Blob:
    """An index of two pushed images, as linux/amd64 and linux/arm64, pushed as `tag`."""
    index = image_index(
        [
            amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
            arm64.descriptor(platform={"os": "linux", "architecture": "arm64"}),
        ]
    )
    await world.registry.put_manifest(repo, "", tag, index.data, index.media_type)
    return index


async def platforms_world(
    world: World, tmp_path: Path, app_layers: list[bytes], fixed_layers: list[bytes]
) -> tuple[RepositoryRef, Blob, Blob, Blob]:
    """Every record imported; the affected releases as linux/amd64, the fixed ones as
    linux/arm64, and their index tagged `multi`: (repository, amd64, arm64, index)."""
    repo = await repository(world)
    await import_records(world, tmp_path, ALL_RECORDS)
    amd64 = await push_image(world, repo, app_layers, "amd64", "amd64")
    arm64 = await push_image(world, repo, fixed_layers, "arm64", "arm64")
    index = await push_platform_index(world, repo, amd64, arm64, "multi")
    return repo, amd64, arm64, index


def lose_layer(world: World, image: Blob, position: int) -> str:
    """Delete the image's layer at `position` from storage behind the registry's back (as a
    disk or bucket might lose it after the push); returns its digest."""
    digest: str = json.loads(image.data)["layers"][position]["digest"]
    path = world.store.local_path(digest)
    assert path is not None
    path.unlink()
    return digest


async def import_records(world: World, tmp_path: Path, names: list[str]) -> None:
    folder = tmp_path / f"osv-{len(list(tmp_path.glob('osv-*')))}"
    folder.mkdir()
    for name in names:
        shutil.copyfile(OSV / name, folder / name)
    report = await world.vulndb.import_path(folder, "test")
    assert report.refused == [] and report.added == len(names)


async def scanned(world: World, repo: RepositoryRef, digest: str) -> ScanResult:
    await world.scans.request_scan(repo, "", digest, "alice", client="10.0.0.1")
    assert await world.scans.run_queued() >= 1
    result = await world.scans.result(repo.id, "", digest)
    assert result is not None
    return result


def findings(result: ScanResult) -> list[tuple[str, str, str, str | None]]:
    return sorted((f.name, f.installed, f.advisory_id, f.fixed) for f in result.findings)


EXPECTED = [
    ("mixin-deep", "1.3.1", "GHSA-fhjf-83wg-r2j9", "1.3.2"),
    ("ms", "0.7.0", "GHSA-3fx5-fwvr-xrjg", "0.7.1"),
    ("requests", "2.30.0", "PYSEC-2023-74", "2.31.0"),
]
ALL_RECORDS = sorted(p.name for p in OSV.glob("*.json"))


def test_a_scan_finds_the_published_advisories_of_installed_releases(
    database_url: str, tmp_path: Path, app_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world)
        image = await push_image(world, repo, app_layers, "v1")
        assert await world.scans.result(repo.id, "", image.digest) is None  # manual: not queued
        await import_records(world, tmp_path, ALL_RECORDS)
        result = await scanned(world, repo, image.digest)
        assert result.state == "done" and result.reason is None and not result.stale
        assert findings(result) == EXPECTED
        requests = next(f for f in result.findings if f.advisory_id == "PYSEC-2023-74")
        assert requests.purl == "pkg:pypi/requests@2.30.0"
        assert requests.aliases == ["CVE-2023-32681", "GHSA-j8r2-6x86-q33q"]
        counts = result.counts
        assert counts is not None
        # GHSA-3fx5's CVSS 3.0 vector scores 7.5; PYSEC-2023-74 and GHSA-fhjf carry no severity.
        assert (counts.critical, counts.high, counts.medium, counts.low, counts.unknown) == (
            0,
            1,
            0,
            0,
            2,
        )
        assert result.packages > 3  # the Debian packages are in the inventory too
        sbom = await world.scans.sbom(image.digest)
        assert sbom is not None and sbom["os"]["id"] == "debian"
        assert "pkg:npm/ms@0.7.0" in {p["purl"] for p in sbom["packages"]}
        async with world.db.read() as conn:
            audited = (
                await conn.execute(
                    select(audit_log.c.actor, audit_log.c.action, audit_log.c.target).where(
                        audit_log.c.action == "image.scan"
                    )
                )
            ).all()
        assert audited == [("alice", "image.scan", f"app@{image.digest}")]

    run(database_url, tmp_path, scenario)


def test_fixed_releases_find_nothing(
    database_url: str, tmp_path: Path, fixed_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world)
        await import_records(world, tmp_path, ALL_RECORDS)
        fixed = await push_image(world, repo, fixed_layers, "v2")
        result = await scanned(world, repo, fixed.digest)
        assert result.state == "done" and result.findings == [] and result.packages == 3
        assert result.counts is not None and not any(result.counts.model_dump().values())

    run(database_url, tmp_path, scenario)


def test_a_scan_before_any_import_is_no_result_and_the_import_queues_it_again(
    database_url: str, tmp_path: Path, app_layers: list[bytes], fixed_layers: list[bytes]
) -> None:
    """Pushed to an auto-scan repository before any `vulndb import`: the scan checked nothing,
    and says so wherever it is read (result, listing, webhook event, log), with no counts
    that would read as a clean image. The first import that adds records queues it again,
    and only it: a result made with data waits for the rescan of stale results."""

    async def scenario(world: World) -> None:
        repo = await repository(world, scan_mode="auto")
        async with world.db.write() as conn:
            await conn.execute(
                webhooks.insert().values(
                    project_id=repo.project_id, url="http://hooks.invalid/", event_types=""
                )
            )
        image = await push_image(world, repo, app_layers, "v1")
        assert await world.scans.run_queued() == 1

        result = await world.scans.result(repo.id, "", image.digest)
        assert result is not None
        assert (result.state, result.counts, result.findings, result.stale) == (
            "no_data",
            None,
            [],
            False,
        )
        assert result.reason == results_module.NO_DATA_REASON
        assert result.reason.startswith("no vulnerability data: the vulnerability database")
        summary = (await Images(world.db, world.store).image(repo, "", image.digest)).scan
        assert (summary.status, summary.counts, summary.reason) == (
            "no_data",
            None,
            results_module.NO_DATA_REASON,
        )
        [event] = await scan_events(world)
        assert event["scan"]["status"] == "no_data"
        assert event["scan"]["reason"] == results_module.NO_DATA_REASON
        assert "counts" not in event["scan"] and "findings" not in event["scan"]

        # A first import: the result made without data is queued at once, by the importer.
        await import_records(world, tmp_path, ["PYSEC-2023-74.json"])
        queued = await world.scans.result(repo.id, "", image.digest)
        assert queued is not None
        assert (queued.state, queued.counts, queued.requested_by) == ("queued", None, "test")
        assert await world.scans.run_queued() == 1
        first = await world.scans.result(repo.id, "", image.digest)
        assert first is not None and first.state == "done"
        assert [f.advisory_id for f in first.findings] == ["PYSEC-2023-74"]
        assert first.counts is not None and first.counts.unknown == 1

        # A later import leaves results made with data to the rescan of stale results.
        fixed = await push_image(world, repo, fixed_layers, "v2")
        assert await world.scans.run_queued() == 1
        await import_records(world, tmp_path, ["GHSA-3fx5-fwvr-xrjg.json"])
        for digest in (image.digest, fixed.digest):
            stale = await world.scans.result(repo.id, "", digest)
            assert stale is not None and (stale.state, stale.stale) == ("done", True)
        assert not await world.scans.has_queued()

    run(database_url, tmp_path, scenario)


def test_an_import_makes_results_stale_and_rescan_finds_the_new_records(
    database_url: str, tmp_path: Path, app_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world)
        image = await push_image(world, repo, app_layers, "v1")
        await import_records(world, tmp_path, ["PYSEC-2023-74.json"])
        first = await scanned(world, repo, image.digest)
        assert [f.advisory_id for f in first.findings] == ["PYSEC-2023-74"]
        await import_records(world, tmp_path, ["GHSA-3fx5-fwvr-xrjg.json"])
        stale = await world.scans.result(repo.id, "", image.digest)
        assert stale is not None and stale.stale
        assert await world.scans.rescan_stale() == 1
        assert await world.scans.rescan_stale() == 0  # queued already
        assert await world.scans.run_queued() == 1
        again = await world.scans.result(repo.id, "", image.digest)
        assert again is not None and not again.stale
        assert [f.advisory_id for f in again.findings] == ["GHSA-3fx5-fwvr-xrjg", "PYSEC-2023-74"]

    run(database_url, tmp_path, scenario)


def test_an_index_is_scanned_per_platform(
    database_url: str, tmp_path: Path, app_layers: list[bytes], fixed_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo, _, arm64, index = await platforms_world(world, tmp_path, app_layers, fixed_layers)
        result = await scanned(world, repo, index.digest)
        assert result.state == "done" and findings(result) == EXPECTED
        per_platform = await world.scans.result(repo.id, "", arm64.digest)
        assert per_platform is not None and per_platform.state == "done"
        assert per_platform.findings == []

    run(database_url, tmp_path, scenario)


def test_indexes_nested_deeper_than_the_scanner_reads_fail_saying_so(
    database_url: str,
    tmp_path: Path,
    app_layers: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chain of indexes, each listing the one below: a scan
    reads at most MAX_INDEX_DEPTH indexes down and fails beyond, saying why, instead of
    recursing until Python refuses; a chain within the bound is scanned. (Pushes deeper than
    the registry's own MAX_INDEX_DEPTH are refused; older data may hold deeper chains.)"""
    monkeypatch.setattr(scans_module, "MAX_INDEX_DEPTH", 3)

    async def scenario(world: World) -> None:
        repo = await repository(world)
        await import_records(world, tmp_path, ALL_RECORDS)
        below = await push_image(world, repo, app_layers, "image")
        chain = []
        for level in range(4):
            below = image_index(
                [below.descriptor(platform={"os": "linux", "architecture": "amd64"})]
            )
            await world.registry.put_manifest(
                repo, "", f"level{level}", below.data, below.media_type
            )
            chain.append(below)
        within = await scanned(world, repo, chain[2].digest)
        assert within.state == "done" and findings(within) == EXPECTED
        beyond = await scanned(world, repo, chain[3].digest)
        assert beyond.state == "failed"
        assert "indexes nested more than 3 deep" in (beyond.reason or "")

    run(database_url, tmp_path, scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_queued_scans_take_projects_in_turn(
    backend: str,
    database_url: str,
    postgres: PostgresCluster | None,
    tmp_path: Path,
    app_layers: list[bytes],
    fixed_layers: list[bytes],
) -> None:
    """One project queues three scans, then another project one: the other's runs second,
    not after all three (scans run one at a time; a project queueing many large images
    must not hold every other project's back). On both databases: the order is SQL's."""
    url = database_url_for(backend, postgres) or database_url
    if backend != "sqlite":
        upgrade(url)

    async def scenario(world: World) -> None:
        busy = await repository(world)
        await world.repositories.create_project("q", actor="test")
        await world.repositories.create("q", "app", actor="test")
        quiet = await world.repositories.require("q", "app")
        busy_images = [
            await push_image(world, busy, app_layers, f"v{n}", arch)
            for n, arch in enumerate(["amd64", "arm64", "riscv64"])
        ]
        quiet_image = await push_image(world, quiet, fixed_layers, "v1")
        for image in busy_images:
            await world.scans.request_scan(busy, "", image.digest, "alice", client=None)
        await world.scans.request_scan(quiet, "", quiet_image.digest, "bob", client=None)
        assert await world.scans.run_queued() == 4
        finished = []
        for repo, image in [*((busy, i) for i in busy_images), (quiet, quiet_image)]:
            result = await world.scans.result(repo.id, "", image.digest)
            assert result is not None and result.finished_at is not None
            finished.append((result.finished_at, repo.project))
        assert [project for _, project in sorted(finished)] == ["p", "q", "p", "p"]

    run(url, tmp_path, scenario)


def test_auto_scan_queues_on_push_and_the_job_scans(
    database_url: str, tmp_path: Path, app_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world, scan_mode="auto")
        await import_records(world, tmp_path, ALL_RECORDS)
        image = await push_image(world, repo, app_layers, "v1")
        queued = await world.scans.result(repo.id, "", image.digest)
        assert (
            queued is not None and queued.state == "queued" and queued.requested_by == "anonymous"
        )
        assert await world.scans.has_queued()
        assert await world.scans.run_queued() == 1
        assert not await world.scans.has_queued()
        result = await world.scans.result(repo.id, "", image.digest)
        assert result is not None and findings(result) == EXPECTED

    run(database_url, tmp_path, scenario)


def test_a_scan_that_cannot_read_a_layer_fails_saying_why(
    database_url: str, tmp_path: Path, app_layers: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(world: World) -> str:
        repo = await repository(world)
        image = await push_image(world, repo, app_layers, "v1")
        layer_digest = lose_layer(world, image, 1)
        result = await scanned(world, repo, image.digest)
        assert result.state == "failed"
        assert result.reason == f"layer {layer_digest} is missing from storage"
        assert result.findings == []
        return f"scan of p/app@{image.digest}: failed: {result.reason}"

    with caplog.at_level(logging.INFO, logger="berth.scans"):
        line = run(database_url, tmp_path, scenario)
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "berth.scans"] == [
        ("WARNING", line)
    ]


def test_an_unforeseen_scan_failure_names_its_kind_not_the_servers_files(
    database_url: str, tmp_path: Path, app_layers: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A layer that cannot be read for a reason the scanner does not know (here a directory
    where its file was): the reason users see names no path of the server's; the log has it."""

    async def scenario(world: World) -> None:
        repo = await repository(world)
        image = await push_image(world, repo, app_layers, "v1")
        digest = lose_layer(world, image, 1)
        path = world.store.local_path(digest)
        assert path is not None
        path.mkdir()
        result = await scanned(world, repo, image.digest)
        assert result.state == "failed"
        assert result.reason == ("scan error (IsADirectoryError); the server's log has the details")
        assert str(tmp_path) in caplog.text  # the operator's log names the file

    with caplog.at_level(logging.INFO, logger="berth.scans"):
        run(database_url, tmp_path, scenario)


def test_each_finished_scan_leaves_a_line_in_the_server_log(
    database_url: str, tmp_path: Path, app_layers: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """As GC runs and webhook failures do: the image, the state and the counts (an index's
    platforms, scanned as part of it, each have their own line)."""

    async def scenario(world: World) -> tuple[str, int]:
        repo = await repository(world)
        await import_records(world, tmp_path, ALL_RECORDS)
        image = await push_image(world, repo, app_layers, "v1")
        result = await scanned(world, repo, image.digest)
        return image.digest, result.packages

    with caplog.at_level(logging.INFO, logger="berth.scans"):
        digest, packages = run(database_url, tmp_path, scenario)
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "berth.scans"] == [
        (
            "INFO",
            f"scan of p/app@{digest}: done, 3 findings in {packages} packages (0 critical, "
            "1 high, 0 medium, 0 low, 2 unknown)",
        )
    ]


def test_a_rescan_keeps_the_previous_result_until_its_own_and_a_failure_is_none(
    database_url: str, tmp_path: Path, app_layers: list[bytes]
) -> None:
    """While a rescan is queued, the listing and the result still carry the previous result
    with its time (readers show it as the previous scan's); after a failed attempt there is
    no previous result: no time, no reason of the old failure."""

    async def scenario(world: World) -> None:
        repo = await repository(world)
        await import_records(world, tmp_path, ALL_RECORDS)
        listing = Images(world.db, world.store)
        image = await push_image(world, repo, app_layers, "v1")
        broken = await push_image(world, repo, [layer([file_entry("etc/motd", b"lost")])], "x")
        lose_layer(world, broken, 0)
        first = await scanned(world, repo, image.digest)
        assert (await scanned(world, repo, broken.digest)).state == "failed"

        for digest in (image.digest, broken.digest):
            await world.scans.request_scan(repo, "", digest, "bob")
        again = await world.scans.result(repo.id, "", image.digest)
        assert again is not None and again.state == "queued"
        assert (again.finished_at, again.counts) == (first.finished_at, first.counts)
        assert findings(again) == EXPECTED
        summary = (await listing.image(repo, "", image.digest)).scan
        assert (summary.status, summary.scanned_at) == ("queued", first.finished_at)
        assert summary.counts is not None
        assert (summary.counts.high, summary.counts.unknown) == (1, 2)

        retried = (await listing.image(repo, "", broken.digest)).scan
        assert (retried.status, retried.scanned_at, retried.reason) == ("queued", None, None)

    run(database_url, tmp_path, scenario)


def test_a_scan_left_scanning_by_a_stopped_node_is_done_again(
    database_url: str, tmp_path: Path, app_layers: list[bytes]
) -> None:
    """Not while its process renews it, however long ago it started; once the renewals stop
    for ABANDONED_AFTER (or from when it started, for a row a version without renewals left)."""

    async def scenario(world: World) -> None:
        repo = await repository(world)
        await import_records(world, tmp_path, ALL_RECORDS)
        image = await push_image(world, repo, app_layers, "v1")
        await world.scans.request_scan(repo, "", image.digest, "alice")
        started = utcnow() - dt.timedelta(hours=2)
        async with world.db.write() as conn:  # as a long scan in another process leaves it
            await conn.execute(
                update(scans).values(state="scanning", started_at=started, alive_at=utcnow())
            )
        assert not await world.scans.has_queued()
        assert await world.scans.run_queued() == 0
        result = await world.scans.result(repo.id, "", image.digest)
        assert result is not None and result.state == "scanning"

        async with world.db.write() as conn:  # as a node that claimed it and then died leaves it
            await conn.execute(update(scans).values(alive_at=None))
        assert await world.scans.has_queued()
        assert await world.scans.run_queued() == 1
        result = await world.scans.result(repo.id, "", image.digest)
        assert result is not None and result.state == "done" and findings(result) == EXPECTED

    run(database_url, tmp_path, scenario)


def test_an_index_waits_for_a_platform_another_process_is_scanning(
    database_url: str, tmp_path: Path, app_layers: list[bytes], fixed_layers: list[bytes]
) -> None:
    """A platform being scanned elsewhere (another index sharing it, or its own scan) is not
    scanned twice: the index's scan waits for it, and takes it over if that process stops."""

    async def scenario(world: World) -> None:
        repo, amd64, _, index = await platforms_world(world, tmp_path, app_layers, fixed_layers)
        await world.scans.request_scan(repo, "", amd64.digest, "other")
        claimed_at = utcnow()
        async with world.db.write() as conn:  # another process claimed the amd64 scan
            await conn.execute(
                update(scans).values(state="scanning", started_at=claimed_at, alive_at=claimed_at)
            )
        await world.scans.request_scan(repo, "", index.digest, "alice")
        scanning = asyncio.create_task(world.scans.scan_now(repo.id, "", index.digest, poll=0.05))
        await asyncio.sleep(1.0)
        assert not scanning.done()
        async with world.db.read() as conn:
            rows = (await conn.execute(select(scans.c.state, scans.c.started_at))).all()
        # The platform is still the other process's (not claimed again); the index is this
        # one's, waiting.
        assert [state for state, _ in rows] == ["scanning", "scanning"]
        assert claimed_at in [started for _, started in rows]

        silent_since = utcnow() - scans_module.ABANDONED_AFTER - dt.timedelta(seconds=5)
        async with world.db.write() as conn:  # that process stopped
            await conn.execute(
                update(scans).where(scans.c.state == "scanning").values(alive_at=silent_since)
            )
        result = await asyncio.wait_for(scanning, 60)
        assert result.state == "done" and findings(result) == EXPECTED
        platform = await world.scans.result(repo.id, "", amd64.digest)
        assert platform is not None and platform.state == "done"
        assert findings(platform) == EXPECTED

    run(database_url, tmp_path, scenario)


def test_a_running_scan_renews_alive_at_until_it_ends(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a scan that takes seconds (1 GiB of zeros) runs, its `alive_at` moves on past
    when it started, so no other worker takes it for abandoned."""
    monkeypatch.setattr(scans_module, "ALIVE_EVERY", 0.1)

    async def scenario(world: World) -> None:
        repo = await repository(world)
        image = await push_image(world, repo, [zeros_layer(1024**3)], "slow")
        await world.scans.request_scan(repo, "", image.digest, "alice")
        scanning = asyncio.create_task(world.scans.run_queued())
        renewed = False
        while not scanning.done() and not renewed:
            async with world.db.read() as conn:
                row = (await conn.execute(select(scans.c.started_at, scans.c.alive_at))).one()
            renewed = row.alive_at is not None and row.alive_at > row.started_at
            await asyncio.sleep(0.05)
        assert renewed, "the scan ended before its alive_at was renewed once"
        assert await scanning == 1
        result = await world.scans.result(repo.id, "", image.digest)
        # Finished; with no records imported it had nothing to match against.
        assert result is not None and result.state == "no_data"

    run(database_url, tmp_path, scenario)


def test_deleting_an_image_removes_its_scan_and_then_its_sbom(
    database_url: str, tmp_path: Path, app_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world)
        image = await push_image(world, repo, app_layers, "v1")
        await scanned(world, repo, image.digest)
        assert await world.scans.prune_sboms() == 0  # still held
        await world.registry.delete_manifest(repo, "", image.digest, actor="alice", client=None)
        async with world.db.read() as conn:
            assert (await conn.execute(select(scans.c.id))).all() == []
        assert await world.scans.sbom(image.digest) is not None
        assert await world.scans.prune_sboms() == 1
        assert await world.scans.sbom(image.digest) is None

    run(database_url, tmp_path, scenario)


def test_an_image_listing_carries_each_images_scan_state(
    database_url: str, tmp_path: Path, app_layers: list[bytes], fixed_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world)
        listing = Images(world.db, world.store)

        async def states() -> dict[str, Any]:
            items, _total = await listing.list_images(repo)
            return {i.tags[0]: i.scan for i in items}

        await import_records(world, tmp_path, ["PYSEC-2023-74.json"])
        vulnerable = await push_image(world, repo, app_layers, "vulnerable")
        fixed = await push_image(world, repo, fixed_layers, "fixed")
        broken = await push_image(world, repo, [layer([file_entry("etc/motd", b"lost")])], "broken")
        assert {t: s.status for t, s in (await states()).items()} == dict.fromkeys(
            ("vulnerable", "fixed", "broken"), "not_scanned"
        )
        await world.scans.request_scan(repo, "", vulnerable.digest, "alice")
        assert (await states())["vulnerable"].status == "queued"

        broken_layer = lose_layer(world, broken, 0)
        for image in (vulnerable, fixed, broken):
            await world.scans.request_scan(repo, "", image.digest, "alice")
        assert await world.scans.run_queued() == 3
        found = await states()
        assert found["vulnerable"].status == "done" and not found["vulnerable"].stale
        assert found["vulnerable"].counts.model_dump() == {
            "critical": 0,
            "high": 0,
            "medium": 0,
            "low": 0,
            "unknown": 1,  # PYSEC-2023-74 carries no severity
        }
        assert found["vulnerable"].scanned_at is not None
        assert (
            found["fixed"].status == "done"
            and sum(found["fixed"].counts.model_dump().values()) == 0
        )
        assert found["broken"].status == "failed"
        assert found["broken"].reason == f"layer {broken_layer} is missing from storage"

        # New data: the finished results are stale until scanned again; GHSA-3fx5 scores high.
        await import_records(world, tmp_path, ["GHSA-3fx5-fwvr-xrjg.json"])
        found = await states()
        assert found["vulnerable"].stale and found["fixed"].stale and not found["broken"].stale
        assert await world.scans.rescan_stale() == 2
        assert await world.scans.run_queued() == 2
        found = await states()
        assert not found["vulnerable"].stale
        assert (found["vulnerable"].counts.high, found["vulnerable"].counts.unknown) == (1, 1)
        detail = await listing.image(repo, "", vulnerable.digest)
        assert detail.scan == found["vulnerable"]

    run(database_url, tmp_path, scenario)


async def scan_events(world: World) -> list[dict[str, Any]]:
    """The `scan.finished` webhook events queued, oldest first: their subject and data."""
    async with world.db.read() as conn:
        payloads = (
            await conn.execute(
                select(webhook_events.c.payload)
                .where(webhook_events.c.type == SCAN_FINISHED)
                .order_by(webhook_events.c.id)
            )
        ).scalars()
        return [
            {"subject": event["subject"], **event["data"]}
            for event in (json.loads(p) for p in payloads)
        ]


def test_a_finished_scan_queues_its_webhook_event_when_an_endpoint_takes_it(
    database_url: str, tmp_path: Path, app_layers: list[bytes], fixed_layers: list[bytes]
) -> None:
    async def scenario(world: World) -> None:
        repo = await repository(world)
        await import_records(world, tmp_path, ALL_RECORDS)
        amd64 = await push_image(world, repo, app_layers, "amd64", "amd64")
        arm64 = await push_image(world, repo, fixed_layers, "arm64", "arm64")
        await scanned(world, repo, amd64.digest)  # no endpoint: nothing queued
        async with world.db.write() as conn:
            await conn.execute(
                webhooks.insert().values(
                    project_id=repo.project_id,
                    url="http://hooks.invalid/",
                    event_types="io.berth.image.pushed",
                )
            )
        await scanned(world, repo, amd64.digest)  # an endpoint of other types only
        assert await scan_events(world) == []

        async with world.db.write() as conn:
            await conn.execute(
                webhooks.insert().values(
                    project_id=repo.project_id, url="http://hooks.invalid/", event_types=""
                )
            )  # every type
        await scanned(world, repo, amd64.digest)
        [done] = await scan_events(world)
        assert done["subject"] == f"app@{amd64.digest}"
        assert (done["project"], done["repository"], done["image"], done["digest"]) == (
            "p",
            "app",
            "",
            amd64.digest,
        )
        assert done["actor"] == "alice"
        assert done["scan"]["status"] == "done" and done["scan"]["findings"] == 3
        assert done["scan"]["counts"] == {
            "critical": 0,
            "high": 1,
            "medium": 0,
            "low": 0,
            "unknown": 2,
        }
        assert done["scan"]["api_path"] == (
            f"/api/v1/projects/p/repositories/app/images/{amd64.digest}/scan"
        )

        # An index: one event for it, none for the platforms scanned with it.
        index = await push_platform_index(world, repo, amd64, arm64, "multi")
        await scanned(world, repo, index.digest)
        events = await scan_events(world)
        assert [e["digest"] for e in events] == [amd64.digest, index.digest]
        assert events[1]["scan"]["findings"] == 3

        # A failed scan says why.
        lost = await push_image(world, repo, [layer([file_entry("etc/motd", b"lost")])], "lost")
        lost_layer = lose_layer(world, lost, 0)
        await scanned(world, repo, lost.digest)
        failed = (await scan_events(world))[-1]
        assert failed["digest"] == lost.digest
        assert failed["scan"]["status"] == "failed" and failed["scan"]["findings"] == 0
        assert failed["scan"]["reason"] == f"layer {lost_layer} is missing from storage"

    run(database_url, tmp_path, scenario)
