"""Image scans in the console, in a real browser: an image built from real packages (a Debian
base, requests 2.30.0, ms 0.7.0, mixin-deep 1.3.1) pushed over /v2 into a manual-scan
repository, scanned with the Scan button; its severity badge and findings (the genuine OSV
records of tests/fixtures/osv, their IDs, aliases and fixed versions) are read, filtered and
sorted as a user does, and its SBOM downloaded."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.clients.console.conftest import PASSWORD, Tenant, screenshot, sign_in
from tests.oci import (
    OCI_LAYER_GZIP,
    Blob,
    image_config,
    image_index,
    image_manifest,
    push_blob,
    push_manifest,
)
from tests.servers import BerthServer, server_fixture
from tests.unit.services.test_scanning_layers import (
    FIXTURES,
    layer,
    npm_package,
    vulnerable_app_layers,
)
from tests.webhook_receiver import Receiver, receiving

MANY_PLATFORMS = 300  # more than the 256 manifests an image's details list


def push_vulnerable_image(tenant: Tenant, repository: str, work: Path) -> str:
    layers = [Blob(data, OCI_LAYER_GZIP) for data in vulnerable_app_layers(work / "site")]
    config = image_config()
    name = f"{tenant.project}/{repository}"
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as registry:
        for blob in (config, *layers):
            push_blob(registry, name, blob)
        manifest = image_manifest(config.descriptor(), [b.descriptor() for b in layers])
        push_manifest(registry, name, "v1", manifest)
    return manifest.digest


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def scan_and_wait(admin: httpx.Client, scan: str, seconds: float) -> None:
    """Ask for an image's scan (its API path `scan`) and wait until it is done."""
    admin.post(scan).raise_for_status()
    deadline = time.monotonic() + seconds
    while admin.get(scan).json()["state"] != "done":
        assert time.monotonic() < deadline, admin.get(scan).json()
        time.sleep(0.3)


def downloaded_sbom(page: Page, button: Locator) -> tuple[str, dict[str, Any]]:
    """What clicking `button` saves: the name the browser suggests and the JSON document."""
    with page.expect_download() as download:
        button.click()
    return download.value.suggested_filename, json.loads(Path(download.value.path()).read_text())


def packages_of(sbom: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(c["name"], c.get("version")) for c in sbom["components"]}


def column(page: Page, index: int) -> list[str]:
    cells = page.get_by_role("table", name="Findings").locator(f"tbody tr td:nth-child({index})")
    return [text.strip() for text in cells.all_inner_texts()]


