"""Registry behaviour beyond the conformance suite: naming, dedup, integrity, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Callable

import httpx
import pytest

from tests.clients.tools import require_binary
from tests.conftest import Repo, new_repo
from tests.oci import (
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    RANGE_ANSWERS,
    RANGED_SIZE,
    Blob,
    assert_one_patch_taken,
    check_range_answer,
    describe,
    digest_of,
    error_code,
    image_manifest,
    manifest_path,
    push_bytes,
    push_manifest,
    put_manifest,
    race_patches,
    random_image,
    referrers_path,
    to_json,
)
from tests.s3 import stored_keys
from tests.servers import BACKENDS, S3_BACKEND, BerthServer, server_fixture

server = server_fixture(
    backends=[*BACKENDS, S3_BACKEND],
    doc="A running registry on SQLite, on PostgreSQL, and on PostgreSQL with blobs in S3.",
)


def on_s3(server: BerthServer) -> bool:
    return server.extra_env.get("BERTH_STORAGE") == "s3"


def stored_files(server: BerthServer) -> set[str]:
    """The stored blobs' file (or object) names."""
    if on_s3(server):
        return {key.rpartition("/")[2] for key in stored_keys(server.extra_env, "blobs")}
    blobs = server.data_dir / "blobs"
    return {p.name for p in blobs.rglob("*") if p.is_file() and "_uploads" not in p.parts}


def scratch_files(server: BerthServer) -> list[str]:
    """What uploads in progress hold in the store (scratch files, or S3 objects)."""
    if on_s3(server):
        return stored_keys(server.extra_env, "uploads")
    return [str(p) for p in (server.data_dir / "blobs" / "_uploads").glob("*") if p.is_file()]


def test_host_style_and_path_style_reach_the_same_data(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    host = f"{repo.project}.local.localhost:{repo.server.port}"
    by_host = repo.client.get(
        f"/v2/{repo.repository}/manifests/v1", headers={"Host": host, "Accept": OCI_MANIFEST}
    )
    assert by_host.status_code == 200
    assert by_host.content == body
    listed = repo.client.get(f"/v2/{repo.repository}/tags/list", headers={"Host": host}).json()
    assert listed == {"name": repo.repository, "tags": ["v1"]}
    catalog = repo.client.get("/v2/_catalog", headers={"Host": host}).json()["repositories"]
    assert catalog == [repo.repository]
    assert repo.name in repo.client.get("/v2/_catalog").json()["repositories"]


def test_push_into_a_missing_repository_says_how_to_create_it(repo: Repo) -> None:
    response = repo.client.post(f"/v2/{repo.project}/missing/blobs/uploads/")
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"
    text = response.json()["errors"][0]["message"]
    # Said to someone who may hold only an access key: the console or the API, not the CLI.
    assert f"repository 'missing' does not exist in project '{repo.project}'" in text
    assert "web console" in text and f"/api/v1/projects/{repo.project}/repositories" in text
    assert "berth " not in text
    # Another project (existing or not) is none of this key's business: refused, nothing leaks.
    response = repo.client.post("/v2/noproject/missing/blobs/uploads/")
    assert response.status_code == 403
    assert error_code(response) == "DENIED"


def test_a_pull_from_a_missing_repository_says_to_check_the_name(repo: Repo) -> None:
    """Pulling (or deleting) is no push: the answer says the repository does not exist, to
    check the name, not how to create it; skopeo shows it so."""
    said = f"repository 'missing' does not exist in project '{repo.project}': check the image name"
    digest = "sha256:" + "0" * 64
    for method, path in [
        ("GET", "manifests/v1"),
        ("GET", f"blobs/{digest}"),
        ("DELETE", f"manifests/{digest}"),
    ]:
        response = repo.client.request(method, f"/v2/{repo.project}/missing/{path}")
        assert response.status_code == 404 and error_code(response) == "NAME_UNKNOWN"
        text = response.json()["errors"][0]["message"]
        assert text == said, (method, path, text)
    assert repo.client.head(f"/v2/{repo.project}/missing/manifests/v1").status_code == 404

    skopeo = require_binary("skopeo")
    key_id, secret = repo.server.access_key(repo.project)
    inspected = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", f"--creds={key_id}:{secret}",
         f"docker://{repo.server.address}/{repo.project}/missing:v1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert inspected.returncode != 0
    assert said in inspected.stderr, inspected.stderr
    assert "creates it first" not in inspected.stderr


def test_a_project_host_name_that_repeats_the_project_says_so(repo: Repo) -> None:
    """`demo.{region}.{domain}/demo/app/hello`: the project is in the host already."""
    host = f"{repo.project}.local.localhost:{repo.server.port}"
    response = repo.client.post(
        f"/v2/{repo.project}/{repo.repository}/hello/blobs/uploads/", headers={"Host": host}
    )
    assert response.status_code == 404 and error_code(response) == "NAME_UNKNOWN"
    text = response.json()["errors"][0]["message"]
    assert f"this host already names project '{repo.project}'" in text, text
    assert f"HOST/{repo.repository}/hello, not HOST/{repo.project}/{repo.repository}/hello" in text


def test_a_name_without_a_repository_part_is_name_unknown(repo: Repo) -> None:
    """`docker push 127.0.0.1:5000/hello:v1`: NAME_UNKNOWN, which docker does not retry."""
    response = repo.client.post("/v2/hello/blobs/uploads/")
    assert response.status_code == 404 and error_code(response) == "NAME_UNKNOWN"
    assert "needs the project first" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "host",
    [
        'a",realm="http://evil.example/x',
        "evil.example/x",
        "a b",
        "a,b",
        "a:port",
        "x..example",
    ],
)
def test_a_host_header_that_is_not_a_host_is_refused(repo: Repo, host: str) -> None:
    """Nothing from a malformed Host reaches a challenge, a token, a link or the routing."""
    for path in ("/v2/", f"/v2/{repo.name}/tags/list", "/auth/token"):
        response = repo.client.get(path, headers={"Host": host})
        assert response.status_code == 400, (path, response.status_code, response.text)
        assert error_code(response) == "HOST_INVALID"
        assert "evil" not in response.headers.get("www-authenticate", "")
    api = repo.client.get("/api/v1/projects", headers={"Host": host})
    assert api.status_code == 400 and api.json()["code"] == "HOST_INVALID"
    assert api.headers["content-type"] == "application/problem+json"
    assert repo.client.get("/console/", headers={"Host": host}).status_code == 400


