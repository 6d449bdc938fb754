"""What a scan's results do through a running server (one server for both, to keep the suite
short): a project's pull policy refuses pulls of an image whose scan found vulnerabilities at or
above its severity with DENIED, naming the count and an API address that shows them; an image's
SBOM is attached on request as an OCI referrer that the referrers API lists and clients fetch.
The images hold real packages and the vulnerability data is the genuine OSV records of
tests/fixtures/osv: ms 0.7.0 has one high finding (GHSA-3fx5-fwvr-xrjg, CVSS 7.5), mixin-deep
1.3.1 one without severity (GHSA-fhjf-83wg-r2j9)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from berth.metadata.tables import manifests, scans
from berth.services.gc.restrictions import impose_restriction, lift_restriction
from berth.services.vulndb import VulnDb
from berth.state import Services
from tests.api.conftest import Team, assert_problem, ok, services
from tests.oci import (
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Blob,
    image_config,
    image_index,
    image_manifest,
    push_blob,
    push_manifest,
)
from tests.servers import BerthServer, server_fixture
from tests.unit.services.test_scanning_layers import FIXTURES, layer, npm_package, pip_installed
from tests.webhook_receiver import receiving

server = server_fixture(
    "pullpolicy",
    backends=("sqlite", "postgres"),
    env={"BERTH_SCAN_CHECK_INTERVAL": "0.3", "BERTH_WEBHOOK_ALLOW_PRIVATE": "true"},
)

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
# Imported by the test of a rescan after new data, not before.
LATE_RECORD = "PYSEC-2023-74.json"


@pytest.fixture(scope="module", autouse=True)
def records(server: BerthServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    osv = tmp_path_factory.mktemp("osv")
    for record in (FIXTURES / "osv").glob("*.json"):
        if record.name != LATE_RECORD:
            shutil.copy(record, osv)

    async def load(s: Services) -> None:
        assert (await VulnDb(s.db).import_path(osv, "test")).refused == []

    services(server, load)


@pytest.fixture(scope="module")
def npm_layer() -> Blob:
    return Blob(
        layer(
            npm_package("ms-0.7.0.tgz", "ms") + npm_package("mixin-deep-1.3.1.tgz", "mixin-deep")
        ),
        OCI_LAYER_GZIP,
    )


def push(team: Team, layers: list[Blob], tag: str, image: str = "") -> Blob:
    registry, name = team.registry("member"), team.oci_name(image)
    # Each team's images are its own digests: SBOMs are kept per digest, server-wide.
    config = image_config(author=team.project)
    for blob in (config, *layers):
        push_blob(registry, name, blob)
    manifest = image_manifest(config.descriptor(), [b.descriptor() for b in layers])
    push_manifest(registry, name, tag, manifest)
    return manifest


def scan(team: Team, digest: str, image: str = "", timeout: float = 60) -> dict[str, Any]:
    params = {"image": image} if image else {}
    url = team.repo_url(f"/images/{digest}/scan")
    ok(team["member"].post(url, params=params), 202)
    deadline = time.monotonic() + timeout
    while True:
        result = ok(team["reader"].get(url, params=params))
        if result["state"] in ("done", "failed"):
            return result  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"not scanned in {timeout}s: {result}"
        time.sleep(0.2)


def set_policy(team: Team, severity: str | None, actor: str = "project-admin") -> httpx.Response:
    return team[actor].put(team.url("/pull-policy"), json={"refuse_severity": severity})


def pull(team: Team, reference: str, image: str = "", method: str = "GET") -> httpx.Response:
    with team.registry("reader") as registry:
        return registry.request(
            method, f"/v2/{team.oci_name(image)}/manifests/{reference}", headers=ACCEPT
        )


def denied_message(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    [error] = response.json()["errors"]
    assert error["code"] == "DENIED"
    return str(error["message"])


def test_the_policy_is_off_by_default_and_only_project_admins_set_it(team: Team) -> None:
    assert ok(team["reader"].get(team.url("/pull-policy"))) == {"refuse_severity": None}
    assert_problem(set_policy(team, "high", actor="member"), 403)
    assert_problem(set_policy(team, "severe"), 422, fields=("refuse_severity",))
    assert ok(set_policy(team, "high")) == {"refuse_severity": "high"}
    assert ok(team["reader"].get(team.url("/pull-policy"))) == {"refuse_severity": "high"}
    entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
    [entry] = [e for e in entries["items"] if e["action"] == "project.pull_policy"]
    assert entry["actor"] == team.users["project-admin"]
    assert entry["detail"] == {"refuse_severity": "high"}


def test_findings_at_or_above_the_severity_refuse_the_pull(team: Team, npm_layer: Blob) -> None:
    image = push(team, [npm_layer], "v1")
    assert pull(team, "v1").status_code == 200  # off: nothing is checked
    result = scan(team, image.digest)
    assert (result["counts"]["high"], result["counts"]["unknown"]) == (1, 1)
    assert pull(team, "v1").status_code == 200  # still off

    ok(set_policy(team, "critical"))
    assert pull(team, "v1").status_code == 200  # nothing critical
    ok(set_policy(team, "high"))
    for reference in ("v1", image.digest):
        message = denied_message(pull(team, reference))
        assert "has 1 vulnerability finding of high severity or above" in message
        assert f"{team.oci_name()}@{image.digest}" in message
    head = pull(team, "v1", method="HEAD")
    assert head.status_code == 403 and head.content == b""
    ok(set_policy(team, "medium"))
    assert "has 1 vulnerability finding of medium severity" in denied_message(pull(team, "v1"))
    ok(set_policy(team, "unknown"))
    message = denied_message(pull(team, "v1"))
    assert "has 2 vulnerability findings of any severity" in message

    # The address the message gives shows the findings, as printed, to the one refused.
    address = message.split("GET ", 1)[1].split()[0]
    assert address.startswith("/api/v1/")
    shown = ok(team["reader"].get(team.server.url + address))
    assert sorted(f["advisory_id"] for f in shown["findings"]) == [
        "GHSA-3fx5-fwvr-xrjg",
        "GHSA-fhjf-83wg-r2j9",
    ]

    ok(set_policy(team, None))
    assert pull(team, "v1").status_code == 200
    assert pull(team, "v1", method="HEAD").status_code == 200


def test_unscanned_and_failed_images_are_let_through(team: Team, npm_layer: Blob) -> None:
    ok(set_policy(team, "unknown"))
    image = push(team, [npm_layer], "unscanned")
    assert pull(team, "unscanned").status_code == 200
    assert pull(team, image.digest).status_code == 200
    broken = Blob(b"not a tar archive at all", OCI_LAYER_GZIP)
    push(team, [broken], "broken")
    failed = scan(team, pull(team, "broken").headers["Docker-Content-Digest"])
    assert failed["state"] == "failed"
    assert pull(team, "broken").status_code == 200


def test_a_refused_image_stays_refused_while_it_is_scanned_again(
    team: Team, npm_layer: Blob
) -> None:
    """A rescan (a member's Rescan, the daily rescan of stale results) leaves the previous
    result standing until the new one replaces it, for the pull policy too: a member, who
    cannot turn the policy off, could otherwise pull a refused image while its rescan waits
    for a scan worker or runs."""
    image = push(team, [npm_layer], "again")
    scan(team, image.digest)
    ok(set_policy(team, "high"))
    assert "has 1 vulnerability finding" in denied_message(pull(team, "again"))

    async def taken_by_a_scanner(s: Services) -> None:
        # A rescan asked for and claimed by a scan worker of another node, running for
        # minutes there (what queueing it, then claiming it, write).
        async with s.db.write() as conn:
            ours = select(manifests.c.id).where(manifests.c.digest == image.digest)
            now = s.db.clock()
            await conn.execute(
                update(scans)
                .where(scans.c.manifest_id.in_(ours))
                .values(state="scanning", started_at=now, alive_at=now)
            )

    services(team.server, taken_by_a_scanner)
    shown = ok(team["reader"].get(team.repo_url(f"/images/{image.digest}/scan")))
    assert (shown["state"], shown["counts"]["high"]) == ("scanning", 1)
    time.sleep(1.1)  # past the verdict a node keeps a second
    assert "has 1 vulnerability finding" in denied_message(pull(team, "again"))
    assert pull(team, image.digest, method="HEAD").status_code == 403


def test_an_index_is_refused_when_a_platform_is(team: Team, npm_layer: Blob) -> None:
    platform = push(team, [npm_layer], "amd64", image="multi")
    index = image_index(
        [{**platform.descriptor(), "platform": {"os": "linux", "architecture": "amd64"}}]
    )
    push_manifest(team.registry("member"), team.oci_name("multi"), "v1", index)
    scan(team, platform.digest, image="multi")  # the platform only: the index has no scan
    ok(set_policy(team, "high"))
    message = denied_message(pull(team, "v1", image="multi"))
    assert f"{team.oci_name('multi')}@{index.digest} (platform {platform.digest})" in message
    address = message.split("GET ", 1)[1].split()[0]
    assert address.endswith(f"/images/{platform.digest}/scan?image=multi")
    assert ok(team["reader"].get(team.server.url + address))["counts"]["high"] == 1
    assert pull(team, platform.digest, image="multi").status_code == 403


def test_a_rescan_after_new_data_refuses_what_the_old_scan_let_through(
    team: Team, tmp_path: Path
) -> None:
    ok(set_policy(team, "unknown"))
    requests_layer = Blob(
        layer(pip_installed("requests-2.30.0-py3-none-any.whl", tmp_path / "site")),
        OCI_LAYER_GZIP,
    )
    image = push(team, [requests_layer], "py")
    assert scan(team, image.digest)["findings"] == []
    assert pull(team, "py").status_code == 200

    async def load(s: Services) -> None:
        report = await VulnDb(s.db).import_path(FIXTURES / "osv" / LATE_RECORD, "test")
        assert report.refused == []

    services(team.server, load)
    # Stale, but its findings (none) stand until it is scanned again.
    assert ok(team["reader"].get(team.repo_url(f"/images/{image.digest}/scan")))["stale"]
    assert pull(team, "py").status_code == 200
    assert [f["advisory_id"] for f in scan(team, image.digest)["findings"]] == ["PYSEC-2023-74"]
    # The node that stored the result forgets its verdicts at once: no wait.
    assert "has 1 vulnerability finding of any severity" in denied_message(pull(team, "py"))


def test_berth_project_pull_policy_sets_it(team: Team, npm_layer: Blob) -> None:
    if team.server.database_url:
        pytest.skip("the CLI calls the same service on either database (and takes long)")
    image = push(team, [npm_layer], "cli")
    scan(team, image.digest)
    turned_on = team.server.cli("project", "pull-policy", team.project, "high")
    assert "findings of high severity or above are refused" in " ".join(turned_on.stdout.split())
    assert ok(team["reader"].get(team.url("/pull-policy"))) == {"refuse_severity": "high"}
    time.sleep(1.1)  # the server reads a project's settings again within a second
    assert "has 1 vulnerability finding" in denied_message(pull(team, "cli"))
    assert team.server.cli_json("project", "pull-policy", team.project, "off") == {
        "refuse_severity": None
    }
    time.sleep(1.1)
    assert pull(team, "cli").status_code == 200


# --- the SBOM as an OCI referrer ------------------------------------------------------------

CYCLONEDX = "application/vnd.cyclonedx+json"


def referrers(team: Team, digest: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
    params = {"artifactType": artifact_type} if artifact_type else {}
    with team.registry("reader") as registry:
        response = registry.get(f"/v2/{team.oci_name()}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    return response.json()["manifests"]  # type: ignore[no-any-return]


def test_the_sbom_is_attached_as_a_referrer_once(team: Team, npm_layer: Blob) -> None:
    image = push(team, [npm_layer], "v1")
    attach = team.repo_url(f"/images/{image.digest}/sbom/referrer")
    assert "scan it first" in assert_problem(team["member"].post(attach), 404)["detail"]
    scan(team, image.digest)
    assert_problem(team["reader"].post(attach), 403)

    attached = ok(team["member"].post(attach), 201)
    assert attached["subject"] == image.digest and attached["created"]
    assert attached["artifact_type"] == CYCLONEDX
    [listed] = referrers(team, image.digest, CYCLONEDX)
    assert listed["digest"] == attached["digest"] and listed["artifactType"] == CYCLONEDX
    assert referrers(team, image.digest, "application/vnd.example.other") == []

    again = ok(team["member"].post(attach), 200)
    assert again["digest"] == attached["digest"] and not again["created"]
    assert len(referrers(team, image.digest)) == 1

    with team.registry("reader") as registry:
        manifest = registry.get(
            f"/v2/{team.oci_name()}/manifests/{attached['digest']}", headers=ACCEPT
        ).json()
        [sbom_layer] = manifest["layers"]
        sbom = registry.get(f"/v2/{team.oci_name()}/blobs/{sbom_layer['digest']}")
    assert manifest["artifactType"] == CYCLONEDX and sbom_layer["mediaType"] == CYCLONEDX
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert manifest["subject"]["digest"] == image.digest
    document = sbom.json()
    assert document["bomFormat"] == "CycloneDX"
    assert document["metadata"]["component"]["version"] == image.digest
    assert {"pkg:npm/ms@0.7.0", "pkg:npm/mixin-deep@1.3.1"} <= {
        c.get("purl") for c in document["components"]
    }
    # An artifact is not an image: it is not listed as one, and the pull policy lets it by.
    listed_images = ok(team["reader"].get(team.repo_url("/images")))
    assert [i["digest"] for i in listed_images["items"]] == [image.digest]
    ok(set_policy(team, "unknown"))
    assert pull(team, attached["digest"]).status_code == 200
    assert pull(team, image.digest).status_code == 403


def test_the_sbom_referrer_goes_with_its_image(team: Team, npm_layer: Blob) -> None:
    image = push(team, [npm_layer], "v1")
    push(team, [npm_layer], "keep-1", image="other")
    scan(team, image.digest)
    attached = ok(team["member"].post(team.repo_url(f"/images/{image.digest}/sbom/referrer")), 201)
    rules = [{"keep": "tagged", "pattern": "keep-*", "repositories": "*"}]
    ok(team["project-admin"].put(team.url("/retention"), json={"rules": rules}))
    ran = ok(team["project-admin"].post(team.url("/retention/runs")))
    assert [i["digest"] for i in ran["images"]] == [image.digest]
    assert pull(team, attached["digest"]).status_code == 404
    assert pull(team, image.digest).status_code == 404


def test_berth_scan_attach_sbom(team: Team, npm_layer: Blob) -> None:
    if team.server.database_url:
        pytest.skip("the CLI calls the same service on either database (and takes long)")
    image = push(team, [npm_layer], "v1")
    name = f"{team.project}/{team.repository}:v1"
    done = " ".join(team.server.cli("scan", name, "--wait", "--attach-sbom").stdout.split())
    assert "GHSA-3fx5-fwvr-xrjg" in done  # the findings, then the referrer
    [listed] = referrers(team, image.digest, CYCLONEDX)
    assert f"SBOM attached to {name} as referrer {listed['digest']}" in done


def test_attaching_an_sbom_is_a_push_refused_while_garbage_collection_runs(
    team: Team, npm_layer: Blob
) -> None:
    image = push(team, [npm_layer], "v1")
    scan(team, image.digest)

    async def restrict(s: Services, run_id: int | None) -> None:
        project_id = await s.repositories.project_id(team.project)
        assert project_id is not None
        async with s.db.write() as conn:
            if run_id is None:
                await lift_restriction(conn, project_id, 999_999)
            else:
                await impose_restriction(s.db, conn, project_id, run_id)

    services(team.server, lambda s: restrict(s, 999_999))
    attach = team.repo_url(f"/images/{image.digest}/sbom/referrer")
    try:
        refused = assert_problem(team["member"].post(attach), 403)
        assert "garbage collection in progress" in refused["detail"]
        assert referrers(team, image.digest) == []
    finally:
        services(team.server, lambda s: restrict(s, None))
    ok(team["member"].post(attach), 201)


def test_attaching_an_sbom_sends_the_push_webhook_once(team: Team, npm_layer: Blob) -> None:
    image = push(team, [npm_layer], "v1")
    scan(team, image.digest)
    for receiver in receiving():
        ok(
            team["project-admin"].post(
                team.url("/webhooks"),
                json={"url": receiver.url, "event_types": ["io.berth.image.pushed"]},
            ),
            201,
        )
        attach = team.repo_url(f"/images/{image.digest}/sbom/referrer")
        attached = ok(team["member"].post(attach), 201)
        (received,) = receiver.wait_for(1)
        data = received.event["data"]
        assert data["digest"] == attached["digest"] and data["actor"] == team.users["member"]
        ok(team["member"].post(attach), 200)
        time.sleep(1.5)  # a second event would have come by now
        assert len(receiver.received) == 1
