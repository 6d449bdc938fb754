"""Users in the console: picking an existing user as a member, changing one's own password,
and the server administrator's users and projects."""

from __future__ import annotations

import re
import shlex
import subprocess

import httpx
from playwright.sync_api import Page, expect

from berth.state import Services
from tests.clients.console.conftest import (
    PASSWORD,
    Tenant,
    hash_path,
    open_project_page,
    screenshot,
    sign_in,
)
from tests.servers import ADMIN_PASSWORD, BERTH, ROOT, BerthServer, server_fixture

NEW_PASSWORD = "a-fresh-console-password"

# A server of its own: it holds a known number of users, past the admin page's 100.
many_users_server = server_fixture("console-many-users", scope="module")


def sign_in_with(page: Page, tenant: Tenant, user: str, password: str) -> None:
    page.goto(tenant.console)
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_a_project_admin_picks_a_member_from_the_users_found(page: Page, tenant: Tenant) -> None:
    suffix = tenant.project[3:]
    tenant.server.create_user(f"ann-x{suffix}", "ann-password")
    tenant.server.create_user(f"andy-x{suffix}", "andy-password")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Members")
    form = page.get_by_role("form", name="Add a member")
    user = form.get_by_role("combobox", name="User")

    # A name that is no user: the API's refusal is shown on the User field.
    user.fill(f"nobody-{suffix}")
    form.get_by_role("button", name="Add member").click()
    expect(form.get_by_role("alert")).to_contain_text(f"user 'nobody-{suffix}' does not exist")

    # A search the API refuses (a line separator pasted in) is said on the field, not shown
    # as a search that matched nobody.
    user.fill("a\u2028n")
    expect(form.get_by_role("alert")).to_contain_text(
        "No users found: a search has no line breaks or control characters; this one has '\\u2028'"
    )

    # Typing part of a name lists the users it matches; picking one fills the field.
    user.fill("")
    user.press_sequentially(f"-x{suffix}"[:6])
    found = page.get_by_role("listbox", name="Matching names")
    expect(found.get_by_role("option")).to_have_count(2)
    screenshot(page, "member-picker", full_page=False)
    found.get_by_role("option", name=f"ann-x{suffix}").click()
    expect(user).to_have_value(f"ann-x{suffix}")
    expect(found).to_be_hidden()
    form.get_by_label("Role").select_option("reader")
    form.get_by_role("button", name="Add member").click()
    row = (
        page.get_by_role("table", name="Members")
        .get_by_role("row")
        .filter(has_text=f"ann-x{suffix}")
    )
    expect(row.get_by_role("combobox")).to_have_value("reader")

    # By keyboard: arrow down to the first match, Enter picks it.
    user.press_sequentially(f"andy-x{suffix}"[:8])
    expect(found.get_by_role("option")).to_have_count(1)
    user.press("ArrowDown")
    user.press("Enter")
    expect(user).to_have_value(f"andy-x{suffix}")