def raw_request(server: BerthServer, request: bytes) -> tuple[int, bytes]:
    """The status and body of `request`, sent as is on a connection of its own."""
    with socket.create_connection((server.host, server.port), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_health_checks_and_scrapes_without_a_host_are_answered(server: BerthServer) -> None:
    """Load balancers' health checks and plain HTTP/1.0 probes often send no Host: /healthz,
    /readyz and /metrics answer them; any other path still refuses a request without one."""
    for request in (b"GET /readyz HTTP/1.0\r\n\r\n", b"GET /healthz HTTP/1.0\r\n\r\n"):
        status, body = raw_request(server, request)
        assert (status, body) in ((200, b"ready"), (200, b"ok")), (request, status, body)
    status, body = raw_request(server, b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert (status, body) == (200, b"ready")
    status, body = raw_request(server, b"GET /metrics HTTP/1.0\r\n\r\n")  # from loopback
    assert status == 200 and b"berth_http_requests_total" in body
    for path in (b"/v2/", b"/api/v1/projects", b"/console/", b"/readyz/x"):
        status, _ = raw_request(server, b"GET " + path + b" HTTP/1.0\r\n\r\n")
        assert status == 400, path


def test_the_challenge_names_the_host_in_lowercase(repo: Repo) -> None:
    host = f"{repo.project.upper()}.LOCAL.localhost:{repo.server.port}"
    anonymous = httpx.Client(base_url=repo.server.url)
    challenge = anonymous.get("/v2/", headers={"Host": host}).headers["www-authenticate"]
    lower = host.lower()
    assert f'realm="http://{lower}/auth/token",service="{lower}"' in challenge


def test_blob_is_stored_once_across_projects(server: BerthServer) -> None:
    data = os.urandom(4096)
    first, second = new_repo(server), new_repo(server)
    before = stored_files(server)
    push_bytes(first.client, first.name, data)
    push_bytes(second.client, second.name, data)
    added = stored_files(server) - before
    assert list(added) == [hashlib.sha256(data).hexdigest()]
    assert second.client.get(second.url(f"blobs/{digest_of(data)}")).content == data


def test_manifest_is_stored_byte_for_byte(repo: Repo) -> None:
    pretty = (
        json.dumps(json.loads(random_image(repo.client, repo.name)), indent=7).encode() + b"\n\n"
    )
    response = put_manifest(repo.client, repo.name, "pretty", pretty)
    assert response.headers["Docker-Content-Digest"] == digest_of(pretty)
    assert repo.client.get(repo.url("manifests/pretty")).content == pretty


def test_tag_overwrite_disabled_refuses_a_moved_tag(server: BerthServer) -> None:
    fixed = new_repo(server, tag_overwrite=False)
    first = random_image(fixed.client, fixed.name)
    assert put_manifest(fixed.client, fixed.name, "1.0", first).status_code == 201
    assert put_manifest(fixed.client, fixed.name, "1.0", first).status_code == 201  # same digest
    second = random_image(fixed.client, fixed.name)
    refused = put_manifest(fixed.client, fixed.name, "1.0", second)
    assert refused.status_code == 403
    assert error_code(refused) == "DENIED"
    assert "tag overwrite is disabled" in refused.json()["errors"][0]["message"]
    assert fixed.client.get(fixed.url("manifests/1.0")).content == first


def test_manifest_with_a_missing_blob_is_refused_and_not_stored(repo: Repo) -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Blob(b"{}", OCI_CONFIG).descriptor(),
            "layers": [],
        }
    ).encode()
    response = put_manifest(repo.client, repo.name, "broken", body)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert repo.client.get(repo.url("manifests/broken")).status_code == 404
    assert repo.client.get(repo.url(f"manifests/{digest_of(body)}")).status_code == 404


def test_index_with_a_missing_child_is_refused(repo: Repo) -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest_of(b"nope"), "size": 4}],
        }
    ).encode()
    response = put_manifest(repo.client, repo.name, "idx", body, OCI_INDEX)
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


FOREIGN_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def with_foreign_layer(repo: Repo, **fields: object) -> bytes:
    """An image manifest whose second layer is non-distributable and never pushed."""
    document = json.loads(random_image(repo.client, repo.name))
    foreign = Blob(os.urandom(1000), FOREIGN_LAYER).descriptor(**fields)
    document["layers"].append(foreign)
    return to_json(document)


