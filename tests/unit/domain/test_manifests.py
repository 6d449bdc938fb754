"""Manifest parsing and content negotiation (`berth.domain.manifests`)."""

from __future__ import annotations

import json

import pytest

from berth.domain.errors import ManifestInvalid
from berth.domain.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_ARTIFACT_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    accepts,
    parse_manifest,
    parse_stored_manifest,
    stored_blobs,
)

DIGEST = "sha256:" + "a" * 64


def _manifest(**fields: object) -> bytes:
    base: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": DIGEST,
            "size": 2,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 2}
        ],
    }
    base.update(fields)
    return json.dumps(base).encode()


def test_image_manifest_references_its_blobs_once() -> None:
    parsed = parse_manifest(_manifest(), None)
    assert stored_blobs(parsed) == [DIGEST]
    assert parsed.artifact_type == "application/vnd.oci.image.config.v1+json"


def test_an_empty_artifact_type_is_a_missing_one() -> None:
    """The referrers API then reports the config's media type (distribution-spec 1.1)."""
    config_type = "application/vnd.example.config"
    config = {"mediaType": config_type, "digest": DIGEST, "size": 2}
    parsed = parse_manifest(_manifest(artifactType="", config=config), None)
    assert parsed.artifact_type == config_type
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "artifactType": ""}
    assert parse_manifest(json.dumps(index).encode(), OCI_INDEX).artifact_type is None


def test_index_lists_children_and_subject() -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 10}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 10},
        }
    ).encode()
    parsed = parse_manifest(body, OCI_INDEX)
    assert parsed.is_index and [c.digest for c in parsed.children] == [DIGEST]
    assert parsed.subject is not None and parsed.subject.digest == DIGEST


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (_manifest(schemaVersion=1), "schemaVersion must be 2: Docker schema 1"),
        (_manifest(schemaVersion=3), "schemaVersion must be 2$"),
        (_manifest(layers="x"), "list of descriptors"),
        (_manifest(config={"mediaType": "x", "digest": "sha256:zz", "size": 1}), "digest"),
        (_manifest(config={"mediaType": "x", "digest": DIGEST, "size": -1}), "size"),
        (_manifest(mediaType="application/vnd.example+json"), "unsupported"),
        (_manifest(mediaType=DOCKER_SCHEMA1), "schema 1 manifests are not supported"),
        (_manifest(mediaType=DOCKER_SCHEMA1_SIGNED), "schema 1 manifests are not supported"),
        (_manifest(mediaType=2), "mediaType must be a string"),
        (_manifest(artifactType=["x"]), "artifactType must be a string"),
        (_manifest(artifactType="application/x\u0000y"), "artifactType must not contain NUL"),
        (_manifest(layers=None), "no 'layers' list"),
        (_manifest(layers=["x"]), r"layers\[0\] must be a descriptor object"),
        (_manifest(config={"mediaType": "", "digest": DIGEST, "size": 1}), "non-empty string"),
        (_manifest(config={"mediaType": "x", "digest": 7, "size": 1}), "digest must be a string"),
        (_manifest(config={"mediaType": "x", "digest": DIGEST, "size": True}), "non-negative"),
        (
            _manifest(layers=[{"mediaType": "a\u0000b", "digest": DIGEST, "size": 1}]),
            "must not contain NUL",
        ),
        (_manifest(mediaType=OCI_INDEX, manifests=None), "no 'manifests' list"),
    ],
)
def test_malformed_manifests_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        parse_manifest(body, None)


def test_content_type_must_match_declared_media_type() -> None:
    with pytest.raises(ManifestInvalid, match="does not match"):
        parse_manifest(_manifest(), DOCKER_MANIFEST)


def test_accept_negotiation() -> None:
    assert accepts(None, OCI_INDEX)
    assert accepts("*/*", OCI_INDEX)
    assert accepts(f"{DOCKER_MANIFEST}, {OCI_INDEX}", OCI_INDEX)
    assert not accepts(DOCKER_MANIFEST, OCI_INDEX)
    assert accepts("text/html, application/json", OCI_INDEX)  # no manifest type named


def test_a_type_accepted_with_quality_zero_is_refused() -> None:
    """RFC 9110: `q=0` means "not acceptable", and the most specific range decides."""
    assert not accepts(f"{OCI_INDEX};q=0, */*", OCI_INDEX)
    assert not accepts(f"{DOCKER_MANIFEST}, {OCI_INDEX}; q=0.0", OCI_INDEX)
    assert not accepts("*/*;q=0", OCI_INDEX)
    assert not accepts(f"application/*; q=0, {DOCKER_MANIFEST}", OCI_INDEX)
    assert accepts(f"application/*;q=0, {OCI_INDEX}", OCI_INDEX)  # the type itself decides
    assert accepts(f"{OCI_INDEX};q=0.1", OCI_INDEX)
    assert accepts(f"{OCI_INDEX.upper()}", OCI_INDEX)  # media types are case-insensitive
    # A quality that is not a number is no refusal; a manifest type refused alone is no
    # choice of types.
    assert accepts(f"{OCI_INDEX};q=none", OCI_INDEX)
    assert accepts(f"{DOCKER_MANIFEST};q=0", OCI_INDEX)


