"""Where the keyboard focus goes when the page is drawn again in a real browser: when a row is
removed (or its button replaced), to the same control of the next row, else of the previous
one, else to what adds one; when a row is added, to its first control; after a form is saved
or a dialog closes, to the button pressed or the one that opened it. Never left on <body>,
from where Tab starts again at the top of the page."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
from playwright.sync_api import Locator, Page, expect

from tests.api.conftest import push_image
from tests.clients.console.conftest import Tenant, open_project_page, retention_dialog_with, sign_in
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


def disable_then_delete_both(
    page: Page,
    table: Locator,
    kind: tuple[str, str],
    names: list[str],
    emptied: tuple[str, str],
) -> None:
    """In a list of two rows named `names` (buttons "Disable|Enable|Delete {noun} {name}", a
    confirmation dialog titled `title`, `kind` being (noun, title)): disabling the first puts the focus on its Enable
    button, in the same row; deleting it, on the next row's Delete; deleting that (Enter on
    the focused button), on what adds one, beside the empty list's text."""
    noun, title = kind
    empty_text, add_button = emptied
    page.get_by_role("button", name=f"Disable {noun} {names[0]}", exact=True).click()
    expect_focus(page, page.get_by_role("button", name=f"Enable {noun} {names[0]}", exact=True))

    page.get_by_role("button", name=f"Delete {noun} {names[0]}", exact=True).click()
    confirm(page, title, "Delete")
    expect(table.get_by_role("row")).to_have_count(2)
    expect_focus(page, page.get_by_role("button", name=f"Delete {noun} {names[1]}", exact=True))

    page.keyboard.press("Enter")
    confirm(page, title, "Delete")
    expect(page.get_by_text(empty_text)).to_be_visible()
    expect_focus(page, page.get_by_role("button", name=add_button))


def until_redrawn(page: Page) -> Callable[[], None]:
    """A function that waits until the page shown now is drawn again (a new <main>): until
    then, the control pressed still has the focus, whether or not it gets it back after."""
    main = page.locator("main").element_handle()

    def wait() -> None:
        page.wait_for_function("(main) => !main.isConnected", arg=main)

    return wait


def press(page: Page, control: Locator) -> None:
    """`control` pressed from the keyboard."""
    control.focus()
    page.keyboard.press("Enter")


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
    dialog = retention_dialog_with(page, tenant, rules)
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

    disable_then_delete_both(
        page, keys, ("key", "Delete access key"), ids, ("No access keys yet", "Create access key")
    )


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

    disable_then_delete_both(
        page, hooks, ("webhook", "Delete webhook"), shown, ("No webhooks yet", "Add webhook")
    )


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