def test_a_foreign_layer_with_an_http_url_need_not_be_pushed(repo: Repo) -> None:
    body = with_foreign_layer(repo, urls=["https://example.com/blobs/layer"])
    assert put_manifest(repo.client, repo.name, "foreign", body).status_code == 201


def test_a_foreign_layer_neither_pushed_nor_with_a_url_is_refused(repo: Repo) -> None:
    body = with_foreign_layer(repo)
    response = put_manifest(repo.client, repo.name, "foreign", body)
    assert response.status_code == 400 and error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert "no 'urls'" in response.json()["errors"][0]["message"]
    assert repo.client.get(repo.url("manifests/foreign")).status_code == 404


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/layer", "https:layer"])
def test_a_foreign_layer_url_that_is_not_http_is_refused(repo: Repo, url: str) -> None:
    body = with_foreign_layer(repo, urls=["https://example.com/ok", url])
    response = put_manifest(repo.client, repo.name, "foreign", body)
    assert response.status_code == 400 and error_code(response) == "MANIFEST_INVALID"
    assert "layers[1].urls[1] must be an http or https URL" in response.text


def test_a_foreign_layer_the_registry_holds_is_served_like_any(repo: Repo) -> None:
    """Pushed anyway (docker's allow-nondistributable-artifacts), it needs no URL and is
    kept with the image."""
    layer = Blob(os.urandom(1000), FOREIGN_LAYER)
    push_bytes(repo.client, repo.name, layer.data)
    document = json.loads(random_image(repo.client, repo.name))
    document["layers"].append(layer.descriptor())
    assert put_manifest(repo.client, repo.name, "held", to_json(document)).status_code == 201
    assert repo.client.get(repo.url(f"blobs/{layer.digest}")).content == layer.data


def test_tags_of_a_name_never_pushed_are_name_unknown(repo: Repo) -> None:
    """An image name inside a repository with nothing in it is unknown, as a repository
    nobody created is; one whose tags were all deleted still lists []."""
    typo = f"{repo.name}/typo"
    response = repo.client.get(f"/v2/{typo}/tags/list")
    assert response.status_code == 404 and error_code(response) == "NAME_UNKNOWN"
    assert "typo names no image" in response.json()["errors"][0]["message"]
    # The repository's own name exists while the repository does, empty or not.
    assert repo.client.get(repo.url("tags/list")).json()["tags"] == []

    body = random_image(repo.client, typo)
    assert put_manifest(repo.client, typo, "v1", body).status_code == 201
    assert repo.client.get(f"/v2/{typo}/tags/list").json()["tags"] == ["v1"]
    assert repo.client.delete(f"/v2/{typo}/manifests/v1").status_code == 202
    assert repo.client.get(f"/v2/{typo}/tags/list").json()["tags"] == []
    assert repo.client.delete(f"/v2/{typo}/manifests/{digest_of(body)}").status_code == 202
    assert repo.client.get(f"/v2/{typo}/tags/list").status_code == 404


@pytest.mark.parametrize("where", ["config", "layer"])
@pytest.mark.parametrize("declared", [2, 2**70])
def test_a_blob_descriptor_whose_size_is_not_the_blobs_is_refused(
    repo: Repo, where: str, declared: int
) -> None:
    """A size that lies would give an image no client can pull, and readers that trust it
    (the console's platform from the config) would read far more than declared."""
    config = Blob(b'{"os": "linux", "architecture": "amd64", "pad": "xxxxxxxx"}', OCI_CONFIG)
    layer = Blob(os.urandom(1024), OCI_LAYER)
    push_bytes(repo.client, repo.name, config.data)
    push_bytes(repo.client, repo.name, layer.data)
    lying, honest = (config, layer) if where == "config" else (layer, config)
    descriptors = {
        lying.digest: lying.descriptor(size=declared),
        honest.digest: honest.descriptor(),
    }
    body = to_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptors[config.digest],
            "layers": [descriptors[layer.digest]],
        }
    )
    response = put_manifest(repo.client, repo.name, "lying", body)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"
    message = response.json()["errors"][0]["message"]
    assert lying.digest in message and str(declared) in message and str(lying.size) in message
    assert repo.client.get(repo.url("manifests/lying")).status_code == 404
    # The same blobs with their true sizes: accepted.
    honest_body = to_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        }
    )
    assert put_manifest(repo.client, repo.name, "honest", honest_body).status_code == 201


def test_an_index_child_whose_size_is_not_the_manifests_is_refused(repo: Repo) -> None:
    child = Blob(random_image(repo.client, repo.name), OCI_MANIFEST)
    assert put_manifest(repo.client, repo.name, child.digest, child.data).status_code == 201
    body = to_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [child.descriptor(size=child.size + 1)],
        }
    )
    response = put_manifest(repo.client, repo.name, "idx", body, OCI_INDEX)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"
    message = response.json()["errors"][0]["message"]
    assert child.digest in message and str(child.size + 1) in message and str(child.size) in message
    good = to_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child.descriptor()]})
    assert put_manifest(repo.client, repo.name, "idx", good, OCI_INDEX).status_code == 201


