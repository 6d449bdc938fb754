"""Images, tags, history and tag restore through the API, over content pushed with /v2."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

import berth.services.manifest_checks as manifest_checks_module
from berth.domain.manifests import MAX_INDEX_DEPTH
from berth.services.image_records import MAX_LISTED_LAYERS
from berth.services.registry import count_images
from berth.state import Services
from tests.api.conftest import (
    Team,
    assert_problem,
    blob_total,
    ok,
    push_image,
    services,
    until,
)
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    buildx_index,
    image_index,
    image_manifest,
    linux_index,
    manifest_path,
    push_blob,
    push_bytes,
    push_manifest,
)

SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


def images_of(team: Team, actor: str = "reader", **params: Any) -> dict[str, Any]:
    return ok(team[actor].get(team.repo_url("/images"), params=params))  # type: ignore[no-any-return]


def history_of(team: Team, **params: Any) -> list[dict[str, Any]]:
    return ok(team["reader"].get(team.repo_url("/history"), params=params))["items"]  # type: ignore[no-any-return]


def test_images_tags_platforms_sizes_and_referrers(team: Team) -> None:
    registry, name = team.registry("member"), team.oci_name()
    plain = push_image(registry, name, "v1")
    push_manifest(registry, name, "latest", plain)
    untagged = push_image(registry, name, None)
    amd64 = push_image(registry, name, None, architecture="amd64")
    arm64 = push_image(registry, name, None, architecture="arm64")
    index = image_index(
        [
            amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
            arm64.descriptor(platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ]
    )
    push_manifest(registry, name, "multi", index)
    signature = push_image(registry, name, None, subject=plain, artifact_type=SIGNATURE)

    # An image is a top-level manifest: the index's platform manifests count with it, and the
    # signature is listed under its subject. Every count says the same.
    listed = images_of(team)
    assert listed["total"] == 3
    assert {i["digest"] for i in listed["items"]} == {plain.digest, untagged.digest, index.digest}
    assert ok(team["reader"].get(team.repo_url()))["images"] == 3
    [listing] = ok(team["reader"].get(team.url("/repositories")))["items"]
    assert listing["images"] == 3
    assert ok(team["reader"].get(team.url("/summary")))["images"]["stored"] == 3
    collected = ok(team["admin"].post(team.url("/storage/collect")), 201)
    assert collected["images"] == 3
    # Newest first; with referrers=true the signature gets a row of its own too.
    with_referrers = images_of(team, referrers="true")
    assert with_referrers["total"] == 4
    by_digest = {i["digest"]: i for i in with_referrers["items"]}
    assert with_referrers["items"][0]["digest"] == signature.digest

    first = by_digest[plain.digest]
    assert first["tags"] == ["latest", "v1"] and first["image"] == ""
    # A single-platform image names its platform (from its config), as an index's entries do.
    assert first["media_type"] == OCI_MANIFEST and first["platforms"] == ["linux/amd64"]
    assert first["size"] == blob_total(plain)
    assert first["referrer_count"] == 1
    [referrer] = first["referrers"]
    assert referrer["digest"] == signature.digest and referrer["artifact_type"] == SIGNATURE
    assert by_digest[signature.digest]["subject"] == plain.digest
    assert by_digest[untagged.digest]["tags"] == []

    multi = by_digest[index.digest]
    assert multi["tags"] == ["multi"] and multi["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert multi["size"] == index.size + blob_total(amd64) + blob_total(arm64)

    page = images_of(team, per_page=2, page=2)
    assert len(page["items"]) == 1 and page["total"] == 3
    oldest_first = images_of(team, order="asc")["items"]
    assert oldest_first[0]["digest"] == plain.digest

    detail = ok(team["reader"].get(team.repo_url(f"/images/{index.digest}")))
    assert [c["platform"] for c in detail["children"]] == ["linux/amd64", "linux/arm64/v8"]
    assert detail["children"][0]["digest"] == amd64.digest
    assert detail["children"][0]["size"] == blob_total(amd64)
    assert detail["manifest_size"] == index.size and detail["parents"] == []
    child = ok(team["reader"].get(team.repo_url(f"/images/{arm64.digest}")))
    assert child["parents"] == [index.digest]
    document = json.loads(plain.data)
    plain_detail = ok(team["reader"].get(team.repo_url(f"/images/{plain.digest}")))
    assert [layer["digest"] for layer in plain_detail["layers"]] == [
        document["config"]["digest"],
        document["layers"][0]["digest"],
    ]
    assert plain_detail["referrers"][0]["digest"] == signature.digest

    # A platform manifest of a stored index goes with its index, not alone.
    body = assert_problem(
        team["member"].delete(team.repo_url(f"/images/{arm64.digest}")), 409, code="CONFLICT"
    )
    assert index.digest in body["detail"]

    tags = ok(team["reader"].get(team.repo_url("/tags")))
    assert [(t["tag"], t["digest"]) for t in tags["items"]] == [
        ("latest", plain.digest),
        ("multi", index.digest),
        ("v1", plain.digest),
    ]
    assert ok(team["reader"].get(team.repo_url("/tags"), params={"per_page": 1}))["total"] == 3


def test_deleting_a_platform_manifest_names_the_index_to_delete(team: Team) -> None:
    registry, name = team.registry("member"), team.oci_name("multi")
    amd64 = push_image(registry, name, None, architecture="amd64")
    arm64 = push_image(registry, name, None, architecture="arm64")
    index = linux_index((amd64, "amd64"), (arm64, "arm64"))
    push_manifest(registry, name, "v1", index)
    member, where = team["member"], f"{team.project}/{team.repository}"

    # Under its own image: the index that lists it goes, and takes it along.
    refused = member.delete(team.repo_url(f"/images/{arm64.digest}"), params={"image": "multi"})
    assert assert_problem(refused, 409, code="CONFLICT")["detail"] == (
        f"manifest {arm64.digest} is a platform manifest of index {where}/multi@{index.digest} "
        "(tagged v1): it cannot be deleted while an index lists it; delete the index, which "
        "deletes it too, unless it has a tag of its own"
    )
    # What the delete would take is refused alike, for a confirmation to say why.
    preview = member.get(
        team.repo_url(f"/images/{arm64.digest}/deletion"), params={"image": "multi"}
    )
    assert assert_problem(preview, 409)["detail"] == refused.json()["detail"]
    # Asked for under another image (here the repository's own): where it is, and the same.
    preview = member.get(team.repo_url(f"/images/{arm64.digest}/deletion"))
    missing = member.delete(team.repo_url(f"/images/{arm64.digest}"))
    assert assert_problem(preview, 404)["detail"] == missing.json()["detail"]
    assert assert_problem(missing, 404, code="MANIFEST_UNKNOWN")["detail"] == (
        f"manifest {arm64.digest} is not in repository {where} itself: it is under image "
        f"'multi', a platform manifest of index {where}/multi@{index.digest} (tagged v1): "
        "delete that index (pass ?image=multi), which deletes it too, unless it has a tag of "
        "its own"
    )
    # /v2 deletes only the manifest asked for, so it says to delete the index first.
    refused = registry.delete(manifest_path(name, arm64.digest))
    assert refused.status_code == 409, refused.text
    assert refused.json()["errors"][0]["message"].endswith("; delete the index first")
    # Which is so: deleting the index deletes its platform manifests.
    ok(member.delete(team.repo_url(f"/images/{index.digest}"), params={"image": "multi"}), 204)
    assert images_of(team, image="multi")["total"] == 0
    missing = member.delete(team.repo_url(f"/images/{arm64.digest}"), params={"image": "multi"})
    assert assert_problem(missing, 404)["detail"] == (
        f"manifest {arm64.digest} is not in image 'multi' of repository {where}"
    )


def test_deleting_an_index_deletes_its_platform_manifests(team: Team) -> None:
    """An image is an index with the platform manifests it lists: deleting it through the API
    deletes them too, so no untagged image appears in its place."""
    registry, name = team.registry("member"), team.oci_name()
    other = push_image(registry, name, "other")
    amd64 = push_image(registry, name, None, architecture="amd64")
    arm64 = push_image(registry, name, None, architecture="arm64")
    index = linux_index((amd64, "amd64"), (arm64, "arm64"))
    push_manifest(registry, name, "v1", index)
    assert images_of(team)["total"] == 2 and ok(team["reader"].get(team.repo_url()))["images"] == 2

    ok(team["member"].delete(team.repo_url(f"/images/{index.digest}")), 204)

    listed = images_of(team)
    assert [i["digest"] for i in listed["items"]] == [other.digest] and listed["total"] == 1
    assert ok(team["reader"].get(team.repo_url()))["images"] == 1
    for gone in (index, amd64, arm64):
        pulled = registry.get(manifest_path(name, gone.digest), headers=ACCEPT)
        assert pulled.status_code == 404, (gone.digest, pulled.text)
    # A delete event per manifest, as retention records; one audit entry, for the image.
    deletes = {e["old_digest"] for e in history_of(team) if e["action"] == "delete"}
    assert deletes == {index.digest, amd64.digest, arm64.digest}

    def audited() -> list[dict[str, Any]]:
        entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
        return [e for e in entries["items"] if e["action"] == "image.delete"]

    [entry] = until(audited)
    assert entry["target"] == f"{team.repository}@{index.digest}"
    assert entry["detail"] == {"platform_manifest_count": 2}

    # /v2's DELETE keeps OCI's meaning, only that manifest: a client may push a new index
    # listing the same platform manifests right after.
    amd64 = push_image(registry, name, None, architecture="amd64")
    index = linux_index((amd64, "amd64"))
    push_manifest(registry, name, "v2", index)
    assert registry.delete(manifest_path(name, index.digest)).status_code == 202
    assert registry.get(manifest_path(name, amd64.digest), headers=ACCEPT).status_code == 200
    push_manifest(registry, name, "v2", index)
    assert registry.get(manifest_path(name, "v2"), headers=ACCEPT).status_code == 200


def test_deleting_an_index_keeps_platform_manifests_held_elsewhere(team: Team) -> None:
    """A platform manifest another index lists stays (not as an image: that index holds it);
    one with a tag of its own stays, as an image with that tag."""
    registry, name = team.registry("member"), team.oci_name()
    amd64 = push_image(registry, name, None, architecture="amd64")
    arm64 = push_image(registry, name, "arm64-only", architecture="arm64")
    shared = push_image(registry, name, None, architecture="s390x")
    ppc = push_image(registry, name, None, architecture="ppc64le")
    first = linux_index((amd64, "amd64"), (arm64, "arm64"), (shared, "s390x"))
    second = linux_index((shared, "s390x"), (ppc, "ppc64le"))
    push_manifest(registry, name, "first", first)
    push_manifest(registry, name, "second", second)
    assert images_of(team)["total"] == 2

    ok(team["member"].delete(team.repo_url(f"/images/{first.digest}")), 204)

    listed = {i["digest"]: i["tags"] for i in images_of(team)["items"]}
    assert listed == {second.digest: ["second"], arm64.digest: ["arm64-only"]}
    assert registry.get(manifest_path(name, amd64.digest), headers=ACCEPT).status_code == 404
    for kept in (second, shared, ppc, arm64):
        pulled = registry.get(manifest_path(name, kept.digest), headers=ACCEPT)
        assert pulled.status_code == 200 and pulled.content == kept.data
    assert registry.get(manifest_path(name, "arm64-only"), headers=ACCEPT).status_code == 200
    deletes = {e["old_digest"] for e in history_of(team) if e["action"] == "delete"}
    assert deletes == {first.digest, amd64.digest}


def test_deleting_an_image_deletes_its_referrers_and_those_of_its_platforms(team: Team) -> None:
    """A signature of nothing is junk: the API's image delete takes the image's referrers
    (and theirs, and those of the platform manifests going with it), as retention does; none
    is left behind as an image of its own. A referrer deleted by itself goes alone."""
    registry, name = team.registry("member"), team.oci_name()
    amd64 = push_image(registry, name, None, architecture="amd64")
    arm64 = push_image(registry, name, None, architecture="arm64")
    index = linux_index((amd64, "amd64"), (arm64, "arm64"))
    push_manifest(registry, name, "v1", index)
    signature = push_image(registry, name, "sig", subject=index, artifact_type=SIGNATURE)
    countersigned = push_image(registry, name, None, subject=signature, artifact_type=SIGNATURE)
    sbom = push_image(registry, name, None, subject=amd64, artifact_type="application/spdx+json")
    other = push_image(registry, name, "other")
    other_signature = push_image(registry, name, None, subject=other, artifact_type=SIGNATURE)
    listed = {i["digest"]: i for i in images_of(team)["items"]}
    assert set(listed) == {index.digest, other.digest}
    assert listed[index.digest]["referrer_count"] == 1
    planned = ok(team["member"].get(team.repo_url(f"/images/{index.digest}/deletion")))
    assert planned == {
        "image": "",
        "digest": index.digest,
        "platform_manifest_count": 2,
        "referrer_count": 3,  # the audit entry's, below
        "kept": [],
        "kept_count": 0,
    }

    ok(team["member"].delete(team.repo_url(f"/images/{index.digest}")), 204)

    every = images_of(team, referrers="true")
    assert [i["digest"] for i in every["items"]] == [other_signature.digest, other.digest]
    for gone in (index, amd64, arm64, signature, countersigned, sbom):
        pulled = registry.get(manifest_path(name, gone.digest), headers=ACCEPT)
        assert pulled.status_code == 404, (gone.digest, pulled.text)
    assert registry.get(manifest_path(name, "sig"), headers=ACCEPT).status_code == 404
    history = history_of(team)
    deletes = {e["old_digest"] for e in history if e["action"] == "delete"}
    assert deletes == {m.digest for m in (index, amd64, arm64, signature, countersigned, sbom)}
    untags = [(e["tag"], e["old_digest"]) for e in history if e["action"] == "untag"]
    assert ("sig", signature.digest) in untags

    # A referrer deleted by itself: an image delete of its own; its subject stays.
    ok(team["member"].delete(team.repo_url(f"/images/{other_signature.digest}")), 204)
    assert [i["digest"] for i in images_of(team, referrers="true")["items"]] == [other.digest]

    def audited() -> list[dict[str, Any]]:
        entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
        return [e for e in entries["items"] if e["action"] == "image.delete"]

    def both_audited() -> list[dict[str, Any]]:
        entries = audited()
        return entries if len(entries) == 2 else []

    entries = {e["target"]: e["detail"] for e in until(both_audited)}
    assert entries == {
        f"{team.repository}@{index.digest}": {"platform_manifest_count": 2, "referrer_count": 3},
        f"{team.repository}@{other_signature.digest}": None,
    }


def test_a_protected_tag_on_a_referrer_refuses_the_image_delete(team: Team) -> None:
    """Tags on the referrers going with an image follow the rules tags on the image do: one an
    immutable tag rule protects refuses the whole delete, and nothing goes."""
    registry, name = team.registry("member"), team.oci_name()
    image = push_image(registry, name, "v1")
    signature = push_image(registry, name, "v1.sig", subject=image, artifact_type=SIGNATURE)
    rule = {"tag_pattern": "*.sig"}
    ok(team["project-admin"].post(team.url("/immutable-tag-rules"), json=rule), 201)

    refused = team["member"].delete(team.repo_url(f"/images/{image.digest}"))
    assert "v1.sig" in assert_problem(refused, 409)["detail"]

    for kept in (image, signature):
        assert registry.get(manifest_path(name, kept.digest), headers=ACCEPT).status_code == 200
    assert [i["digest"] for i in images_of(team)["items"]] == [image.digest]


def test_deleting_a_nested_index_deletes_what_only_it_holds(team: Team) -> None:
    registry, name = team.registry("member"), team.oci_name()
    amd64 = push_image(registry, name, None, architecture="amd64")
    arm64 = push_image(registry, name, None, architecture="arm64")
    inner = linux_index((amd64, "amd64"))
    push_manifest(registry, name, inner.digest, inner)
    outer = image_index([inner.descriptor(), arm64.descriptor()])
    push_manifest(registry, name, "v1", outer)

    ok(team["member"].delete(team.repo_url(f"/images/{outer.digest}")), 204)

    assert images_of(team)["total"] == 0
    for gone in (outer, inner, amd64, arm64):
        assert registry.get(manifest_path(name, gone.digest), headers=ACCEPT).status_code == 404


def test_deleting_an_image_of_another_repository_says_it_is_not_in_this_one(team: Team) -> None:
    member, where = team["member"], f"{team.project}/{team.repository}"
    ok(member.post(team.url("/repositories"), json={"name": "other"}), 201)
    with team.registry("member") as registry:
        elsewhere = push_image(registry, team.oci_name(repository="other"), "v1")
    for image, named in (("", ""), ("tools", "image 'tools' of ")):
        missing = member.delete(
            team.repo_url(f"/images/{elsewhere.digest}"), params={"image": image}
        )
        assert assert_problem(missing, 404, code="MANIFEST_UNKNOWN")["detail"] == (
            f"manifest {elsewhere.digest} is not in {named}repository {where}"
        )
    ok(member.delete(team.repo_url(f"/images/{elsewhere.digest}", repository="other")), 204)


def test_the_openapi_document_says_when_deleting_an_image_is_refused(team: Team) -> None:
    paths = ok(team["reader"].get("/openapi.json"))["paths"]
    answers = paths["/projects/{project}/repositories/{repository}/images/{digest}"]["delete"]
    described = {status: answers["responses"][status]["description"] for status in ("404", "409")}
    assert "the `?image=` to pass" in described["404"], described
    assert "that index, whose delete deletes it too" in described["404"], described
    assert "a platform manifest that a stored index lists" in described["409"], described
    deleted = answers["responses"]["204"]["description"]
    assert "the platform manifests it lists that no other stored index lists" in deleted


def test_tags_on_platform_manifests_show_with_their_index(team: Team) -> None:
    """`docker manifest create` and podman push each platform under a tag of its own, then
    an index tagged `latest` listing them: the per-platform tags are the index's entries',
    shown with it (the index stays one image, as the image limit and retention count it)."""
    registry, name = team.registry("member"), team.oci_name()
    amd64 = push_image(registry, name, "verify-amd64", architecture="amd64")
    arm64 = push_image(registry, name, "verify-arm64", architecture="arm64")
    index = linux_index((amd64, "amd64"), (arm64, "arm64"))
    push_manifest(registry, name, "latest", index)

    listed = images_of(team)
    assert listed["total"] == 1 and ok(team["reader"].get(team.repo_url()))["images"] == 1
    [image] = listed["items"]
    assert image["tags"] == ["latest"]
    assert image["child_tags"] == ["verify-amd64", "verify-arm64"]
    detail = ok(team["reader"].get(team.repo_url(f"/images/{index.digest}")))
    assert [(c["digest"], c["tags"]) for c in detail["children"]] == [
        (amd64.digest, ["verify-amd64"]),
        (arm64.digest, ["verify-arm64"]),
    ]
    # Such a tag is cleaned up as any: untagged, it is no longer shown.
    ok(team["member"].delete(team.repo_url("/tags/verify-arm64")), 204)
    assert images_of(team)["items"][0]["child_tags"] == ["verify-amd64"]


def test_a_nested_index_gives_its_platforms_size_and_tags_to_the_index_listing_it(
    team: Team,
) -> None:
    registry, name = team.registry("member"), team.oci_name()
    amd64 = push_image(registry, name, "amd64", architecture="amd64")
    arm64 = push_image(registry, name, None, architecture="arm64")
    inner = image_index(
        [
            amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
            arm64.descriptor(platform={"os": "linux", "architecture": "arm64"}),
        ]
    )
    push_manifest(registry, name, "inner", inner)
    outer = image_index([inner.descriptor()], annotations={"org.example": "nested"})
    push_manifest(registry, name, "outer", outer)

    [image] = images_of(team)["items"]
    assert image["digest"] == outer.digest and image["tags"] == ["outer"]
    assert image["platforms"] == ["linux/amd64", "linux/arm64"]
    assert image["size"] == outer.size + inner.size + blob_total(amd64) + blob_total(arm64)
    assert image["child_tags"] == ["amd64", "inner"]
    detail = ok(team["reader"].get(team.repo_url(f"/images/{outer.digest}")))
    [child] = detail["children"]
    assert child["digest"] == inner.digest and child["tags"] == ["inner"]
    assert child["size"] == inner.size + blob_total(amd64) + blob_total(arm64)


def test_buildx_attestations_are_not_platforms(team: Team) -> None:
    """docker buildx lists provenance as an index entry of platform unknown/unknown, marked
    as an attestation of the image it describes."""
    registry, name = team.registry("member"), team.oci_name()
    amd64 = push_image(registry, name, None, architecture="amd64")
    attestation = push_image(registry, name, None, architecture="unknown")
    index = buildx_index(amd64, attestation)
    push_manifest(registry, name, "buildx", index)

    [image] = images_of(team)["items"]
    assert image["platforms"] == ["linux/amd64"]
    assert image["size"] == index.size + blob_total(amd64) + blob_total(attestation)
    detail = ok(team["reader"].get(team.repo_url(f"/images/{index.digest}")))
    assert [(c["platform"], c["attestation"], c["attests"]) for c in detail["children"]] == [
        ("linux/amd64", False, None),
        (None, True, amd64.digest),
    ]


def test_an_image_size_counts_a_foreign_layer_only_when_stored(team: Team) -> None:
    """A non-distributable layer fetched from its URL takes no space here; one pushed
    anyway does, and is counted."""
    registry, name = team.registry("member"), team.oci_name()
    config = Blob(b'{"architecture":"amd64","os":"windows"}', OCI_CONFIG)
    held = Blob(uuid.uuid4().bytes * 100, FOREIGN)
    elsewhere = Blob(uuid.uuid4().bytes * 1000, FOREIGN)
    for blob in (config, held):
        push_blob(registry, name, blob)
    manifest = image_manifest(
        config.descriptor(),
        [held.descriptor(), elsewhere.descriptor(urls=["https://example.com/base-layer"])],
    )
    push_manifest(registry, name, "windows", manifest)

    [image] = images_of(team)["items"]
    assert image["size"] == manifest.size + config.size + held.size


def test_a_referrer_pushed_before_its_subject_is_an_image_until_the_subject_arrives(
    team: Team,
) -> None:
    """OCI lets a signature be pushed before its subject: until the subject is stored, the
    signature is an image of its own (listed, counted, and counted against the image limit)."""
    registry, name = team.registry("member"), team.oci_name()
    config = Blob(f'{{"os":"linux","n":"{uuid.uuid4().hex}"}}'.encode(), OCI_CONFIG)
    layer = Blob(uuid.uuid4().bytes, OCI_LAYER)
    push_blob(registry, name, config)
    push_blob(registry, name, layer)
    subject = image_manifest(config.descriptor(), [layer.descriptor()])
    signature = push_image(registry, name, "sig", subject=subject, artifact_type=SIGNATURE)

    async def limit_count(s: Services) -> int:
        _, repo = await s.repositories.lookup(team.project, team.repository)
        assert repo is not None
        async with s.db.read() as conn:
            return await count_images(conn, repo.id)  # what the image limit compares

    def counted() -> tuple[set[str], int, int, int]:
        listed = images_of(team)
        stored = ok(team["reader"].get(team.url("/summary")))["images"]["stored"]
        return (
            {i["digest"] for i in listed["items"]},
            listed["total"],
            stored,
            services(team.server, limit_count),
        )

    assert counted() == ({signature.digest}, 1, 1, 1)
    push_manifest(registry, name, "v1", subject)
    assert counted() == ({subject.digest}, 1, 1, 1)
    [image] = images_of(team)["items"]
    assert image["referrer_count"] == 1


def test_an_image_of_many_layers_lists_the_first_ones_and_counts_them_all(team: Team) -> None:
    """A manifest may list tens of thousands of layers within the manifest size limit: its
    details list the first MAX_LISTED_LAYERS blobs in its order and `layer_count` says how
    many it has, as the OpenAPI document describes; its size still counts every layer."""
    registry, name = team.registry("member"), team.oci_name()
    config = Blob(f'{{"os":"linux","n":"{uuid.uuid4().hex}"}}'.encode(), OCI_CONFIG)
    layers = [Blob(uuid.uuid4().bytes, OCI_LAYER) for _ in range(MAX_LISTED_LAYERS + 4)]
    for blob in (config, *layers):  # each in one request: hundreds of them
        assert push_bytes(registry, name, blob.data) == blob.digest
    manifest = image_manifest(config.descriptor(), [layer.descriptor() for layer in layers])
    push_manifest(registry, name, "many", manifest)

    detail = ok(team["reader"].get(team.repo_url(f"/images/{manifest.digest}")))
    assert detail["layer_count"] == len(layers) + 1  # the config first, as the manifest lists
    assert [layer["digest"] for layer in detail["layers"]] == [
        blob.digest for blob in (config, *layers)
    ][:MAX_LISTED_LAYERS]
    assert detail["size"] == manifest.size + config.size + sum(layer.size for layer in layers)
    schemas = ok(team["reader"].get("/openapi.json"))["components"]["schemas"]
    assert (
        f"at most {MAX_LISTED_LAYERS}"
        in schemas["ImageDetail"]["properties"]["layers"]["description"]
    )
    assert "layer_count" in schemas["ImageDetail"]["required"]

    amd64 = push_image(registry, name, None)
    index = linux_index((amd64, "amd64"))
    push_manifest(registry, name, "index", index)
    detail = ok(team["reader"].get(team.repo_url(f"/images/{index.digest}")))
    assert (detail["layers"], detail["layer_count"], detail["child_count"]) == ([], 0, 1)


def _index_chain(registry: Any, name: str, depth: int, pushed: int) -> list[Blob]:
    """An image and `depth` indexes above it, each listing the one below, the lowest `pushed`
    of them pushed by digest. The indexes, the top one last."""
    below = push_image(registry, name, None)
    chain = []
    for level in range(depth):
        below = image_index(
            [below.descriptor(platform={"os": "linux", "architecture": "amd64"})],
            annotations={"level": str(level)},
        )
        chain.append(below)
        if level < pushed:
            push_manifest(registry, name, below.digest, below)
    return chain


def test_indexes_nested_deeper_than_the_limit_are_refused_at_push(team: Team) -> None:
    """A chain of MAX_INDEX_DEPTH indexes (an index listing an index listing ...) is pushed,
    listed with its platform and deleted; one more level is refused MANIFEST_INVALID naming
    the limit (a chain of 1,200 was stored, then failed to scan and listed no platform)."""
    registry, name = team.registry("member"), team.oci_name()
    within = _index_chain(registry, name, MAX_INDEX_DEPTH, MAX_INDEX_DEPTH - 1)
    push_manifest(registry, name, "within", within[-1])
    [image] = images_of(team)["items"]
    assert image["digest"] == within[-1].digest and image["platforms"] == ["linux/amd64"]

    deeper = image_index([within[-1].descriptor()])
    response = push_manifest(registry, name, "deeper", deeper, check=False)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["code"] == "MANIFEST_INVALID"
    assert f"at most {MAX_INDEX_DEPTH}" in error["message"]
    assert registry.get(manifest_path(name, "deeper"), headers=ACCEPT).status_code == 404

    response = team["member"].delete(team.repo_url(f"/images/{within[-1].digest}"))
    assert response.status_code == 204  # with the indexes it lists, down to the image
    assert images_of(team)["total"] == 0


def test_a_chain_stored_deeper_than_the_limit_still_lists_and_deletes(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indexes nested deeper than MAX_INDEX_DEPTH stored before pushes were refused (stored
    here by a registry without the limit) are listed, shown and deleted without error."""
    registry, name = team.registry("member"), team.oci_name()
    chain = _index_chain(registry, name, MAX_INDEX_DEPTH + 3, MAX_INDEX_DEPTH)
    top = chain[-1]
    monkeypatch.setattr(manifest_checks_module, "MAX_INDEX_DEPTH", 100)

    async def store_top(s: Services) -> None:
        _, repo = await s.repositories.lookup(team.project, team.repository)
        assert repo is not None
        for index in chain[MAX_INDEX_DEPTH:-1]:
            await s.registry.put_manifest(repo, "", index.digest, index.data, OCI_INDEX)
        await s.registry.put_manifest(repo, "", "old", top.data, OCI_INDEX)

    services(team.server, store_top)
    [image] = images_of(team)["items"]
    assert image["digest"] == top.digest and image["tags"] == ["old"]
    detail = ok(team["reader"].get(team.repo_url(f"/images/{top.digest}")))
    assert [child["digest"] for child in detail["children"]] == [chain[-2].digest]
    response = team["member"].delete(team.repo_url(f"/images/{top.digest}"))
    assert response.status_code == 204
    # Every level goes with it, however deep: none is left as a stray image.
    assert images_of(team)["total"] == 0
    for index in chain:
        assert registry.get(manifest_path(name, index.digest), headers=ACCEPT).status_code == 404


