"""What the API's OpenAPI document and the docs say of the limit on an endpoint's waiting test
events is the limit the service enforces (`MAX_PENDING_TESTS`), not a copy of its value."""

from __future__ import annotations

import json
import subprocess
import sys

from berth.services.webhook_log import MAX_PENDING_TESTS
from tests.servers import ROOT

QUEUEING_TESTS = {
    "/projects/{project}/webhooks/{webhook_id}/test",
    "/projects/{project}/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
}
# The API's descriptions of those routes with the service's limit set to `limit` first: they
# follow it only if built from it.
DESCRIBED_WITH = """
import json, sys
import berth.services.webhook_log
berth.services.webhook_log.MAX_PENDING_TESTS = int(sys.argv[1])
from berth.api.app import create_api
paths = create_api().openapi()["paths"]
print(json.dumps({path: paths[path]["post"]["description"] for path in json.loads(sys.argv[2])}))
"""


def described_with(limit: int) -> dict[str, str]:
    shown = subprocess.run(
        [sys.executable, "-c", DESCRIBED_WITH, str(limit), json.dumps(sorted(QUEUEING_TESTS))],
        capture_output=True,
        text=True,
        check=True,
    )
    descriptions: dict[str, str] = json.loads(shown.stdout)
    return descriptions


def test_the_api_says_the_limit_the_service_enforces() -> None:
    for limit in (MAX_PENDING_TESTS, MAX_PENDING_TESTS + 2):
        for path, description in described_with(limit).items():
            assert f"{limit} test events waiting to be sent" in description, (path, description)


def test_the_docs_say_the_limit_the_service_enforces() -> None:
    operations = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert f"at most **{MAX_PENDING_TESTS} test events waiting**" in operations
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    assert f"({MAX_PENDING_TESTS} waiting at most, `MAX_PENDING_TESTS`)" in architecture
