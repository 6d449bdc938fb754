"""Where the keyboard focus goes when a row is removed (or its button replaced) in a real
browser: to the same control of the next row, else of the previous one, else to what adds
one; never left on <body>, from where Tab starts again at the top of the page."""

from __future__ import annotations

import uuid

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.api.conftest import push_image
from tests.clients.console.conftest import Tenant, open_project_page, sign_in
from tests.servers import ADMIN_PASSWORD


def focused(page: Page) -> str:
    """What has the focus, as a failure message should say it: its tag and name."""
    return str(
        page.evaluate(
            "(() => { const e = document.activeElement;"
            " return `${e.tagName} ${e.getAttribute('aria-label') || e.textContent}`; })()"
        )
    )


def expect_focus(page: Page, control: Locator) -> None:
    expect(control).to_be_focused()
    assert page.evaluate("document.activeElement !== document.body"), focused(page)


def confirm(page: Page, dialog: str, button: str) -> None:
    page.get_by_role("dialog", name=dialog).get_by_role("button", name=button).click()
    expect(page.get_by_role("dialog")).to_have_count(0)


def test_removing_a_retention_rule_in_the_dialog_keeps_the_focus_in_it(
    page: Page, tenant: Tenant
) -> None:
    rules = [
        {"keep": "last", "count": 1, "repositories": "one"},
        {"keep": "last", "count": 2, "repositories": "two"},
        {"keep": "last", "count": 3, "repositories": "three"},
    ]
    with tenant.api() as admin:
        admin.put(f"/projects/{tenant.project}/retention", json={"rules": rules}).raise_for_status()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    page.get_by_role("button", name="Edit rules").click()
    dialog = page.get_by_role("dialog", name="Retention rules")
    removes = dialog.get_by_role("button", name="Remove rule")

    removes.nth(1).focus()
    page.keyboard.press("Enter")  # the middle rule: the next one's Remove takes the focus
    expect(dialog.get_by_label("Repositories")).to_have_count(2)
    expect_focus(page, dialog.get_by_role("button", name="Remove rule 2: Keep the 3 most"))

    page.keyboard.press("Enter")  # the last rule: the one before it
    expect_focus(page, dialog.get_by_role("button", name="Remove rule 1: Keep the 1 most"))

    page.keyboard.press("Enter")  # none left: Add rule
    expect(dialog.get_by_label("Repositories")).to_have_count(0)
    expect_focus(page, dialog.get_by_role("button", name="Add rule"))
    page.keyboard.press("Enter")  # and it adds one
    expect(dialog.get_by_label("Repositories")).to_have_count(1)

    dialog.get_by_label("Value").fill("4")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("table", name="Retention rules")).to_contain_text("Keep the 4 most")
    expect_focus(page, page.get_by_role("button", name="Edit rules"))


def test_deleting_access_keys_moves_the_focus_to_the_next_then_to_create(
    page: Page, tenant: Tenant
) -> None:
    first, _ = tenant.server.access_key(tenant.project, "admin")
    second, _ = tenant.server.access_key(tenant.project, tenant.user)
    sign_in(page, tenant)
    open_project_page(page, tenant, "Access keys")
    keys = page.get_by_role("table", name="Access keys")
    expect(keys.get_by_role("row")).to_have_count(3)
    ids = [keys.get_by_role("row").nth(n).locator("td").first.inner_text() for n in (1, 2)]
    assert sorted(ids) == sorted([first, second])

    # Disabled: its Enable button, in the same row, has the focus.
    page.get_by_role("button", name=f"Disable key {ids[0]}", exact=True).click()
    expect_focus(page, page.get_by_role("button", name=f"Enable key {ids[0]}", exact=True))

    page.get_by_role("button", name=f"Delete key {ids[0]}", exact=True).click()
    confirm(page, "Delete access key", "Delete")
    expect(keys.get_by_role("row")).to_have_count(2)
    expect_focus(page, page.get_by_role("button", name=f"Delete key {ids[1]}", exact=True))

    page.keyboard.press("Enter")
    confirm(page, "Delete access key", "Delete")
    expect(page.get_by_text("No access keys yet")).to_be_visible()
    expect_focus(page, page.get_by_role("button", name="Create access key"))


