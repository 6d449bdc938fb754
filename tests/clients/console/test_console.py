"""A new user's way through the console, clicked in a real browser, with real clients."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.server
import itertools
import json
import re
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Route, ViewportSize, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from berth.domain.names import MAX_PROJECT_LENGTH
from tests.api.conftest import push_image
from tests.clients.conftest import Projects
from tests.clients.console.conftest import (
    DESKTOP,
    GC_HOLD_SECONDS,
    PASSWORD,
    PHONE,
    Tenant,
    hash_path,
    open_project_page,
    screenshot,
    screenshot_dialog,
    sign_in,
    wait_for_audit,
)
from tests.clients.daemons import Dockerd
from tests.clients.layouts import TestImage
from tests.clients.machine import DockerCertsDirs
from tests.clients.registry import project_host
from tests.clients.tools import output, require_binary, run
from tests.oci import (
    Blob,
    buildx_index,
    diff_id,
    image_config,
    image_index,
    image_manifest,
    layer,
    linux_index,
    push_blobs,
    push_manifest,
    random_blob,
)
from tests.servers import ADMIN_PASSWORD, BerthServer, free_port

# How every time is shown: to the minute, with the browser's zone.
TIME_SHOWN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d (UTC|GMT[+-][\d:]+|[A-Z]{3,4})$")


def skopeo_push(
    tenant: Tenant, image: TestImage, name: str, key: tuple[str, str] | None = None
) -> str:
    """Push the test image as `{project}/{name}` path style; returns skopeo's output."""
    key = key or tenant.server.access_key(tenant.project)
    result = run(
        [
            require_binary("skopeo"),
            "copy",
            "--dest-tls-verify=false",
            f"--dest-creds={key[0]}:{key[1]}",
            image.oci_ref,
            f"docker://{tenant.server.address}/{tenant.project}/{name}",
        ],
        check=False,
    )
    return output(result)


# ------------------------------------------------------------------ signing in


def test_a_visitor_is_sent_to_sign_in_and_back(page: Page, tenant: Tenant) -> None:
    wanted = f"/projects/{tenant.project}/management"
    asked: list[str] = []
    page.on("request", lambda request: asked.append(urlsplit(request.url).path))
    page.goto(f"{tenant.console}#{wanted}")
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    assert hash_path(page).startswith("/login")
    # Signed out is known from one question (its 401 is the one error the browser shows).
    assert asked.count("/api/v1/session") == 1
    screenshot(page, "login")

    page.get_by_label("User name").fill(tenant.user)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")

    page.get_by_label("Password").fill("console-password-for-tests")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1, name="Management")).to_be_visible()
    assert hash_path(page) == wanted

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    page.goto(f"{tenant.console}#{wanted}")
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()


def test_the_skip_link_moves_the_focus_to_the_content(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    wanted = hash_path(page)
    page.reload()  # the focus back at the top of the page
    # The members loaded: before that the content has no control for the last Tab to reach.
    expect(page.get_by_role("table", name="Members")).to_be_visible()
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    assert hash_path(page) == wanted  # the route stays: no "Page not found"
    expect(page.get_by_role("heading", level=1, name="Members")).to_be_visible()
    page.keyboard.press("Tab")  # on from there: the content's first control, past the menus
    expect(page.locator("main :focus")).to_have_count(1)


def test_a_link_with_a_dot_dot_name_acts_on_nothing(page: Page, tenant: Tenant) -> None:
    """A crafted link naming repository `..` would resolve to the project's own URL (and the
    repository's Delete button to deleting the project): the console refuses the name."""
    sign_in(page, tenant)
    # Away from the console first: the page signed in on may still be loading the project, and
    # a request of its that starts late would count below as one of the crafted link's.
    page.goto("about:blank")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(urlsplit(request.url).path))
    page.goto(f"{tenant.console}#/projects/{tenant.project}/repositories/..")
    expect(page.get_by_role("heading", level=1, name="Something went wrong")).to_be_visible()
    expect(page.get_by_text('".." is not a name')).to_be_visible()
    project_path = f"/api/v1/projects/{tenant.project}"
    assert asked.count(project_path) <= 1, asked  # the page's own load of the project, no more


def test_the_root_of_the_server_opens_the_console(page: Page, tenant: Tenant) -> None:
    page.goto(f"{tenant.server.url}/")
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    assert page.url.startswith(f"{tenant.server.url}/console/")


# ------------------------------------------------------------------ the first day


def test_create_a_repository_and_a_key_then_docker_login_and_push(
    page: Page, tenant: Tenant, dockerd: Dockerd, test_image: TestImage, tmp_path: Path
) -> None:
    sign_in(page, tenant)
    # One project: the console opens its repositories, empty.
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    expect(page.get_by_text("No repositories yet")).to_be_visible()

    page.get_by_role("button", name="Create repository").first.click()
    dialog = page.get_by_role("dialog", name="Create repository")
    dialog.get_by_label("Repository name").fill("Bad Name")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_role("alert").filter(has_text="lowercase letters")).to_be_visible()
    dialog.get_by_label("Repository name").fill("web")
    dialog.get_by_label("Description (optional)").fill("The web front end")
    expect(dialog.get_by_text("17/100")).to_be_visible()
    dialog.get_by_label("Disabled").check()  # tag overwrite
    screenshot(page, "create-repository", full_page=False)
    dialog.get_by_role("button", name="Create").click()

    expect(page.get_by_role("heading", level=1, name="web")).to_be_visible()
    expect(page.get_by_test_id("image-count")).to_have_text("0")
    # No image yet: no pull command (it would name an image that does not exist).
    expect(page.get_by_test_id("pull-command")).to_have_count(0)
    # What to push is a name to fill in, not a command offered for pasting.
    expect(page.get_by_test_id("push-name")).to_have_text(
        f"{tenant.server.address}/{tenant.project}/web[/IMAGE]:TAG"
    )
    expect(page.get_by_role("button", name=re.compile(r"IMAGE\]:TAG"))).to_have_count(0)

    open_project_page(page, tenant, "Access keys")
    expect(page.get_by_text("No access keys yet")).to_be_visible()
    page.get_by_role("button", name="Create access key").click()
    page.get_by_role("dialog", name="Create access key").get_by_role(
        "button", name="Create"
    ).click()
    created = page.get_by_role("dialog", name="Access key created")
    expect(created.get_by_text("shown only now")).to_be_visible()
    key_id = created.get_by_test_id("new-key-id").inner_text()
    secret = created.get_by_test_id("new-key-secret").inner_text()
    login = created.get_by_test_id("docker-login-command").inner_text()
    pull_secret = created.get_by_test_id("pull-secret-command").inner_text()
    assert login == (
        f"docker login {tenant.server.address} --username {key_id} --password {secret}"
    )
    assert f"--docker-server={tenant.server.address}" in pull_secret
    assert f"--docker-password={secret}" in pull_secret
    screenshot_dialog(page, created, "access-key-created")
    # Each copy button says what it copies, never the secret: a screen reader would read it
    # out again (and the commands with it).
    names = created.get_by_role("button").evaluate_all(
        "buttons => buttons.map((b) => b.getAttribute('aria-label') || b.textContent)"
    )
    assert [n for n in names if n.startswith("Copy")] == [
        "Copy access key ID",
        "Copy secret access key",
        "Copy docker login command",
        "Copy Kubernetes pull secret command",
    ]
    assert not [n for n in names if secret in n or key_id in n]
    # Path style: every project shares the address, and docker's one login for it.
    expect(created.get_by_test_id("one-login-per-host")).to_contain_text(
        "another project's key replaces this one"
    )
    expect(created.get_by_test_id("one-login-per-host")).to_contain_text("DOCKER_CONFIG")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    created.get_by_role("button", name="Copy secret access key").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    created.get_by_role("button", name="Done").click()
    row = page.get_by_role("row").filter(has_text=key_id)
    expect(row).to_contain_text("Active")
    expect(page.get_by_text(secret)).to_have_count(0)  # never shown again

    # The command from the dialog, as a user pastes it.
    docker_env = {**dockerd.env, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    (tmp_path / "docker-config").mkdir()
    (tmp_path / "docker-config" / "config.json").write_text('{"auths": {}}\n')
    assert "Login Succeeded" in run(shlex.split(login), docker_env).stdout
    reference = f"{tenant.server.address}/{tenant.project}/web/app:v1"
    run(
        [dockerd.cli, "import", test_image.rootfs_tar(tmp_path / "rootfs.tar"), reference],
        docker_env,
    )
    pushed = run([dockerd.cli, "push", reference], docker_env)
    assert "v1: digest: sha256:" in pushed.stdout

    # The pull secret command from the dialog, as kubectl runs it, gives working credentials.
    require_binary("kubectl")
    secret_json = run(
        [*shlex.split(pull_secret.replace("\\\n", " ")), "--dry-run=client", "-o", "json"]
    ).stdout
    docker_config = base64.b64decode(json.loads(secret_json)["data"][".dockerconfigjson"])
    (tmp_path / "pull-secret.json").write_bytes(docker_config)
    inspected = run(
        [
            require_binary("skopeo"),
            "inspect",
            "--tls-verify=false",
            f"--authfile={tmp_path / 'pull-secret.json'}",
            f"docker://{reference}",
        ]
    )
    assert json.loads(inspected.stdout)["Name"] == reference.rsplit(":", 1)[0]

    open_project_page(page, tenant, "Access keys")  # shown already: the menu loads it again
    row = page.get_by_role("row").filter(has_text=key_id)
    cells = row.get_by_role("cell")
    # ID, user, created, last used (docker just used it), expires, state
    expect(cells.nth(2)).to_have_text(TIME_SHOWN)
    expect(cells.nth(3)).not_to_have_text("never")
    expect(cells.nth(4)).to_have_text("never")
    expect(cells.nth(5)).to_have_text("Active")

    open_project_page(page, tenant, "Repositories")
    headers = page.get_by_role("table", name="Repositories").get_by_role("columnheader")
    expect(headers).to_have_text(
        [
            "Name",
            "Description",
            "Images",
            "Image scan",
            "Tag overwrite",
            "Visibility",
            "Last modified",
        ]
    )
    row = page.get_by_role("row").filter(has_text="The web front end")
    expect(row.get_by_role("cell")).to_have_text(
        ["web", "The web front end", "1", "Manual", "Disabled", "Private", re.compile(r"\d{4}-")]
    )
    screenshot(page, "repositories")
    row.get_by_role("link", name="web").click()
    expect(page.get_by_test_id("image-count")).to_have_text("1")
    images = page.get_by_role("table", name="Images")
    expect(images).to_contain_text("v1")
    expect(images).to_contain_text("app")
    screenshot(page, "repository-images")

    open_project_page(page, tenant, "Management")
    expect(page.get_by_test_id("summary-repositories")).to_have_text("1 / 100")
    expect(page.get_by_test_id("summary-images")).to_have_text("1")
    expect(page.get_by_test_id("management-summary")).to_contain_text(
        "Up to 10,000 images can be created per repository"
    )


# ------------------------------------------------------------------ garbage collection


def test_garbage_collection_through_the_pop_up(
    page: Page, tenant: Tenant, test_image: TestImage
) -> None:
    admin = tenant.api()
    tenant.create_repository("old")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "old/app:v1")
    # Deleting the image leaves its layer data for garbage collection.
    images = admin.get(f"/projects/{tenant.project}/repositories/old/images").json()["items"]
    digest = images[0]["digest"]
    admin.delete(
        f"/projects/{tenant.project}/repositories/old/images/{digest}", params={"image": "app"}
    ).raise_for_status()

    sign_in(page, tenant)
    open_project_page(page, tenant, "Management")
    expect(page.get_by_text("No garbage collection has run in this project yet")).to_be_visible()
    page.get_by_role("button", name="Garbage collection").click()
    dialog = page.get_by_role("dialog", name="Garbage collection")
    expect(dialog).to_contain_text("multi-architecture manifests may be deleted")
    expect(dialog).to_contain_text("image push and tag addition")
    expect(dialog).to_contain_text("tags cannot be restored")
    execute = dialog.get_by_role("button", name="Execute")
    expect(execute).to_be_disabled()
    expect(dialog.get_by_test_id("gc-grace")).to_contain_text("the grace period (0 seconds")
    phrase = dialog.get_by_label("Type data deletion to confirm")
    # An empty box looks empty: no placeholder repeating the phrase.
    assert (phrase.get_attribute("placeholder") or "") != "data deletion"
    phrase.fill("data deletio")
    expect(execute).to_be_disabled()
    phrase.fill("data deletion")
    expect(execute).to_be_enabled()
    screenshot(page, "garbage-collection-pop-up", full_page=False)
    phrase.press("Enter")  # the keyboard works as well as the button

    current = page.get_by_test_id("gc-current")
    expect(current).to_contain_text("Garbage collection is running")
    expect(current.locator("[data-phase=marking]")).to_be_visible()
    screenshot(page, "garbage-collection-running")
    expect(page.get_by_test_id("gc-button")).to_be_disabled()  # one run at a time
    # While it decides what to delete, a push into the project is refused.
    refused = skopeo_push(tenant, test_image, "old/app:v2")
    assert "garbage collection in progress" in refused

    # Until it ends, the panel, the history's row and the summary's last run agree at every
    # look, and the run only moves forward.
    history = page.get_by_role("table", name="Garbage collection runs")
    seen = watch_gc_panel(
        page, admin, f"/projects/{tenant.project}/gc/runs", timeout=GC_HOLD_SECONDS + 20
    )
    assert seen[-1] == ("succeeded", "done") and ("running", "marking") in seen, seen
    expect(current).to_contain_text("Last run: Succeeded")
    expect(page.get_by_test_id("gc-button")).to_be_enabled()
    expect(page.get_by_test_id("gc-last-run")).to_contain_text("Succeeded")
    expect(history.locator("thead")).to_contain_text("Delete untagged")
    [run_record] = admin.get(f"/projects/{tenant.project}/gc/runs").json()["items"]
    assert run_record["state"] == "succeeded" and run_record["bytes_freed"] > 0
    freed = page.get_by_test_id("gc-freed")
    expect(freed).to_have_attribute("data-bytes", str(run_record["bytes_freed"]))
    expect(page.get_by_test_id("gc-blobs")).to_have_text(f"{run_record['blobs_deleted']:,}")
    expect(page.get_by_test_id("gc-images")).to_have_text(f"{run_record['images_deleted']:,}")
    expect(history.get_by_role("row")).to_have_count(2)  # header and the run
    expect(history).to_contain_text(tenant.user)
    screenshot(page, "management")
    # After the run, pushing works again.
    assert "Writing manifest" in skopeo_push(tenant, test_image, "old/app:v3")


