"""Outbound traffic: the bytes counted for a known set of pulls equal the bytes the clients
received, per project and repository; HEADs and refusals count nothing; a clean shutdown
loses nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    image_manifest,
    push_bytes,
    push_manifest,
)
from tests.servers import BACKENDS, BerthServer, eventually, running_server
from tests.usage.conftest import (
    Project,
    new_project,
    start_all_workers,
    traffic,
)


def push_image(client: httpx.Client, name: str, tag: str, layer_sizes: list[int]) -> list[Blob]:
    """Push a config, layers of the given sizes and a manifest; return [manifest, config, *layers]."""
    config = Blob(b'{"architecture":"amd64","os":"linux","n":"%s"}' % os.urandom(4).hex().encode())
    config = Blob(config.data, OCI_CONFIG)
    layers = [Blob(os.urandom(size), OCI_LAYER) for size in layer_sizes]
    for blob in (config, *layers):
        push_bytes(client, name, blob.data)
    manifest = image_manifest(config.descriptor(), [b.descriptor() for b in layers])
    push_manifest(client, name, tag, manifest)
    return [manifest, config, *layers]


def total(project: Project, expected: int, **params: str) -> dict[str, Any]:
    """The project's traffic (API) once it reaches `expected` bytes, or when the wait ends."""
    return eventually(
        lambda: project.traffic(days=3, **params), lambda found: found["total_bytes"] >= expected
    )


def test_counted_bytes_equal_received_bytes(metered: BerthServer) -> None:
    project = new_project(metered)
    repository = project.repository()
    other = project.repository()
    name = f"{project.name}/{repository}"
    manifest, _config, big, small = push_image(project.client, name, "v1", [3_000_000, 4096])
    push_image(project.client, f"{project.name}/{other}", "v1", [1000])
    client = project.client

    received = 0
    gets = 0

    def get(path: str, **headers: str) -> httpx.Response:
        nonlocal received, gets
        response = client.get(path, headers=headers)
        assert response.status_code in (200, 206), (path, headers, response.status_code)
        received += len(response.content)
        gets += 1
        return response

    blob = f"/v2/{name}/blobs/"
    get(blob + big.digest)  # whole blob, sent from the file
    get(blob + small.digest)
    get(blob + small.digest)
    assert len(get(blob + big.digest, Range="bytes=0-999").content) == 1000
    assert len(get(blob + big.digest, Range="bytes=2999000-").content) == 1000
    assert len(get(blob + small.digest, Range="bytes=-100").content) == 100
    several = get(blob + big.digest, Range="bytes=0-9,100-109")  # the whole blob, every store
    assert several.status_code == 200 and len(several.content) == big.size
    accept = {"Accept": OCI_MANIFEST}
    assert get(f"/v2/{name}/manifests/v1", **accept).content == manifest.data
    get(f"/v2/{name}/manifests/{manifest.digest}", **accept)
    # Nothing is counted for HEADs, missing content, refusals and unsatisfiable ranges.
    assert client.head(blob + big.digest).status_code == 200
    assert client.head(f"/v2/{name}/manifests/v1", headers=accept).status_code == 200
    held = {**accept, "If-None-Match": f'"{manifest.digest}"'}
    assert client.get(f"/v2/{name}/manifests/v1", headers=held).status_code == 304
    for layer in (big, small):
        held = {"If-None-Match": f'"{layer.digest}"'}
        assert client.get(blob + layer.digest, headers=held).status_code == 304
    assert client.get(blob + "sha256:" + "0" * 64).status_code == 404
    assert client.get(blob + big.digest, headers={"Range": "bytes=10-5"}).status_code == 416
    assert httpx.get(f"{metered.url}{blob}{big.digest}").status_code == 401

    found = total(project, received, repository=repository)
    assert found["total_bytes"] == received
    assert found["total_requests"] == gets
    assert found["this_month"]["bytes"] == received
    assert found["daily"][-1] == {"day": found["last_day"], "bytes": received, "requests": gets}
    # The other repository was not pulled from; the project total is this repository's.
    assert project.traffic(days=3, repository=other)["total_bytes"] == 0
    everything = project.traffic(days=3)
    assert everything["total_bytes"] == received
    assert [(r["repository"], r["bytes"]) for r in everything["repositories"]] == [
        (repository, received)
    ]