def test_removing_members_moves_the_focus_down_the_list_then_to_the_form(
    page: Page, tenant: Tenant
) -> None:
    suffix = tenant.project[3:]
    others = [f"zz{n}-{suffix}" for n in (1, 2)]  # listed after the signed-in admin
    for name in others:
        tenant.server.create_user(name, "a-password-for-tests")
        tenant.server.add_member(tenant.project, name, "reader")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    members = page.get_by_role("table", name="Members")
    rows = {name: members.get_by_role("row").filter(has_text=name) for name in others}

    rows[others[0]].get_by_role("button", name="Remove").click()
    confirm(page, "Remove member", "Remove")
    expect(rows[others[0]]).to_have_count(0)
    expect_focus(page, rows[others[1]].get_by_role("button", name="Remove"))

    page.keyboard.press("Enter")  # the last row: the row before it (the admin's own)
    confirm(page, "Remove member", "Remove")
    expect(rows[others[1]]).to_have_count(0)
    admin_row = members.get_by_role("row").filter(has_text=tenant.user)
    expect_focus(page, admin_row.get_by_role("button", name="Remove"))


def test_removing_a_repository_permission_moves_the_focus_then_to_the_form(
    page: Page, tenant: Tenant
) -> None:
    tenant.create_repository("lib")
    suffix = tenant.project[3:]
    guests = [f"guest{n}-{suffix}" for n in (1, 2)]
    for name in guests:
        tenant.server.create_user(name, "a-password-for-tests")
        tenant.server.grant(tenant.project, "lib", name, "viewer")
    sign_in(page, tenant)
    page.get_by_role("link", name="lib", exact=True).click()
    page.get_by_role("tab", name="Permissions").click()
    grants = page.get_by_role("table", name="Repository permissions")
    first = grants.get_by_role("row").nth(1)
    gone = first.locator("td").first.inner_text()
    first.get_by_role("button", name="Remove").click()
    confirm(page, "Remove permission", "Remove")
    expect(grants.get_by_role("row").filter(has_text=gone)).to_have_count(0)
    expect_focus(page, grants.get_by_role("button", name="Remove"))

    page.keyboard.press("Enter")
    confirm(page, "Remove permission", "Remove")
    expect(page.get_by_text("Nobody outside the project has a role")).to_be_visible()
    form = page.get_by_role("form", name="Give a user a role on this repository")
    expect_focus(page, form.get_by_label("User"))


def test_removing_immutable_tag_rules_moves_the_focus_then_to_the_form(
    page: Page, tenant: Tenant
) -> None:
    with tenant.api() as admin:
        for pattern in ("v*", "release-*"):
            admin.post(
                f"/projects/{tenant.project}/immutable-tag-rules", json={"tag_pattern": pattern}
            ).raise_for_status()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    rules = page.get_by_role("table", name="Immutable tag rules")
    expect(rules.get_by_role("row")).to_have_count(3)
    patterns = [rules.get_by_role("row").nth(n).locator("td").first.inner_text() for n in (1, 2)]

    page.get_by_role("button", name=f"Remove the rule {patterns[0]}", exact=True).click()
    confirm(page, "Remove immutable tag rule", "Remove")
    expect(rules.get_by_role("row")).to_have_count(2)
    expect_focus(page, page.get_by_role("button", name=f"Remove the rule {patterns[1]}"))

    page.keyboard.press("Enter")
    confirm(page, "Remove immutable tag rule", "Remove")
    expect(page.get_by_text("No immutable tag rules")).to_be_visible()
    form = page.get_by_role("form", name="Add an immutable tag rule")
    expect_focus(page, form.get_by_label("Tag pattern"))


def test_deleting_webhooks_moves_the_focus_then_to_add(page: Page, tenant: Tenant) -> None:
    urls = ["http://127.0.0.1:9/first", "http://127.0.0.1:9/second"]
    with tenant.api() as admin:
        for url in urls:
            admin.post(
                f"/projects/{tenant.project}/webhooks", json={"url": url, "sign": False}
            ).raise_for_status()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    hooks = page.get_by_role("table", name="Webhooks")
    expect(hooks.get_by_role("row")).to_have_count(3)
    shown = [hooks.get_by_role("row").nth(n).locator("td code").inner_text() for n in (1, 2)]
    assert sorted(shown) == urls

    page.get_by_role("button", name=f"Disable webhook {shown[0]}", exact=True).click()
    expect_focus(page, page.get_by_role("button", name=f"Enable webhook {shown[0]}", exact=True))

    page.get_by_role("button", name=f"Delete webhook {shown[0]}", exact=True).click()
    confirm(page, "Delete webhook", "Delete")
    expect(hooks.get_by_role("row")).to_have_count(2)
    expect_focus(page, page.get_by_role("button", name=f"Delete webhook {shown[1]}", exact=True))

    page.keyboard.press("Enter")
    confirm(page, "Delete webhook", "Delete")
    expect(page.get_by_text("No webhooks yet")).to_be_visible()
    expect_focus(page, page.get_by_role("button", name="Add webhook"))


