"""Every paged view of the console past its last page (an old link, or the last item of the
last page deleted) shows the last page that has items instead, in the empty page's place in
the history, as the server administrator's users page does (tests/clients/console/test_users.py)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.clients.console.conftest import (
    GC_HOLD_SECONDS,
    PASSWORD,
    Tenant,
    hash_path,
    sign_in,
)
from tests.oci import (
    OCI_LAYER,
    Blob,
    image_config,
    image_manifest,
    push_blobs,
    push_manifest,
)
from tests.servers import ADMIN_PASSWORD, BerthServer

PAST = 99  # a page number past the end of every listing here
MORE_THAN_A_PAGE = 21  # the repositories, images and tags pages hold 20


def push_images(tenant: Tenant, repository: str, count: int) -> list[str]:
    """`count` images in `repository`, tagged t00, t01, ... in push order; their digests."""
    name = f"{tenant.project}/{repository}"
    key = tenant.server.access_key(tenant.project)
    config = image_config(extra={"n": uuid.uuid4().hex})
    content = Blob(uuid.uuid4().bytes, OCI_LAYER)
    digests = []
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        push_blobs(v2, name, [config, content])
        for n in range(count):
            manifest = image_manifest(
                config.descriptor(), [content.descriptor()], annotations={"n": str(n)}
            )
            push_manifest(v2, name, f"t{n:02}", manifest)
            digests.append(manifest.digest)
    return digests


@dataclass
class Filled:
    """A project with more than a page of repositories, of images and tags in `app` (and so of
    its history), a webhook with deliveries, a garbage collection run and audit entries."""

    tenant: Tenant
    webhook: int


@pytest.fixture(scope="module")
def filled(console_server: BerthServer) -> Filled:
    suffix = uuid.uuid4().hex[:8]
    tenant = Tenant(console_server, f"paged{suffix}", f"admin-{suffix}", "admin")
    console_server.create_project(tenant.project)
    console_server.create_user(tenant.user, PASSWORD)
    console_server.add_member(tenant.project, tenant.user, "admin")
    for n in range(MORE_THAN_A_PAGE - 1):
        tenant.create_repository(f"r{n:02}")
    tenant.create_repository("app")
    base = f"/projects/{tenant.project}"
    with tenant.api() as admin:
        made = admin.post(
            f"{base}/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "event_types": ["io.berth.image.pushed"]},
        )
        webhook = made.raise_for_status().json()["id"]
    push_images(tenant, "app", MORE_THAN_A_PAGE)
    with tenant.api() as admin:
        admin.post(f"{base}/gc", json={"dry_run": True}).raise_for_status()
        deadline = time.monotonic() + GC_HOLD_SECONDS + 30
        while admin.get(f"{base}/gc/runs").json()["items"][0]["state"] == "running":
            assert time.monotonic() < deadline, "the run never ended"
            time.sleep(0.3)
    return Filled(tenant, webhook)


@dataclass(frozen=True)
class PagedView:
    """A console page (`route`, under the project) showing `table`, and the API listing whose
    page it shows (`listing`, with `extra` query parameters) at `per_page` a page."""

    route: str
    table: str
    listing: str
    per_page: int
    extra: tuple[tuple[str, str], ...] = ()


PAGED_VIEWS = {
    "repositories": PagedView("repositories", "Repositories", "repositories", 20),
    "images": PagedView(
        "repositories/app/images",
        "Images",
        "repositories/app/images",
        20,
        (("referrers", "false"),),
    ),
    "tags": PagedView("repositories/app/tags", "Tags", "repositories/app/tags", 20),
    "history": PagedView("repositories/app/history", "History", "repositories/app/history", 20),
    "audit log": PagedView("audit", "Audit log", "audit", 50),
    "garbage collection runs": PagedView("management", "Garbage collection runs", "gc/runs", 10),
    "webhook deliveries": PagedView("webhooks", "Deliveries", "webhooks/{webhook}/deliveries", 20),
}


def settled_total(tenant: Tenant, listing: str, params: dict[str, str]) -> int:
    """The listing's total once it stays the same for a second: audit entries (the sign-in's
    too) and webhook deliveries are written in batches, a moment after what they record."""
    with tenant.api() as admin:
        path = f"/projects/{tenant.project}/{listing}"

        def read() -> int:
            return int(admin.get(path, params={"per_page": "1", **params}).json()["total"])

        total, deadline = read(), time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(1)
            total, before = read(), total
            if total == before:
                return total
        raise AssertionError(f"{path} never settled")


@pytest.mark.parametrize("kind", PAGED_VIEWS)
def test_a_link_past_the_last_page_shows_the_last_page(
    page: Page, filled: Filled, kind: str
) -> None:
    """Opened at page 99, each paged view shows its last page that has items (the second
    of repositories, images and tags; the first of the rest), its rows and its pager as a
    Next from the page before would; Back leaves it, not to page 99 again."""
    view, tenant = PAGED_VIEWS[kind], filled.tenant
    sign_in(page, tenant)
    before = hash_path(page)
    total = settled_total(tenant, view.listing.format(webhook=filled.webhook), dict(view.extra))
    assert total, f"nothing to list in the {kind}"
    last = -(-total // view.per_page)
    webhook = f"webhook={filled.webhook}&" if kind == "webhook deliveries" else ""
    page.goto(f"{tenant.console}#/projects/{tenant.project}/{view.route}?{webhook}page={PAST}")

    rows = page.get_by_role("table", name=view.table).locator("tbody tr")
    expect(rows).to_have_count(total - (last - 1) * view.per_page)
    expect(page).to_have_url(re.compile(rf"page={last}$"))
    pages = page.get_by_role("navigation", name="Pages")
    if last > 1:
        expect(pages).to_contain_text(f"of {total}")
        expect(pages.get_by_role("button", name="Next")).to_be_disabled()
    else:
        expect(pages).to_have_count(0)
    page.go_back()
    expect(page).to_have_url(re.compile(rf"#{re.escape(before)}$"))


def test_the_server_audit_log_past_its_last_page_shows_the_last_page(
    page: Page, console_server: BerthServer
) -> None:
    """The server administration page's audit log at page 99 shows its last page, in the
    empty page's place in the history."""
    page.goto(f"{console_server.url}/console/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in-user")).to_contain_text("admin")
    page.goto(f"{console_server.url}/console/#/admin?audit_page={PAST}")
    audit = page.get_by_role("table", name="Server audit log")
    expect(audit.locator("tbody tr").first).to_be_visible()
    assert f"audit_page={PAST}" not in hash_path(page)
    page.go_back()
    expect(page).to_have_url(re.compile(r"#/$"))