def test_scan_an_image_with_the_button_and_read_its_findings(
    page: Page, tenant: Tenant, tmp_path: Path, receiver: Receiver
) -> None:
    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []

    tenant.server._services(load)
    tenant.create_repository("app", scan_mode="manual")
    with tenant.api() as admin:
        hook = {"url": receiver.url, "event_types": ["io.berth.scan.finished"]}
        admin.post(f"/projects/{tenant.project}/webhooks", json=hook).raise_for_status()
    digest = push_vulnerable_image(tenant, "app", tmp_path)
    short = digest[:19]

    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=short)
    state = row.get_by_test_id("scan-state")
    expect(state).to_have_text("not scanned")
    row.get_by_role("button", name=f"Scan {short}").click()
    expect(state).to_have_text("scan queued")  # the POST's answer, before the job runs
    # The page follows the scan until it is done: GHSA-3fx5's CVSS vector scores high, the
    # other two records carry no severity.
    expect(state).to_have_text("1 high2 unknown", timeout=60_000)
    expect(page.get_by_text(f"Scanned {short}: 3 findings")).to_be_visible()
    expect(row.get_by_role("button", name=f"Scan {short}")).to_have_text("Rescan")
    screenshot(page, "repository-scanned")

    row.get_by_role("button", name=f"Findings of {short}").click()
    dialog = page.get_by_role("dialog", name=f"Findings · {short}")
    findings = dialog.get_by_role("table", name="Findings")
    expect(findings.locator("tbody tr")).to_have_count(3)
    # Most severe first; the rest by advisory.
    assert column(page, 5)[0].startswith("GHSA-3fx5-fwvr-xrjg")
    by_advisory = {
        cells[4].splitlines()[0]: cells
        for cells in (
            [c.strip() for c in r.locator("td").all_inner_texts()]
            for r in findings.locator("tbody tr").all()
        )
    }
    assert {a: (c[0], c[1], c[2], c[3]) for a, c in by_advisory.items()} == {
        "GHSA-3fx5-fwvr-xrjg": ("ms", "0.7.0", "0.7.1", "high"),
        "GHSA-fhjf-83wg-r2j9": ("mixin-deep", "1.3.1", "1.3.2", "unknown"),
        "PYSEC-2023-74": ("requests", "2.30.0", "2.31.0", "unknown"),
    }
    assert "CVE-2023-32681, GHSA-j8r2-6x86-q33q" in by_advisory["PYSEC-2023-74"][4]
    assert "CVE-2015-8315" in by_advisory["GHSA-3fx5-fwvr-xrjg"][4]
    link = findings.get_by_role("link", name="PYSEC-2023-74")
    expect(link).to_have_attribute(
        "href", "https://github.com/psf/requests/security/advisories/GHSA-j8r2-6x86-q33q"
    )
    screenshot(page, "image-findings")

    # Sort: by package, then by package descending; by installed version.
    findings.get_by_role("button", name="Package").click()
    assert column(page, 1) == ["mixin-deep", "ms", "requests"]
    expect(dialog.locator("th[aria-sort=ascending]")).to_have_text("Package ▲")
    findings.get_by_role("button", name="Package").click()
    assert column(page, 1) == ["requests", "ms", "mixin-deep"]
    findings.get_by_role("button", name="Fixed in").click()
    assert column(page, 3) == ["0.7.1", "1.3.2", "2.31.0"]

    # Filter: by severity, then every finding with a fixed release (all three have one).
    dialog.get_by_label("Severity").select_option("unknown")
    expect(dialog.get_by_test_id("findings-shown")).to_have_text("Showing 2 of 3 findings")
    assert sorted(column(page, 1)) == ["mixin-deep", "requests"]
    dialog.get_by_label("Severity").select_option("high")
    assert column(page, 1) == ["ms"]
    dialog.get_by_label("Severity").select_option("critical")
    expect(dialog.get_by_text("No finding matches the filter.")).to_be_visible()
    dialog.get_by_label("Severity").select_option("")
    dialog.get_by_label("Fix available").check()
    expect(dialog.get_by_test_id("findings-shown")).to_have_text("Showing 3 of 3 findings")

    # The SBOM: the packages the scan found, as CycloneDX JSON, saved by the browser.
    name, sbom = downloaded_sbom(page, dialog.get_by_role("button", name="Download SBOM"))
    assert name == f"app-{digest.replace(':', '-')[:19]}.cdx.json"
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["version"] == digest
    assert {("ms", "0.7.0"), ("mixin-deep", "1.3.1"), ("requests", "2.30.0")} <= packages_of(sbom)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # The scan.finished webhook event's console link opens the same findings.
    (delivered,) = receiver.wait_for(1)
    link = delivered.event["data"]["scan"]["console_path"]
    page.goto(f"{tenant.server.url}{link}")
    dialog = page.get_by_role("dialog", name=f"Findings · {short}")
    expect(dialog.get_by_role("table", name="Findings").locator("tbody tr")).to_have_count(3)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # Closing the dialog drops ?findings= from the address (after the dialog hides: wait).
    expect(page).to_have_url(
        re.compile(re.escape(f"#/projects/{tenant.project}/repositories/app/images") + "$")
    )


