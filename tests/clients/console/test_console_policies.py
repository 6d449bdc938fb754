"""The console's Policies page in a real browser: immutable tag rules added and removed by a
project admin, met when a tag is deleted from the repository page, and only shown to a reader."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.clients.console.conftest import Tenant, open_project_page, screenshot, sign_in
from tests.clients.console.test_console import skopeo_push
from tests.clients.layouts import TestImage


def test_an_admin_adds_a_rule_that_holds_a_tag_then_removes_it(
    page: Page, tenant: Tenant, test_image: TestImage
) -> None:
    tenant.create_repository("app")
    assert "Writing manifest" in skopeo_push(tenant, test_image, "app:v1")
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    section = page.get_by_role("region", name="Immutable tags")
    expect(section).to_contain_text("cannot be moved to another image or deleted by any client")
    expect(section).to_contain_text("retention never deletes its image")
    expect(section.get_by_text("No immutable tag rules")).to_be_visible()

    form = section.get_by_role("form", name="Add an immutable tag rule")
    form.get_by_label("Tag pattern").fill("v 1")
    form.get_by_role("button", name="Add rule").click()
    expect(form).to_contain_text("invalid tag pattern 'v 1'")
    form.get_by_label("Tag pattern").fill("v*")
    form.get_by_label("Repository pattern (optional)").fill("app")
    form.get_by_role("button", name="Add rule").click()
    rules = section.get_by_role("table", name="Immutable tag rules")
    expect(rules.get_by_role("row").filter(has_text="v*")).to_contain_text("app")
    screenshot(page, "policies")

    page.get_by_role("navigation", name="Project").get_by_role("link", name="Repositories").click()
    page.get_by_role("link", name="app", exact=True).click()
    page.get_by_role("tab", name="Tags").click()
    tags = page.get_by_role("table", name="Tags")
    # The rule's tag offers no Delete, saying which rule holds it (the server refuses it too).
    delete = tags.get_by_role("row").filter(has_text="v1").get_by_role("button", name="Delete")
    expect(delete).to_be_disabled()
    expect(delete).to_have_attribute(
        "title",
        "The immutable tag rule 'v*' (repositories 'app') protects this tag: it cannot be "
        "deleted while the rule stays.",
    )
    expect(tags).to_contain_text("v1")

    open_project_page(page, tenant, "Policies")
    section.get_by_role("button", name="Remove the rule v* in repositories app").click()
    page.get_by_role("dialog", name="Remove immutable tag rule").get_by_role(
        "button", name="Remove"
    ).click()
    expect(section.get_by_text("No immutable tag rules")).to_be_visible()
    with tenant.api() as admin:
        assert admin.get(f"/projects/{tenant.project}/immutable-tag-rules").json() == []


def test_a_reader_sees_the_rules_and_no_controls(
    page: Page, tenant_factory: Callable[[str], Tenant]
) -> None:
    reader = tenant_factory("reader")
    with reader.api() as admin:
        admin.post(
            f"/projects/{reader.project}/immutable-tag-rules", json={"tag_pattern": "release-*"}
        ).raise_for_status()
    sign_in(page, reader)
    open_project_page(page, reader, "Policies")
    rules = page.get_by_role("table", name="Immutable tag rules")
    expect(rules.get_by_role("row").filter(has_text="release-*")).to_contain_text("All")
    expect(page.get_by_role("button", name="Add rule")).to_have_count(0)
    expect(page.get_by_role("button", name="Remove the rule release-*")).to_have_count(0)
    pull_policy = page.get_by_role("region", name="Vulnerable images")
    expect(pull_policy).to_contain_text("Off: pulls are not checked against scans")
    expect(pull_policy).to_contain_text("Project admins change it.")
    expect(pull_policy.get_by_role("button", name="Save")).to_have_count(0)


def test_an_admin_turns_the_pull_policy_on_and_off(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    section = page.get_by_role("region", name="Vulnerable images")
    expect(section).to_contain_text("Images not scanned yet, being scanned, or whose scan failed")
    choice = section.get_by_label("Refuse pulls of images with")
    choice.select_option(label="High or critical findings")
    section.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Pulls of vulnerable images are refused")).to_be_visible()
    with tenant.api() as admin:
        policy = admin.get(f"/projects/{tenant.project}/pull-policy").json()
        assert policy == {"refuse_severity": "high"}
        entries = admin.get(f"/projects/{tenant.project}/audit").json()["items"]
        assert any(e["action"] == "project.pull_policy" for e in entries)
    page.reload()
    expect(section.get_by_label("Refuse pulls of images with")).to_have_value("high")
    section.get_by_label("Refuse pulls of images with").select_option(value="")
    section.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Pull policy turned off")).to_be_visible()
    with tenant.api() as admin:
        assert admin.get(f"/projects/{tenant.project}/pull-policy").json() == {
            "refuse_severity": None
        }