def test_a_subject_whose_size_is_not_the_stored_manifests_is_refused(repo: Repo) -> None:
    """A referrer's subject, when stored, must have the size the descriptor gives; one not
    stored yet is accepted (OCI 1.1: a referrer may be pushed before its subject)."""
    empty = Blob(b"{}", OCI_EMPTY)
    push_bytes(repo.client, repo.name, empty.data)
    subject = Blob(random_image(repo.client, repo.name), OCI_MANIFEST)

    def referrer(size: int, note: str) -> Blob:
        return image_manifest(
            empty.descriptor(),
            [empty.descriptor()],
            artifact_type="application/example",
            subject=subject.descriptor(size=size),
            annotations={"note": note},
        )

    before = referrer(subject.size, "before its subject")
    assert put_manifest(repo.client, repo.name, before.digest, before.data).status_code == 201
    assert put_manifest(repo.client, repo.name, subject.digest, subject.data).status_code == 201

    lying = referrer(subject.size + 7, "lying")
    response = put_manifest(repo.client, repo.name, lying.digest, lying.data)
    assert response.status_code == 400, describe(response)
    assert error_code(response) == "MANIFEST_INVALID"
    message = response.json()["errors"][0]["message"]
    assert subject.digest in message
    assert str(subject.size + 7) in message and str(subject.size) in message
    assert repo.client.get(repo.url(f"manifests/{lying.digest}")).status_code == 404
    honest = referrer(subject.size, "honest")
    assert put_manifest(repo.client, repo.name, honest.digest, honest.data).status_code == 201
    listed = repo.client.get(referrers_path(repo.name, subject.digest)).json()["manifests"]
    assert {d["digest"] for d in listed} == {before.digest, honest.digest}


def test_a_referrers_artifact_type_must_be_a_media_type(repo: Repo, subject: Blob) -> None:
    """The image spec's rule (RFC 6838), and a bound: a referrer named by an artifact type of
    3 MB was accepted, and the referrers API lists a thousand to a page (30 of them answered
    90 MB). A config media type longer than a media type may be is refused as well: the
    referrers API lists it as the artifact type of a manifest without one."""
    empty = Blob(b"{}", OCI_EMPTY)
    push_bytes(repo.client, repo.name, empty.data)

    def referrer(artifact_type: str | None, config: dict[str, object]) -> httpx.Response:
        manifest = image_manifest(
            config, [empty.descriptor()], artifact_type=artifact_type, subject=subject.descriptor()
        )
        return put_manifest(repo.client, repo.name, manifest.digest, manifest.data)

    for artifact_type in ("application/x" + "a" * 3_000_000, 'application/x"><img src=x>'):
        refused = referrer(artifact_type, empty.descriptor())
        assert refused.status_code == 400, describe(refused)
        assert error_code(refused) == "MANIFEST_INVALID"
        assert "artifactType must be a media type (RFC 6838)" in refused.text
    long_config = referrer(None, {**empty.descriptor(), "mediaType": "application/" + "c" * 300})
    assert long_config.status_code == 400, describe(long_config)
    assert "a media type of 312 characters" in long_config.text

    for artifact_type in ("application/vnd.cyclonedx+json", "sbom/example", "a/" + "b" * 127):
        assert referrer(artifact_type, empty.descriptor()).status_code == 201
    listed = repo.client.get(referrers_path(repo.name, subject.digest)).json()["manifests"]
    assert sorted(d["artifactType"] for d in listed) == [
        "a/" + "b" * 127,
        "application/vnd.cyclonedx+json",
        "sbom/example",
    ]


def _push_referrers(
    repo: Repo, subject: Blob, artifact_types: list[str], annotation_bytes: int = 0
) -> list[str]:
    """Push one referrer of `subject` per artifact type given, in order; their digests."""
    empty = Blob(b"{}", OCI_EMPTY)
    push_bytes(repo.client, repo.name, empty.data)
    digests = []
    for number, artifact_type in enumerate(artifact_types):
        annotations = {"n": str(number)}
        if annotation_bytes:
            annotations["pad"] = "x" * annotation_bytes
        manifest = image_manifest(
            empty.descriptor(),
            [empty.descriptor()],
            artifact_type=artifact_type,
            subject=subject.descriptor(),
            annotations=annotations,
        )
        push_manifest(repo.client, repo.name, manifest.digest, manifest)
        digests.append(manifest.digest)
    return digests


def _all_pages(repo: Repo, subject: Blob, **params: str | int) -> list[httpx.Response]:
    """The referrers of `subject`, following each page's Link header as clients do."""
    pages = [repo.client.get(referrers_path(repo.name, subject.digest), params=params)]
    while "Link" in pages[-1].headers:
        assert len(pages) < 20, "the Link headers do not end"
        link = pages[-1].headers["Link"]
        assert link.startswith("</v2/") and link.endswith('>; rel="next"'), link
        pages.append(repo.client.get(link[1 : link.index(">")]))
    for page in pages:
        assert page.status_code == 200, describe(page)
        assert page.headers["Content-Type"] == OCI_INDEX
    return pages


def _listed(pages: list[httpx.Response]) -> list[str]:
    return [d["digest"] for page in pages for d in page.json()["manifests"]]


@pytest.fixture
def subject(repo: Repo) -> Blob:
    image = Blob(random_image(repo.client, repo.name), OCI_MANIFEST)
    push_manifest(repo.client, repo.name, "subject", image)
    return image


def test_referrers_are_paged_and_the_link_gives_the_rest_once_each(
    repo: Repo, subject: Blob
) -> None:
    pushed = _push_referrers(repo, subject, ["application/a"] * 5)
    pages = _all_pages(repo, subject, n=2)
    assert [len(page.json()["manifests"]) for page in pages] == [2, 2, 1]
    assert _listed(pages) == pushed  # each once, in push order
    whole = repo.client.get(referrers_path(repo.name, subject.digest))
    assert "Link" not in whole.headers
    assert [d["digest"] for d in whole.json()["manifests"]] == pushed


