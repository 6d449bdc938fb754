"""Manifest pulls served from the node's manifest cache answer exactly what the database holds:
the same bytes and headers every time, a moved tag and a deletion seen at once on the node,
whichever process of the node made the change."""

from __future__ import annotations

import subprocess

import httpx

from berth.state import Services
from tests.conftest import Repo
from tests.oci import OCI_MANIFEST, digest_of, put_manifest, random_image

ACCEPT = {"Accept": OCI_MANIFEST}
# Headers that differ between any two answers.
PER_ANSWER = {"date", "x-request-id"}


def pull(repo: Repo, reference: str, method: str = "GET") -> httpx.Response:
    return repo.client.request(method, repo.url(f"manifests/{reference}"), headers=ACCEPT)


def answer(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in PER_ANSWER}
    return response.status_code, headers, response.content


def test_repeated_pulls_answer_the_same_bytes_and_headers(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    digest = digest_of(body)
    for reference in ("v1", digest):
        first = answer(pull(repo, reference))
        assert first[0] == 200 and first[2] == body
        assert first[1]["docker-content-digest"] == digest
        assert first[1]["content-type"] == OCI_MANIFEST
        assert first[1]["content-length"] == str(len(body))
        assert [answer(pull(repo, reference)) for _ in range(3)] == [first] * 3
        head = answer(pull(repo, reference, "HEAD"))
        assert head == (200, first[1], b"")


def test_a_moved_tag_and_a_deleted_manifest_are_seen_at_once(repo: Repo) -> None:
    old, new = random_image(repo.client, repo.name), random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", old).status_code == 201
    assert put_manifest(repo.client, repo.name, "keep", new).status_code == 201
    assert pull(repo, "v1").content == old  # now cached
    assert pull(repo, "v1").content == old

    assert put_manifest(repo.client, repo.name, "v1", new).status_code == 201
    assert pull(repo, "v1").content == new
    assert pull(repo, "v1", "HEAD").headers["docker-content-digest"] == digest_of(new)

    assert pull(repo, digest_of(new)).status_code == 200  # cached by digest too
    deleted = repo.client.delete(repo.url(f"manifests/{digest_of(new)}"))
    assert deleted.status_code == 202
    for reference in (digest_of(new), "v1", "keep"):
        assert pull(repo, reference).status_code == 404
        assert pull(repo, reference, "HEAD").status_code == 404


def test_a_change_made_by_another_process_of_the_node_is_seen_at_once(repo: Repo) -> None:
    """An admin verb (here the same service code in the test's own process, as the CLI runs
    it) deletes a tag the server has just served: the server's next answer is 404."""
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    assert pull(repo, "v1").status_code == 200
    assert pull(repo, "v1").status_code == 200

    async def delete_tag(services: Services) -> None:
        found = await services.repositories.require(repo.project, repo.repository)
        await services.registry.delete_manifest(found, "", "v1", actor="admin", client=None)

    repo.server._services(delete_tag)
    assert pull(repo, "v1").status_code == 404
    assert pull(repo, digest_of(body)).status_code == 200


def test_a_conditional_pull_of_the_manifest_held_answers_304_without_a_body(repo: Repo) -> None:
    """`If-None-Match: "<digest>"` (the ETag a pull answered) gets 304 Not Modified and no
    body, by tag and by digest, GET and HEAD; any other ETag gets the manifest; after the tag
    moves, the old ETag gets the new manifest at once."""
    old, new = random_image(repo.client, repo.name), random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", old).status_code == 201
    etag = pull(repo, "v1").headers["etag"]
    assert etag == f'"{digest_of(old)}"'
    for reference in ("v1", digest_of(old)):
        for method in ("GET", "HEAD"):
            for held in (etag, f"W/{etag}", f'"sha256:{"0" * 64}", {etag}', digest_of(old), "*"):
                response = repo.client.request(
                    method,
                    repo.url(f"manifests/{reference}"),
                    headers={**ACCEPT, "If-None-Match": held},
                )
                assert response.status_code == 304, (reference, method, held)
                assert response.content == b""
                assert response.headers["etag"] == etag
                assert response.headers["docker-content-digest"] == digest_of(old)
                assert "content-type" not in response.headers
    other = {**ACCEPT, "If-None-Match": f'"sha256:{"0" * 64}"'}
    response = repo.client.get(repo.url("manifests/v1"), headers=other)
    assert response.status_code == 200 and response.content == old

    assert put_manifest(repo.client, repo.name, "v1", new).status_code == 201
    moved = repo.client.get(repo.url("manifests/v1"), headers={**ACCEPT, "If-None-Match": etag})
    assert moved.status_code == 200 and moved.content == new
    # Access is checked first: a caller without credentials learns nothing from its ETag.
    anonymous = httpx.get(
        f"{repo.server.url}{repo.url('manifests/v1')}",
        headers={**ACCEPT, "If-None-Match": f'"{digest_of(new)}"'},
    )
    assert anonymous.status_code == 401


def test_curl_revalidates_a_manifest_with_its_etag(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    key_id, secret = repo.server.access_key(repo.project)
    url = f"{repo.server.url}{repo.url('manifests/v1')}"
    common = ["curl", "-sS", "-u", f"{key_id}:{secret}", "-H", f"Accept: {OCI_MANIFEST}"]
    first = subprocess.run(
        [*common, "-D", "-", "-o", "/dev/null", url], capture_output=True, text=True, check=True
    ).stdout
    etag = next(
        line.split(":", 1)[1].strip()
        for line in first.splitlines()
        if line.lower().startswith("etag:")
    )
    again = subprocess.run(
        [*common, "-H", f"If-None-Match: {etag}", "-w", "%{http_code} %{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert again == "304 0"


def test_a_manifest_type_the_client_refuses_with_q_0_is_not_sent(repo: Repo) -> None:
    """RFC 9110: `q=0` means "not acceptable", however broad a range beside it accepts."""
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    refused = {"Accept": f"{OCI_MANIFEST};q=0, */*"}
    for method in ("GET", "HEAD"):
        answered = repo.client.request(method, repo.url("manifests/v1"), headers=refused)
        assert answered.status_code == 404
        assert "docker-content-digest" not in answered.headers
        if method == "GET":
            (error,) = answered.json()["errors"]
            assert error["code"] == "MANIFEST_UNKNOWN"
            assert "Accept" in error["message"] and error["detail"]["mediaType"] == OCI_MANIFEST
    weighed = {"Accept": f"{OCI_MANIFEST};q=0.1"}
    assert repo.client.get(repo.url("manifests/v1"), headers=weighed).content == body