def test_a_blob_many_images_use_is_refused_naming_a_few(team: Team) -> None:
    registry, name = team.registry("member"), team.oci_name()
    config = Blob(f'{{"os":"linux","n":"{uuid.uuid4().hex}"}}'.encode(), OCI_CONFIG)
    layer = Blob(uuid.uuid4().bytes, OCI_LAYER)
    push_blob(registry, name, config)
    push_blob(registry, name, layer)
    for n in range(12):
        image = image_manifest(config.descriptor(), [layer.descriptor()], annotations={"n": f"{n}"})
        push_manifest(registry, name, image.digest, image)

    refused = registry.delete(f"/v2/{name}/blobs/{layer.digest}")
    assert refused.status_code == 409, refused.text
    [error] = refused.json()["errors"]
    assert "and 11 more; delete the images that use it first" in error["message"]
    assert len(error["detail"]["referencedBy"]) == 10


def test_nested_image_names(team: Team) -> None:
    registry = team.registry()
    root = push_image(registry, team.oci_name(), "v1")
    nested = push_image(registry, team.oci_name("team/tool"), "v1")
    everything = images_of(team)
    assert {(i["image"], i["digest"]) for i in everything["items"]} == {
        ("", root.digest),
        ("team/tool", nested.digest),
    }
    only = images_of(team, image="team/tool")
    assert [i["digest"] for i in only["items"]] == [nested.digest]
    assert [i["digest"] for i in images_of(team, image="")["items"]] == [root.digest]

    detail = team["reader"].get(
        team.repo_url(f"/images/{nested.digest}"), params={"image": "team/tool"}
    )
    assert ok(detail)["tags"] == ["v1"]
    # Without the image name, the digest is looked up under the repository's own name.
    assert_problem(
        team["reader"].get(team.repo_url(f"/images/{nested.digest}")), 404, code="MANIFEST_UNKNOWN"
    )
    response = team["member"].delete(team.repo_url("/tags/v1"), params={"image": "team/tool"})
    assert response.status_code == 204
    assert (
        ok(team["reader"].get(team.repo_url("/tags"), params={"image": "team/tool"}))["items"] == []
    )
    assert [t["tag"] for t in ok(team["reader"].get(team.repo_url("/tags")))["items"]] == ["v1"]
    restored = team["member"].post(
        team.repo_url("/tags/restore"), json={"image": "team/tool", "tag": "v1"}
    )
    assert ok(restored)["digest"] == nested.digest
    response = team["member"].delete(
        team.repo_url(f"/images/{nested.digest}"), params={"image": "team/tool"}
    )
    assert response.status_code == 204
    assert [i["image"] for i in images_of(team)["items"]] == [""]


