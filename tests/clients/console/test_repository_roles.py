"""A user with roles on single repositories only: what the console gives them (their
repositories, their own keys), used with a real docker; and whose keys the key dialog offers to
make."""

from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from tests.clients.console.conftest import (
    PASSWORD,
    Tenant,
    hash_path,
    open_project_page,
    sign_in,
)
from tests.clients.console.test_console import skopeo_push
from tests.clients.daemons import Dockerd
from tests.clients.layouts import TestImage
from tests.clients.tools import output, run
from tests.servers import ADMIN_PASSWORD


def a_user_with_repository_roles(tenant: Tenant, roles: dict[str, str]) -> str:
    """A person with these roles on repositories of the tenant's project, and none on it."""
    guest = f"guest-{uuid.uuid4().hex[:8]}"
    tenant.server.create_user(guest, PASSWORD)
    for repository, role in roles.items():
        tenant.server.grant(tenant.project, repository, guest, role)
    return guest


def test_a_user_with_only_repository_roles_pulls_pushes_and_keeps_their_keys(
    page: Page, tenant: Tenant, dockerd: Dockerd, test_image: TestImage, tmp_path: Path
) -> None:
    for name in ("app", "lib", "hidden"):
        tenant.create_repository(name)
    assert "Writing manifest" in skopeo_push(tenant, test_image, "app/frontend:v1")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "hidden:secret-tag")
    guest = a_user_with_repository_roles(tenant, {"app": "member", "lib": "viewer"})
    # A project where they are a reader too: the projects page lists both, so it shows.
    reading = f"read{uuid.uuid4().hex[:8]}"
    tenant.server.create_project(reading)
    tenant.server.add_member(reading, guest, "reader")

    sign_in(page, tenant, guest)
    expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=tenant.project))
    expect(row).to_contain_text("Repository access only")
    expect(row).to_contain_text("2 repositories of yours")
    address = tenant.server.address
    expect(row.get_by_test_id("project-registry")).to_have_text(f"{address}/{tenant.project}")
    reader_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=reading))
    expect(reader_row).to_contain_text("reader")

    row.get_by_role("link", name=tenant.project).click()
    expect(page.get_by_role("heading", level=1, name="Your repositories")).to_be_visible()
    # Only what the API lets them do is offered.
    menu = page.get_by_role("navigation", name="Project")
    expect(menu.get_by_role("link")).to_have_text(["Your repositories", "Access keys"])
    table = page.get_by_role("table", name="Your repositories")
    expect(table.locator("tbody tr")).to_have_count(2)  # not `hidden`
    expect(page.get_by_text("hidden")).to_have_count(0)
    expect(page.get_by_text("secret-tag")).to_have_count(0)
    app = table.get_by_role("row").filter(has_text="Member")
    expect(app.get_by_role("cell").first).to_have_text("app")
    pull = app.get_by_test_id("pull-command").inner_text()
    assert pull == f"docker pull {address}/{tenant.project}/app/frontend:v1"
    push_name = app.get_by_test_id("push-name").inner_text()
    assert push_name == f"{address}/{tenant.project}/app[/IMAGE]:TAG"
    lib = table.get_by_role("row").filter(has_text="Viewer")
    expect(lib.get_by_role("cell")).to_have_text(
        ["lib", "Viewer: pull", "Nothing tagged yet", "Pull only"]
    )

    # Their own key, made and deleted here; its docker login works as printed.
    open_project_page(page, tenant, "Access keys")
    expect(page.get_by_text("No access keys yet")).to_be_visible()
    page.get_by_role("button", name="Create access key").click()
    dialog = page.get_by_role("dialog", name="Create access key")
    expect(dialog.get_by_label("For (optional)")).to_have_count(0)
    dialog.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Access key created")
    expect(created.get_by_test_id("new-key-user")).to_have_text(guest)
    key_id = created.get_by_test_id("new-key-id").inner_text()
    login = created.get_by_test_id("docker-login-command").inner_text()
    created.get_by_role("button", name="Done").click()
    expect(page.get_by_role("row").filter(has_text=key_id)).to_contain_text("Active")

    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text('{"auths": {}}\n')
    env = {**dockerd.env, "DOCKER_CONFIG": str(config)}
    assert "Login Succeeded" in run(shlex.split(login), env).stdout
    pulled = run(shlex.split(pull), env, check=False)
    assert pulled.returncode == 0, output(pulled)
    pushed_as = push_name.replace("[/IMAGE]:TAG", "/from-guest:v2")
    run([dockerd.cli, "tag", pull.split()[-1], pushed_as], env)
    pushed = run([dockerd.cli, "push", pushed_as], env, check=False)
    assert "v2: digest: sha256:" in pushed.stdout, output(pushed)
    refused_as = f"{address}/{tenant.project}/lib:v2"  # a viewer's repository
    run([dockerd.cli, "tag", pull.split()[-1], refused_as], env)
    refused = run([dockerd.cli, "push", refused_as], env, check=False)
    assert refused.returncode != 0, output(refused)
    for name in (pull.split()[-1], pushed_as, refused_as):
        run([dockerd.cli, "rmi", "-f", name], env, check=False)

    # The newest tag is what the page offers to pull now.
    open_project_page(page, tenant, "Your repositories")
    expect(page.get_by_test_id("pull-command").first).to_have_text(f"docker pull {pushed_as}")

    open_project_page(page, tenant, "Access keys")
    page.get_by_role("row").filter(has_text=key_id).get_by_role("button", name="Delete").click()
    page.get_by_role("dialog", name="Delete access key").get_by_role(
        "button", name="Delete"
    ).click()
    expect(page.get_by_text("No access keys yet")).to_be_visible()

    # The project's own pages are not theirs: said so, without asking the API.
    asked: list[str] = []
    page.on("request", lambda request: asked.append(urlsplit(request.url).path))
    page.goto(f"{tenant.console}#/projects/{tenant.project}/management")
    expect(
        page.get_by_role("heading", level=1, name="Not available with repository roles")
    ).to_be_visible()
    assert hash_path(page) == f"/projects/{tenant.project}/management"
    assert not [path for path in asked if path.startswith(f"/api/v1/projects/{tenant.project}")]