def test_the_media_type_comes_from_the_header_or_the_document_when_not_declared() -> None:
    undeclared = json.loads(_manifest())
    del undeclared["mediaType"]
    body = json.dumps(undeclared).encode()
    assert parse_manifest(body, None).media_type == OCI_MANIFEST
    assert parse_manifest(body, OCI_MANIFEST + "; charset=utf-8").media_type == OCI_MANIFEST
    docker = json.dumps({**undeclared, "mediaType": DOCKER_MANIFEST}).encode()
    assert parse_manifest(docker, None).media_type == DOCKER_MANIFEST
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_manifest(index, "application/octet-stream").media_type == OCI_INDEX
    with pytest.raises(ManifestInvalid, match="schema 1"):
        parse_manifest(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), DOCKER_SCHEMA1)


def _undeclared(**fields: object) -> bytes:
    document = {**json.loads(_manifest()), **fields}
    del document["mediaType"]
    return json.dumps(document).encode()


_INDEX_LIST = [{"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 10}]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        # An OCI manifest (no mediaType) is no Docker one, whatever the Content-Type says.
        (_undeclared(), DOCKER_MANIFEST, "declares no mediaType: a Docker schema 2 manifest"),
        (_undeclared(mediaType=""), DOCKER_MANIFEST + "; charset=utf-8", "declares no mediaType"),
        (
            json.dumps({"schemaVersion": 2, "manifests": _INDEX_LIST}).encode(),
            DOCKER_MANIFEST_LIST,
            "declares no mediaType",
        ),
        # A body that is both a manifest and an index (CVE-2021-41190), however it is typed.
        (_manifest(manifests=_INDEX_LIST), None, "an image manifest has no 'manifests' list"),
        (_undeclared(manifests=[]), OCI_MANIFEST, "an image manifest has no 'manifests' list"),
        (_undeclared(manifests=_INDEX_LIST), None, "an image index has no 'config' or 'layers'"),
        (
            json.dumps({"schemaVersion": 2, "manifests": [], "layers": []}).encode(),
            OCI_INDEX,
            "an image index has no 'layers'",
        ),
    ],
)
def test_a_body_that_is_not_the_kind_its_type_names_is_refused_on_push(
    body: bytes, content_type: str | None, message: str
) -> None:
    """As Distribution refuses them: Berth stored the first as a Docker manifest and served
    it so, and the others as whichever kind the type named, ignoring the rest."""
    with pytest.raises(ManifestInvalid, match=message):
        parse_manifest(body, content_type)
    # One stored before is read as it was.
    parse_stored_manifest(body, content_type)


def test_null_fields_of_the_other_kind_are_no_conflict() -> None:
    assert parse_manifest(_manifest(manifests=None), OCI_MANIFEST).media_type == OCI_MANIFEST
    index = json.dumps({"schemaVersion": 2, "manifests": [], "config": None}).encode()
    assert parse_manifest(index, OCI_INDEX).media_type == OCI_INDEX
    declared = _manifest(mediaType=DOCKER_MANIFEST)
    assert parse_manifest(declared, DOCKER_MANIFEST).media_type == DOCKER_MANIFEST


def test_an_artifact_manifest_may_have_no_blobs() -> None:
    body = json.dumps({"mediaType": OCI_ARTIFACT_MANIFEST, "artifactType": "x/y"}).encode()
    parsed = parse_manifest(body, None)
    assert (parsed.media_type, parsed.blobs, parsed.artifact_type) == (
        OCI_ARTIFACT_MANIFEST,
        [],
        "x/y",
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"annotations": ["a", "b"]},
        {"annotations": {"org.example": {"nested": "x"}}},
        {"annotations": {"org.example": 1}},
        {
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": DIGEST,
                    "size": 2,
                    "annotations": {"org.example": ["x"]},
                }
            ]
        },
    ],
)
def test_annotations_must_map_strings_to_strings(fields: dict[str, object]) -> None:
    with pytest.raises(ManifestInvalid, match="annotations must be an object whose values"):
        parse_manifest(_manifest(**fields), None)


def test_annotations_of_strings_are_kept() -> None:
    parsed = parse_manifest(_manifest(annotations={"org.example": "x"}), None)
    assert parsed.annotations == {"org.example": "x"}
    assert parse_manifest(_manifest(annotations={}), None).annotations is None


def test_a_byte_order_mark_is_refused() -> None:
    with pytest.raises(ManifestInvalid, match="byte order mark"):
        parse_manifest(b"\xef\xbb\xbf" + _manifest(), None)


def test_an_escaped_surrogate_pair_is_the_character_it_encodes() -> None:
    """Only a lone surrogate is refused: a pair escaped in JSON (an emoji) is text."""
    body = _manifest().replace(
        b'"schemaVersion"', b'"annotations": {"a": "\\ud83d\\udc33"}, "schemaVersion"'
    )
    assert parse_manifest(body, None).annotations == {"a": "\N{SPOUTING WHALE}"}
    with pytest.raises(ManifestInvalid, match="lone surrogate"):
        parse_manifest(body.replace(b"\\udc33", b""), None)


@pytest.mark.parametrize(
    "body",
    [
        _manifest().decode().encode("utf-16-le"),
        _manifest(annotations={"x": "y"}).replace(b'"y"', b'"\\ud800"'),
        _manifest().replace(b"}", b', "x": NaN}', 1),
    ],
    ids=["utf-16", "lone-surrogate", "nan"],
)
def test_a_manifest_stored_before_the_stricter_push_rule_is_still_read(body: bytes) -> None:
    """Pushes refuse these now; rows stored before that rule still serve, list and scan."""
    with pytest.raises(ManifestInvalid):
        parse_manifest(body, OCI_MANIFEST)
    stored = parse_stored_manifest(body, OCI_MANIFEST)
    assert stored.media_type == OCI_MANIFEST
    assert stored_blobs(stored) == [DIGEST]