def test_an_index_has_an_sbom_per_platform(page: Page, tenant: Tenant) -> None:
    """An index of two platforms (ms 0.7.0 in each), scanned: its findings offer each
    platform's SBOM, the document of that platform's manifest."""

    async def load(s: Services) -> None:  # a scan with no data has no findings to open
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []

    tenant.server._services(load)
    tenant.create_repository("multi", scan_mode="manual")
    name = f"{tenant.project}/multi"
    packages = Blob(layer(npm_package("ms-0.7.0.tgz", "ms")), OCI_LAYER_GZIP)
    platforms = {}
    with (
        tenant.api() as admin,
        httpx.Client(
            base_url=tenant.server.url, auth=tenant.server.access_key(tenant.project), timeout=30
        ) as registry,
    ):
        push_blob(registry, name, packages)
        for architecture in ("amd64", "arm64"):
            config = image_config(architecture=architecture)
            push_blob(registry, name, config)
            manifest = image_manifest(config.descriptor(), [packages.descriptor()])
            push_manifest(registry, name, manifest.digest, manifest)
            platforms[f"linux/{architecture}"] = manifest
        index = image_index(
            [
                m.descriptor(platform={"os": "linux", "architecture": p.split("/")[1]})
                for p, m in platforms.items()
            ]
        )
        push_manifest(registry, name, "v1", index)
        scan = f"/projects/{tenant.project}/repositories/multi/images/{index.digest}/scan"
        scan_and_wait(admin, scan, seconds=60)
    short = index.digest[:19]

    sign_in(page, tenant)
    page.get_by_role("link", name="multi", exact=True).click()
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=short)
    row.get_by_role("button", name=f"Findings of {short}").click()
    dialog = page.get_by_role("dialog", name=f"Findings · {short}")
    expect(dialog.get_by_role("button", name=re.compile("^Download SBOM"))).to_have_text(
        ["linux/amd64", "linux/arm64"]
    )
    _, sbom = downloaded_sbom(page, dialog.get_by_role("button", name="Download SBOM linux/arm64"))
    assert sbom["metadata"]["component"]["version"] == platforms["linux/arm64"].digest
    assert ("ms", "0.7.0") in packages_of(sbom)


def test_an_index_wider_than_its_details_says_how_much_is_shown(page: Page, tenant: Tenant) -> None:
    """An index of 300 platforms (ms 0.7.0 in each), scanned: the images table shows the 64
    platforms the listing gives and says so ("showing 64 of 300 platforms"); its findings
    offer the SBOMs of the first 256 manifests, one button per platform (none for the whole),
    and say that these are the first 256 of 300."""
    tenant.create_repository("wide", scan_mode="manual")
    name = f"{tenant.project}/wide"
    packages = Blob(layer(npm_package("ms-0.7.0.tgz", "ms")), OCI_LAYER_GZIP)
    config = image_config()
    entries = []
    with (
        tenant.api() as admin,
        httpx.Client(
            base_url=tenant.server.url, auth=tenant.server.access_key(tenant.project), timeout=30
        ) as registry,
    ):
        push_blob(registry, name, packages)
        push_blob(registry, name, config)
        for n in range(MANY_PLATFORMS):
            manifest = image_manifest(
                config.descriptor(), [packages.descriptor()], annotations={"n": str(n)}
            )
            push_manifest(registry, name, manifest.digest, manifest)
            entries.append(
                manifest.descriptor(platform={"os": "linux", "architecture": f"arch{n:03}"})
            )
        index = image_index(entries)
        push_manifest(registry, name, "v1", index)
        scan = f"/projects/{tenant.project}/repositories/wide/images/{index.digest}/scan"
        scan_and_wait(admin, scan, seconds=180)
    short = index.digest[:19]

    sign_in(page, tenant)
    page.get_by_role("link", name="wide", exact=True).click()
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=short)
    expect(row.locator(".badge.platform")).to_have_count(64)
    expect(row.get_by_test_id("platforms-cut")).to_have_text("showing 64 of 300 platforms")
    screenshot(page, "images-wide-index")
    row.get_by_role("button", name=f"Findings of {short}").click()
    dialog = page.get_by_role("dialog", name=f"Findings · {short}")
    sboms = dialog.get_by_role("button", name=re.compile("^Download SBOM"))
    expect(sboms).to_have_count(256)
    expect(sboms.first).to_have_accessible_name("Download SBOM linux/arch000")
    expect(sboms.last).to_have_accessible_name("Download SBOM linux/arch255")
    expect(dialog.get_by_test_id("sbom-cut")).to_have_text(
        "showing the first 256 of the 300 manifests this index lists"
    )
    screenshot(page, "findings-wide-index", full_page=False)


# A server of its own: the record it imports is altered, and the vulnerability database is
# the server's, shared by every project (the other tests' findings would change with it).
altered_osv_server = server_fixture(
    "console-osv", scope="module", env={"BERTH_SCAN_CHECK_INTERVAL": "0.5"}
)