def test_saving_the_pull_policy_keeps_the_focus_on_save(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    form = page.get_by_role("form", name="Pull policy")
    form.get_by_label("Refuse pulls of images with").select_option("high")
    redrawn = until_redrawn(page)
    press(page, form.get_by_role("button", name="Save"))
    expect(page.get_by_text("Pulls of vulnerable images are refused")).to_be_visible()
    redrawn()
    expect(form.get_by_label("Refuse pulls of images with")).to_have_value("high")
    expect_focus(page, form.get_by_role("button", name="Save"))


def test_saving_repository_settings_keeps_the_focus_on_save(page: Page, tenant: Tenant) -> None:
    tenant.create_repository("lib")
    sign_in(page, tenant)
    page.get_by_role("link", name="lib", exact=True).click()
    page.get_by_role("tab", name="Settings").click()
    page.get_by_label("Description").fill("Shared libraries")
    redrawn = until_redrawn(page)
    press(page, page.get_by_role("button", name="Save changes"))
    expect(page.get_by_text("Settings saved")).to_be_visible()
    redrawn()
    expect(page.locator("main .page-head")).to_contain_text("Shared libraries")
    expect_focus(page, page.get_by_role("button", name="Save changes"))


def test_adding_a_member_moves_the_focus_to_their_row(page: Page, tenant: Tenant) -> None:
    newcomer = f"newcomer-{tenant.project[3:]}"
    tenant.server.create_user(newcomer, "a-password-for-tests")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    form = page.get_by_role("form", name="Add a member")
    form.get_by_label("User").fill(newcomer)
    press(page, form.get_by_role("button", name="Add member"))
    expect(page.get_by_text(f"{newcomer} added as member")).to_be_visible()
    # Its first control: the role it was given, to change.
    role = page.get_by_role("table", name="Members").get_by_label(f"Role of {newcomer}")
    expect(role).to_have_value("member")
    expect_focus(page, role)


def test_adding_a_repository_permission_moves_the_focus_to_its_row(
    page: Page, tenant: Tenant
) -> None:
    tenant.create_repository("lib")
    guest = f"guest-{tenant.project[3:]}"
    tenant.server.create_user(guest, "a-password-for-tests")
    sign_in(page, tenant)
    page.get_by_role("link", name="lib", exact=True).click()
    page.get_by_role("tab", name="Permissions").click()
    form = page.get_by_role("form", name="Give a user a role on this repository")
    form.get_by_label("User").fill(guest)
    press(page, form.get_by_role("button", name="Add permission"))
    row = page.get_by_role("table", name="Repository permissions").get_by_role("row")
    expect(row.filter(has_text=guest)).to_contain_text("Viewer (pull)")
    expect_focus(page, row.filter(has_text=guest).get_by_role("button", name="Remove"))


def test_creating_an_access_key_gives_the_focus_back_to_create(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Access keys")
    create = page.get_by_role("button", name="Create access key")
    press(page, create)
    page.get_by_role("dialog", name="Create access key").get_by_role(
        "button", name="Create"
    ).click()
    created = page.get_by_role("dialog", name="Access key created")
    key_id = created.get_by_test_id("new-key-id").inner_text()
    redrawn = until_redrawn(page)
    confirm(page, "Access key created", "Done")
    redrawn()
    expect(page.get_by_role("table", name="Access keys")).to_contain_text(key_id)
    expect_focus(page, create)


def webhooks_page(page: Page, tenant: Tenant, url: str) -> None:
    """The Webhooks page, signed in, with one webhook (not signed) to `url`."""
    with tenant.api() as admin:
        hooks = f"/projects/{tenant.project}/webhooks"
        admin.post(hooks, json={"url": url, "sign": False}).raise_for_status()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")


def test_adding_a_webhook_moves_the_focus_to_its_row(page: Page, tenant: Tenant) -> None:
    url = "http://127.0.0.1:9/added"
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    press(page, page.get_by_role("button", name="Add webhook"))
    dialog = page.get_by_role("dialog", name="Add webhook")
    dialog.get_by_label("Endpoint URL").fill(url)
    dialog.get_by_role("button", name="Add").click()
    confirm(page, "Webhook added", "Done")
    expect(page.get_by_role("table", name="Webhooks")).to_contain_text(url)
    expect_focus(page, page.get_by_role("button", name=f"Send test event to {url}"))


def test_sending_a_webhook_test_event_keeps_the_focus_on_its_button(
    page: Page, tenant: Tenant
) -> None:
    url = "http://127.0.0.1:9/refused"  # nothing listens: the test fails at once
    webhooks_page(page, tenant, url)
    send = page.get_by_role("button", name=f"Send test event to {url}")
    redrawn = until_redrawn(page)
    press(page, send)
    expect(page.get_by_text("Test event not accepted")).to_be_visible(timeout=15_000)
    redrawn()
    expect(page.get_by_role("table", name="Deliveries")).to_contain_text("Failed")
    expect_focus(page, send)


def test_redelivering_keeps_the_focus_on_redeliver(page: Page, tenant: Tenant) -> None:
    url = "http://127.0.0.1:9/refused"
    with tenant.api() as admin:
        hooks = f"/projects/{tenant.project}/webhooks"
        made = admin.post(hooks, json={"url": url, "sign": False}).raise_for_status().json()
        tested = admin.post(f"{hooks}/{made['id']}/test").raise_for_status().json()
        deadline = time.monotonic() + 10
        while (
            admin.get(f"{hooks}/{made['id']}/deliveries").json()["items"][0]["state"] == "pending"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    log = page.get_by_role("table", name="Deliveries")
    first = log.get_by_role("row").filter(has_text="webhook.test").filter(has_not_text="Resends")
    redrawn = until_redrawn(page)
    press(page, first.get_by_role("button", name="Redeliver"))
    expect(page.get_by_text(f"Delivery {tested['id']} queued again")).to_be_visible()
    redrawn()
    expect(log.get_by_text(f"Resends delivery {tested['id']}")).to_have_count(1)
    expect_focus(page, first.get_by_role("button", name="Redeliver"))


def test_editing_a_webhook_gives_the_focus_back_to_edit(page: Page, tenant: Tenant) -> None:
    url = "http://127.0.0.1:9/edited"
    webhooks_page(page, tenant, url)
    edit = page.get_by_role("button", name=f"Edit webhook {url}")
    press(page, edit)
    dialog = page.get_by_role("dialog", name="Edit webhook")
    dialog.get_by_label("Description (optional)").fill("deploys")
    redrawn = until_redrawn(page)
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    redrawn()
    expect(page.get_by_role("table", name="Webhooks")).to_contain_text("deploys")
    expect_focus(page, edit)


def test_a_new_webhook_secret_gives_the_focus_back_to_its_button(
    page: Page, tenant: Tenant
) -> None:
    url = "http://127.0.0.1:9/signed"
    webhooks_page(page, tenant, url)  # not signed: Add secret, then New secret
    press(page, page.get_by_role("button", name=f"Add secret for {url}"))
    page.get_by_role("dialog", name="Sign deliveries").get_by_role(
        "button", name="Make a secret"
    ).click()
    expect(page.get_by_test_id("new-webhook-secret")).to_be_visible()
    redrawn = until_redrawn(page)
    confirm(page, "New signing secret", "Done")
    redrawn()
    expect_focus(page, page.get_by_role("button", name=f"New secret for {url}"))