def test_an_artifact_type_filter_holds_across_pages(repo: Repo, subject: Blob) -> None:
    pushed = _push_referrers(repo, subject, ["application/a", "application/b"] * 3)
    pages = _all_pages(repo, subject, n=2, artifactType="application/b")
    assert len(pages) == 2
    assert _listed(pages) == pushed[1::2]
    for page in pages:
        assert page.headers["OCI-Filters-Applied"] == "artifactType"
        assert {d["artifactType"] for d in page.json()["manifests"]} == {"application/b"}


def test_a_page_of_referrers_holds_a_bounded_weight_of_annotations(
    repo: Repo, subject: Blob
) -> None:
    """Annotations of up to 4 MiB each are accepted: a page stops before its annotations pass
    4 MiB (one referrer always fits), and the Link gives the others."""
    pushed = _push_referrers(repo, subject, ["application/a"] * 3, annotation_bytes=1536 << 10)
    pages = _all_pages(repo, subject)
    assert [len(page.json()["manifests"]) for page in pages] == [2, 1]
    assert all(len(page.content) < (4 << 20) + 4096 for page in pages)
    assert _listed(pages) == pushed
    first = pages[0].json()["manifests"][0]
    assert first["annotations"] == {"n": "0", "pad": "x" * (1536 << 10)}


@pytest.mark.parametrize("after", ["x", "-1", "1" * 40])
def test_a_referrers_page_start_not_from_a_link_is_refused(
    repo: Repo, subject: Blob, after: str
) -> None:
    response = repo.client.get(referrers_path(repo.name, subject.digest), params={"after": after})
    assert response.status_code == 400
    assert error_code(response) == "PAGINATION_NUMBER_INVALID"


def test_oversized_manifest_is_refused(repo: Repo) -> None:
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    response = put_manifest(repo.client, repo.name, "huge", body)
    assert response.status_code == 413
    assert error_code(response) == "SIZE_INVALID"


@pytest.mark.parametrize("body", [b"{", b"null", b'{"schemaVersion": 2, "layers": 5}'])
def test_malformed_manifest_json_is_manifest_invalid(repo: Repo, body: bytes) -> None:
    response = put_manifest(repo.client, repo.name, "bad", body)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


@pytest.mark.parametrize(
    ("encoded", "said"),
    [
        # Python's decoder guesses UTF-16 and UTF-32; Go's (every client's) reads UTF-8 only.
        (lambda text: text.encode("utf-16"), "manifest is UTF-16 or UTF-32, not UTF-8"),
        (lambda text: text.encode("utf-16-le"), "manifest is UTF-16 or UTF-32, not UTF-8"),
        (lambda text: text.encode("utf-32"), "manifest is UTF-16 or UTF-32, not UTF-8"),
        (lambda text: text.encode("latin-1"), "manifest is not UTF-8 (byte "),
        # Python's decoder takes these too; they are no JSON numbers, and Go refuses them.
        (lambda text: text.replace('"pad": 0', '"pad": NaN').encode(), "NaN is no JSON number"),
        (lambda text: text.replace('"pad": 0', '"pad": Infinity').encode(), "Infinity is no"),
        (lambda text: text.replace('"pad": 0', '"pad": -Infinity').encode(), "-Infinity is no"),
        # Half a UTF-16 pair escaped alone: no character (Go reads U+FFFD), and the config's
        # media type holding one, which the manifest's row records, failed (500).
        (lambda text: text.replace(OCI_CONFIG, "application/x\\ud800").encode(), "surrogate"),
    ],
    ids=["utf-16", "utf-16-le", "utf-32", "latin-1", "nan", "infinity", "-infinity", "surrogate"],
)
def test_a_manifest_clients_cannot_read_as_json_is_refused(
    repo: Repo, encoded: Callable[[str], bytes], said: str
) -> None:
    """A manifest is RFC 8259 JSON, as clients read it: UTF-8, no NaN or Infinity, and text
    (no lone surrogate). One pushed otherwise is refused (400 MANIFEST_INVALID, saying what is wrong) and not stored,
    rather than stored for every pull to fail."""
    document = json.loads(random_image(repo.client, repo.name))
    text = json.dumps(
        {**document, "annotations": {"note": "caf\u00e9"}, "pad": 0}, ensure_ascii=False
    )
    body = encoded(text)
    response = put_manifest(repo.client, repo.name, "odd", body)
    assert response.status_code == 400, describe(response)
    assert error_code(response) == "MANIFEST_INVALID" and said in response.text, response.text
    assert repo.client.get(manifest_path(repo.name, "odd")).status_code == 404
    assert repo.client.get(manifest_path(repo.name, digest_of(body))).status_code == 404
    # The same manifest as UTF-8 JSON is taken.
    assert put_manifest(repo.client, repo.name, "odd", text.encode()).status_code == 201


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ],
)
def test_a_schema_1_manifest_is_refused_as_such(repo: Repo, media_type: str) -> None:
    """Schema 1 declares no mediaType: the Content-Type (and schemaVersion) name it, and the
    refusal says what to push instead rather than only that schemaVersion must be 2."""
    body = json.dumps(
        {
            "schemaVersion": 1,
            "name": repo.name,
            "tag": "old",
            "architecture": "amd64",
            "fsLayers": [],
            "history": [],
        }
    ).encode()
    response = put_manifest(repo.client, repo.name, "old", body, media_type)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"
    assert "schema 1 manifests are not supported" in response.text


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.mark.parametrize(
    ("kind", "content_type", "said"),
    [
        ("undeclared", DOCKER_MANIFEST, "declares no mediaType: a Docker schema 2 manifest"),
        ("index", DOCKER_MANIFEST_LIST, "declares no mediaType: a Docker schema 2 manifest"),
        ("with manifests", OCI_MANIFEST, "an image manifest has no 'manifests' list"),
        ("with manifests", None, "an image manifest has no 'manifests' list"),
        ("index with layers", OCI_INDEX, "an image index has no 'layers'"),
    ],
)
def test_a_manifest_that_is_not_the_kind_its_type_names_is_refused(
    repo: Repo, kind: str, content_type: str | None, said: str
) -> None:
    """An OCI manifest (no mediaType) pushed with a Docker Content-Type was stored and served
    as a Docker manifest, and a body that is both an image manifest and an index as whichever
    its type named. Distribution refuses each (400 MANIFEST_INVALID), and so does Berth now,
    saying what is wrong; the OCI manifest is taken with its own Content-Type."""
    image = json.loads(random_image(repo.client, repo.name))
    child = Blob(to_json(image), OCI_MANIFEST)
    assert push_manifest(repo.client, repo.name, child.digest, child).status_code == 201
    undeclared = {key: value for key, value in image.items() if key != "mediaType"}
    bodies = {
        "undeclared": undeclared,
        "index": {"schemaVersion": 2, "manifests": [child.descriptor()]},
        "with manifests": {**image, "manifests": [child.descriptor()]},
        "index with layers": {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [child.descriptor()],
            "layers": image["layers"],
        },
    }
    body = to_json(bodies[kind])
    headers = {"Content-Type": content_type} if content_type else {}
    response = repo.client.put(manifest_path(repo.name, "mixed"), content=body, headers=headers)
    assert response.status_code == 400, describe(response)
    assert error_code(response) == "MANIFEST_INVALID" and said in response.text, response.text
    assert repo.client.get(manifest_path(repo.name, "mixed")).status_code == 404
    if kind == "undeclared":
        taken = put_manifest(repo.client, repo.name, "mixed", body, OCI_MANIFEST)
        assert taken.status_code == 201, describe(taken)
        served = repo.client.get(
            manifest_path(repo.name, "mixed"),
            headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"},
        )
        assert served.headers["Content-Type"] == OCI_MANIFEST


