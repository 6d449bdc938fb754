"""Image scans through a running server: an image built from real packages pushed over /v2
into a repository that scans on push, found by the server's scan job; results, a manual scan
and the CycloneDX SBOM through the API; `berth scan ... --wait` as an operator runs it. The
vulnerability data is the genuine OSV records of tests/fixtures/osv."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.api.conftest import Team, assert_problem, ok, push_layers, services
from tests.oci import (
    OCI_LAYER_GZIP,
    Blob,
    image_config,
    image_index,
    image_manifest,
    push_blob,
    push_manifest,
)
from tests.pasting import data_dir_only
from tests.servers import BerthServer, server_fixture, wait_for
from tests.unit.services.test_scanning_layers import FIXTURES, zeros_layer
from tests.webhook_receiver import Receiver, receiving

server = server_fixture(
    "scans",
    backends=("sqlite", "postgres"),
    env={
        "BERTH_SCAN_CHECK_INTERVAL": "0.3",
        "BERTH_SCAN_WORKERS": "2",
        "BERTH_WEBHOOK_ALLOW_PRIVATE": "true",  # the webhook endpoint is on loopback
    },
)

EXPECTED = [
    ("mixin-deep", "1.3.1", "GHSA-fhjf-83wg-r2j9", "1.3.2"),
    ("ms", "0.7.0", "GHSA-3fx5-fwvr-xrjg", "0.7.1"),
    ("requests", "2.30.0", "PYSEC-2023-74", "2.31.0"),
]


@pytest.fixture(scope="module", autouse=True)
def records(server: BerthServer) -> None:
    async def load(s: Services) -> None:
        report = await VulnDb(s.db).import_path(FIXTURES / "osv", "test")
        assert report.refused == []

    services(server, load)


def findings(result: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    return sorted(
        (f["name"], f["installed"], f["advisory_id"], f["fixed"]) for f in result["findings"]
    )


def wait_done(client: httpx.Client, url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url)
        if response.status_code == 200 and response.json()["state"] in ("done", "failed"):
            return response.json()  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"not scanned in {timeout}s: {response.text}"
        time.sleep(0.2)


def test_a_pushed_image_is_scanned_in_the_background(team: Team, app_layers: list[Blob]) -> None:
    services(
        team.server,
        lambda s: s.repositories.create(team.project, "auto", scan_mode="auto", actor="test"),
    )
    image = push_layers(team, "auto", app_layers, "v1")
    url = team.repo_url(f"/images/{image.digest}/scan", repository="auto")
    result = wait_done(team["reader"], url)
    assert result["state"] == "done" and not result["stale"]
    assert findings(result) == EXPECTED
    assert result["requested_by"] == team.users["member"]

    sbom = team["reader"].get(team.repo_url(f"/images/{image.digest}/sbom", repository="auto"))
    assert sbom.status_code == 200
    assert sbom.headers["content-type"].startswith("application/vnd.cyclonedx+json")
    # Its package names are what the image's layers chose: a browser opening the download
    # must not take it for HTML.
    assert sbom.headers["x-content-type-options"] == "nosniff"
    document = sbom.json()
    assert document["bomFormat"] == "CycloneDX"
    assert document["metadata"]["component"]["version"] == image.digest
    purls = {c.get("purl") for c in document["components"]}
    assert {"pkg:pypi/requests@2.30.0", "pkg:npm/ms@0.7.0"} <= purls


def test_a_decompression_bomb_layer_fails_its_scan_at_once_saying_why(team: Team) -> None:
    """3 GiB of zeros in a 3 MB gzip layer: the scan fails as it reads the layer's first
    header, instead of inflating all of it while every other scan waits."""
    services(
        team.server,
        lambda s: s.repositories.create(team.project, "bomb", scan_mode="auto", actor="test"),
    )
    bomb = Blob(zeros_layer(3 * 1024**3), OCI_LAYER_GZIP)
    image = push_layers(team, "bomb", [bomb], "v1")
    result = wait_done(team["reader"], team.repo_url(f"/images/{image.digest}/scan", "bomb"))
    assert result["state"] == "failed"
    assert result["reason"].endswith(
        f"the layer inflates to more than 2,147,483,648 bytes from {bomb.size:,} compressed "
        "(a decompression bomb?): a scan reads a layer up to 100 times its compressed size, "
        "or 2 GiB if that is more"
    ), result["reason"]


def test_a_layer_of_empty_package_files_under_huge_names_fails_its_scan_saying_why(
    team: Team,
) -> None:
    """110 empty package.json files, each named by a PAX header of a megabyte (a layer of
    about 120 kB): the names count against the scan's memory budget, so the scan fails saying
    so instead of holding 110 MB (a few thousand such entries: gigabytes)."""
    services(
        team.server,
        lambda s: s.repositories.create(team.project, "names", scan_mode="auto", actor="test"),
    )
    deep = "d/" * 500_000
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(110):
            tar.addfile(tarfile.TarInfo(f"{deep}{i}/node_modules/p/package.json"), io.BytesIO())
    named = Blob(gzip.compress(raw.getvalue(), compresslevel=9), OCI_LAYER_GZIP)
    assert named.size < 256 * 1024

    image = push_layers(team, "names", [named], "v1")
    result = wait_done(team["reader"], team.repo_url(f"/images/{image.digest}/scan", "names"))
    assert result["state"] == "failed"
    assert result["reason"].endswith(
        "the image's package databases take more than 96 MiB (with the names of those files "
        "and of what its layers remove)"
    ), result["reason"]


def test_two_scan_workers_run_two_slow_scans_at_once(team: Team) -> None:
    """With `scan_workers = 2`, two images each taking a while to scan (a layer of 768 MiB of
    zeros, under the bomb bound) are seen scanning at the same time, then both finish."""
    slow = Blob(zeros_layer(768 * 1024**2), OCI_LAYER_GZIP)
    registry, name = team.registry("member"), team.oci_name(repository="slow")
    services(
        team.server,
        lambda s: s.repositories.create(team.project, "slow", scan_mode="manual", actor="test"),
    )
    push_blob(registry, name, slow)
    urls = []
    for architecture in ("amd64", "arm64"):
        config = image_config(architecture=architecture)
        push_blob(registry, name, config)
        manifest = image_manifest(config.descriptor(), [slow.descriptor()])
        push_manifest(registry, name, architecture, manifest)
        urls.append(team.repo_url(f"/images/{manifest.digest}/scan", repository="slow"))
    for url in urls:
        ok(team["member"].post(url), 202)
    seen: list[tuple[str, ...]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = tuple(ok(team["reader"].get(url))["state"] for url in urls)
        seen.append(states)
        if all(state in ("done", "failed") for state in states):
            break
        time.sleep(0.1)
    assert ("scanning", "scanning") in seen, seen
    assert seen[-1] == ("done", "done"), seen


def test_a_manual_scan_on_request(team: Team, app_layers: list[Blob]) -> None:
    image = push_layers(team, team.repository, app_layers, "v1")
    url = team.repo_url(f"/images/{image.digest}/scan")
    body = assert_problem(team["reader"].get(url), 404)
    assert "has not been scanned" in body["detail"]
    assert_problem(team["reader"].post(url), 403)
    listing = team.repo_url("/images")
    [listed] = [i for i in ok(team["reader"].get(listing))["items"] if i["digest"] == image.digest]
    assert listed["scan"] == {
        "status": "not_scanned",
        "reason": None,
        "counts": {"critical": 0, "high": 0, "medium": 0, "low": 0, "unknown": 0},
        "stale": False,
        "scanned_at": None,
    }
    queued = ok(team["member"].post(url), 202)
    assert queued["state"] in ("queued", "scanning", "done")
    result = wait_done(team["reader"], url)
    assert findings(result) == EXPECTED
    [listed] = [i for i in ok(team["reader"].get(listing))["items"] if i["digest"] == image.digest]
    assert listed["scan"]["status"] == "done" and not listed["scan"]["stale"]
    assert listed["scan"]["counts"] == result["counts"]
    assert listed["scan"]["counts"]["high"] == 1 and listed["scan"]["counts"]["unknown"] == 2
    assert listed["scan"]["scanned_at"] == result["finished_at"]
    schemas = ok(team["reader"].get("/openapi.json"))["components"]["schemas"]
    assert schemas["Image"]["properties"]["scan"]["$ref"].endswith("/ScanSummary")
    assert set(schemas["ScanSummary"]["properties"]["status"]["enum"]) == {
        "not_scanned",
        "queued",
        "scanning",
        "done",
        "no_data",
        "failed",
    }
    unknown = team.repo_url("/images/sha256:" + "0" * 64 + "/scan")
    assert_problem(team["member"].post(unknown), 404)


def test_berth_scan_waits_and_prints_the_findings(
    team: Team, app_layers: list[Blob], tmp_path: Path
) -> None:
    push_layers(team, team.repository, app_layers, "v2")
    name = f"{team.project}/{team.repository}:v2"
    scanned = team.server.cli("scan", name, "--wait")
    text = " ".join(scanned.stdout.split())
    assert f"{name}: " in text and "3 findings" in text
    for package, installed, advisory, fixed in EXPECTED:
        assert advisory in text and installed in text and fixed in text and package in text
    # PYSEC-2023-74 has no summary: its details' first paragraph is cut short, not folded
    # into dozens of 9-character lines.
    assert len(scanned.stdout.splitlines()) <= 16, scanned.stdout
    assert max(map(len, scanned.stdout.splitlines()[1:])) <= 80, scanned.stdout
    assert "GHSA-3fx5-fwvr-xrjg: Regular Expression Denial of Service in ms" in text
    assert "--json has them whole" in text
    queued = team.server.cli("scan", name)
    assert f"berth scan {name} --wait" in " ".join(queued.stdout.split())
    wrong = team.server.cli("scan", f"{team.project}/{team.repository}", check=False)
    assert wrong.returncode == 2 and "PROJECT/REPO[/IMAGE]:TAG" in wrong.stderr

    def scanned_again() -> bool:
        """The queued scan done, as the listing shows it, with the same findings."""
        listed = team.server.cli_json("image", "list", f"{team.project}/{team.repository}")
        return any(
            item["scan"]["status"] == "done"
            and item["scan"]["counts"]["high"] == 1
            and item["scan"]["counts"]["unknown"] == 2
            for item in listed["items"]
        )

    wait_for(scanned_again, 60, "the queued scan done, as image list shows it")
    stale = team.server.cli_json("scan", "--rescan-stale")
    assert stale == {"queued": 0, "scanned": 0}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def test_the_scan_command_it_prints_works_as_printed_with_the_data_directory_it_was_given(
    team: Team, app_layers: list[Blob]
) -> None:
    """Run with --data-dir (nothing else pointing at the data), `berth scan` prints the
    command that scans now with that directory, on one line: pasted, it prints the findings."""
    push_layers(team, team.repository, app_layers, "v3")
    name = f"{team.project}/{team.repository}:v3"
    only = data_dir_only(team.server)
    queued = only.berth("scan", name).stdout
    (said,) = [line for line in queued.splitlines() if "see the findings: " in line]
    printed = said.split("see the findings: ", 1)[1]
    assert printed.split()[-2:] == [name, "--wait"], printed
    scanned = " ".join(only.paste(printed).stdout.split())
    assert f"{name}: " in scanned and "3 findings" in scanned


def test_a_finished_scan_sends_its_webhook_event(
    team: Team, app_layers: list[Blob], receiver: Receiver
) -> None:
    admin = team["project-admin"]
    # A second endpoint on the same receiver: one URL may have one webhook per project.
    pushes = {"url": f"{receiver.url}/pushes", "event_types": ["io.berth.image.pushed"]}
    ok(admin.post(team.url("/webhooks"), json=pushes), 201)
    body = {"url": receiver.url, "event_types": ["io.berth.scan.finished"]}
    created = ok(admin.post(team.url("/webhooks"), json=body), 201)
    types = ok(admin.get(team.url("/webhooks/event-types")))
    assert "io.berth.scan.finished" in [t["type"] for t in types]
    image = push_layers(team, team.repository, app_layers, "v1")
    receiver.wait_for(1)  # the push's event, to the first endpoint
    ok(team["member"].post(team.repo_url(f"/images/{image.digest}/scan")), 202)
    pushed, finished = receiver.wait_for(2, timeout=60)
    assert pushed.event["type"] == "io.berth.image.pushed"
    event = finished.event
    assert event["type"] == "io.berth.scan.finished"
    assert finished.signed_with(str(created["secret"]))
    assert event["subject"] == f"{team.repository}@{image.digest}"
    data = event["data"]
    assert (data["project"], data["repository"], data["image"], data["digest"]) == (
        team.project,
        team.repository,
        "",
        image.digest,
    )
    assert data["actor"] == team.users["member"]
    scan = data["scan"]
    assert scan["status"] == "done" and "reason" not in scan
    assert scan["counts"] == {"critical": 0, "high": 1, "medium": 0, "low": 0, "unknown": 2}
    assert scan["findings"] == 3 and scan["packages"] > 3
    path = f"/projects/{team.project}/repositories/{team.repository}"
    assert scan["console_path"] == f"/console/#{path}/images?findings={image.digest}"
    # The API path, under the server's address, has the findings.
    result = team["reader"].get(f"{team.server.url}{scan['api_path']}")
    assert findings(ok(result)) == EXPECTED
    time.sleep(1)
    assert len(receiver.received) == 2  # one event per scan, to the endpoint taking the type
    schemas = ok(team["reader"].get("/openapi.json"))["components"]["schemas"]
    assert "ScanOutcome" in schemas


def test_a_multi_platform_push_into_an_auto_scan_repository_sends_one_scan_event(
    team: Team, app_layers: list[Blob], receiver: Receiver
) -> None:
    """Clients push an index's platform manifests first, then the index: each queues a scan
    in an auto-scan repository, but the image is the index, and its `scan.finished` event
    covers its platforms, as every count and list names images."""
    services(
        team.server,
        lambda s: s.repositories.create(team.project, "multi", scan_mode="auto", actor="test"),
    )
    body = {"url": receiver.url, "event_types": ["io.berth.scan.finished"]}
    ok(team["project-admin"].post(team.url("/webhooks"), json=body), 201)
    registry, name = team.registry("member"), team.oci_name(repository="multi")
    platforms = []
    for architecture in ("amd64", "arm64"):
        config = image_config(architecture=architecture, author=f"{team.project}/multi")
        for blob in (config, *app_layers):
            push_blob(registry, name, blob)
        platforms.append(image_manifest(config.descriptor(), [b.descriptor() for b in app_layers]))
    index = image_index(
        [
            p.descriptor(platform={"os": "linux", "architecture": architecture})
            for p, architecture in zip(platforms, ("amd64", "arm64"), strict=True)
        ]
    )
    for platform in platforms:  # as docker, podman and skopeo push them: by digest, then
        push_manifest(registry, name, platform.digest, platform)
    push_manifest(registry, name, "v1", index)

    url = team.repo_url(f"/images/{index.digest}/scan", repository="multi")
    assert findings(wait_done(team["reader"], url)) == EXPECTED
    [finished] = receiver.wait_for(1, timeout=60)
    assert finished.event["subject"] == f"multi@{index.digest}"
    time.sleep(2)  # the platforms' own scans have ended too (the index's waits for them)
    assert [r.event["subject"] for r in receiver.received] == [f"multi@{index.digest}"]