PHASE_ORDER = ("queued", "marking", "sweeping", "done")


def watch_gc_panel(
    page: Page, api: httpx.Client, runs: str, timeout: float
) -> list[tuple[str, str]]:
    """The GC panel's (state, phase) at each look until the run ends, checking at every look
    that the history's newest row and the summary's last run say the same, that the API
    (`{runs}/{id}`, asked after the look) is where the card is or further on, and that nothing
    goes back. The card and the row are drawn from one response: only the API can show that
    what they say is the run's."""
    look = """() => {
      const card = document.querySelector("[data-testid=gc-current] section");
      const row = document.querySelector("table tbody tr [data-state]");
      const last = document.querySelector("[data-testid=gc-last-run]");
      return card && row ? [card.dataset.state, card.dataset.phase, row.dataset.state,
                            row.dataset.phase, last.textContent, card.dataset.run] : null;
    }"""
    seen: list[tuple[str, str]] = []
    rank = (0, 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = page.evaluate(look)
        if found is not None:
            state, phase, row_state, row_phase, last, run_id = found
            assert (state, phase) == (row_state, row_phase), found
            record = api.get(f"{runs}/{run_id}").raise_for_status().json()
            served = (record["state"] != "running", PHASE_ORDER.index(record["phase"]))
            assert served >= (state != "running", PHASE_ORDER.index(phase)), (found, record)
            if state != "running":
                assert (record["state"], record["phase"]) == (state, phase), (found, record)
            if state == "running":
                assert "Succeeded" not in last or seen == [], found
            else:
                assert "Succeeded" in last or state != "succeeded", found
            now = (state != "running", PHASE_ORDER.index(phase))
            assert now >= rank, (seen, found)
            rank = now
            if not seen or seen[-1] != (state, phase):
                seen.append((state, phase))
            if state != "running":
                return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"the run never ended: {seen}")


# ------------------------------------------------------------------ traffic


def test_the_traffic_chart_shows_the_bytes_pulled(
    page: Page, tenant: Tenant, test_image: TestImage
) -> None:
    tenant.create_repository("pulled")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "pulled:v1")
    key = tenant.server.access_key(tenant.project)
    pulled = 0
    with httpx.Client(base_url=f"{tenant.server.url}/v2/{tenant.project}/pulled", auth=key) as v2:
        for _ in range(3):
            manifest = v2.get(
                "/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
            )
            manifest.raise_for_status()
            pulled += len(manifest.content)
            body = manifest.json()
            for blob in [body["config"], *body["layers"]]:
                response = v2.get(f"/blobs/{blob['digest']}")
                response.raise_for_status()
                assert hashlib.sha256(response.content).hexdigest() == blob["digest"][7:]
                pulled += len(response.content)

    sign_in(page, tenant)
    open_project_page(page, tenant, "Management")
    expect(page.get_by_test_id("summary-storage")).to_be_visible()
    page.get_by_role("button", name="Collect now").click()
    # A collection asked for within storage_collect_min_interval (5 s) of the newest sample
    # (the push's) waits for that moment, then measures.
    expect(page.get_by_text("Storage usage collected")).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("storage-collected-at")).to_be_visible()  # with its time
    with tenant.api() as admin:
        collected = admin.get(f"/projects/{tenant.project}/storage").json()["last"]
    assert collected["bytes"] > 0
    summary_storage = page.get_by_test_id("summary-storage")
    expect(summary_storage).to_have_attribute("data-bytes", str(collected["bytes"]))
    stored = summary_storage.inner_text()

    open_project_page(page, tenant, "Monitoring")
    expect(page.get_by_test_id("storage-used")).to_have_text(stored)
    storage_marks = page.get_by_test_id("storage-chart").locator(".mark")
    expect(storage_marks.last).to_have_attribute("data-value", str(collected["bytes"]))
    expect(page.get_by_text("may differ slightly from the actual billed usage")).to_be_visible()
    expect(page.get_by_text("it takes up to 30 minutes for actual usage")).to_be_visible()
    chart = page.get_by_test_id("traffic-chart")
    today = chart.locator(".mark").last
    for _ in range(20):  # counters are written every 0.3 s here
        if today.get_attribute("data-value") == str(pulled):
            break
        page.wait_for_timeout(300)
        page.reload()
        today = page.get_by_test_id("traffic-chart").locator(".mark").last
    assert today.get_attribute("data-value") == str(pulled)
    expect(today.locator("title")).to_contain_text(" download")
    # The month's total, its trend (nothing the month before) and the charge (no price is set
    # on this server) are the API's.
    this_month = (
        page.get_by_role("table", name="Outbound traffic by month").locator("tbody tr").last
    )
    expect(this_month.locator("[data-bytes]")).to_have_attribute("data-bytes", str(pulled))
    expect(page.get_by_test_id("traffic-change")).to_have_text("new")
    with tenant.api() as admin:
        traffic = admin.get(f"/projects/{tenant.project}/traffic").json()
    assert traffic["this_month"]["bytes"] == pulled
    expect(page.get_by_test_id("traffic-charge")).to_have_text(
        f"{traffic['this_month']['estimated_charge']:.2f} USD"  # the currency setting's default
    )
    expect(page.get_by_role("table", name="Outbound traffic by repository")).to_contain_text(
        "pulled"
    )
    screenshot(page, "monitoring")


# ------------------------------------------------------------------ history


