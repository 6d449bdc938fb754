"""The console's Policies page in a real browser: set a retention rule, see the dry run's
preview, run it, and read the history; the images are pushed over /v2."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.api.conftest import push_image
from tests.clients.console.conftest import (
    Tenant,
    open_project_page,
    retention_dialog_with,
    screenshot,
    sign_in,
)


def test_retention_rules_dry_run_run_and_history(page: Page, tenant: Tenant) -> None:
    tenant.create_repository("ci")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as registry:
        pushed = [push_image(registry, f"{tenant.project}/ci", f"build-{i}") for i in range(3)]
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    expect(
        page.get_by_text("A rule keeps; an image is kept when any rule keeps it")
    ).to_be_visible()
    expect(page.get_by_text("No retention rules")).to_be_visible()

    page.get_by_role("button", name="Edit rules").click()
    dialog = page.get_by_role("dialog", name="Retention rules")
    dialog.get_by_role("button", name="Add rule").click()
    dialog.get_by_label("Value").fill("1")
    dialog.get_by_label("Repositories").fill("ci")
    dialog.get_by_role("button", name="Save").click()
    rules = page.get_by_role("table", name="Retention rules")
    expect(rules).to_contain_text("Keep the 1 most recently pushed image (in ci)")

    page.get_by_role("button", name="Dry run").click()
    preview = page.get_by_role("table", name="Dry run preview")
    expect(preview.get_by_role("row")).to_have_count(3)  # a header and two images
    expect(preview).to_contain_text("build-0")
    expect(preview).to_contain_text("build-1")
    expect(preview).not_to_contain_text("build-2")
    expect(page.get_by_text("1 kept by a rule, 0 outside every rule")).to_be_visible()
    screenshot(page, "retention-dry-run")

    page.get_by_role("button", name="Run now").click()
    page.get_by_role("dialog", name="Run retention").get_by_role("button", name="Run now").click()
    expect(page.get_by_role("table", name="Deleted by the run")).to_contain_text("build-0")
    history = page.get_by_role("table", name="Retention runs")
    expect(history.get_by_role("row")).to_have_count(3)
    expect(history).to_contain_text("2 deleted")
    expect(history).to_contain_text("2 would be deleted")
    # Each run's state: a run killed mid-run would read Interrupted (tests/api/..._interrupted.py).
    expect(history.get_by_role("columnheader", name="State")).to_be_visible()
    for row in (1, 2):
        expect(history.get_by_role("row").nth(row)).to_contain_text("Succeeded")
    with tenant.api() as admin:
        tags = admin.get(f"/projects/{tenant.project}/repositories/ci/tags").json()
    assert [t["tag"] for t in tags["items"]] == ["build-2"]
    assert pushed[2].digest in {t["digest"] for t in tags["items"]}


def test_a_rule_value_that_is_no_number_is_told_once(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    page.get_by_role("button", name="Edit rules").click()
    dialog = page.get_by_role("dialog", name="Retention rules")
    dialog.get_by_role("button", name="Add rule").click()
    dialog.get_by_label("Value").fill("abc")
    dialog.get_by_role("button", name="Save").click()
    refusal = dialog.get_by_text("rule 1: the number of images is a whole number, not 'abc'")
    expect(refusal).to_have_count(1)
    expect(dialog.get_by_label("Value")).to_have_attribute("aria-invalid", "")
    with tenant.api() as admin:
        assert admin.get(f"/projects/{tenant.project}/retention").json()["rules"] == []


def test_a_rule_value_past_its_bound_is_told_by_its_rule(page: Page, tenant: Tenant) -> None:
    """The API refuses a count over 100000 and days over 36500 naming a field path
    ("rules.0.count: Input should be less than or equal to 100000"); the dialog says which
    rule, in its own words, as it does for a value that is no number."""
    sign_in(page, tenant)
    open_project_page(page, tenant, "Policies")
    page.get_by_role("button", name="Edit rules").click()
    dialog = page.get_by_role("dialog", name="Retention rules")
    dialog.get_by_role("button", name="Add rule").click()
    dialog.get_by_label("Value").fill("200000")
    dialog.get_by_role("button", name="Add rule").click()
    second = dialog.locator(".rule-row").nth(1)
    second.get_by_role("combobox", name="Rule").select_option("pushed_within")
    second.get_by_label("Value").fill("40000")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_have_text(
        "rule 1: the number of images is at most 100000, not '200000'; "
        "rule 2: the number of days is at most 36500, not '40000'"
    )
    expect(dialog).not_to_contain_text("rules.0")
    with tenant.api() as admin:
        assert admin.get(f"/projects/{tenant.project}/retention").json()["rules"] == []


def test_each_remove_button_names_the_rule_it_removes(page: Page, tenant: Tenant) -> None:
    rules = [
        {"keep": "pushed_within", "days": 30, "repositories": "ci"},
        {"keep": "last", "count": 3, "repositories": "app", "tags": "v*"},
    ]
    dialog = retention_dialog_with(page, tenant, rules)
    first = "Remove rule 1: Keep images pushed within 30 days (in ci)"
    second = "Keep the 3 most recently pushed images (in app, images whose tags all match v*)"
    expect(dialog.get_by_role("button", name=first, exact=True)).to_be_visible()
    expect(
        dialog.get_by_role("button", name=f"Remove rule 2: {second}", exact=True)
    ).to_be_visible()

    dialog.get_by_role("button", name=first, exact=True).click()
    # The rule left is now the first, and its button says so.
    remaining = dialog.get_by_role("button", name=f"Remove rule 1: {second}", exact=True)
    expect(remaining).to_be_visible()
    # A new rule is named after its number until its value says what it keeps.
    dialog.get_by_role("button", name="Add rule").click()
    expect(dialog.get_by_role("button", name="Remove rule 2", exact=True)).to_be_visible()
    dialog.get_by_label("Value").last.fill("5")
    named = "Remove rule 2: Keep the 5 most recently pushed images (in *)"
    dialog.get_by_role("button", name=named, exact=True).click()
    expect(dialog.get_by_label("Value")).to_have_count(1)
    dialog.get_by_role("button", name="Save").click()
    table = page.get_by_role("table", name="Retention rules")
    expect(table).to_contain_text(second)
    expect(table).not_to_contain_text("pushed within 30 days")
    with tenant.api() as admin:
        saved = admin.get(f"/projects/{tenant.project}/retention").json()["rules"]
    assert [(r["keep"], r["repositories"]) for r in saved] == [("last", "app")]
