"""Every main view of the console at a phone's, a tablet's, a small laptop's and a desktop's
width, in Chromium: one project holding something for each view to show (a multi-platform
image with a signature, a scanned image, a garbage collection and a retention run, a key, a
member, a webhook with a long address, audit entries with long details), each view opened at
each width. None may scroll the page sideways, and every table's last column must be on the
screen (its cell inside the viewport and inside the table's box), not cut off behind a
sideways scroll."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import Locator, Page, ViewportSize, expect

from berth.domain.names import MAX_USER_NAME_LENGTH
from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.api.conftest import push_image
from tests.clients.console.conftest import (
    PASSWORD,
    Tenant,
    screenshot,
    sign_in,
    wait_for_audit,
)
from tests.clients.console.test_console import LONG_ADDRESS, push_index_with_signature
from tests.clients.console.test_console_scans import push_vulnerable_image, scan_and_wait
from tests.servers import BerthServer
from tests.unit.services.test_scanning_layers import FIXTURES

# A phone, a tablet upright, a small laptop (the width at which the audit table used to
# scroll its Detail out of sight), a tablet on its side, a laptop.
WIDTHS = (360, 768, 900, 1024, 1280)

# For each visible table: how far its last column's cell (in the first row) reaches past the
# viewport or past the table's box (the `.table-wrap` that would scroll it), in px, with the
# table's name; an empty list when every last column is on the screen. In the phone layout a
# row is a card and its last cell the card's last line: the same check holds.
CUT_TABLES = """() => [...document.querySelectorAll("table")]
  .filter((t) => t.getClientRects().length && !t.closest("[hidden]"))
  .map((t) => {
    const row = t.querySelector("tbody tr");
    const cell = row && row.lastElementChild;
    if (!cell) return null;
    const box = (t.closest(".table-wrap, .dialog-body") || document.documentElement).getBoundingClientRect();
    const right = Math.min(box.right, document.documentElement.clientWidth);
    const past = Math.ceil(cell.getBoundingClientRect().right - right);
    const name = t.querySelector("caption")?.textContent || t.getAttribute("aria-label") || "table";
    return past > 0 ? `${name}: its last column ends ${past} px past the screen` : null;
  })
  .filter(Boolean)"""

# Two frames drawn: a table that does not fit its box has become cards (ui.js tableWrap).
DRAWN = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"

# The page scrolls sideways: how many px of it are out of sight (0: none).
SIDEWAYS = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


@dataclass
class View:
    name: str
    path: str  # after the console's `#`
    ready: Callable[[Page], Locator]  # shown once the view has its content
    then: Callable[[Page], Locator] | None = None  # a dialog it opens, checked as well


@dataclass
class Full:
    """A project with something for every view to show, its admin a server administrator."""

    tenant: Tenant
    scanned: str  # the digest of the scanned image in repository `app`
    index: str  # the digest of the index with a signature in repository `multi`


def full_project(server: BerthServer, tmp_path: Path) -> Full:
    suffix = uuid.uuid4().hex[:8]
    tenant = Tenant(server, f"wide{suffix}", f"admin-{suffix}", "admin")
    server.create_project(tenant.project)
    server.create_user(tenant.user, PASSWORD, is_admin=True)
    server.add_member(tenant.project, tenant.user, "admin")
    server.create_user(f"reader-{suffix}", PASSWORD)
    server.add_member(tenant.project, f"reader-{suffix}", "reader")

    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(FIXTURES / "osv", "tests")).refused == []

    server._services(load)
    tenant.create_repository("app", scan_mode="manual", description="The scanned image")
    tenant.create_repository("multi", description="An index of two platforms, signed")
    scanned = push_vulnerable_image(tenant, "app", tmp_path)
    index = push_index_with_signature(tenant, "multi")
    server.access_key(tenant.project, tenant.user)
    base = f"/projects/{tenant.project}"
    with tenant.api() as admin:
        scan_and_wait(admin, f"{base}/repositories/app/images/{scanned}/scan", seconds=60)
        hooks = f"{base}/webhooks"
        every = [t["type"] for t in admin.get(f"{hooks}/event-types").json()]
        made = admin.post(hooks, json={"url": LONG_ADDRESS, "event_types": every[:1]})
        # The audit entry with the longest detail: every event type and a description.
        admin.patch(
            f"{hooks}/{made.raise_for_status().json()['id']}",
            json={"event_types": every, "description": "the build farm's deliveries"},
        ).raise_for_status()
        rules = [{"keep": "last", "count": 1, "repositories": "app"}]
        admin.put(f"{base}/retention", json={"rules": rules}).raise_for_status()
        admin.post(f"{base}/retention/dry-run").raise_for_status()
        admin.post(f"{base}/gc", json={"dry_run": True}).raise_for_status()
    wait_for_audit(tenant, "webhook.update")
    return Full(tenant, scanned, index)


def views(full: Full) -> list[View]:
    project = f"/projects/{full.tenant.project}"
    user = full.tenant.user
    app = f"{project}/repositories/app"

    def table(name: str) -> Callable[[Page], Locator]:
        return lambda page: page.get_by_role("table", name=name).locator("tbody tr").first

    def findings(page: Page) -> Locator:
        dialog = page.get_by_role("dialog", name=f"Findings · {full.scanned[:19]}")
        expect(dialog.get_by_role("table", name="Findings")).to_be_visible()
        return dialog

    def index_row(page: Page) -> Locator:  # with its platforms and its signature
        row = page.get_by_role("table", name="Images").get_by_role("row")
        return row.filter(has_text=full.index[:19]).filter(has_text="linux/arm64")

    def gc_pop_up(page: Page) -> Locator:
        page.get_by_role("button", name="Garbage collection").click()
        return page.get_by_role("dialog", name="Garbage collection")

    return [
        View("repositories", f"{project}/repositories", table("Repositories")),
        View("images-index", f"{project}/repositories/multi/images", index_row),
        View("image-findings", f"{app}/images?findings={full.scanned}", table("Images"), findings),
        View("tags", f"{project}/repositories/multi/tags", table("Tags")),
        View("history", f"{project}/repositories/multi/history", table("History")),
        View(
            "repository-settings",
            f"{project}/repositories/multi/settings",
            lambda page: page.get_by_role("button", name="Delete repository"),
        ),
        View("management", f"{project}/management", table("Garbage collection runs"), gc_pop_up),
        View("monitoring", f"{project}/monitoring", table("Outbound traffic by month")),
        View("access-keys", f"{project}/keys", table("Access keys")),
        View("members", f"{project}/members", table("Members")),
        View("users", f"/admin?query={user}", table("Users")),
        View(
            "audit",
            f"{project}/audit",
            lambda page: page.get_by_role("table", name="Audit log").get_by_text("webhook.update"),
        ),
        View("webhooks", f"{project}/webhooks", table("Webhooks")),
        View("retention", f"{project}/policies", table("Retention runs")),
    ]


def open_view(page: Page, full: Full, view: View) -> Locator | None:
    # Only the part after `#` changes: the console draws the view anew in the same document
    # (no reload). The view shown before is marked, so that its content is not taken for the
    # new view's (two views may have a table of the same name).
    page.evaluate("() => document.querySelector('main')?.setAttribute('data-left', '')")
    page.goto(f"{full.tenant.console}#{view.path}")
    expect(page.locator("main[data-left]")).to_have_count(0)
    expect(view.ready(page)).to_be_visible()
    dialog = view.then(page) if view.then else None
    page.evaluate(DRAWN)
    return dialog


def test_every_view_fits_every_width(
    page: Page, console_server: BerthServer, tmp_path: Path
) -> None:
    full = full_project(console_server, tmp_path)
    sign_in(page, full.tenant)
    cut: list[str] = []
    for width in WIDTHS:
        size: ViewportSize = {"width": width, "height": 860}
        page.set_viewport_size(size)
        for view in views(full):
            dialog = open_view(page, full, view)
            where = f"{view.name} at {width} px"
            if (sideways := page.evaluate(SIDEWAYS)) > 0:
                cut.append(f"{where}: the page scrolls {sideways} px sideways")
            cut.extend(f"{where}: {problem}" for problem in page.evaluate(CUT_TABLES))
            if width in (360, 900):
                screenshot(page, f"width-{width}-{view.name}", full_page=dialog is None)
            if dialog is not None:
                page.keyboard.press("Escape")
                expect(dialog).to_be_hidden()
                expect(page).not_to_have_url(re.compile("findings="))  # the console's own step
    assert not cut, "\n".join(cut)


# What is on the screen past its right edge, or cut off inside a box that scrolls sideways (a
# card of a table, a text box aside): `name: px`, for every element of the page's content.
PAST_THE_EDGE = """() => {
  const screen = document.documentElement.clientWidth;
  const found = [];
  for (const e of document.querySelectorAll("main *")) {
    if (!e.getClientRects().length || e.closest(".tabs, .sr-only") || e.matches("input")) continue;
    const name = `${e.tagName.toLowerCase()} "${e.textContent.trim().slice(0, 24)}"`;
    const past = Math.ceil(e.getBoundingClientRect().right - screen);
    if (past > 0) found.push(`${name} ends ${past} px past the screen`);
    const hidden = e.scrollWidth - e.clientWidth;
    if (hidden > 1 && getComputedStyle(e).overflowX !== "visible") found.push(`${name} hides ${hidden} px`);
  }
  return found;
}"""


def test_the_longest_names_wrap_at_every_width(page: Page, console_server: BerthServer) -> None:
    """A repository's name of 128 characters, an image's and a tag's long ones, a user's of
    64, have no space to wrap at: the header, the heading, the breadcrumbs, the sentences and
    each card that names them wrap them where they must, at a phone's width as at a laptop's,
    rather than widen the page or cut them off behind a sideways scroll."""
    suffix = uuid.uuid4().hex[:8]
    user = (f"admin-{suffix}-" + "longname" * 8)[:MAX_USER_NAME_LENGTH]
    tenant = Tenant(console_server, f"long{suffix}", user, "admin")
    console_server.create_project(tenant.project)
    console_server.create_user(tenant.user, PASSWORD)
    console_server.add_member(tenant.project, tenant.user, "admin")
    repository = ("longname" * 16)[:128]
    image = "nested-" + "x" * 60
    tag = "release-" + "0123456789" * 12
    tenant.create_repository(repository, description="word " * 15 + "longwordlongword")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as registry:
        push_image(registry, f"{tenant.project}/{repository}/{image}", tag)
    here = f"/projects/{tenant.project}/repositories"
    sign_in(page, tenant)
    cut: list[str] = []
    for width in (360, 768, 1280):
        page.set_viewport_size({"width": width, "height": 860})
        for path, shown in (
            ("", page.get_by_role("table", name="Repositories")),
            (f"/{repository}/images", page.get_by_role("table", name="Images")),
            (f"/{repository}/tags", page.get_by_role("table", name="Tags")),
            (f"/{repository}/permissions", page.get_by_text("Nobody outside the project")),
        ):
            page.goto(f"{tenant.console}#{here}{path}")
            expect(shown).to_be_visible()
            page.evaluate(DRAWN)
            where = f"{path.rsplit('/', 1)[-1] or 'repositories'} at {width} px"
            if (sideways := page.evaluate(SIDEWAYS)) > 0:
                cut.append(f"{where}: the page scrolls {sideways} px sideways")
            cut.extend(f"{where}: {problem}" for problem in page.evaluate(PAST_THE_EDGE))
        if width == 360:
            page.goto(f"{tenant.console}#{here}/{repository}/images")
            expect(page.get_by_role("table", name="Images")).to_contain_text(tag)
            screenshot(page, "width-360-longest-names")
    assert not cut, "\n".join(cut)