def test_restore_a_deleted_tag_from_the_history(
    page: Page, tenant: Tenant, test_image: TestImage
) -> None:
    tenant.create_repository("app")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "app:stable")

    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    page.get_by_role("tab", name="Tags").click()
    tags = page.get_by_role("table", name="Tags")
    tags.get_by_role("button", name="Delete stable", exact=True).click()  # named by its tag
    page.get_by_role("dialog", name="Delete tag").get_by_role("button", name="Delete").click()
    expect(page.get_by_text("No tags.")).to_be_visible()
    manifest_url = f"/v2/{tenant.project}/app/manifests/stable"
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key) as v2:
        assert v2.head(manifest_url).status_code == 404

        page.get_by_role("tab", name="History").click()
        history = page.get_by_role("table", name="History")
        expect(history).to_contain_text("Tag deleted")
        screenshot(page, "repository-history")
        history.get_by_role("button", name="Restore stable").click()
        page.get_by_role("dialog", name="Restore tag").get_by_role("button", name="Restore").click()
        expect(history).to_contain_text("Tag restored")
        expect(history.get_by_role("button", name="Restore stable")).to_have_count(0)
        assert v2.head(manifest_url).status_code == 200


def test_tags_that_cannot_be_overwritten_offer_no_delete(page: Page, tenant: Tenant) -> None:
    with tenant.api() as admin:
        admin.post(
            f"/projects/{tenant.project}/repositories",
            json={"name": "fixed", "tag_overwrite": False},
        ).raise_for_status()
    name = f"{tenant.project}/fixed"
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        blob = layer({"file": b"fixed"})
        config = image_config(diff_ids=[diff_id(blob)])
        push_blobs(v2, name, [blob, config])
        tagged = image_manifest(config.descriptor(), [blob.descriptor()])
        push_manifest(v2, name, "v1", tagged)
        untagged = push_image(v2, name, None)

    sign_in(page, tenant)
    page.get_by_role("link", name="fixed", exact=True).click()
    # The images tab offers no delete of a tagged image either (the server refuses it: its
    # tag would go with it), only of the untagged one.
    images = page.get_by_role("table", name="Images")
    delete_tagged = images.get_by_role("button", name=f"Delete {tagged.digest[:19]}", exact=True)
    expect(delete_tagged).to_be_disabled()
    expect(delete_tagged).to_have_attribute("title", re.compile("Tag overwrite is disabled"))
    images.get_by_role("button", name=f"Delete {untagged.digest[:19]}", exact=True).click()
    page.get_by_role("dialog", name="Delete image").get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Image deleted")).to_be_visible()
    expect(images.get_by_role("row")).to_have_count(2)  # the header and the tagged image
    page.get_by_role("tab", name="Tags").click()
    delete = (
        page.get_by_role("table", name="Tags")
        .get_by_role("row")
        .filter(has_text="v1")
        .get_by_role("button", name="Delete")
    )
    expect(delete).to_be_disabled()
    expect(delete).to_have_attribute("title", re.compile("Tag overwrite is disabled"))


def test_tags_an_immutable_tag_rule_protects_offer_no_delete(page: Page, tenant: Tenant) -> None:
    tenant.create_repository("rules")
    name = f"{tenant.project}/rules"
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        release = push_image(v2, name, "v1")
        push_image(v2, name, "dev")
    with tenant.api() as admin:
        admin.post(
            f"/projects/{tenant.project}/immutable-tag-rules",
            json={"tag_pattern": "v*", "repository_pattern": "rules"},
        ).raise_for_status()
    why = "The immutable tag rule 'v*' (repositories 'rules') protects"

    sign_in(page, tenant)
    page.get_by_role("link", name="rules", exact=True).click()
    images = page.get_by_role("table", name="Images")
    delete_release = images.get_by_role("button", name=f"Delete {release.digest[:19]}", exact=True)
    expect(delete_release).to_be_disabled()
    expect(delete_release).to_have_attribute("title", re.compile(re.escape(f"{why} its tag v1")))
    page.get_by_role("tab", name="Tags").click()
    tags = page.get_by_role("table", name="Tags")
    delete_v1 = tags.get_by_role("button", name="Delete v1", exact=True)
    expect(delete_v1).to_be_disabled()
    expect(delete_v1).to_have_attribute("title", re.compile(re.escape(f"{why} this tag")))
    # A tag no rule matches goes as before.
    tags.get_by_role("button", name="Delete dev", exact=True).click()
    page.get_by_role("dialog", name="Delete tag").get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Tag dev deleted")).to_be_visible()
    expect(tags.get_by_role("row")).to_have_count(2)  # the header and v1


# ------------------------------------------------------------------ roles


