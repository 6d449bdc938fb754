"""The console's Webhooks page in a real browser: add an endpoint (its secret shown once), send
it a test event, and read the outcome in the delivery log; the endpoint is a real HTTP server
on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api.conftest import push_image
from tests.clients.console.conftest import Tenant, open_project_page, screenshot, sign_in
from tests.webhook_receiver import Receiver, receiving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def test_add_a_webhook_and_send_it_a_test_event(
    page: Page, tenant: Tenant, receiver: Receiver
) -> None:
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    expect(page.get_by_text("No webhooks yet")).to_be_visible()
    page.get_by_role("button", name="Add webhook").click()
    dialog = page.get_by_role("dialog", name="Add webhook")
    dialog.get_by_label("Endpoint URL").fill(receiver.url)
    dialog.get_by_label("Description (optional)").fill("ci")
    dialog.get_by_role("button", name="Add").click()
    added = page.get_by_role("dialog", name="Webhook added")
    secret = added.get_by_test_id("new-webhook-secret").inner_text()
    assert len(secret) >= 32
    added.get_by_role("button", name="Done").click()

    row = (
        page.get_by_role("table", name="Webhooks").get_by_role("row").filter(has_text=receiver.url)
    )
    expect(row).to_contain_text("Enabled")
    row.get_by_role("button", name="Send test event").click()
    (received,) = receiver.wait_for(1)
    assert received.event["type"] == "io.berth.webhook.test"
    assert received.signed_with(secret)
    log = page.get_by_role("table", name="Deliveries")
    expect(log.get_by_role("row").filter(has_text="webhook.test")).to_contain_text(
        "Delivered", timeout=15_000
    )
    expect(log).to_contain_text("200")
    assert secret not in page.content()  # shown once, in the dialog only

    # A push shows in the log too once the page is loaded again.
    tenant.create_repository("app")
    key = tenant.server.access_key(tenant.project)
    with httpx.Client(base_url=tenant.server.url, auth=key, timeout=30) as registry:
        push_image(registry, f"{tenant.project}/app", "v1")
    receiver.wait_for(2)
    row.get_by_role("button", name="Delivery log").click()
    expect(log.get_by_role("row").filter(has_text="image.pushed")).to_contain_text("app:v1")
    screenshot(page, "webhooks")

    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("Disabled")
    expect(row.get_by_role("button", name="Send test event")).to_be_disabled()
    hooks = tenant.api().get(f"/projects/{tenant.project}/webhooks").json()
    assert [(h["url"], h["enabled"], h["description"]) for h in hooks] == [
        (receiver.url, False, "ci")
    ]