def test_restore_flow_with_a_real_pull(team: Team) -> None:
    registry, name = team.registry("member"), team.oci_name()
    manifest = push_image(registry, name, "v1")
    # Untag with the raw registry API, then restore through the management API.
    assert registry.delete(manifest_path(name, "v1")).status_code == 202
    assert registry.get(manifest_path(name, "v1"), headers=ACCEPT).status_code == 404
    events = history_of(team, tag="v1")
    assert [e["action"] for e in events] == ["untag", "tag"]
    assert events[0]["restorable"] and not events[1]["restorable"]
    assert events[0]["old_digest"] == manifest.digest

    restored = ok(team["member"].post(team.repo_url("/tags/restore"), json={"tag": "v1"}))
    assert restored == {"image": "", "tag": "v1", "digest": manifest.digest}
    pulled = registry.get(manifest_path(name, "v1"), headers=ACCEPT)
    assert pulled.status_code == 200 and pulled.content == manifest.data
    assert pulled.headers["Docker-Content-Digest"] == manifest.digest
    latest = history_of(team, tag="v1")[0]
    assert latest["action"] == "restore" and latest["actor"] == team.users["member"]
    assert latest["new_digest"] == manifest.digest and not latest["restorable"]

    # A tag that exists cannot be restored; one never seen has nothing to restore.
    assert_problem(
        team["member"].post(team.repo_url("/tags/restore"), json={"tag": "v1"}),
        409,
        code="CONFLICT",
    )
    assert_problem(
        team["member"].post(team.repo_url("/tags/restore"), json={"tag": "never"}),
        404,
        code="MANIFEST_UNKNOWN",
    )
    # Once the image is deleted, its tags cannot come back.
    response = team["member"].delete(team.repo_url(f"/images/{manifest.digest}"))
    assert response.status_code == 204
    assert [e["action"] for e in history_of(team)][:2] == ["delete", "untag"]
    assert not any(e["restorable"] for e in history_of(team))
    body = assert_problem(
        team["member"].post(team.repo_url("/tags/restore"), json={"tag": "v1"}), 404
    )
    assert "no longer stored" in body["detail"]
    assert_problem(team["member"].delete(team.repo_url(f"/images/{manifest.digest}")), 404)
    gone = assert_problem(team["member"].delete(team.repo_url("/tags/v1")), 404)
    assert gone["detail"] == "tag 'v1' is not in this repository", gone  # not "manifest 'v1'"

    # Deletes (through /v2 or the API) and restores are in the audit log too.
    wanted = {
        ("tag.delete", f"{team.repository}:v1"),
        ("tag.restore", f"{team.repository}:v1"),
        ("image.delete", f"{team.repository}@{manifest.digest}"),
    }

    def audited() -> bool:
        entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
        found = {(e["action"], e["target"]) for e in entries["items"]}
        actors = {
            e["actor"] for e in entries["items"] if e["action"].startswith(("tag.", "image."))
        }
        return wanted <= found and actors == {team.users["member"]}

    assert until(audited)