def test_a_user_with_repository_roles_in_one_project_lands_on_their_repositories(
    page: Page, tenant: Tenant
) -> None:
    tenant.create_repository("app")
    guest = a_user_with_repository_roles(tenant, {"app": "viewer"})
    sign_in(page, tenant, guest)
    expect(page.get_by_role("heading", level=1, name="Your repositories")).to_be_visible()
    assert hash_path(page) == f"/projects/{tenant.project}/repositories"
    expect(page.get_by_role("table", name="Your repositories")).to_contain_text("app")


def test_the_key_dialog_says_whose_keys_the_caller_may_make(page: Page, tenant: Tenant) -> None:
    """A server administrator makes a key for anyone with a role in the project, a person with
    only a repository role included; a project admin for service accounts."""
    tenant.create_repository("app")
    guest = a_user_with_repository_roles(tenant, {"app": "viewer"})
    page.goto(tenant.console)
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    page.goto(f"{tenant.console}#/projects/{tenant.project}/keys")
    page.get_by_role("button", name="Create access key").click()
    dialog = page.get_by_role("dialog", name="Create access key")
    expect(
        dialog.get_by_text(re.compile("name any user with a role in this project"))
    ).to_be_visible()
    dialog.get_by_label("For (optional)").fill(guest)
    dialog.get_by_role("button", name="Create").click()
    created = page.get_by_role("dialog", name="Access key created")
    expect(created.get_by_test_id("new-key-user")).to_have_text(guest)
    created.get_by_role("button", name="Done").click()

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Access keys")
    page.get_by_role("button", name="Create access key").click()
    dialog = page.get_by_role("dialog", name="Create access key")
    expect(dialog.get_by_text(re.compile("name a service account with a role"))).to_be_visible()
    dialog.get_by_label("For (optional)").fill(guest)
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_role("alert").filter(has_text="is not a service account")).to_be_visible()


def test_roles_given_after_sign_in_show_without_reloading_the_page(
    page: Page, tenant: Tenant
) -> None:
    """Signed in with no role, then given roles: the projects page (the brand link) lists them
    when next opened, and a link to a project the list lacks adds it, without a page reload."""
    guest = a_user_with_repository_roles(tenant, {})
    sign_in(page, tenant, guest)
    expect(page.get_by_text("You are not in any project yet")).to_be_visible()
    brand = page.get_by_role("link", name="Berth")

    tenant.server.add_member(tenant.project, guest, "reader")
    brand.click()  # one project: the page opens it
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    assert hash_path(page) == f"/projects/{tenant.project}/repositories"

    elsewhere, linked = (f"web{uuid.uuid4().hex[:8]}" for _ in range(2))
    for project in (elsewhere, linked):
        tenant.server.create_project(project)
        tenant.server.create_repository(project, "app")
    tenant.server.grant(elsewhere, "app", guest, "viewer")
    brand.click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=tenant.project))
    expect(row).to_contain_text("reader")
    limited = page.get_by_role("row").filter(has=page.get_by_role("link", name=elsewhere))
    expect(limited).to_contain_text("Repository access only")

    tenant.server.add_member(linked, guest, "reader")
    page.evaluate(f"location.hash = '#/projects/{linked}/repositories'")  # a link sent to them
    expect(page.get_by_role("heading", level=1, name="Repositories")).to_be_visible()
    switcher = page.get_by_role("banner").get_by_label("Project")
    expect(switcher).to_have_value(linked)
