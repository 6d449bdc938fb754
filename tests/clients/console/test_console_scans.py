"""Image scans in the console, in a real browser: an image built from real packages (a Debian
base, requests 2.30.0, ms 0.7.0, mixin-deep 1.3.1) pushed over /v2 into a manual-scan
repository, scanned with the Scan button; its severity badge and findings (the genuine OSV
records of tests/fixtures/osv, their IDs, aliases and fixed versions) are read, filtered and
sorted as a user does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.clients.console.conftest import Tenant, screenshot, sign_in
from tests.oci import OCI_LAYER_GZIP, Blob, image_config, image_manifest, push_blob, push_manifest
from tests.unit.services.test_scanning_layers import (
    FIXTURES,
    debian_base,
    layer,
    npm_package,
    pip_installed,
)
from tests.webhook_receiver import Receiver, receiving


def push_vulnerable_image(tenant: Tenant, repository: str, work: Path) -> str:
    layers = [
        Blob(layer(debian_base()), OCI_LAYER_GZIP),
        Blob(
            layer(
                pip_installed("requests-2.30.0-py3-none-any.whl", work / "site")
                + npm_package("ms-0.7.0.tgz", "ms")
                + npm_package("mixin-deep-1.3.1.tgz", "mixin-deep")
            ),
            OCI_LAYER_GZIP,
        ),
    ]
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
