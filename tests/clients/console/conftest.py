"""Browser tests of the web console: Playwright for Python driving Debian's Chromium.

One `berth serve` for the module's tests (plain HTTP on 127.0.0.1: docker treats loopback
registries as insecure and falls back to HTTP, skopeo is told `--tls-verify=false`), with
garbage collection held 6 s in its marking phase (so the pop-up's progress and the refused
push can be seen) and no grace period (so there is something to collect). Each test signs in
as a user of its own project, made with the same services the CLI uses.

Screenshots of the main screens go to `test-artifacts/console/` (the README shows a few).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.clients.tools import require_binary
from tests.servers import ROOT, BerthServer, server_fixture

CHROMIUM = "/usr/bin/chromium"
# This machine reaches no outside host: without these, Chromium keeps trying Google's.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "console-password-for-tests"
GC_HOLD_SECONDS = 6
SCREENSHOTS = ROOT / "test-artifacts" / "console"
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}


console_server = server_fixture(
    "console",
    scope="session",
    env={
        "BERTH_GC_TEST_PAUSE": f"marking={GC_HOLD_SECONDS}",
        "BERTH_GC_GRACE_PERIOD": "0",
        "BERTH_TRAFFIC_FLUSH_INTERVAL": "0.3",
        "BERTH_WEBHOOK_ALLOW_PRIVATE": "true",  # the webhook test's endpoint is on loopback
        "BERTH_SCAN_CHECK_INTERVAL": "0.5",  # a scan queued by the Scan button starts soon
    },
)


# Package-scoped: Playwright's sync API runs an event loop in the main thread while it is
# open, and the in-process tests after this package (tests/unit, tests/services) start their
# own loops there.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        require_binary("chromium")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class Tenant:
    """A fresh project with a user of the given role who signs in with a password."""

    server: BerthServer
    project: str
    user: str
    role: str

    @property
    def console(self) -> str:
        return f"{self.server.url}/console/"

    def api(self) -> httpx.Client:
        """The management API as the server administrator (to set up and to check)."""
        key = self.server.access_key(self.project)
        return httpx.Client(base_url=f"{self.server.url}/api/v1", auth=key, timeout=30)

    def create_repository(self, name: str, **fields: str) -> None:
        with self.api() as admin:
            admin.post(
                f"/projects/{self.project}/repositories", json={"name": name, **fields}
            ).raise_for_status()


@pytest.fixture
def tenant_factory(console_server: BerthServer) -> Callable[[str], Tenant]:
    def make(role: str = "admin") -> Tenant:
        suffix = uuid.uuid4().hex[:8]
        project, user = f"web{suffix}", f"{role}-{suffix}"
        console_server.create_project(project)
        console_server.create_user(user, PASSWORD)
        console_server.add_member(project, user, role)
        return Tenant(console_server, project, user, role)

    return make


@pytest.fixture
def tenant(tenant_factory: Callable[[str], Tenant]) -> Tenant:
    return tenant_factory("admin")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=DESKTOP)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab that fails the test on any uncaught script error or refused resource."""
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    yield page
    assert not problems, "\n".join(problems)


def sign_in(page: Page, tenant: Tenant, user: str | None = None) -> None:
    page.goto(tenant.console)
    expect(page.get_by_label("User name")).to_be_focused()
    # By keyboard alone: the user name field has the focus, Tab reaches the password, Enter.
    # The text goes into the focused field at once (as a paste would): typed a key at a time it
    # took a browser round trip per character, about half a second per sign-in.
    page.keyboard.insert_text(user or tenant.user)
    page.keyboard.press("Tab")
    page.keyboard.insert_text(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("signed-in-user")).to_contain_text(user or tenant.user)


def open_project_page(page: Page, tenant: Tenant, menu: str) -> None:
    page.get_by_role("navigation", name="Project").get_by_role("link", name=menu).click()
    expect(page.get_by_role("heading", level=1, name=menu)).to_be_visible()


def retention_dialog_with(page: Page, tenant: Tenant, rules: list[dict[str, object]]) -> Locator:
    """The project's retention rules set to `rules` through the API, then the console's
    retention dialog opened on them, signed in as the tenant."""
    with tenant.api() as admin:
        admin.put(f"/projects/{tenant.project}/retention", json={"rules": rules}).raise_for_status()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    page.get_by_role("button", name="Edit rules").click()
    return page.get_by_role("dialog", name="Retention rules")


def screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def screenshot_dialog(page: Page, dialog: Locator, name: str) -> Path:
    """A screenshot of the viewport with `dialog` shown whole: its body scrolls past 70% of the
    viewport's height (at 860 px, the access key dialog's last command is cut off), so the
    viewport grows until nothing in it scrolls, for this screenshot only."""
    size = page.viewport_size or DESKTOP
    body = dialog.locator(".dialog-body")
    hidden = body.evaluate("(b) => b.scrollHeight - b.clientHeight")
    if hidden > 0:
        # The body may be 70vh high: each pixel hidden needs 1/0.7 px more of viewport.
        page.set_viewport_size(
            {"width": size["width"], "height": size["height"] + hidden * 10 // 7 + 2}
        )
    try:
        assert body.evaluate("(b) => b.scrollHeight <= b.clientHeight"), "the dialog still scrolls"
        return screenshot(page, name, full_page=False)
    finally:
        page.set_viewport_size(size)


def wait_for_audit(
    tenant: Tenant, *actions: str, targets: Sequence[str] = (), seconds: float = 30
) -> None:
    """Wait until the project's audit log holds an entry of each of `actions` and one naming
    each of `targets`: the server writes audit entries in batches (every 0.25 s), and a page
    opened before would miss them."""
    deadline = time.monotonic() + seconds
    with tenant.api() as admin:
        while True:
            log = admin.get(f"/projects/{tenant.project}/audit", params={"per_page": 100})
            entries = log.raise_for_status().json()["items"]
            missing = (set(actions) - {entry["action"] for entry in entries}) | (
                set(targets) - {entry["target"] for entry in entries}
            )
            if not missing:
                return
            assert time.monotonic() < deadline, f"not in the audit log: {sorted(missing)}"
            time.sleep(0.1)


def hash_path(page: Page) -> str:
    return re.sub(r"^[^#]*#", "", page.url)