def test_history_records_every_change_with_its_actor(team: Team) -> None:
    member, admin = team.registry("member"), team.registry("admin")
    name = team.oci_name()
    first = push_image(member, name, "stable")
    second = push_image(admin, name, None)
    push_manifest(admin, name, "stable", second)  # a tag move
    response = team["project-admin"].delete(team.repo_url("/tags/stable"))
    assert response.status_code == 204

    events = history_of(team)
    assert [(e["action"], e["tag"], e["actor"]) for e in events] == [
        ("untag", "stable", team.users["project-admin"]),
        ("move", "stable", "admin"),
        ("push", None, "admin"),
        ("tag", "stable", team.users["member"]),
        ("push", None, team.users["member"]),
    ]
    move = events[1]
    assert (move["old_digest"], move["new_digest"]) == (first.digest, second.digest)
    by_digest = history_of(team, digest=first.digest)
    assert [e["action"] for e in by_digest] == ["move", "tag", "push"]
    paged = ok(team["reader"].get(team.repo_url("/history"), params={"per_page": 2, "page": 2}))
    assert paged["total"] == 5 and [e["action"] for e in paged["items"]] == ["push", "tag"]
    assert history_of(team, image="other/image") == []


def test_who_may_read_and_change_images(team: Team) -> None:
    registry = team.registry()
    manifest = push_image(registry, team.oci_name(), "v1")
    ok(team["reader"].get(team.repo_url("/images")))
    ok(team["reader"].get(team.repo_url("/history")))
    for actor in ("reader", "outsider", "stranger"):
        assert_problem(team[actor].delete(team.repo_url("/tags/v1")), 403)
        assert_problem(team[actor].delete(team.repo_url(f"/images/{manifest.digest}")), 403)
        deletion = team.repo_url(f"/images/{manifest.digest}/deletion")
        assert_problem(team[actor].get(deletion), 403)
        assert_problem(team[actor].post(team.repo_url("/tags/restore"), json={"tag": "v1"}), 403)
    for actor in ("outsider", "stranger"):
        assert_problem(team[actor].get(team.repo_url("/images")), 403)
        assert_problem(team[actor].get(team.repo_url("/history")), 403)
    assert [i["tags"] for i in images_of(team)["items"]] == [["v1"]]


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/images/sha256:nothex", {}, 422, "path.digest"),  # not a sha256: as any bad digest
        ("/images/not-a-digest", {}, 422, "path.digest"),
        ("/images", {"image": "Upper/Case"}, 422, "query.image"),
        ("/images", {"per_page": 1000}, 422, "query.per_page"),
        ("/history", {"digest": "nope"}, 422, "query.digest"),
        ("/images/sha256:" + "0" * 64, {}, 404, None),
    ],
)
def test_image_request_errors(
    shared_team: Team, path: str, params: dict[str, Any], status: int, field: str | None
) -> None:
    team = shared_team
    response = team["reader"].get(team.repo_url(path), params=params)
    assert_problem(response, status, fields=(field,) if field else ())


def test_unknown_repository(shared_team: Team) -> None:
    team = shared_team
    for path in ("/images", "/history", "/tags"):
        assert_problem(team["reader"].get(team.repo_url(path, "missing")), 404, code="NAME_UNKNOWN")
    assert_problem(
        team["member"].post(team.repo_url("/tags/restore", "missing"), json={"tag": "v1"}), 404
    )
    assert_problem(
        team["member"].post(team.repo_url("/tags/restore"), json={"tag": "-bad"}),
        422,
        fields=("tag",),
    )