def test_deleting_tags_and_restoring_them_keeps_the_focus_in_the_list(
    page: Page, tenant: Tenant
) -> None:
    tenant.create_repository("app")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as registry:
        for tag in ("one", "two"):
            push_image(registry, f"{tenant.project}/app", tag)
    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    page.get_by_role("tab", name="Tags").click()
    tags = page.get_by_role("table", name="Tags")
    expect(tags.get_by_role("row")).to_have_count(3)
    listed = [tags.get_by_role("row").nth(n).locator("td").first.inner_text() for n in (1, 2)]

    tags.get_by_role("button", name=f"Delete {listed[0]}", exact=True).click()
    confirm(page, "Delete tag", "Delete")
    expect(tags.get_by_role("row")).to_have_count(2)
    expect_focus(page, tags.get_by_role("button", name=f"Delete {listed[1]}", exact=True))
    page.keyboard.press("Enter")
    confirm(page, "Delete tag", "Delete")
    expect(page.get_by_text("No tags.")).to_be_visible()
    expect_focus(page, page.get_by_role("tab", name="Tags"))

    page.get_by_role("tab", name="History").click()
    history = page.get_by_role("table", name="History")
    restores = history.get_by_role("button", name="Restore")
    expect(restores).to_have_count(2)
    restored = restores.first.inner_text()
    restores.first.click()
    confirm(page, "Restore tag", "Restore")
    expect(history).to_contain_text("Tag restored")
    expect(restores).to_have_count(1)
    # The other deleted tag's Restore, the one left in the list.
    expect_focus(page, restores.first)
    assert restores.first.inner_text() != restored
    page.keyboard.press("Enter")
    confirm(page, "Restore tag", "Restore")
    expect(restores).to_have_count(0)
    expect_focus(page, page.get_by_role("tab", name="History"))


def test_deleting_users_as_the_server_administrator_moves_the_focus_to_the_next(
    page: Page, tenant: Tenant
) -> None:
    suffix = uuid.uuid4().hex[:8]
    users = [f"leaving{n}-{suffix}" for n in (1, 2)]
    for name in users:
        tenant.server.create_user(name, "a-password-for-tests")
    page.goto(f"{tenant.console}#/admin?query={suffix}")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    listed = page.get_by_role("table", name="Users")
    expect(listed.get_by_role("row")).to_have_count(3)
    page.get_by_role("button", name=f"Delete user {users[0]}", exact=True).click()
    confirm(page, "Delete user", "Delete")
    expect(listed.get_by_role("row")).to_have_count(2)
    expect_focus(page, page.get_by_role("button", name=f"Delete user {users[1]}", exact=True))
    page.keyboard.press("Enter")
    confirm(page, "Delete user", "Delete")
    expect(page.get_by_text(f"No user name contains {suffix}")).to_be_visible()
    expect_focus(page, page.get_by_role("searchbox", name="Search users"))


def test_deleting_an_image_moves_the_focus_to_the_next_images_delete(
    page: Page, tenant: Tenant
) -> None:
    tenant.create_repository("app")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as registry:
        for tag in ("one", "two"):
            push_image(registry, f"{tenant.project}/app", tag)
    sign_in(page, tenant)
    page.get_by_role("link", name="app", exact=True).click()
    images = page.get_by_role("table", name="Images")
    expect(images.get_by_role("row")).to_have_count(3)
    deletes = images.get_by_role("button", name="Delete")
    named = [str(deletes.nth(n).get_attribute("aria-label")) for n in (0, 1)]
    deletes.first.click()
    confirm(page, "Delete image", "Delete")
    expect(images.get_by_role("row")).to_have_count(2)
    expect_focus(page, images.get_by_role("button", name=named[1], exact=True))
    page.keyboard.press("Enter")
    confirm(page, "Delete image", "Delete")
    expect(page.get_by_text("No images in this repository yet")).to_be_visible()
    expect_focus(page, page.get_by_role("tab", name="Images"))
