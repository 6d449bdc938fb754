"""An image pushed before any vulnerability data was imported, through a running server: its
scan checked nothing and says so (API, listing, `berth scan --wait`), the pull policy treats it
as an unscanned image, and the first `berth vulndb import` has it scanned again by the server's
job with no further step. The data is the genuine OSV records of tests/fixtures/osv."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from berth.services.scanning.results import NO_DATA_REASON
from berth.state import Services
from tests.api.conftest import Team, ok, push_layers, services
from tests.oci import OCI_INDEX, OCI_MANIFEST, Blob
from tests.servers import server_fixture
from tests.unit.services.test_scanning_layers import FIXTURES

# Its own server: another module's import would leave no empty database to scan against.
server = server_fixture(
    "scans-without-data",
    backends=("sqlite", "postgres"),
    env={"BERTH_SCAN_CHECK_INTERVAL": "0.3"},
)

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


def pull(team: Team, repository: str, reference: str) -> httpx.Response:
    with team.registry("reader") as registry:
        return registry.get(
            f"/v2/{team.oci_name(repository=repository)}/manifests/{reference}", headers=ACCEPT
        )


def wait_for_state(
    client: httpx.Client, url: str, states: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = ok(client.get(url))
        if result["state"] in states:
            return result  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"not {states} in {timeout}s: {result}"
        time.sleep(0.2)


def test_a_scan_before_the_first_import_is_not_clean_and_the_import_rescans_it(
    team: Team, app_layers: list[Blob], tmp_path: Path
) -> None:
    async def create(s: Services) -> None:
        for mode in ("auto", "manual"):
            await s.repositories.create(team.project, mode, scan_mode=mode, actor="test")

    services(team.server, create)
    image = push_layers(team, "auto", app_layers, "v1")
    unscanned = push_layers(team, "manual", app_layers, "v1")
    url = team.repo_url(f"/images/{image.digest}/scan", repository="auto")

    result = wait_for_state(team["reader"], url, ("done", "no_data", "failed"))
    assert (result["state"], result["counts"], result["findings"]) == ("no_data", None, [])
    assert result["reason"] == NO_DATA_REASON and result["vulndb_state"] == 0
    listing = ok(team["reader"].get(team.repo_url("/images", repository="auto")))
    [listed] = [i for i in listing["items"] if i["digest"] == image.digest]
    assert (listed["scan"]["status"], listed["scan"]["counts"]) == ("no_data", None)
    schemas = ok(team["reader"].get("/openapi.json"))["components"]["schemas"]
    assert "no_data" in schemas["ScanResult"]["properties"]["state"]["enum"]
    assert "no_data" in schemas["ScanSummary"]["properties"]["status"]["enum"]

    # `berth scan --wait` says nothing was checked and exits 1 (a script must not read clean).
    waited = team.server.cli("scan", f"{team.project}/auto@{image.digest}", "--wait", check=False)
    assert waited.returncode == 1, waited.stdout
    assert "checked nothing: the vulnerability database is empty" in " ".join(waited.stderr.split())

    # The policy refusing any finding lets it through, as it does an image never scanned.
    ok(team["project-admin"].put(team.url("/pull-policy"), json={"refuse_severity": "unknown"}))
    assert pull(team, "manual", unscanned.digest).status_code == 200
    assert pull(team, "auto", "v1").status_code == 200

    # The import queues it; the server's job scans it (every 0.3 s here) with no other step.
    folder = tmp_path / "osv"
    folder.mkdir()
    for name in ("PYSEC-2023-74.json", "GHSA-3fx5-fwvr-xrjg.json"):
        (folder / name).write_bytes((FIXTURES / "osv" / name).read_bytes())
    team.server.cli("vulndb", "import", str(folder))
    result = wait_for_state(team["reader"], url, ("done", "failed"))
    assert sorted((f["name"], f["installed"], f["advisory_id"]) for f in result["findings"]) == [
        ("ms", "0.7.0", "GHSA-3fx5-fwvr-xrjg"),
        ("requests", "2.30.0", "PYSEC-2023-74"),
    ]
    assert result["counts"]["high"] == 1 and not result["stale"]
    refused = pull(team, "auto", "v1")
    assert refused.status_code == 403, refused.text
    assert refused.json()["errors"][0]["code"] == "DENIED"
    ok(team["project-admin"].put(team.url("/pull-policy"), json={"refuse_severity": None}))