def test_a_user_changes_their_password(page: Page, tenant: Tenant) -> None:
    name = f"pw-{tenant.project[3:]}"
    tenant.server.create_user(name, PASSWORD)
    tenant.server.add_member(tenant.project, name, "member")
    sign_in(page, tenant, name)
    page.get_by_role("button", name="Change password").click()
    dialog = page.get_by_role("dialog", name="Change your password")
    dialog.get_by_label("Current password").fill("not-my-password")
    dialog.get_by_label("New password").fill(NEW_PASSWORD)
    dialog.get_by_label("Repeat the password").fill(NEW_PASSWORD + "x")
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_text("The two passwords differ.")).to_be_visible()
    dialog.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_text("this is not your current password")).to_be_visible()
    dialog.get_by_label("Current password").fill(PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_text("Password changed")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    sign_in_with(page, tenant, name, PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    sign_in_with(page, tenant, name, NEW_PASSWORD)
    expect(page.get_by_test_id("signed-in-user")).to_contain_text(name)


def test_the_server_administrator_manages_users_and_deletes_a_project(
    page: Page, tenant: Tenant
) -> None:
    suffix = tenant.project[3:]
    tenant.create_repository("app")
    doomed = f"gone-{suffix}"
    tenant.server.create_user(doomed, PASSWORD)
    sign_in_with(page, tenant, "admin", ADMIN_PASSWORD)
    page.get_by_role("link", name="Server administration").click()
    expect(page.get_by_role("heading", level=1, name="Server administration")).to_be_visible()
    # The users of this test only: the server's other tests leave more than a page of users.
    search_users(page, suffix)

    # Create a person, who then signs in.
    created = f"new-{suffix}"
    page.get_by_role("button", name="Create user").click()
    dialog = page.get_by_role("dialog", name="Create user")
    dialog.get_by_label("User name").fill(created)
    dialog.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    dialog.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    dialog.get_by_role("button", name="Create user").click()
    users = page.get_by_role("table", name="Users")
    expect(users.get_by_role("row").filter(has_text=created)).to_contain_text("person")

    # Reset the tenant user's password.
    # Row buttons name their user or project (a screen reader lists them out of the row).
    users.get_by_role("button", name=f"Reset password of {tenant.user}", exact=True).click()
    reset = page.get_by_role("dialog", name="Reset password")
    reset.get_by_label("New password").fill(NEW_PASSWORD)
    reset.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    reset.get_by_role("button", name="Set password").click()
    expect(page.get_by_text(f"Password of {tenant.user} set")).to_be_visible()

    # Delete a user.
    users.get_by_role("button", name=f"Delete user {doomed}", exact=True).click()
    page.get_by_role("dialog", name="Delete user").get_by_role("button", name="Delete").click()
    expect(users.get_by_role("row").filter(has_text=doomed)).to_have_count(0)

    # A project with a repository goes once its name is typed.
    projects = page.get_by_role("table", name="Projects")
    projects.get_by_role("button", name=f"Delete project {tenant.project}", exact=True).click()
    confirm = page.get_by_role("dialog", name="Delete project")
    expect(confirm).to_contain_text("1 repository")
    expect(confirm.get_by_role("button", name="Delete")).to_be_disabled()
    confirm.get_by_label(f"Type {tenant.project} to confirm").fill(tenant.project)
    screenshot(page, "delete-project", full_page=False)
    confirm.get_by_role("button", name="Delete").click()
    expect(projects.get_by_role("row").filter(has_text=tenant.project)).to_have_count(0)
    with httpx.Client(
        base_url=f"{tenant.server.url}/api/v1", auth=("admin", ADMIN_PASSWORD), timeout=30
    ) as api:
        assert api.get(f"/projects/{tenant.project}").status_code == 404
        found = api.get("/users", params={"query": suffix}).json()["items"]
        names = {u["name"] for u in found}
    assert created in names and doomed not in names

    audit = page.get_by_role("table", name="Server audit log")
    # Its row among the project's (its creation is audited too).
    deleted = audit.get_by_role("row").filter(has_text="project.delete")
    expect(deleted.filter(has_text=tenant.project)).to_have_count(1)
    expect(audit.get_by_role("row").filter(has_text="user.delete")).to_contain_text(doomed)

    page.get_by_role("button", name="Sign out").click()
    sign_in_with(page, tenant, created, NEW_PASSWORD)
    expect(page.get_by_test_id("signed-in-user")).to_contain_text(created)


def search_users(page: Page, text: str) -> None:
    page.get_by_label("Search users").fill(text)
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(rf"[?&]query={re.escape(text)}(&|$)"))


def test_the_server_administrator_creates_a_service_account_that_gets_a_key(
    page: Page, tenant: Tenant
) -> None:
    robot = f"ci-{tenant.project[3:]}"
    sign_in_with(page, tenant, "admin", ADMIN_PASSWORD)
    page.get_by_role("link", name="Server administration").click()
    search_users(page, robot)  # as above
    page.get_by_role("button", name="Create user").click()
    dialog = page.get_by_role("dialog", name="Create user")
    dialog.get_by_label("User name").fill(robot)
    dialog.get_by_label("Service account").check()
    expect(dialog.get_by_label("Password", exact=True)).to_be_hidden()
    dialog.get_by_role("button", name="Create user").click()
    expect(dialog).to_be_hidden()
    users = page.get_by_role("table", name="Users")
    expect(users.get_by_role("row").filter(has_text=robot)).to_contain_text("service account")

    # A member of a project, it gets an access key there (it has no password to make one).
    tenant.server.add_member(tenant.project, robot, "member")
    page.goto(f"{tenant.console}#/projects/{tenant.project}/keys")
    page.get_by_role("button", name="Create access key").click()
    create = page.get_by_role("dialog", name="Create access key")
    create.get_by_label("For (optional)").fill(robot)
    create.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Access key created")
    expect(created.get_by_test_id("new-key-user")).to_have_text(robot)


def test_a_refused_user_name_is_told_once_and_the_hint_states_the_rule(
    page: Page, tenant: Tenant
) -> None:
    sign_in_with(page, tenant, "admin", ADMIN_PASSWORD)
    page.get_by_role("link", name="Server administration").click()
    page.get_by_role("button", name="Create user").click()
    dialog = page.get_by_role("dialog", name="Create user")
    dialog.get_by_label("User name").fill("Bob!")
    dialog.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    dialog.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    dialog.get_by_role("button", name="Create user").click()
    refusal = dialog.get_by_text("use lowercase letters and digits")
    expect(refusal).to_have_count(1)
    expect(refusal).to_be_visible()
    expect(dialog).to_contain_text(
        "Lowercase letters and digits, with '.', '_', '__' or '-' between them;"
        " at most 64 characters."
    )


def test_the_sign_in_page_names_the_settings_a_lost_admin_password_needs_not_their_values(
    page: Page, console_server: BerthServer
) -> None:
    """Anyone reads the sign-in page: its hint for a lost administrator password names the
    settings `berth user set-password admin` must be given (those of `berth serve`), never this
    server's data directory or database; each command it shows is a real verb."""
    page.goto(f"{console_server.url}/console/")
    hint = page.get_by_text("A lost administrator password")
    for setting in ("BERTH_DATA_DIR", "BERTH_DATABASE_URL", "config file"):
        expect(hint).to_contain_text(setting)
    said = hint.inner_text()
    assert str(console_server.data_dir) not in said
    assert not console_server.database_url or console_server.database_url not in said
    shown = [c for c in hint.locator("code").all_inner_texts() if c.startswith("berth ")]
    assert "berth user set-password admin" in shown
    assert "berth --data-dir DIR user set-password admin" in shown
    for command in shown:
        words = [str(console_server.data_dir) if w == "DIR" else w for w in shlex.split(command)]
        helped = subprocess.run(
            [*BERTH, *words[1:], "--help"],
            env=console_server.env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert helped.returncode == 0, (command, helped.stderr)
        verb = [w for w in words[1:] if w not in ("--data-dir", str(console_server.data_dir))]
        verb = verb[:-1] if verb[-1] == "admin" else verb  # the verb's argument
        assert f"berth.cli.main {' '.join(verb)} [OPTIONS]" in helped.stdout, command


def test_a_refused_search_is_told_where_its_results_would_be(page: Page, tenant: Tenant) -> None:
    """A search for a line separator (pasted into the box) is refused in the server's words in
    the list's place, the page and its search box kept: the repositories' and the users'."""
    refusal = "a search has no line breaks or control characters; this one has '\\u2028'"
    tenant.create_repository("alpha")
    sign_in_with(page, tenant, "admin", ADMIN_PASSWORD)
    page.get_by_role("link", name=tenant.project).click()
    repositories = page.get_by_label("Search repositories by name")
    repositories.fill("al\u2028pha")
    expect(page.get_by_role("alert")).to_have_text(refusal)
    expect(page.get_by_role("heading", level=1)).to_have_text("Repositories")
    repositories.fill("alpha")
    expect(page.get_by_role("table", name="Repositories").locator("tbody tr")).to_have_count(1)
    page.goto(f"{tenant.console}#/admin")
    page.get_by_label("Search users").fill("ad\u2028min")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_have_text(refusal)
    expect(page.get_by_role("table", name="Projects")).to_be_visible()
    page.get_by_label("Search users").fill("admin")
    page.get_by_role("button", name="Search").click()
    users = page.get_by_role("table", name="Users")
    expect(users.locator("tbody tr[data-key='admin']")).to_be_visible()


def test_the_server_administrator_pages_through_users_past_the_first_100(
    page: Page, many_users_server: BerthServer
) -> None:
    """With 102 users (admin and 101 service accounts) the users table shows 100 and says
    how many there are; Next shows the other 2, whose buttons work, and once they are deleted
    the page that held them gives way to the one before."""
    server = many_users_server
    names = [f"svc-{n:03}" for n in range(101)]

    async def create(s: Services) -> None:
        for name in names:
            await s.identity.users.create_user(name, None, service_account=True, actor="test")

    server._services(create)
    page.goto(f"{server.url}/console/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Server administration").click()
    users = page.get_by_role("table", name="Users")
    rows = users.locator("tbody tr")
    expect(rows).to_have_count(100)
    expect(rows.filter(has_text="svc-098")).to_have_count(1)
    expect(rows.filter(has_text="svc-100")).to_have_count(0)
    pages = page.get_by_role("navigation", name="Pages of users")
    expect(pages).to_contain_text("1\u2013100 of 102")

    pages.get_by_role("button", name="Next").click()
    expect(pages).to_contain_text("101\u2013102 of 102")
    expect(rows).to_have_count(2)
    assert "page=2" in hash_path(page)
    page.reload()  # the page is in the address: a reload or a link shows it again
    expect(rows.filter(has_text="svc-100")).to_have_count(1)
    for name, left in (("svc-100", "101\u2013101 of 101"), ("svc-099", None)):
        users.get_by_role("button", name=f"Delete user {name}", exact=True).click()
        page.get_by_role("dialog", name="Delete user").get_by_role("button", name="Delete").click()
        expect(page.get_by_text(f"User {name} deleted")).to_be_visible()
        if left:
            expect(pages).to_contain_text(left)
            expect(rows).to_have_count(1)
    # Page 2 is empty now: page 1 is shown, all 100 users on it, so no pager; it took the
    # empty page's place, so Back goes to the page before, not to it again.
    expect(rows).to_have_count(100)
    expect(pages).to_have_count(0)
    assert "page=2" not in hash_path(page)
    page.go_back()
    expect(page).to_have_url(re.compile(r"#/admin$"))