def test_an_advisory_link_that_is_not_http_is_shown_as_text(
    page: Page, altered_osv_server: BerthServer, tmp_path: Path
) -> None:
    """The genuine GHSA-3fx5-fwvr-xrjg record with its references replaced by one
    `javascript:` URL (the change is this test's, to stand for a hostile or broken import):
    its advisory is plain text, no link the page would run."""
    record = json.loads((FIXTURES / "osv" / "GHSA-3fx5-fwvr-xrjg.json").read_text())
    record["references"] = [{"type": "ADVISORY", "url": "javascript:alert(1)//"}]
    (tmp_path / "osv").mkdir()
    (tmp_path / "osv" / "GHSA-3fx5-fwvr-xrjg.json").write_text(json.dumps(record))

    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(tmp_path / "osv", "tests")).refused == []

    server = altered_osv_server
    server._services(load)
    suffix = uuid.uuid4().hex[:8]
    tenant = Tenant(server, f"osv{suffix}", f"admin-{suffix}", "admin")
    server.create_project(tenant.project)
    server.create_user(tenant.user, PASSWORD)
    server.add_member(tenant.project, tenant.user, "admin")
    tenant.create_repository("app", scan_mode="manual")
    config = image_config()
    packages = Blob(layer(npm_package("ms-0.7.0.tgz", "ms")), OCI_LAYER_GZIP)
    with httpx.Client(base_url=server.url, auth=server.access_key(tenant.project)) as registry:
        for blob in (config, packages):
            push_blob(registry, f"{tenant.project}/app", blob)
        manifest = image_manifest(config.descriptor(), [packages.descriptor()])
        push_manifest(registry, f"{tenant.project}/app", "v1", manifest)
    short = manifest.digest[:19]

    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=short)
    row.get_by_role("button", name=f"Scan {short}").click()
    expect(row.get_by_test_id("scan-state")).to_have_text("1 high", timeout=60_000)
    row.get_by_role("button", name=f"Findings of {short}").click()
    findings = page.get_by_role("dialog", name=f"Findings · {short}").get_by_role(
        "table", name="Findings"
    )
    expect(findings.locator("tbody tr")).to_have_count(1)
    expect(findings).to_contain_text("GHSA-3fx5-fwvr-xrjg")
    expect(findings.get_by_role("link")).to_have_count(0)
    assert page.locator("a[href^='javascript']").count() == 0


# A server of its own whose scan job looks once an hour: a scan the console requests stays
# queued until the test runs it in-process (the code path of `berth scan --wait`).
held_scans_server = server_fixture(
    "console-held-scans", scope="module", env={"BERTH_SCAN_CHECK_INTERVAL": "3600"}
)


def test_a_rescan_shows_the_previous_result_as_such_until_its_own(
    page: Page, held_scans_server: BerthServer, tmp_path: Path
) -> None:
    """While a rescan is queued the images table shows the previous result's counts marked as
    the previous scan's, with its time, and its findings say whose they are; an image never
    scanned shows only its queued scan. Once the rescan is done the page shows its result."""
    server = held_scans_server

    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []

    server._services(load)
    suffix = uuid.uuid4().hex[:8]
    tenant = Tenant(server, f"held{suffix}", f"admin-{suffix}", "admin")
    server.create_project(tenant.project)
    server.create_user(tenant.user, PASSWORD)
    server.add_member(tenant.project, tenant.user, "admin")
    tenant.create_repository("app", scan_mode="manual")
    digest = push_vulnerable_image(tenant, "app", tmp_path)
    short = digest[:19]

    async def scan_queued(s: Services) -> int:
        return await s.scans.run_queued()

    with tenant.api() as admin:
        scan = f"/projects/{tenant.project}/repositories/app/images/{digest}/scan"
        admin.post(scan).raise_for_status()
        assert server._services(scan_queued) == 1
        first = admin.get(scan).json()
    assert (first["state"], first["counts"]["high"], first["counts"]["unknown"]) == ("done", 1, 2)

    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=short)
    state = row.get_by_test_id("scan-state")
    expect(state).to_have_text("1 high2 unknown")
    row.get_by_role("button", name=f"Scan {short}").click()
    expect(state).to_have_text(
        re.compile(r"^scan queuedprevious scan, \d{4}-\d\d-\d\d \d\d:\d\d.*:1 high2 unknown$")
    )
    row.get_by_role("button", name=f"Findings of {short}").click()
    dialog = page.get_by_role("dialog", name=f"Findings · {short}")
    expect(dialog.get_by_test_id("findings-of")).to_have_text(
        re.compile(
            r"^A scan is queued; until it finishes these are the previous scan's: 3 findings "
            r"in \d+ packages, scanned \d{4}-\d\d-\d\d \d\d:\d\d"
        )
    )
    expect(dialog.get_by_role("table", name="Findings").locator("tbody tr")).to_have_count(3)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # The page follows the queued rescan: once done, its own result, no longer "previous".
    assert server._services(scan_queued) == 1
    expect(state).to_have_text("1 high2 unknown", timeout=15_000)
    expect(page.get_by_text(f"Scanned {short}: 3 findings")).to_be_visible()

    # An image scanned for the first time has no result to show until its scan is done: its
    # findings link (a webhook event's) says so instead of listing none.
    tenant.create_repository("new", scan_mode="manual")
    other = push_vulnerable_image(tenant, "new", tmp_path / "new")
    with tenant.api() as admin:
        admin.post(
            f"/projects/{tenant.project}/repositories/new/images/{other}/scan"
        ).raise_for_status()
    page.goto(f"{tenant.console}#/projects/{tenant.project}/repositories/new/images")
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=other[:19])
    expect(row.get_by_test_id("scan-state")).to_have_text("scan queued")
    expect(row.get_by_role("button", name=f"Findings of {other[:19]}")).to_have_count(0)
    page.goto(
        f"{tenant.console}#/projects/{tenant.project}/repositories/new/images?findings={other}"
    )
    dialog = page.get_by_role("dialog", name=f"Findings · {other[:19]}")
    expect(dialog.get_by_test_id("findings-of")).to_have_text(
        "A scan is queued; the image has no findings until it finishes."
    )
    expect(dialog.get_by_role("table")).to_have_count(0)
    expect(dialog.get_by_role("button", name="Download SBOM")).to_have_count(0)  # none yet