def test_a_reader_sees_no_management_buttons(
    page: Page, tenant_factory: Callable[[str], Tenant], test_image: TestImage
) -> None:
    reader = tenant_factory("reader")
    admin = reader.api()
    reader.create_repository("shared")
    assert "Writing manifest" in skopeo_push(reader, test_image, "shared:v1")
    admin.delete(f"/projects/{reader.project}/repositories/shared/tags/v1").raise_for_status()

    sign_in(page, reader)
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    expect(page.get_by_role("link", name="shared")).to_be_visible()
    expect(page.get_by_role("button", name="Create repository")).to_have_count(0)

    page.get_by_role("link", name="shared").click()
    expect(page.get_by_role("tab", name="Images")).to_be_visible()
    expect(page.get_by_role("tab", name="Settings")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    expect(page.get_by_test_id("scan-state")).to_have_text("not scanned")
    expect(page.get_by_role("button", name=re.compile("^Scan "))).to_have_count(0)
    page.get_by_role("tab", name="History").click()
    expect(page.get_by_role("table", name="History")).to_contain_text("Tag deleted")
    expect(page.get_by_role("button", name="Restore v1")).to_have_count(0)

    open_project_page(page, reader, "Management")
    expect(page.get_by_test_id("management-summary")).to_be_visible()
    expect(page.get_by_role("button", name="Garbage collection")).to_have_count(0)

    open_project_page(page, reader, "Members")
    expect(page.get_by_role("table", name="Members")).to_contain_text(reader.user)
    expect(page.get_by_role("button", name="Add member")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    # A reader still manages their own access keys.
    open_project_page(page, reader, "Access keys")
    expect(page.get_by_role("button", name="Create access key")).to_be_visible()


@pytest.mark.parametrize(("path", "shown_as"), [("audit", "audit log"), ("webhooks", "webhooks")])
def test_a_member_opening_an_admin_page_is_told_who_may_see_it(
    page: Page, tenant_factory: Callable[[str], Tenant], path: str, shown_as: str
) -> None:
    """The menu has no entry for it; its link, shared by an admin, opens a page that says so."""
    member = tenant_factory("member")
    sign_in(page, member)
    page.goto(f"{member.console}#/projects/{member.project}/{path}")
    heading = page.get_by_role("heading", level=1, name="Not available with your role")
    expect(heading).to_be_visible()
    expect(page.locator("main")).to_contain_text(
        f"Only project admins and server administrators see the {shown_as} of project "
        f"{member.project}. Your role here is member."
    )
    expect(page.get_by_text("Something went wrong")).to_have_count(0)


def test_a_project_admin_adds_a_member(page: Page, tenant: Tenant) -> None:
    newcomer = f"dev-{tenant.project[3:]}"
    tenant.server.create_user(newcomer, "newcomer-password")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    form = page.get_by_role("form", name="Add a member")
    form.get_by_label("User").fill(newcomer)
    form.get_by_label("Role").select_option("reader")
    form.get_by_role("button", name="Add member").click()
    row = page.get_by_role("table", name="Members").get_by_role("row").filter(has_text=newcomer)
    expect(row.get_by_role("combobox")).to_have_value("reader")
    screenshot(page, "members")
    members = tenant.api().get(f"/projects/{tenant.project}/members").json()
    assert {"user": newcomer, "role": "reader"}.items() <= next(
        m for m in members if m["user"] == newcomer
    ).items()


def test_the_last_admin_is_told_to_make_another_admin_first(page: Page, tenant: Tenant) -> None:
    """The project's only admin removing or demoting themself is refused in the dialog, in the
    API's words, and stays admin (a project that has admins keeps one)."""
    refused = f"user '{tenant.user}' is the last admin of project '{tenant.project}'"
    told = "a project keeps at least one admin; make another member admin first"
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    members = page.get_by_role("table", name="Members")
    members.get_by_role("row").filter(has_text="(you)").get_by_role("button", name="Remove").click()
    dialog = page.get_by_role("dialog", name="Remove yourself")
    dialog.get_by_role("button", name="Remove yourself").click()
    expect(dialog.get_by_role("alert")).to_contain_text(f"{refused}: {told}")
    dialog.get_by_role("button", name="Cancel").click()

    own = members.get_by_label(f"Role of {tenant.user}")
    own.select_option("reader")
    dialog = page.get_by_role("dialog", name="Change your own role")
    dialog.get_by_role("button", name="Make me reader").click()
    expect(dialog.get_by_role("alert")).to_contain_text(told)
    dialog.get_by_role("button", name="Cancel").click()
    expect(own).to_have_value("admin")
    roles = {
        m["user"]: m["role"] for m in tenant.api().get(f"/projects/{tenant.project}/members").json()
    }
    assert roles == {tenant.user: "admin"}


def test_removing_yourself_asks_then_goes_to_your_projects(page: Page, tenant: Tenant) -> None:
    """The project admin's own Remove says what it costs; once done, the console leaves the
    project's pages (each request there would now be refused) for the projects list. (Another
    admin stays: a project that has admins keeps one.)"""
    other = f"zz-{tenant.project[3:]}"
    tenant.server.create_user(other, "a-password-for-tests")
    tenant.server.add_member(tenant.project, other, "admin")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    own = page.get_by_role("table", name="Members").get_by_role("row").filter(has_text="(you)")
    own.get_by_role("button", name="Remove").click()
    dialog = page.get_by_role("dialog", name="Remove yourself")
    expect(dialog).to_contain_text(
        f"Remove yourself from {tenant.project}? You will no longer see the project"
    )
    dialog.get_by_role("button", name="Remove yourself").click()
    expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    assert hash_path(page) == "/"
    expect(page.get_by_role("status")).to_contain_text(
        f"You are no longer a member of {tenant.project}"
    )
    expect(page.get_by_text("You are not in any project yet")).to_be_visible()
    expect(page.get_by_text("Something went wrong")).to_have_count(0)
    members = tenant.api().get(f"/projects/{tenant.project}/members").json()
    assert tenant.user not in [m["user"] for m in members]


def test_a_server_admin_removing_themselves_stays_on_the_project(
    page: Page, tenant: Tenant
) -> None:
    boss = f"boss-{tenant.project[3:]}"
    tenant.server.create_user(boss, PASSWORD, is_admin=True)
    tenant.server.add_member(tenant.project, boss, "admin")
    sign_in(page, tenant, boss)
    page.get_by_role("link", name=tenant.project).click()  # the server admin sees every project
    open_project_page(page, tenant, "Members")
    members = page.get_by_role("table", name="Members")
    members.get_by_role("row").filter(has_text=boss).get_by_role("button", name="Remove").click()
    dialog = page.get_by_role("dialog", name="Remove yourself")
    expect(dialog).to_contain_text("As a server administrator you still see and manage it.")
    dialog.get_by_role("button", name="Remove").click()
    expect(members.get_by_role("row").filter(has_text=boss)).to_have_count(0)
    expect(page.get_by_role("heading", level=1, name="Members")).to_be_visible()
    assert hash_path(page) == f"/projects/{tenant.project}/members"
    row = members.get_by_role("row").filter(has_text=tenant.user)
    expect(row.get_by_role("button", name="Remove")).to_be_visible()


def test_demoting_yourself_asks_then_takes_away_the_admin_controls(
    page: Page, tenant: Tenant
) -> None:
    """Cancelled, the role stays; confirmed, the page is drawn for a reader: no role choices,
    Remove buttons, form to add a member, or admin pages in the menu to fail on a click. (The
    other member is admin: a project that has admins keeps one.)"""
    other = f"zz-{tenant.project[3:]}"
    tenant.server.create_user(other, "a-password-for-tests")
    tenant.server.add_member(tenant.project, other, "admin")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    members = page.get_by_role("table", name="Members")
    own = members.get_by_label(f"Role of {tenant.user}")

    own.select_option("reader")
    dialog = page.get_by_role("dialog", name="Change your own role")
    expect(dialog).to_contain_text(f"Make yourself reader in {tenant.project}?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(own).to_have_value("admin")
    roles = {
        m["user"]: m["role"] for m in tenant.api().get(f"/projects/{tenant.project}/members").json()
    }
    assert roles[tenant.user] == "admin"

    own.select_option("reader")
    page.get_by_role("dialog", name="Change your own role").get_by_role(
        "button", name="Make me reader"
    ).click()
    expect(page.get_by_role("status")).to_contain_text(f"You are now reader in {tenant.project}")
    expect(members.get_by_role("row").filter(has_text=tenant.user)).to_contain_text("reader")
    expect(members.get_by_role("combobox")).to_have_count(0)
    expect(members.get_by_role("button", name="Remove")).to_have_count(0)
    expect(page.get_by_role("form", name="Add a member")).to_have_count(0)
    menu = page.get_by_role("navigation", name="Project")
    expect(menu.get_by_role("link", name="Members")).to_be_visible()
    expect(menu.get_by_role("link", name="Audit log")).to_have_count(0)
    expect(menu.get_by_role("link", name="Webhooks")).to_have_count(0)
    roles = {
        m["user"]: m["role"] for m in tenant.api().get(f"/projects/{tenant.project}/members").json()
    }
    assert roles == {tenant.user: "reader", other: "admin"}


# ------------------------------------------------------------------ cross-site requests


@pytest.fixture
def attacker_site() -> Iterator[Callable[[str], str]]:
    """Another origin (another port) serving one page; returns its URL for given HTML."""
    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def serve(html: str) -> str:
        pages["/"] = html.encode()
        return f"http://127.0.0.1:{port}/"

    yield serve
    server.shutdown()


def test_a_cross_site_form_post_is_refused(
    page: Page, tenant: Tenant, attacker_site: Callable[[str], str]
) -> None:
    sign_in(page, tenant)  # the browser holds a session cookie for the console
    target = f"{tenant.server.url}/api/v1/projects/{tenant.project}/repositories"
    url = attacker_site(
        f'<form id="f" method="post" action="{target}">'
        '<input name="name" value="planted"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    with page.expect_response(target) as answer:
        page.goto(url)
    assert answer.value.status == 403
    assert "CSRF" in answer.value.text() or "cross-site" in answer.value.text()
    names = [
        r["name"]
        for r in tenant.api().get(f"/projects/{tenant.project}/repositories").json()["items"]
    ]
    assert "planted" not in names


# ------------------------------------------------------------------ layout


def test_the_console_fits_a_phone(browser: Browser, tenant: Tenant, test_image: TestImage) -> None:
    tenant.create_repository("mobile", description="Seen on a phone")
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        sign_in(page, tenant)
        expect(page.get_by_role("link", name="mobile")).to_be_visible()
        width = "document.documentElement.scrollWidth"
        assert page.evaluate(width) <= PHONE["width"], "the page is wider than the phone"
        screenshot(page, "phone-repositories")
        open_project_page(page, tenant, "Management")
        assert page.evaluate(width) <= PHONE["width"], "the page is wider than the phone"
    finally:
        context.close()


# Every element that scrolls sideways: the page itself, or a table inside it.
OVERFLOWING = """() => [document.documentElement, ...document.querySelectorAll(".table-wrap")]
  .filter((e) => e.scrollWidth > e.clientWidth)
  .map((e) => `${e.className || e.tagName}: ${e.scrollWidth} > ${e.clientWidth}`)"""


def overflowing(page: Page) -> list[str]:
    """What still scrolls sideways once the page has settled: a table too wide becomes cards
    when its ResizeObserver reports, after the layout that rendered it, which a loaded machine
    may run after the test's first look."""
    with contextlib.suppress(PlaywrightTimeoutError):
        page.wait_for_function(f"() => ({OVERFLOWING})().length === 0", timeout=5000)
    found: list[str] = page.evaluate(OVERFLOWING)
    return found


def test_long_digests_scroll_no_page_sideways(page: Page, tenant: Tenant) -> None:
    """An audit entry naming a digest and a garbage collection run, on a desktop and on a
    phone: the audit log, the run history and the repository's tables fit the width, the
    digest shortened with the whole target in its title."""
    tenant.create_repository("old")
    name = f"{tenant.project}/old/app"
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        for tag in ("kept", "deleted"):
            blob = layer({"file": tag.encode()})
            config = image_config(diff_ids=[diff_id(blob)])
            push_blobs(v2, name, [blob, config])
            manifest = image_manifest(config.descriptor(), [blob.descriptor()])
            push_manifest(v2, name, tag, manifest)
    runs = f"/projects/{tenant.project}/gc/runs"
    with tenant.api() as admin:
        admin.delete(
            f"/projects/{tenant.project}/repositories/old/images/{manifest.digest}",
            params={"image": "app"},
        ).raise_for_status()
        admin.post(f"/projects/{tenant.project}/gc", json={"dry_run": True}).raise_for_status()
    deadline = time.monotonic() + GC_HOLD_SECONDS + 20
    target = f"old/app@{manifest.digest}"
    wait_for_audit(tenant, targets=[target])

    sign_in(page, tenant)
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        open_project_page(page, tenant, "Audit log")
        shown = page.get_by_role("table", name="Audit log").get_by_title(target)
        expect(shown).to_have_text(f"old/app@{manifest.digest[:19]}…")
        assert overflowing(page) == [], f"the audit log at {viewport}"
        # The run (held in its marking phase) went on meanwhile: its history shows it ended.
        with tenant.api() as admin:
            while admin.get(runs).json()["items"][0]["state"] == "running":
                assert time.monotonic() < deadline, "the run never ended"
                time.sleep(0.3)
        open_project_page(page, tenant, "Management")
        expect(page.get_by_role("table", name="Garbage collection runs")).to_contain_text("dry run")
        assert overflowing(page) == [], f"the management page at {viewport}"
        for tab in ("Images", "Tags", "History"):
            page.goto(f"{tenant.console}#/projects/{tenant.project}/repositories/old/{tab.lower()}")
            expect(page.get_by_role("table", name=tab)).to_contain_text("kept")
            assert overflowing(page) == [], f"a repository's {tab} at {viewport}"


def test_access_key_ids_in_the_audit_log_stay_on_one_line(page: Page, tenant: Tenant) -> None:
    """Beside a long detail (a webhook's every event type, which wraps anywhere), each access
    key ID in the Target column is on one line, and the table still fits 1280 px."""
    hooks = f"/projects/{tenant.project}/webhooks"
    with tenant.api() as admin:
        every = [t["type"] for t in admin.get(f"{hooks}/event-types").json()]
        admin.post(hooks, json={"url": "http://127.0.0.1:9/x", "event_types": every})
        ids = []
        for _ in range(2):
            made = admin.post(f"/projects/{tenant.project}/keys", json={"user": tenant.user})
            ids.append(made.raise_for_status().json()["access_key_id"])
    wait_for_audit(tenant, "webhook.create", targets=ids)
    sign_in(page, tenant)
    open_project_page(page, tenant, "Audit log")
    log = page.get_by_role("table", name="Audit log")
    expect(log.get_by_text("webhook.create")).to_be_visible()
    for key_id in ids:
        shown = log.get_by_title(key_id)
        expect(shown).to_have_text(key_id)
        assert shown.evaluate("(e) => e.getClientRects().length") == 1, f"{key_id} is broken"
    assert overflowing(page) == []


# The lines an element's text is laid out in, as the reader sees them: each character goes to the
# line its box is on (a space the line ended at, with no box of its own, to the line before).
LINES_OF = """(element) => {
  const lines = [];
  let top = null;
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const box = [...range.getClientRects()].find((r) => r.width > 0);
      if (box && (top === null || box.top > top + 2)) {
        lines.push("");
        top = box.top;
      }
      if (!lines.length) lines.push("");
      lines[lines.length - 1] += node.data[i];
    }
  }
  return lines;
}"""


def test_audit_details_wrap_between_fields(page: Page, tenant: Tenant) -> None:
    """A long audit detail (a webhook's changed address, every event type and a description)
    reads as JSON broken after a comma or between words at 1280 px: never inside a name, a
    value or between a field's name and its value. Only the address, too long for the column,
    is broken inside."""
    hooks = f"/projects/{tenant.project}/webhooks"
    url = f"http://127.0.0.1:9/hooks/deliver/sha256-{hashlib.sha256(b'hook').hexdigest()}"
    with tenant.api() as admin:
        every = [t["type"] for t in admin.get(f"{hooks}/event-types").json()]
        made = admin.post(hooks, json={"url": "http://127.0.0.1:9/x", "event_types": every[:1]})
        changed = {
            "url": url,
            "event_types": sorted(every),
            "description": "the build farm's deliveries, checked by the release team",
        }
        admin.patch(f"{hooks}/{made.raise_for_status().json()['id']}", json=changed)
    wait_for_audit(tenant, "webhook.update")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Audit log")
    row = page.get_by_role("table", name="Audit log").get_by_role("row")
    entry = row.filter(has_text="webhook.update")
    expect(entry).to_be_visible()
    detail = entry.locator("code.detail")
    # Still the entry's JSON, as a reader may copy it.
    shown = json.loads(detail.text_content() or "")
    assert {key: shown[key] for key in changed} == changed
    screenshot(page, "audit-log")
    lines = detail.evaluate(LINES_OF)
    assert len(lines) > 3, lines
    address = "".join(lines).index(url)
    at = 0
    for line in lines[:-1]:
        at += len(line)
        if line.endswith((" ", "[", "{")):
            assert not line.endswith(": "), f"a field's name apart from its value: {lines}"
        else:
            assert address < at < address + len(url), f"broken inside a word: {lines}"
    assert overflowing(page) == []


# A webhook address of the kind a chat service hands out: no hyphen, a token of 32 letters.
LONG_ADDRESS = (
    "http://127.0.0.1:9/services/T024BE7LD/B08K3Q2L1RX/a9F3kLmZq8RtYvWx2PcD7hJnB4sEuGf0"
    "?channel=releases&format=cloudevents&signature=sha256&retry=daily"
)


def test_a_long_address_in_the_audit_target_wraps_at_its_separators(
    page: Page, tenant: Tenant
) -> None:
    """A webhook's address as an audit target, on a desktop, a narrow window and a phone: its
    lines end after a slash, an `=` or a `?`, or before a `?`, `&` or `.`, never inside a
    word; its cell stays a few lines high; the whole address is its text (to copy) and its
    title (on hover)."""
    with tenant.api() as admin:
        made = admin.post(
            f"/projects/{tenant.project}/webhooks", json={"url": LONG_ADDRESS, "event_types": []}
        )
        made.raise_for_status()
    wait_for_audit(tenant, "webhook.create")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Audit log")
    # At 900 px the log does not fit as a table beside the menu: its rows are cards, the
    # column names left of the values.
    narrow: ViewportSize = {"width": 900, "height": 860}
    for viewport in (DESKTOP, narrow, PHONE):
        page.set_viewport_size(viewport)
        row = page.get_by_role("table", name="Audit log").get_by_role("row")
        entry = row.filter(has_text="webhook.create")
        page.reload()  # the log drawn anew at this width
        target = entry.get_by_title(LONG_ADDRESS)
        expect(target).to_have_text(LONG_ADDRESS)
        lines = target.evaluate(LINES_OF)
        assert "".join(lines) == LONG_ADDRESS
        for line, following in itertools.pairwise(lines):
            assert line.endswith(("/", "=", "?")) or following.startswith(
                ("?", "&", ".", "#", "@")
            ), f"broken inside a word at {viewport}: {lines}"
        assert 2 <= len(lines) <= 7, f"at {viewport}: {lines}"
        if viewport is not PHONE:  # a phone has a narrower column for it
            height = target.evaluate("(e) => e.closest('td').getBoundingClientRect().height")
            assert height <= 8 * 24, f"a target {height} px high at {viewport}"
        screenshot(page, f"audit-long-address-{viewport['width']}")


def test_the_server_admin_badge_stands_apart_from_the_kind(page: Page, tenant: Tenant) -> None:
    admin_name = f"boss-{tenant.project[3:]}"
    tenant.server.create_user(admin_name, "a-password-for-tests", is_admin=True)
    page.goto(f"{tenant.console}#/admin?query={admin_name}")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    row = page.get_by_role("table", name="Users").get_by_role("row").filter(has_text=admin_name)
    badge = row.locator(".badge", has_text="server admin")
    expect(badge).to_be_visible()
    # From the end of the word "person" (the cell's first text) to the badge's edge.
    gap = badge.evaluate(
        """(badge) => {
          const person = document.createTreeWalker(badge.closest("td"), NodeFilter.SHOW_TEXT).nextNode();
          const word = document.createRange();
          word.selectNodeContents(person);
          return badge.getBoundingClientRect().left - word.getBoundingClientRect().right;
        }"""
    )
    assert gap >= 6, f"the badge is {gap} px from the word before it"


def test_the_images_table_fits_a_laptop_screen_beside_the_menu(page: Page, tenant: Tenant) -> None:
    """Images under the repository and on it, tagged and not, at 1280 px: every column shows,
    the Actions too, with no scrolling sideways."""
    tenant.create_repository("web")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        push_image(v2, f"{tenant.project}/web", "latest")
        push_image(v2, f"{tenant.project}/web/api", None)
        for n in range(3):
            push_image(v2, f"{tenant.project}/web/api", f"build-{n}")
    sign_in(page, tenant)
    page.get_by_role("link", name="web", exact=True).click()
    expect(page.get_by_role("table", name="Images").get_by_role("row")).to_have_count(6)
    assert overflowing(page) == []


def test_what_a_page_loaded_is_not_greyed_out_as_loading(page: Page, tenant: Tenant) -> None:
    """The box that said "Loading access keys…" (muted) shows the keys in the text's colour."""
    tenant.server.access_key(tenant.project, tenant.user)
    sign_in(page, tenant)
    for menu, table in (("Access keys", "Access keys"), ("Members", "Members")):
        open_project_page(page, tenant, menu)
        cell = page.get_by_role("table", name=table).locator("td").first
        expect(cell).to_contain_text(re.compile(r"\w"))
        colours = cell.evaluate(
            "(td) => [getComputedStyle(td).color, getComputedStyle(document.body).color]"
        )
        assert colours[0] == colours[1], menu


def test_a_project_name_of_the_longest_length_fits_the_header(page: Page, tenant: Tenant) -> None:
    longest = f"{tenant.project}-".ljust(MAX_PROJECT_LENGTH, "x")
    tenant.server.create_project(longest)
    # The server administrator's header is the fullest: every project, and the admin link.
    page.goto(f"{tenant.console}#/projects/{longest}/repositories")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    switcher = page.get_by_role("combobox", name="Project")
    expect(switcher).to_have_value(longest)
    width = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(width), "the page is wider than a desktop window"
    expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()
    page.set_viewport_size({"width": 375, "height": 812})
    expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()
    assert page.evaluate(width), "the page is wider than a phone"
    # Cut short with an ellipsis, the whole name is its title.
    expect(switcher).to_have_attribute("title", longest)


# ------------------------------------------------------------------ images, settings, keys


def push_platform_image(v2: httpx.Client, name: str, architecture: str, tag: str | None) -> Blob:
    """A one-layer image of `architecture`, pushed under `tag` (or its digest); its manifest."""
    blob = layer({"arch": architecture.encode()})
    config = image_config(architecture=architecture, diff_ids=[diff_id(blob)])
    push_blobs(v2, name, [blob, config])
    manifest = image_manifest(config.descriptor(), [blob.descriptor()])
    push_manifest(v2, name, tag or manifest.digest, manifest)
    return manifest


def push_signature(v2: httpx.Client, name: str, subject: Blob) -> Blob:
    """A (cosign-like) signature referring to `subject`, pushed by digest; its manifest."""
    signature_config = Blob(b"{}", "application/vnd.oci.empty.v1+json")
    payload = random_blob(64)
    push_blobs(v2, name, [signature_config, payload])
    signature = image_manifest(
        signature_config.descriptor(),
        [payload.descriptor()],
        artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json",
        subject=subject.descriptor(),
    )
    push_manifest(v2, name, signature.digest, signature)
    return signature


def push_index_with_signature(tenant: Tenant, repository: str) -> str:
    """A two-platform index tagged `multi`, and a signature referring to it; its digest."""
    key = tenant.server.access_key(tenant.project)
    name = f"{tenant.project}/{repository}"
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        index = linux_index(
            *((push_platform_image(v2, name, arch, None), arch) for arch in ("amd64", "arm64"))
        )
        push_manifest(v2, name, "multi", index)
        push_signature(v2, name, index)
    return index.digest


def test_an_index_shows_its_platforms_and_signature(page: Page, tenant: Tenant) -> None:
    tenant.create_repository("multi")
    digest = push_index_with_signature(tenant, "multi")

    sign_in(page, tenant)
    page.get_by_role("link", name="multi", exact=True).click()
    images = page.get_by_role("table", name="Images")
    row = images.get_by_role("row").filter(has_text=digest[:19])
    expect(row).to_contain_text("linux/amd64")
    expect(row).to_contain_text("linux/arm64")
    expect(row).to_contain_text("multi")
    row.get_by_text("1", exact=True).click()  # the referrers' summary opens the list
    expect(row).to_contain_text("signature")
    signature_digest = row.locator("li code")
    expect(signature_digest).to_have_attribute(
        "title", re.compile(r"application/vnd\.dev\.cosign\.artifact\.sig\.v1\+json")
    )
    expect(images.get_by_role("row")).to_have_count(2)  # the signature is not an image row
    screenshot(page, "repository-index")
    # The row's buttons are named by its digest, as its Scan button is.
    expect(
        row.get_by_role("button", name=f"Copy pull command of {digest[:19]}", exact=True)
    ).to_be_visible()
    expect(row.get_by_role("button", name=f"Delete {digest[:19]}", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name=f"Copy digest {digest[:19]}", exact=True)).to_be_visible()


def image_delete_dialog(page: Page, tenant: Tenant, repository: str, digest: str) -> Locator:
    """The Delete image dialog of the image `digest`, opened from its repository's page."""
    sign_in(page, tenant)
    page.get_by_role("link", name=repository, exact=True).click()
    images = page.get_by_role("table", name="Images")
    images.get_by_role("button", name=f"Delete {digest[:19]}", exact=True).click()
    return page.get_by_role("dialog", name="Delete image")


def test_deleting_an_index_says_its_platforms_and_referrers_go_with_it(
    page: Page, tenant: Tenant
) -> None:
    tenant.create_repository("multi")
    key = tenant.server.access_key(tenant.project)
    name = f"{tenant.project}/multi"
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        index = linux_index(
            *((push_platform_image(v2, name, arch, None), arch) for arch in ("amd64", "arm64"))
        )
        push_manifest(v2, name, "multi", index)
        for _ in range(2):
            push_signature(v2, name, index)

    dialog = image_delete_dialog(page, tenant, "multi", index.digest)
    expect(dialog.get_by_test_id("platforms-going")).to_have_text(
        "2 platform manifests it lists go with it."
    )
    expect(dialog.get_by_test_id("referrers-going")).to_have_text(
        "2 referrers (signatures, SBOMs) go with it: its own and their referrers, and those of "
        "the platform manifests going."
    )
    expect(dialog.get_by_test_id("kept")).to_have_count(0)
    dialog.get_by_role("button", name="Delete").click()
    # They went with it: no untagged platform image nor signature of nothing takes the
    # index's place.
    expect(page.get_by_text("No images in this repository yet")).to_be_visible()


def test_an_image_deleted_meanwhile_is_said_in_the_delete_dialog(
    page: Page, tenant: Tenant
) -> None:
    """The dialog's preview of what goes fails (the image was deleted by the API after the
    page listed it): the dialog says so and offers only Cancel, which leaves the listing
    without the image; no toast says it elsewhere."""
    tenant.create_repository("gone")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        pushed = push_platform_image(v2, f"{tenant.project}/gone", "amd64", "v1")
    sign_in(page, tenant)
    page.get_by_role("link", name="gone", exact=True).click()
    images = page.get_by_role("table", name="Images")
    delete = images.get_by_role("button", name=f"Delete {pushed.digest[:19]}", exact=True)
    expect(delete).to_be_visible()
    with tenant.api() as admin:
        deleted = admin.delete(
            f"/projects/{tenant.project}/repositories/gone/images/{pushed.digest}"
        )
        assert deleted.status_code == 204, deleted.text

    delete.click()
    dialog = page.get_by_role("dialog", name="Delete image")
    expect(dialog.get_by_role("alert")).to_contain_text(f"manifest {pushed.digest} is not in")
    expect(dialog.get_by_role("button", name="Delete", exact=True)).to_have_count(0)
    expect(page.locator("#toasts .toast")).to_have_count(0)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_text("No images in this repository yet")).to_be_visible()
    expect(page.locator("#toasts .toast")).to_have_count(0)


def test_deleting_an_index_counts_only_what_goes_and_says_what_stays(
    page: Page, tenant: Tenant
) -> None:
    """A signature another index lists stays when its subject is deleted, and so does a
    platform manifest with a tag of its own: the dialog counts neither as going, says why
    each stays, and its counts are what the delete removed (the audit entry's)."""
    tenant.create_repository("multi")
    key = tenant.server.access_key(tenant.project)
    name = f"{tenant.project}/multi"
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        amd64, arm64 = (push_platform_image(v2, name, arch, None) for arch in ("amd64", "arm64"))
        tagged = push_platform_image(v2, name, "s390x", "only-s390x")
        index = linux_index((amd64, "amd64"), (arm64, "arm64"), (tagged, "s390x"))
        push_manifest(v2, name, "multi", index)
        push_signature(v2, name, index)
        push_signature(v2, name, amd64)  # a platform's referrer, going with it
        held = push_signature(v2, name, index)
        holder = image_index([held.descriptor()])
        push_manifest(v2, name, "holder", holder)

    dialog = image_delete_dialog(page, tenant, "multi", index.digest)
    expect(dialog.get_by_test_id("platforms-going")).to_have_text(
        "2 platform manifests it lists go with it."
    )
    expect(dialog.get_by_test_id("referrers-going")).to_contain_text(
        "2 referrers (signatures, SBOMs) go with it"
    )
    kept = dialog.get_by_test_id("kept")
    expect(kept.locator("p")).to_have_text("2 manifests it reaches stay:")
    reasons = {
        tagged.digest: f"platform manifest {tagged.digest[:19]}: it has a tag of its own "
        "(only-s390x)",
        held.digest: f"referrer {held.digest[:19]}: another index lists it ({holder.digest[:19]})",
    }
    expect(kept.locator("li")).to_have_text([reasons[d] for d in sorted(reasons)])
    screenshot_dialog(page, dialog, "repository-delete-index")
    dialog.get_by_role("button", name="Delete").click()
    expect(dialog).to_be_hidden()

    with tenant.api() as admin:
        for _ in range(40):  # the server writes audit entries in batches, every 0.25 s
            audit = admin.get(f"/projects/{tenant.project}/audit", params={"per_page": 100})
            entries = [e for e in audit.json()["items"] if e["action"] == "image.delete"]
            if entries:
                break
            time.sleep(0.25)
        [entry] = entries
        assert entry["detail"] == {"platform_manifest_count": 2, "referrer_count": 2}
        left = admin.get(
            f"/projects/{tenant.project}/repositories/multi/images", params={"referrers": "true"}
        ).json()["items"]
    assert {i["digest"] for i in left} == {tagged.digest, holder.digest}
    images = page.get_by_role("table", name="Images")
    expect(images.get_by_role("row")).to_have_count(3)  # the header, the holder, the tagged one


def test_an_index_shows_its_entries_tags_and_no_attestation_platform(
    page: Page, tenant: Tenant
) -> None:
    """Platforms pushed under tags of their own (`docker manifest create`), and a buildx
    provenance attestation listed as platform unknown/unknown."""
    tenant.create_repository("verify")
    name = f"{tenant.project}/verify"
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        built, provenance = (
            push_platform_image(v2, name, arch, f"verify-{arch}") for arch in ("amd64", "unknown")
        )
        index = buildx_index(built, provenance)
        push_manifest(v2, name, "latest", index)

    sign_in(page, tenant)
    page.get_by_role("link", name="verify", exact=True).click()
    images = page.get_by_role("table", name="Images")
    row = images.get_by_role("row").filter(has_text=index.digest[:19])
    expect(row.locator(".badge.tag")).to_have_text(["latest", "verify-amd64", "verify-unknown"])
    expect(row).to_contain_text("entries:")
    expect(row.locator(".badge.platform")).to_have_text(["linux/amd64"])
    expect(images.get_by_role("row")).to_have_count(2)  # the tagged entries are not images


def test_every_command_on_the_repository_page_works_as_shown(
    page: Page,
    tenant: Tenant,
    dockerd: Dockerd,
    test_image: TestImage,
    tmp_path: Path,
) -> None:
    """Each pull command the page shows, copied with its button and run by docker, pulls."""
    tenant.create_repository("web")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "web/frontend:v1")
    sign_in(page, tenant)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("link", name="web", exact=True).click()
    expect(page.get_by_test_id("image-count")).to_have_text("1")

    def copied(button: Locator) -> str:
        button.click()
        return str(page.evaluate("navigator.clipboard.readText()"))

    image = f"{tenant.server.address}/{tenant.project}/web/frontend"
    main = page.locator(".pull")
    commands = [copied(main.get_by_role("button", name=re.compile("^Copy")))]
    assert commands[0] == f"docker pull {image}:v1"  # the image under the repository
    images = page.get_by_role("table", name="Images")
    commands.append(copied(images.get_by_role("button", name=re.compile("^Copy pull"))))
    page.get_by_role("tab", name="Tags").click()
    tags = page.get_by_role("table", name="Tags")
    commands.append(copied(tags.get_by_role("button", name=re.compile("^Copy pull"))))
    assert commands[1].startswith(f"docker pull {image}@sha256:")
    assert commands[2] == f"docker pull {image}:v1"

    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text('{"auths": {}}\n')
    env = {**dockerd.env, "DOCKER_CONFIG": str(config)}
    key_id, secret = tenant.server.access_key(tenant.project)
    login = [dockerd.cli, "login", tenant.server.address, "-u", key_id, "--password-stdin"]
    assert "Login Succeeded" in run(login, env, input=secret).stdout
    for command in commands:
        pulled = run(shlex.split(command), env, check=False)
        assert pulled.returncode == 0, f"{command}: {output(pulled)}"
        run([dockerd.cli, "rmi", "-f", command.split()[-1]], env, check=False)


def test_a_single_platform_image_shows_its_platform_and_times_their_zone(
    page: Page, tenant: Tenant, test_image: TestImage
) -> None:
    tenant.create_repository("single")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "single:v1")
    platform = "{os}/{architecture}".format(**test_image.platform)

    sign_in(page, tenant)
    page.get_by_role("link", name="single", exact=True).click()
    images = page.get_by_role("table", name="Images")
    row = images.locator("tbody tr").first
    expect(row).to_contain_text(platform)
    expect(row).not_to_contain_text("single platform")
    # Every time in a table carries its zone, in the one format the GC panel uses too.
    pushed = row.locator("time")
    expect(pushed).to_have_text(TIME_SHOWN)


def test_a_size_that_rounds_to_a_megabyte_reads_as_one(page: Page, tenant: Tenant) -> None:
    """Sizes have three significant digits as rounded: an image of 999,6xx bytes is 1.00 MB
    (it read "1000 kB"), one of 99,9xx bytes 100 kB (it read "100.0 kB")."""
    tenant.create_repository("sizes")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as v2:
        push_image(v2, f"{tenant.project}/sizes", "mb", layer_size=999_200)
        push_image(v2, f"{tenant.project}/sizes", "kb", layer_size=99_520)
    with tenant.api() as admin:
        listed = admin.get(f"/projects/{tenant.project}/repositories/sizes/images").json()
    sizes = {image["tags"][0]: image["size"] for image in listed["items"]}
    assert 999_500 <= sizes["mb"] < 1_000_000 and 99_950 <= sizes["kb"] < 100_000, sizes

    sign_in(page, tenant)
    page.get_by_role("link", name="sizes", exact=True).click()
    images = page.get_by_role("table", name="Images")
    for tag, shown in (("mb", "1.00 MB"), ("kb", "100 kB")):
        row = images.locator("tbody tr").filter(has=page.locator(".badge.tag", has_text=tag))
        expect(row.locator('td[data-label="Size"]')).to_have_text(shown)


def test_a_description_of_emoji_counts_as_the_server_counts_it(page: Page, tenant: Tenant) -> None:
    # 60 characters the server accepts (at most 100), 120 UTF-16 units in the browser.
    emoji = "\N{WHALE}" * 60
    tenant.create_repository("whales", description=emoji)
    sign_in(page, tenant)
    page.get_by_role("link", name="whales", exact=True).click()
    page.get_by_role("tab", name="Settings").click()
    expect(page.get_by_text("60/100")).to_be_visible()
    page.get_by_label("Public").check()
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Settings saved")).to_be_visible()
    with tenant.api() as admin:
        saved = admin.get(f"/projects/{tenant.project}/repositories/whales").json()
    assert (saved["visibility"], saved["description"]) == ("public", emoji)

    # The Create dialog keeps every one of them.
    open_project_page(page, tenant, "Repositories")
    page.get_by_role("button", name="Create repository").click()
    dialog = page.get_by_role("dialog", name="Create repository")
    dialog.get_by_label("Repository name").fill("more-whales")
    dialog.get_by_label("Description (optional)").fill(emoji)
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("more-whales")
    with tenant.api() as admin:
        created = admin.get(f"/projects/{tenant.project}/repositories/more-whales").json()
    assert created["description"] == emoji


def test_a_description_is_refused_in_the_words_the_server_uses(page: Page, tenant: Tenant) -> None:
    """The Create dialog refuses a line separator before sending it, in the API's words (a
    webhook's description is refused in them too); a non-breaking space is text like any other."""
    sign_in(page, tenant)
    open_project_page(page, tenant, "Repositories")
    # The page's button; an empty project's page has a second one once its list has loaded.
    page.get_by_role("button", name="Create repository").first.click()
    dialog = page.get_by_role("dialog", name="Create repository")
    dialog.get_by_label("Repository name").fill("described")
    dialog.get_by_label("Description (optional)").fill("one\u2028two")
    dialog.get_by_role("button", name="Create").click()
    refusal = dialog.get_by_text(
        "a description is at most 100 characters, with no line breaks or control characters; "
        "this one has '\\u2028'"
    )
    expect(refusal).to_be_visible()
    dialog.get_by_label("Description (optional)").fill("CI\u00a0images")
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("described")
    with tenant.api() as admin:
        created = admin.get(f"/projects/{tenant.project}/repositories/described").json()
    assert created["description"] == "CI\u00a0images"


def test_change_settings_then_delete_the_repository(page: Page, tenant: Tenant) -> None:
    admin = tenant.api()
    tenant.create_repository("tmp")
    sign_in(page, tenant)
    page.get_by_role("link", name="tmp", exact=True).click()
    page.get_by_role("tab", name="Settings").click()
    expect(page.get_by_label("Repository name")).to_be_disabled()
    page.get_by_label("Public").check()
    page.get_by_label("Description (optional)").fill("x" * 120)
    expect(page.get_by_text("120/100")).to_be_visible()
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("at most 100 characters")).to_be_visible()
    page.get_by_label("Description (optional)").fill("Scratch space")
    page.get_by_role("radio", name="Auto").check()
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Settings saved")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Public")
    saved = admin.get(f"/projects/{tenant.project}/repositories/tmp").json()
    assert (saved["visibility"], saved["description"], saved["scan_mode"]) == (
        "public",
        "Scratch space",
        "auto",
    )

    page.get_by_role("button", name="Delete repository").click()
    dialog = page.get_by_role("dialog", name="Delete repository")
    confirm = dialog.get_by_role("button", name="Delete")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type tmp to confirm").fill("tmp")
    confirm.click()
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    expect(page.get_by_text("No repositories yet")).to_be_visible()
    assert admin.get(f"/projects/{tenant.project}/repositories/tmp").status_code == 404


