"""Management and Monitoring say how often storage usage is collected as the server does it
(setting storage_collect_interval), not as the default does."""

from __future__ import annotations

import uuid

import httpx
from playwright.sync_api import Page, expect

from tests.api.conftest import push_image
from tests.clients.console.conftest import PASSWORD, Tenant, open_project_page, sign_in
from tests.servers import BerthServer, server_fixture

often_collecting_server = server_fixture(
    "console-often-collecting", scope="module", env={"BERTH_STORAGE_COLLECT_INTERVAL": "90"}
)


def test_the_storage_collection_interval_is_the_servers(
    page: Page, often_collecting_server: BerthServer
) -> None:
    server = often_collecting_server
    suffix = uuid.uuid4().hex[:8]
    tenant = Tenant(server, f"usage{suffix}", f"admin-{suffix}", "admin")
    server.create_project(tenant.project)
    server.create_user(tenant.user, PASSWORD)
    server.add_member(tenant.project, tenant.user, "admin")
    tenant.create_repository("app")
    with httpx.Client(base_url=server.url, auth=server.access_key(tenant.project)) as registry:
        push_image(registry, f"{tenant.project}/app", "v1")
    sign_in(page, tenant)

    open_project_page(page, tenant, "Management")
    expect(page.get_by_test_id("management-summary")).to_contain_text("collected every 90 seconds")
    open_project_page(page, tenant, "Monitoring")
    expect(page.get_by_test_id("storage-used")).to_be_visible()
    note = page.get_by_test_id("storage-note")
    expect(note).to_have_text(
        "For storage usage, it takes up to 90 seconds for actual usage to be collected and "
        "reflected (Collect now, under Management, measures it at once)."
    )