@pytest.fixture
def two_pages(tenant: Tenant) -> Iterator[Tenant]:
    tenant.create_repository("app")
    push_images(tenant, "app", MORE_THAN_A_PAGE)
    yield tenant


@pytest.mark.parametrize("tab", ["images", "tags"])
def test_deleting_the_only_item_of_the_last_page_shows_the_page_before(
    page: Page, two_pages: Tenant, tab: str
) -> None:
    """21 images, each tagged: Next shows the 21st image (or tag) alone on page 2; deleting
    it shows page 1 with all 20 left, no pager, in page 2's
    place: Back goes to page 1's own entry, not to the empty page."""
    tenant = two_pages
    sign_in(page, tenant)
    page.goto(f"{tenant.console}#/projects/{tenant.project}/repositories/app/{tab}")
    table = page.get_by_role("table", name=tab.capitalize())
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(20)
    pages = page.get_by_role("navigation", name="Pages")
    pages.get_by_role("button", name="Next").click()
    expect(pages).to_contain_text("21\u201321 of 21")
    expect(rows).to_have_count(1)
    rows.get_by_role("button", name=re.compile("^Delete")).click()
    dialog = page.get_by_role("dialog", name="Delete image" if tab == "images" else "Delete tag")
    dialog.get_by_role("button", name="Delete").click()
    expect(rows).to_have_count(20)
    expect(pages).to_have_count(0)
    assert "page=2" not in hash_path(page)
    page.go_back()
    expect(page).to_have_url(re.compile(rf"/repositories/app/{tab}$"))
    expect(rows).to_have_count(20)