def test_a_dialog_closes_when_the_browser_goes_back(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Access keys")
    page.get_by_role("button", name="Create access key").click()
    expect(page.get_by_role("dialog", name="Create access key")).to_be_visible()
    page.go_back()
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)

    # Nor does the secret stay on screen over another page.
    page.go_forward()
    page.get_by_role("button", name="Create access key").click()
    page.get_by_role("dialog", name="Create access key").get_by_role(
        "button", name="Create"
    ).click()
    expect(page.get_by_role("dialog", name="Access key created")).to_be_visible()
    page.go_back()
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_test_id("new-key-secret")).to_have_count(0)


def test_disable_enable_and_delete_an_access_key(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Access keys")
    page.get_by_role("button", name="Create access key").click()
    page.get_by_role("dialog", name="Create access key").get_by_role(
        "button", name="Create"
    ).click()
    created = page.get_by_role("dialog", name="Access key created")
    key = (
        created.get_by_test_id("new-key-id").inner_text(),
        created.get_by_test_id("new-key-secret").inner_text(),
    )
    created.get_by_role("button", name="Done").click()

    def registry_answers(expected: int) -> int:
        """What the registry answers the key, once it is `expected` (a key's state reaches
        every server within a second) or after 5 s."""
        with httpx.Client(base_url=tenant.server.url, auth=key) as v2:
            for _ in range(25):
                status = v2.get(f"/v2/{tenant.project}/anything/tags/list").status_code
                if status == expected:
                    break
                page.wait_for_timeout(200)
        return status

    assert registry_answers(404) == 404  # signed in: the repository does not exist
    # Each row's buttons name the key they act on (a screen reader lists them out of the row).
    row = page.get_by_role("row").filter(has_text=key[0])
    page.get_by_role("button", name=f"Disable key {key[0]}", exact=True).click()
    expect(row).to_contain_text("Disabled")
    assert registry_answers(401) == 401
    page.get_by_role("button", name=f"Enable key {key[0]}", exact=True).click()
    expect(row).to_contain_text("Active")
    assert registry_answers(404) == 404
    page.get_by_role("button", name=f"Delete key {key[0]}", exact=True).click()
    page.get_by_role("dialog", name="Delete access key").get_by_role(
        "button", name="Delete"
    ).click()
    expect(page.get_by_text("No access keys yet")).to_be_visible()
    assert registry_answers(401) == 401


def test_give_an_outsider_a_role_on_one_repository(page: Page, tenant: Tenant) -> None:
    admin = tenant.api()
    tenant.create_repository("lib")
    outsider = f"guest-{tenant.project[3:]}"
    tenant.server.create_user(outsider, "guest-password")
    sign_in(page, tenant)
    page.get_by_role("link", name="lib", exact=True).click()
    page.get_by_role("tab", name="Permissions").click()
    expect(page.get_by_text("Nobody outside the project has a role")).to_be_visible()
    form = page.get_by_role("form", name="Give a user a role on this repository")
    form.get_by_label("User").fill(outsider)
    form.get_by_label("Role").select_option("viewer")
    form.get_by_role("button", name="Add permission").click()
    grants = page.get_by_role("table", name="Repository permissions")
    expect(grants.get_by_role("row").filter(has_text=outsider)).to_contain_text("Viewer")
    assert (
        admin.get(f"/projects/{tenant.project}/repositories/lib/grants").json()[0]["user"]
        == outsider
    )
    grants.get_by_role("button", name="Remove").click()
    page.get_by_role("dialog", name="Remove permission").get_by_role(
        "button", name="Remove"
    ).click()
    expect(page.get_by_text("Nobody outside the project has a role")).to_be_visible()


def test_the_server_administrator_creates_a_project(page: Page, tenant: Tenant) -> None:
    page.goto(tenant.console)
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    expect(page.get_by_role("link", name=tenant.project)).to_be_visible()
    # The registry each project is reached at, as the server says it (here: path style on the
    # address the browser used, with its port).
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=tenant.project))
    expect(row.get_by_test_id("project-registry")).to_have_text(
        f"{tenant.server.address}/{tenant.project}"
    )
    name = f"new{tenant.project[3:]}"
    page.get_by_role("button", name="Create project").click()
    dialog = page.get_by_role("dialog", name="Create project")
    # A name that cannot be a host name: the server's one readable message, said once.
    dialog.get_by_label("Project name").fill(f"my_{name}")
    dialog.get_by_role("button", name="Create").click()
    said = f"invalid project name 'my_{name}' (it contains '_')"
    expect(dialog.get_by_text(said)).to_have_count(1)
    expect(dialog.locator(".field-error")).to_contain_text("at most 63 characters")
    expect(dialog.locator(".alert")).to_have_count(0)  # not repeated in a box below
    expect(dialog).not_to_contain_text("should match pattern")
    dialog.get_by_label("Project name").fill(name)
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    expect(page.get_by_role("navigation", name="Project")).to_contain_text(name)
    page.get_by_role("link", name="Berth").click()
    expect(page.get_by_role("link", name=name)).to_be_visible()


