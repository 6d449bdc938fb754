"""Content stays whole: nothing a stored manifest references is deleted, on any surface."""

from __future__ import annotations

import json
import uuid

import httpx

from berth.state import Services
from tests.conftest import Repo
from tests.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    error_code,
    image_index,
    put_manifest,
    random_image,
)

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


def layer_of(manifest: bytes) -> str:
    return str(json.loads(manifest)["layers"][0]["digest"])


def test_a_blob_a_stored_image_uses_is_not_deleted(repo: Repo) -> None:
    body = random_image(repo.client, repo.name)
    manifest = Blob(body, OCI_MANIFEST)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    layer = layer_of(body)

    refused = repo.client.delete(repo.url(f"blobs/{layer}"))
    assert refused.status_code == 409, refused.text
    assert error_code(refused) == "DENIED"  # the spec's codes only
    message = refused.json()["errors"][0]["message"]
    assert manifest.digest in message and "tagged v1" in message, message
    # The image still pulls, whole.
    assert repo.client.get(repo.url("manifests/v1"), headers=ACCEPT).content == body
    assert repo.client.get(repo.url(f"blobs/{layer}")).status_code == 200

    # Once no manifest uses it, the blob goes.
    assert repo.client.delete(repo.url(f"manifests/{manifest.digest}")).status_code == 202
    assert repo.client.delete(repo.url(f"blobs/{layer}")).status_code == 202
    assert repo.client.head(repo.url(f"blobs/{layer}")).status_code == 404


def test_a_platform_manifest_a_stored_index_lists_is_not_deleted(repo: Repo) -> None:
    children = []
    for _ in range(2):
        body = random_image(repo.client, repo.name)
        assert put_manifest(repo.client, repo.name, Blob(body).digest, body).status_code == 201
        children.append(Blob(body, OCI_MANIFEST))
    index = image_index([child.descriptor() for child in children])
    assert put_manifest(repo.client, repo.name, "multi", index.data, OCI_INDEX).status_code == 201

    # /v2 and the management API answer alike: 409, naming the index and its tag; each then
    # says what its own delete of the index does (the API's deletes it too, /v2's does not).
    refused = repo.client.delete(repo.url(f"manifests/{children[0].digest}"))
    assert refused.status_code == 409, refused.text
    assert error_code(refused) == "DENIED"
    message = refused.json()["errors"][0]["message"]
    assert index.digest in message and "tagged multi" in message, message
    managed = repo.client.request(
        "DELETE",
        f"/api/v1/projects/{repo.project}/repositories/{repo.repository}/images/{children[0].digest}",
        auth=None,  # the bearer token alone (delete() does not take None: request() does)
        headers={"Authorization": f"Bearer {api_token(repo)}"},
    )
    assert managed.status_code == 409
    assert message.endswith("; delete the index first"), message
    assert managed.json()["detail"] == message.removesuffix(" first") + (
        ", which deletes it too, unless it has a tag of its own"
    )
    assert managed.json()["code"] == "CONFLICT"  # the API's own code
    fetched = repo.client.get(repo.url(f"manifests/{children[0].digest}"), headers=ACCEPT)
    assert fetched.status_code == 200

    assert repo.client.delete(repo.url("manifests/multi")).status_code == 202  # just the tag
    assert repo.client.delete(repo.url(f"manifests/{children[0].digest}")).status_code == 409
    assert repo.client.delete(repo.url(f"manifests/{index.digest}")).status_code == 202
    assert repo.client.delete(repo.url(f"manifests/{children[0].digest}")).status_code == 202


def api_token(repo: Repo) -> str:
    issued = httpx.post(f"{repo.server.url}/api/v1/auth/tokens", auth=repo.client.auth)
    assert issued.status_code == 201, issued.text
    return str(issued.json()["token"])


def test_a_repository_member_cancels_its_own_upload(repo: Repo) -> None:
    """Cancelling an upload needs push, not delete."""
    user = "u" + uuid.uuid4().hex[:10]

    async def create(services: Services) -> tuple[str, str]:
        await services.identity.users.create_user(user, "pw-" + uuid.uuid4().hex, actor="test")
        await services.identity.members.grant(
            repo.project, repo.repository, user, "member", actor="test"
        )
        created = await services.identity.keys.create_key(user, repo.project, actor="test")
        return created.key_id, created.secret

    key = repo.server._services(create)
    with httpx.Client(base_url=repo.server.url, auth=key, timeout=30) as member:
        started = member.post(repo.url("blobs/uploads/"))
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        cancelled = member.delete(location)
        assert cancelled.status_code == 204, cancelled.text
        assert member.get(location).status_code == 404
        # Deleting stored content still needs the delete right.
        body = random_image(member, repo.name)
        assert put_manifest(member, repo.name, "v1", body).status_code == 201
        refused = member.delete(repo.url(f"manifests/{Blob(body).digest}"))
        assert refused.status_code in (401, 403), refused.text
