"""The console's Webhooks page in a real browser: add an endpoint (its secret shown once), send
it a test event, push with skopeo, and read the outcomes in the delivery log; the endpoint is
a real HTTP server on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.api.conftest import push_image
from tests.clients.console.conftest import Tenant, open_project_page, screenshot, sign_in
from tests.clients.console.test_console import skopeo_push
from tests.clients.layouts import TestImage
from tests.webhook_receiver import Receiver, receiving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def test_add_a_webhook_send_it_a_test_event_then_push_with_skopeo(
    page: Page, tenant: Tenant, receiver: Receiver, test_image: TestImage
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

    # A skopeo push sends exactly one push event, and shows in the log once it is reloaded.
    tenant.create_repository("app")
    skopeo_push(tenant, test_image, "app")
    receiver.wait_for(2)
    time.sleep(1.5)  # a second push event would have come by now
    pushed = receiver.received[1:]
    assert [r.event["type"] for r in pushed] == ["io.berth.image.pushed"]
    assert pushed[0].signed_with(secret)
    data = pushed[0].event["data"]
    assert (data["project"], data["repository"], data["tag"], data["digest"]) == (
        tenant.project,
        "app",
        "latest",
        test_image.manifest_digest,
    )
    row.get_by_role("button", name="Delivery log").click()
    expect(log.get_by_role("row").filter(has_text="image.pushed")).to_contain_text("app:latest")
    screenshot(page, "webhooks")

    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("Disabled")
    expect(row.get_by_role("button", name="Send test event")).to_be_disabled()
    hooks = tenant.api().get(f"/projects/{tenant.project}/webhooks").json()
    assert [(h["url"], h["enabled"], h["description"]) for h in hooks] == [
        (receiver.url, False, "ci")
    ]


def test_a_test_event_goes_past_a_failing_delivery_and_tells_its_outcome(
    page: Page, tenant: Tenant
) -> None:
    """The endpoint refuses every event: the delivery log shows the push waiting behind the
    one being retried (not a next attempt long past), and Send test event is sent at once all
    the same and says the endpoint's answer. The endpoint back, the next test is delivered
    and the queue drains."""
    tenant.create_repository("app")
    for failing in receiving([500] * 1000):
        with tenant.api() as admin:
            hooks = f"/projects/{tenant.project}/webhooks"
            made = admin.post(hooks, json={"url": failing.url}).json()
            key = tenant.server.access_key(tenant.project)
            with httpx.Client(base_url=tenant.server.url, auth=key, timeout=60) as registry:
                for tag in ("one", "two"):
                    push_image(registry, f"{tenant.project}/app", tag)
            failing.wait_for(1)
            # The second push's delivery is made by a later pass than the first's.
            log_path = f"{hooks}/{made['id']}/deliveries"
            deadline = time.monotonic() + 10
            while len(queued := admin.get(log_path).json()["items"]) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            one = min(queued, key=lambda d: int(d["id"]))
        sign_in(page, tenant)
        open_project_page(page, tenant, "Webhooks")
        log = page.get_by_role("table", name="Deliveries")
        expect(log.get_by_role("row").filter(has_text="app:two")).to_contain_text(
            f"After delivery {one['id']}"
        )
        row = (
            page.get_by_role("table", name="Webhooks")
            .get_by_role("row")
            .filter(has_text=failing.url)
        )
        row.get_by_role("button", name="Send test event").click()
        expect(
            page.get_by_text("Test event not accepted: the endpoint answered 500")
        ).to_be_visible(timeout=15_000)
        tested = log.get_by_role("row").filter(has_text="webhook.test")
        expect(tested).to_contain_text("Failed")
        expect(tested).to_contain_text("500")
        assert [r.event["type"] for r in failing.received].count("io.berth.webhook.test") == 1

        failing.statuses = []
        row.get_by_role("button", name="Send test event").click()
        expect(page.get_by_text("Test event delivered: the endpoint answered 200")).to_be_visible(
            timeout=15_000
        )
        failing.wait_for(5)  # one refused, the first test, the second, then one and two
        row.get_by_role("button", name="Delivery log").click()
        expect(log.get_by_role("row").filter(has_text="app:two")).to_contain_text(
            "Delivered", timeout=15_000
        )
    expect(log).not_to_contain_text("After delivery")


TAB_REFUSED = (
    "a description is at most 100 characters, with no line breaks or control characters; "
    "this one has '\\t'"
)


def _add_webhook(page: Page, tenant: Tenant, url: str, description: str) -> Locator:
    """Signed in, the Add webhook dialog sent with `url` and `description`; the dialog."""
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    page.get_by_role("button", name="Add webhook").click()
    dialog = page.get_by_role("dialog", name="Add webhook")
    dialog.get_by_label("Endpoint URL").fill(url)
    dialog.get_by_label("Description (optional)").fill(description)
    dialog.get_by_role("button", name="Add").click()
    return dialog


def test_a_description_with_a_control_character_is_told_once_what_it_may_be(
    page: Page, tenant: Tenant
) -> None:
    dialog = _add_webhook(page, tenant, "http://127.0.0.1:9/berth", "tab\there")
    refusal = dialog.get_by_text(TAB_REFUSED)
    expect(refusal).to_have_count(1)
    expect(refusal).to_be_visible()
    expect(page.get_by_text("No webhooks yet")).to_be_visible()


def test_a_bad_url_and_description_are_both_shown_at_their_fields(
    page: Page, tenant: Tenant
) -> None:
    dialog = _add_webhook(page, tenant, "ftp://127.0.0.1/berth", "tab\there")
    for refusal in (
        "the URL must start with http:// or https://",
        TAB_REFUSED,
    ):
        expect(dialog.get_by_text(refusal)).to_have_count(1)
        expect(dialog.get_by_text(refusal)).to_be_visible()
    expect(page.get_by_text("No webhooks yet")).to_be_visible()


def test_edit_a_webhook_then_give_it_a_new_secret(
    page: Page, tenant: Tenant, receiver: Receiver
) -> None:
    """An endpoint moved to another URL with other events and description, then signed with a
    new secret (shown once): the next delivery goes to the new URL under the new secret."""
    hooks = f"/projects/{tenant.project}/webhooks"
    old_url = "http://127.0.0.1:9/retired"
    with tenant.api() as admin:
        old = {"url": old_url, "event_types": ["io.berth.image.pushed"], "description": "before"}
        created = admin.post(hooks, json=old).raise_for_status().json()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    table = page.get_by_role("table", name="Webhooks")
    table.get_by_role("row").filter(has_text=old_url).get_by_role("button", name="Edit").click()
    dialog = page.get_by_role("dialog", name="Edit webhook")
    url = dialog.get_by_label("Endpoint URL")
    expect(url).to_have_value(old_url)
    expect(dialog.get_by_label("Description (optional)")).to_have_value("before")
    pushed = dialog.get_by_role("checkbox", name="io.berth.image.pushed")
    expect(pushed).to_be_checked()
    url.fill(receiver.url)
    pushed.uncheck()
    dialog.get_by_role("checkbox", name="io.berth.tag.deleted").check()
    dialog.get_by_label("Description (optional)").fill("after")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    row = table.get_by_role("row").filter(has_text=receiver.url)
    expect(row).to_contain_text("after")
    expect(row).to_contain_text("tag.deleted")
    with tenant.api() as admin:
        stored = admin.get(f"{hooks}/{created['id']}").json()
    assert (stored["url"], stored["event_types"], stored["description"]) == (
        receiver.url,
        ["io.berth.tag.deleted"],
        "after",
    )

    row.get_by_role("button", name="New secret").click()
    confirm = page.get_by_role("dialog", name="New signing secret")
    expect(confirm).to_contain_text("signatures under the current one stop")
    confirm.get_by_role("button", name="Replace the secret").click()
    shown = page.get_by_role("dialog", name="New signing secret").filter(has_text="shown only now")
    secret = shown.get_by_test_id("new-webhook-secret").inner_text()
    assert len(secret) >= 32 and secret != created["secret"]
    expect(shown.get_by_role("button", name="Copy signing secret")).to_be_visible()
    shown.get_by_role("button", name="Done").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert secret not in page.content()  # shown once, in the dialog only

    row.get_by_role("button", name="Send test event").click()
    (received,) = receiver.wait_for(1)
    assert received.event["type"] == "io.berth.webhook.test"
    assert received.signed_with(secret)
    assert not received.signed_with(created["secret"])


def test_each_webhook_row_names_the_endpoint_its_buttons_act_on(page: Page, tenant: Tenant) -> None:
    """With two endpoints, a screen reader listing the buttons hears which URL each acts on;
    the Delete named after one endpoint deletes that one only."""
    hooks = f"/projects/{tenant.project}/webhooks"
    kept, doomed = "http://127.0.0.1:9/kept", "http://127.0.0.1:9/doomed"
    with tenant.api() as admin:
        for url in (kept, doomed):
            admin.post(hooks, json={"url": url}).raise_for_status()
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    for url in (kept, doomed):
        for name in (
            f"Send test event to {url}",
            f"Delivery log of {url}",
            f"Edit webhook {url}",
            f"New secret for {url}",
            f"Disable webhook {url}",
            f"Delete webhook {url}",
        ):
            expect(page.get_by_role("button", name=name, exact=True)).to_have_count(1)
    page.get_by_role("button", name=f"Delete webhook {doomed}", exact=True).click()
    dialog = page.get_by_role("dialog", name="Delete webhook")
    expect(dialog).to_contain_text(doomed)
    dialog.get_by_role("button", name="Delete").click()
    table = page.get_by_role("table", name="Webhooks")
    expect(table.get_by_role("row").filter(has_text=doomed)).to_have_count(0)
    expect(table.get_by_role("row").filter(has_text=kept)).to_have_count(1)
    assert [h["url"] for h in tenant.api().get(hooks).json()] == [kept]


def test_redeliver_a_delivery_from_the_log(page: Page, tenant: Tenant, receiver: Receiver) -> None:
    """A delivered event sent again with the delivery log's Redeliver button: the receiver
    gets the same body once more, and the log lists the new delivery as resending the first."""
    hooks = f"/projects/{tenant.project}/webhooks"
    with tenant.api() as admin:
        made = admin.post(hooks, json={"url": receiver.url}).raise_for_status().json()
        admin.post(f"{hooks}/{made['id']}/test").raise_for_status()
        (first,) = receiver.wait_for(1)
        log_path = f"{hooks}/{made['id']}/deliveries"
        deadline = time.monotonic() + 10
        while admin.get(log_path).json()["items"][0]["state"] != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (sent,) = admin.get(log_path).json()["items"]
    sign_in(page, tenant)
    open_project_page(page, tenant, "Webhooks")
    log = page.get_by_role("table", name="Deliveries")
    row = log.get_by_role("row").filter(has_text="webhook.test")
    expect(row).to_contain_text("Delivered")
    row.get_by_role("button", name="Redeliver").click()
    expect(page.get_by_text(f"Delivery {sent['id']} queued again as delivery")).to_be_visible()
    again = receiver.wait_for(2)[1]
    assert again.body == first.body
    resent = log.get_by_role("row").filter(has_text=f"Resends delivery {sent['id']}")
    expect(resent).to_have_count(1)
    page.get_by_role("table", name="Webhooks").get_by_role("button", name="Delivery log").click()
    expect(resent).to_contain_text("Delivered", timeout=15_000)


def test_a_url_the_project_has_is_refused_at_the_url_field(page: Page, tenant: Tenant) -> None:
    with tenant.api() as admin:
        admin.post(
            f"/projects/{tenant.project}/webhooks", json={"url": "http://127.0.0.1:9/berth"}
        ).raise_for_status()
    dialog = _add_webhook(page, tenant, "http://127.0.0.1:9/berth", "again")
    url = dialog.get_by_label("Endpoint URL")
    expect(url).to_have_attribute("aria-invalid", "")
    told = dialog.get_by_text("has a webhook to this URL already: webhook")
    expect(told).to_have_count(1)
    expect(told).to_contain_text("a second would get every event twice")
    with tenant.api() as admin:
        assert len(admin.get(f"/projects/{tenant.project}/webhooks").json()) == 1