def test_manifest_pushed_by_wrong_digest_is_refused(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    response = put_manifest(repo.client, repo.name, digest_of(b"other"), body)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


def test_invalid_tag_is_refused(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    response = put_manifest(repo.client, repo.name, "-bad", body)
    assert error_code(response) == "MANIFEST_INVALID"


def test_wrong_digest_leaves_nothing_behind(repo: Repo) -> None:
    before = stored_files(repo.server)
    data = os.urandom(10_000)
    wrong = digest_of(b"something else")
    response = repo.client.post(repo.url("blobs/uploads/"), params={"digest": wrong}, content=data)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert repo.client.head(repo.url(f"blobs/{wrong}")).status_code == 404
    assert repo.client.head(repo.url(f"blobs/{digest_of(data)}")).status_code == 404
    assert stored_files(repo.server) == before
    assert scratch_files(repo.server) == []


def test_chunked_upload_with_wrong_digest_is_discarded(repo: Repo) -> None:
    location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
    repo.client.patch(location, content=b"abc", headers={"Content-Range": "0-2"})
    response = repo.client.put(location, params={"digest": digest_of(b"abd")})
    assert error_code(response) == "DIGEST_INVALID"
    assert error_code(repo.client.get(location)) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("content_range", ["5-9", "0-2"])
def test_out_of_order_and_repeated_chunks_get_416(repo: Repo, content_range: str) -> None:
    location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
    assert (
        repo.client.patch(location, content=b"abc", headers={"Content-Range": "0-2"}).status_code
        == 202
    )
    response = repo.client.patch(
        location, content=b"xyz12", headers={"Content-Range": content_range}
    )
    assert response.status_code == 416
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert response.headers["Range"] == "0-2"
    status = repo.client.get(location)
    assert status.status_code == 204 and status.headers["Range"] == "0-2"
    repo.client.patch(location, content=b"def", headers={"Content-Range": "3-5"})
    done = repo.client.put(location, params={"digest": digest_of(b"abcdef")})
    assert done.status_code == 201
    assert repo.client.get(repo.url(f"blobs/{digest_of(b'abcdef')}")).content == b"abcdef"


@pytest.mark.parametrize("content_range", ["0-9", "0-2"])
def test_a_chunk_longer_or_shorter_than_its_content_range_gets_416(
    repo: Repo, content_range: str
) -> None:
    """Five bytes sent as bytes 0-9 (or 0-2): refused and not stored, so the client does not go
    on from an offset the upload does not have; the upload stays where it was."""
    location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
    response = repo.client.patch(
        location, content=b"12345", headers={"Content-Range": content_range}
    )
    assert response.status_code == 416, response.text
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert "Content-Range" in response.json()["errors"][0]["message"]
    status = repo.client.get(location)
    assert status.status_code == 204 and status.headers["Range"] == "0-0"
    repo.client.patch(location, content=b"abc", headers={"Content-Range": "0-2"})
    done = repo.client.put(location, params={"digest": digest_of(b"abc")})
    assert done.status_code == 201
    assert repo.client.get(repo.url(f"blobs/{digest_of(b'abc')}")).content == b"abc"


def test_patches_racing_from_one_offset_store_one_body_or_are_refused(repo: Repo) -> None:
    """Several PATCHes of one upload from the same offset at once (a client retrying a chunk
    while its first try is still being written): one is taken, every other is a 416 naming
    the range the upload holds, and the blob holds exactly the bytes taken, never a mix."""
    size = 512 * 1024
    for _round in range(2):
        location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        first = os.urandom(64 * 1024)
        patched = repo.client.patch(
            location, content=first, headers={"Content-Range": f"0-{len(first) - 1}"}
        )
        assert patched.status_code == 202
        bodies = [bytes([n]) * 1000 + os.urandom(size - 1000) for n in range(6)]
        responses = race_patches(
            lambda: httpx.Client(base_url=repo.server.url, auth=repo.client.auth, timeout=60),
            location,
            len(first),
            bodies,
        )
        taken = assert_one_patch_taken(responses, f"0-{len(first) + size - 1}")
        data = first + bodies[taken]
        done = repo.client.put(location, params={"digest": digest_of(data)})
        assert done.status_code == 201, done.text
        assert repo.client.get(repo.url(f"blobs/{digest_of(data)}")).content == data


def test_sha512_blob(repo: Repo) -> None:
    data = os.urandom(3000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    response = repo.client.post(repo.url("blobs/uploads/"), params={"digest": digest}, content=data)
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == digest
    assert repo.client.get(repo.url(f"blobs/{digest}")).content == data


def test_a_conditional_pull_of_a_blob_held_answers_304_without_a_body(repo: Repo) -> None:
    """`If-None-Match` naming a blob's ETag (its digest) gets 304 Not Modified and no body,
    GET and HEAD, with or without a Range, for a blob sent from memory and one sent from its
    file; any other ETag gets the blob; a blob not in the repository is still 404, and a
    caller without credentials still 401."""
    small, large = os.urandom(4096), os.urandom(2 * 1024 * 1024 + 3)
    for data in (small, large):
        digest = push_bytes(repo.client, repo.name, data)
        etag = repo.client.get(repo.url(f"blobs/{digest}")).headers["etag"]
        assert etag == f'"{digest}"'
        for method in ("GET", "HEAD"):
            for held in (etag, f"W/{etag}", f'"sha256:{"0" * 64}", {etag}', digest, "*"):
                for extra in ({}, {"Range": "bytes=0-99"}):
                    response = repo.client.request(
                        method,
                        repo.url(f"blobs/{digest}"),
                        headers={"If-None-Match": held, **extra},
                    )
                    assert response.status_code == 304, (len(data), method, held, extra)
                    assert response.content == b""
                    assert response.headers["etag"] == etag
                    assert response.headers["docker-content-digest"] == digest
                    assert "content-length" not in response.headers
                    assert "content-type" not in response.headers
        other = {"If-None-Match": f'"sha256:{"0" * 64}"'}
        response = repo.client.get(repo.url(f"blobs/{digest}"), headers=other)
        assert response.status_code == 200 and response.content == data

    missing = repo.client.get(repo.url(f"blobs/sha256:{'1' * 64}"), headers={"If-None-Match": "*"})
    assert missing.status_code == 404 and error_code(missing) == "BLOB_UNKNOWN"
    anonymous = httpx.get(
        f"{repo.server.url}{repo.url(f'blobs/{digest_of(small)}')}",
        headers={"If-None-Match": f'"{digest_of(small)}"'},
    )
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/../../etc/passwd/blobs/uploads/", None),
        ("/v2/p/%2e%2e/blobs/uploads/", "NAME_INVALID"),
        ("/v2/p/UPPER/blobs/uploads/", "NAME_INVALID"),
    ],
)
def test_path_traversal_in_names_is_refused(repo: Repo, path: str, code: str | None) -> None:
    response = repo.client.post(path)
    assert response.status_code in (400, 404)
    if code:
        assert error_code(response) == code


@pytest.mark.parametrize(
    "digest", ["sha256:..%2F..%2F..%2Fetc%2Fpasswd", "sha256:" + "0" * 63 + "/", "sha256:ABC"]
)
def test_path_traversal_in_digests_is_refused(repo: Repo, digest: str) -> None:
    response = repo.client.get(repo.url(f"blobs/{digest}"))
    assert response.status_code in (400, 404)
    if response.status_code == 400:
        assert error_code(response) == "DIGEST_INVALID"


def test_upload_ids_cannot_escape_the_scratch_directory(repo: Repo) -> None:
    for upload_id in ["..%2F..%2Fberth.db", "x" * 32, "0" * 31 + "g", "A" * 32]:
        response = repo.client.get(repo.url(f"blobs/uploads/{upload_id}"))
        assert response.status_code == 404
        assert error_code(response) in ("BLOB_UPLOAD_UNKNOWN", "UNSUPPORTED")


def test_invalid_pagination_is_refused(repo: Repo) -> None:
    response = repo.client.get(repo.url("tags/list"), params={"n": "-1"})
    assert response.status_code == 400


def test_truncated_upload_keeps_nothing_and_can_be_retried(repo: Repo) -> None:
    """A client that dies mid-chunk: the upload stays at the last acknowledged offset."""
    location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
    data = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", repo.server.port)) as sock:
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(head.encode() + data[:50_000])
    status = repo.client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"
    assert repo.client.head(repo.url(f"blobs/{digest_of(data)}")).status_code == 404
    retried = repo.client.put(location, params={"digest": digest_of(data)}, content=data)
    assert retried.status_code == 201
    assert repo.client.get(repo.url(f"blobs/{digest_of(data)}")).content == data


def test_blob_range_requests(repo: Repo) -> None:
    data = os.urandom(5000)
    digest = push_bytes(repo.client, repo.name, data)
    response = repo.client.get(repo.url(f"blobs/{digest}"), headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == data[100:200]
    head = repo.client.head(repo.url(f"blobs/{digest}"))
    assert head.headers["Content-Length"] == "5000"
    assert head.headers["Docker-Content-Digest"] == digest
    # A HEAD answers a Range as the GET does, on every store.
    for wanted, content_range, length in (
        ("bytes=100-199", "100-199", "100"),
        ("bytes=-10", "4990-4999", "10"),
    ):
        head = repo.client.head(repo.url(f"blobs/{digest}"), headers={"Range": wanted})
        assert head.status_code == 206, wanted
        assert head.headers["Content-Range"] == f"bytes {content_range}/5000"
        assert head.headers["Content-Length"] == length
        assert head.headers["Docker-Content-Digest"] == digest
    for beyond in ("bytes=5000-", "bytes=6000-6100"):
        head = repo.client.head(repo.url(f"blobs/{digest}"), headers={"Range": beyond})
        assert head.status_code == 416, beyond
        assert head.headers["Content-Range"] == "bytes */5000"


def test_a_range_set_holding_an_inverted_range_is_refused_with_416(repo: Repo) -> None:
    """`bytes=5-2` is an invalid range (RFC 9110 14.1.1), which a server may ignore or reject
    (14.2): Berth rejects it, as Distribution does and the OCI conformance suite expects of
    `bytes=500-0`, alone or among other ranges, on every store (Starlette answered 400 for a
    set of several; S3 sent it whole), however many digits it has (int() refused 4300+)."""
    data = os.urandom(5000)
    digest = push_bytes(repo.client, repo.name, data)
    url = repo.url(f"blobs/{digest}")
    for inverted in ("bytes=5-2", "bytes=0-1,5-2", "bytes=0-1, 5-2", f"bytes={'9' * 5000}-1"):
        refused = repo.client.get(url, headers={"Range": inverted})
        assert refused.status_code == 416, (inverted[:20], refused.text)
        assert refused.headers["Content-Range"] == "bytes */5000"
        head = repo.client.head(url, headers={"Range": inverted})
        assert head.status_code == 416, inverted[:20]
        assert head.headers["Content-Range"] == "bytes */5000"
    fine = repo.client.get(url, headers={"Range": "bytes=2-5"})
    assert (fine.status_code, fine.content) == (206, data[2:6])


def test_a_range_gets_the_same_answer_on_get_and_head_on_every_store(repo: Repo) -> None:
    """One rule for every Range (`RANGE_ANSWERS`), for a GET and a HEAD, from a file and from
    S3: several ranges get the whole blob (the filesystem store sent a multipart 206, S3 200);
    a `bytes=` value that is no byte range set is refused with 416 (it was ignored: 200);
    every 416 is in the OCI error format with the blob's size (a number of 4300+ digits got
    Starlette's plain-text 400 from a file)."""
    data = os.urandom(RANGED_SIZE)
    digest = push_bytes(repo.client, repo.name, data)
    url = repo.url(f"blobs/{digest}")
    for header, status, part in RANGE_ANSWERS:
        for method in ("GET", "HEAD"):
            answer = repo.client.request(method, url, headers={"Range": header})
            check_range_answer(answer, data, header, status, part)


def test_every_registry_response_names_the_api_version(repo: Repo) -> None:
    for response in (repo.client.get("/v2/"), repo.client.get(repo.url("manifests/none"))):
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_registry_responses_forbid_content_sniffing(repo: Repo) -> None:
    """Blobs and manifests are what clients pushed: a browser must take them for what their
    Content-Type says, never sniff them into HTML (an error answer too)."""
    html = b"<html><script>alert(1)</script></html>"
    digest = push_bytes(repo.client, repo.name, html)
    body = random_image(repo.client, repo.name)
    put_manifest(repo.client, repo.name, "sniffed", body)
    answers = {
        "blob GET": repo.client.get(repo.url(f"blobs/{digest}")),
        "blob HEAD": repo.client.head(repo.url(f"blobs/{digest}")),
        "manifest GET": repo.client.get(repo.url("manifests/sniffed")),
        "manifest HEAD": repo.client.head(repo.url("manifests/sniffed")),
        "error": repo.client.get(repo.url("manifests/missing")),
    }
    assert answers["blob GET"].content == html
    assert [a.status_code for a in answers.values()] == [200, 200, 200, 200, 404]
    for what, answer in answers.items():
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", what


def test_accept_header_negotiation(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    put_manifest(repo.client, repo.name, "neg", body)
    only_docker = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    refused = repo.client.get(repo.url("manifests/neg"), headers=only_docker)
    assert refused.status_code == 404
    assert error_code(refused) == "MANIFEST_UNKNOWN"
    both = {"Accept": f"{only_docker['Accept']}, {OCI_MANIFEST}"}
    accepted = repo.client.get(repo.url("manifests/neg"), headers=both)
    assert accepted.headers["Content-Type"] == OCI_MANIFEST


def test_readiness_and_health(server: BerthServer) -> None:
    assert httpx.get(f"{server.url}/healthz").text == "ok"
    assert httpx.get(f"{server.url}/readyz").status_code == 200