def test_search_and_sort_the_repositories(
    page: Page, tenant: Tenant, test_image: TestImage
) -> None:
    for name in ("alpha", "beta", "gamma-tools"):
        tenant.create_repository(name)
    assert "Writing manifest" in skopeo_push(tenant, test_image, "beta:v1")
    sign_in(page, tenant)
    table = page.get_by_role("table", name="Repositories")

    def names() -> list[str]:
        return [row.get_attribute("data-key") or "" for row in table.locator("tbody tr").all()]

    expect(table.locator("tbody tr")).to_have_count(3)
    assert names() == ["alpha", "beta", "gamma-tools"]
    # The order is flipped while the page for the sort just chosen is still loading (its
    # project read held back), as a quick user does: the flip keeps the chosen sort.
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route(f"**/api/v1/projects/{tenant.project}", hold)
    page.get_by_label("Sort by").select_option("images")
    page.wait_for_function("location.hash.includes('sort=images')")
    page.get_by_role("button", name="Ascending; switch to descending").click()
    assert held, "the project read was not held"
    for route in held:
        route.continue_()
    page.unroute(f"**/api/v1/projects/{tenant.project}")
    expect(page).to_have_url(re.compile(r"sort=images&order=desc"))
    expect(table.locator("tbody tr").first).to_have_attribute("data-key", "beta")
    page.get_by_label("Search repositories by name").fill("ga")
    expect(table.locator("tbody tr")).to_have_count(1)
    assert names() == ["gamma-tools"]
    page.get_by_label("Search repositories by name").fill("nothing-like-it")
    expect(page.get_by_text("No repository name contains “nothing-like-it”")).to_be_visible()
    page.get_by_role("button", name="Clear the search").click()
    expect(table.locator("tbody tr")).to_have_count(3)