def test_a_blob_shared_by_two_projects_is_counted_where_it_was_pulled(
    metered: BerthServer,
) -> None:
    first, second = new_project(metered), new_project(metered)
    data = os.urandom(20_000)
    names = []
    for project in (first, second):
        repository = project.repository()
        names.append(f"{project.name}/{repository}")
        digest = push_bytes(project.client, names[-1], data)
    for _ in range(3):
        assert first.client.get(f"/v2/{names[0]}/blobs/{digest}").status_code == 200
    assert total(first, 60_000)["total_bytes"] == 60_000
    assert second.traffic(days=3)["total_bytes"] == 0


def test_a_real_client_pull_is_counted(metered: BerthServer, tmp_path: Path) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (scripts/test-deps.sh installs it)")
    project = new_project(metered)
    repository = project.repository()
    name = f"{project.name}/{repository}"
    pushed = push_image(project.client, name, "v1", [200_000, 50_000])
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    key_id, secret = metered.access_key(project.name)
    result = subprocess.run(
        [
            skopeo,
            "--policy",
            str(policy),
            "copy",
            "--src-tls-verify=false",
            f"--src-creds={key_id}:{secret}",
            f"docker://{metered.address}/{name}:v1",
            f"oci:{tmp_path / 'layout'}:v1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    expected = sum(blob.size for blob in pushed)  # the manifest, the config and the layers
    found = total(project, expected)
    assert found["total_bytes"] == expected


# ---------------------------------------------------------------- shutdown


@pytest.fixture(params=BACKENDS)
def unflushed(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    """A registry that writes its traffic counters only at shutdown (two workers)."""
    env = {"BERTH_WORKERS": "2", "BERTH_TRAFFIC_FLUSH_INTERVAL": "3600"}
    with running_server(
        request, "unflushed", request.param, extra_env=env, start=start_all_workers
    ) as berth:
        yield berth


def test_a_clean_shutdown_loses_nothing(unflushed: BerthServer) -> None:
    project: Project = new_project(unflushed)
    repository = project.repository()
    name = f"{project.name}/{repository}"
    manifest, config, layer = push_image(project.client, name, "v1", [100_000])
    received = 0
    # New connections each time, so that both workers serve some of the pulls.
    for _ in range(10):
        with httpx.Client(base_url=unflushed.url, auth=project.client.auth) as client:
            for path in (f"blobs/{layer.digest}", f"blobs/{config.digest}", "manifests/v1"):
                response = client.get(f"/v2/{name}/{path}", headers={"Accept": OCI_MANIFEST})
                assert response.status_code == 200
                received += len(response.content)
    assert received == 10 * (manifest.size + config.size + layer.size)
    assert traffic(unflushed, project.name, days=1)["total_bytes"] == 0  # not written yet
    unflushed.stop()  # SIGTERM
    found = traffic(unflushed, project.name, days=1)
    assert found["total_bytes"] == received
    assert found["total_requests"] == 30
    start_all_workers(unflushed)
    assert project.traffic(days=1)["total_bytes"] == received  # and through the API


def test_a_range_whose_if_range_does_not_match_gets_the_whole_blob(metered: BerthServer) -> None:
    """RFC 9110 13.1.5, for a blob Berth sends itself (the file, or a stream from S3): a Range
    whose If-Range is not the blob's ETag (another tag, a weak one, a date) gets the whole
    blob with 200, counted whole; one naming the ETag gets the range, counted as the range
    (else a client that asks for a revalidated range gets bytes of a different blob)."""
    project = new_project(metered)
    name = f"{project.name}/{project.repository()}"
    data = os.urandom(300_000)
    digest = push_bytes(project.client, name, data)
    blob = f"/v2/{name}/blobs/{digest}"
    for if_range in ('"another"', f'W/"{digest}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        whole = project.client.get(blob, headers={"Range": "bytes=0-9", "If-Range": if_range})
        assert whole.status_code == 200 and whole.content == data, if_range
        assert "content-range" not in whole.headers
    # An If-Range that does not match also turns an unsatisfiable Range off: the whole blob.
    unsatisfiable = {"Range": "bytes=10-5", "If-Range": '"another"'}
    assert project.client.get(blob, headers=unsatisfiable).content == data
    ranged = project.client.get(blob, headers={"Range": "bytes=0-9", "If-Range": f'"{digest}"'})
    assert ranged.status_code == 206 and ranged.content == data[:10]
    assert ranged.headers["content-range"] == f"bytes 0-9/{len(data)}"
    assert ranged.headers["etag"] == f'"{digest}"'

    expected = 4 * len(data) + 10
    assert total(project, expected)["total_bytes"] == expected