# A server of its own: the vulnerability database is the server's, and this test needs it
# empty (the other tests import records).
empty_osv_server = server_fixture(
    "console-no-osv", scope="module", env={"BERTH_SCAN_CHECK_INTERVAL": "0.5"}
)


def test_a_scan_with_no_vulnerability_data_is_not_shown_as_clean(
    page: Page, empty_osv_server: BerthServer, tmp_path: Path
) -> None:
    """Scanned before any import: the badge says there was no data to check against (never
    "no findings"), there are no findings to open, and the findings link says why. The scan
    listed the packages all the same: its dialog offers their SBOM, which downloads."""
    server = empty_osv_server
    suffix = uuid.uuid4().hex[:8]
    tenant = Tenant(server, f"nodata{suffix}", f"admin-{suffix}", "admin")
    server.create_project(tenant.project)
    server.create_user(tenant.user, PASSWORD)
    server.add_member(tenant.project, tenant.user, "admin")
    tenant.create_repository("app", scan_mode="manual")
    digest = push_vulnerable_image(tenant, "app", tmp_path)
    short = digest[:19]

    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    row = page.get_by_role("table", name="Images").get_by_role("row").filter(has_text=short)
    row.get_by_role("button", name=f"Scan {short}").click()
    state = row.get_by_test_id("scan-state")
    expect(state).to_have_text("no vulnerability data", timeout=30_000)
    expect(
        page.get_by_text(f"Scan of {short} checked nothing: no vulnerability data")
    ).to_be_visible()
    expect(row.get_by_role("button", name=f"Findings of {short}")).to_have_count(0)
    page.goto(
        f"{tenant.console}#/projects/{tenant.project}/repositories/app/images?findings={digest}"
    )
    dialog = page.get_by_role("dialog", name=f"SBOM · {short}")
    expect(dialog.get_by_test_id("findings-of")).to_contain_text(
        "checked nothing: no vulnerability data: the vulnerability database was empty"
    )
    expect(dialog.get_by_role("table")).to_have_count(0)
    screenshot(page, "findings-no-data", full_page=False)
    name, sbom = downloaded_sbom(page, dialog.get_by_role("button", name="Download SBOM"))
    assert name == f"app-{digest.replace(':', '-')[:19]}.cdx.json"
    assert sbom["metadata"]["component"]["version"] == digest
    assert {("ms", "0.7.0"), ("mixin-deep", "1.3.1"), ("requests", "2.30.0")} <= packages_of(sbom)
    page.keyboard.press("Escape")
    # The images table opens the same dialog: the SBOM, as there are no findings.
    row.get_by_role("button", name=f"SBOM of {short}").click()
    expect(dialog.get_by_role("button", name="Download SBOM")).to_be_visible()