def test_the_audit_log_shows_what_the_project_admin_did(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    page.get_by_role("button", name="Create repository").first.click()
    dialog = page.get_by_role("dialog", name="Create repository")
    dialog.get_by_label("Repository name").fill("audited")
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", level=1, name="audited")).to_be_visible()
    wait_for_audit(tenant, "repository.create")
    open_project_page(page, tenant, "Audit log")
    entry = (
        page.get_by_role("table", name="Audit log")
        .get_by_role("row")
        .filter(has_text="repository.create")
    )
    expect(entry).to_contain_text(tenant.user)
    expect(entry).to_contain_text("audited")


def a_member_with_a_password(tenant: Tenant) -> str:
    """A person (not a service account) who is a member of the tenant's project."""
    person = f"person-{tenant.project[3:]}"
    tenant.server.create_user(person, "person-password")
    tenant.server.add_member(tenant.project, person, "member")
    return person


def create_key_with_defaults(page: Page) -> tuple[Locator, str, str, str]:
    """On the Access keys page, a key created as the dialog proposes it: the Access key
    created dialog, the key's ID and secret, and the docker login command it prints."""
    page.get_by_role("button", name="Create access key").click()
    page.get_by_role("dialog", name="Create access key").get_by_role(
        "button", name="Create"
    ).click()
    created = page.get_by_role("dialog", name="Access key created")
    key_id = created.get_by_test_id("new-key-id").inner_text()
    secret = created.get_by_test_id("new-key-secret").inner_text()
    return created, key_id, secret, created.get_by_test_id("docker-login-command").inner_text()


def create_key_dialog(page: Page, tenant: Tenant) -> Locator:
    """Signed in as the tenant's admin, the open Create access key dialog."""
    sign_in(page, tenant)
    open_project_page(page, tenant, "Access keys")
    page.get_by_role("button", name="Create access key").click()
    return page.get_by_role("dialog", name="Create access key")


def test_a_project_admin_makes_a_key_for_a_service_account(page: Page, tenant: Tenant) -> None:
    robot = f"ci-{tenant.project[3:]}"
    tenant.server.create_user(robot, None, service_account=True)
    tenant.server.add_member(tenant.project, robot, "member")
    person = a_member_with_a_password(tenant)
    dialog = create_key_dialog(page, tenant)
    dialog.get_by_label("For (optional)").fill(person)
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_role("alert").filter(has_text="is not a service account")).to_be_visible()

    dialog.get_by_label("For (optional)").fill(robot)
    dialog.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Access key created")
    expect(created.get_by_test_id("new-key-user")).to_have_text(robot)
    key_id = created.get_by_test_id("new-key-id").inner_text()
    created.get_by_role("button", name="Done").click()
    row = page.get_by_role("row").filter(has_text=key_id)
    expect(row.get_by_role("cell").nth(1)).to_have_text(robot)


def test_an_access_key_error_goes_once_the_input_changes(page: Page, tenant: Tenant) -> None:
    person = a_member_with_a_password(tenant)
    dialog = create_key_dialog(page, tenant)
    owner = dialog.get_by_label("For (optional)")
    owner.fill(person)
    dialog.get_by_role("button", name="Create").click()
    refusal = dialog.get_by_text("is not a service account")
    expect(refusal).to_be_visible()
    owner.fill("")
    expect(refusal).to_have_count(0)


def test_a_key_expiry_date_works_through_that_day_in_utc(page: Page, tenant: Tenant) -> None:
    day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).date().isoformat()
    dialog = create_key_dialog(page, tenant)
    expect(dialog).to_contain_text("works through the end of that day (23:59:59 UTC)")
    dialog.get_by_label("Expires (optional)").fill(day)
    dialog.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Access key created")
    expect(created).to_contain_text(f"until the end of {day} UTC")
    key_id = created.get_by_test_id("new-key-id").inner_text()
    created.get_by_role("button", name="Done").click()

    row = page.get_by_role("table", name="Access keys").get_by_role("row").filter(has_text=key_id)
    expect(row.get_by_role("cell").nth(4)).to_have_text(f"the end of {day} UTC")
    with tenant.api() as admin:
        (stored,) = [
            k
            for k in admin.get(f"/projects/{tenant.project}/keys").json()
            if k["access_key_id"] == key_id
        ]
    expires = dt.datetime.fromisoformat(stored["expires_at"])
    assert expires == dt.datetime.fromisoformat(f"{day}T23:59:59+00:00")


# ------------------------------------------------------------------ a project host over TLS


def test_on_a_project_host_the_commands_name_the_project_host(
    browser: Browser,
    berth: BerthServer,
    projects: Projects,
    dockerd: Dockerd,
    docker_certs: DockerCertsDirs,
    tmp_path: Path,
) -> None:
    """Reached at `https://{project}.{region}.{domain}:PORT/console/` (the clients' TLS server),
    the console gives the seed's `docker login {project}.{region}.{domain}` and it works."""
    user = f"web-{uuid.uuid4().hex[:8]}"
    berth.create_user(user, "host-style-password")
    berth.add_member(projects.main, user, "admin")
    host = f"{project_host(projects.main)}:{berth.port}"
    context = browser.new_context(viewport={"width": 1280, "height": 860}, ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(f"https://{host}/")  # a registry host's root opens the console there
        expect(page.get_by_label("User name")).to_be_focused()
        assert page.url.startswith(f"https://{host}/console/")
        page.keyboard.type(user)
        page.keyboard.press("Tab")
        page.keyboard.type("host-style-password")
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("signed-in-user")).to_contain_text(user)
        page.goto(f"https://{host}/console/#/projects/{projects.main}/keys")
        expect(page.get_by_role("heading", level=1, name="Access keys")).to_be_visible()
        created, key_id, secret, login = create_key_with_defaults(page)
        assert login == f"docker login {host} --username {key_id} --password {secret}"
        # The project's own host: its login is its own, no other project's replaces it.
        expect(created.get_by_test_id("one-login-per-host")).to_have_count(0)
        assert (
            f"--docker-server={host}" in created.get_by_test_id("pull-secret-command").inner_text()
        )
        created.get_by_role("button", name="Done").click()
        page.get_by_role("navigation", name="Project").get_by_role(
            "link", name="Repositories"
        ).click()
        expect(page.get_by_text(f"push to {host}/REPOSITORY[/IMAGE]:TAG")).to_be_visible()
    finally:
        context.close()
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text('{"auths": {}}\n')
    result = run(shlex.split(login), {**dockerd.env, "DOCKER_CONFIG": str(config)})
    assert "Login Succeeded" in result.stdout


def test_on_a_localhost_project_host_docker_cannot_resolve_the_commands_use_localhost(
    page: Page, tenant: Tenant, dockerd: Dockerd, test_image: TestImage, tmp_path: Path
) -> None:
    """Chromium resolves every `*.localhost` name itself; docker asks the system's resolver,
    which here knows no `{project}.local.localhost`. A console opened on that host prints path
    style on `localhost` with the same port instead, and its docker login and push name work
    as printed."""
    port = tenant.server.port
    host = f"{tenant.project}.local.localhost:{port}"
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(f"{tenant.project}.local.localhost", None)
    tenant.create_repository("web")
    page.goto(f"http://{host}/console/")
    page.get_by_label("User name").fill(tenant.user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in-user")).to_contain_text(tenant.user)
    assert page.url.startswith(f"http://{host}/console/")

    page.get_by_role("link", name="web", exact=True).click()
    expect(page.get_by_test_id("push-name")).to_have_text(
        f"localhost:{port}/{tenant.project}/web[/IMAGE]:TAG"
    )
    open_project_page(page, tenant, "Access keys")
    _, key_id, secret, login = create_key_with_defaults(page)
    assert login == f"docker login localhost:{port} --username {key_id} --password {secret}"

    docker_env = {**dockerd.env, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    (tmp_path / "docker-config").mkdir()
    (tmp_path / "docker-config" / "config.json").write_text('{"auths": {}}\n')
    assert "Login Succeeded" in run(shlex.split(login), docker_env).stdout
    reference = f"localhost:{port}/{tenant.project}/web:v1"
    run(
        [dockerd.cli, "import", test_image.rootfs_tar(tmp_path / "rootfs.tar"), reference],
        docker_env,
    )
    assert "v1: digest: sha256:" in run([dockerd.cli, "push", reference], docker_env).stdout
