"""Pure domain rules: names, tags, digests, manifest parsing. No server."""

from __future__ import annotations

import json

import pytest

from berth.domain.digests import parse_digest
from berth.domain.errors import DigestInvalid, ManifestInvalid, NameInvalid, NameUnknown
from berth.domain.manifests import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    accepts,
    parse_manifest,
    stored_blobs,
)
from berth.domain.names import (
    is_valid_tag,
    normalized_host,
    project_name_problem,
    registry_address,
    split_name,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("name", ["a/b", "proj/repo/team/app", "a-b/c__d", "a.b/c_d", "a/b--c"])
def test_valid_names_resolve_in_path_style(name: str) -> None:
    resolved = split_name(name, None)
    assert resolved.project == name.split("/")[0]
    assert resolved.repository == name.split("/")[1]


@pytest.mark.parametrize(
    "name", ["A/b", "a//b", "a/b/", "../a", "a/../b", "a/-b", "a/b_", "a/b___c", "a/" + "b" * 300]
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(NameInvalid):
        split_name(name, None)


def test_host_style_name_has_no_project_component() -> None:
    resolved = split_name("repo/team/app", "proj")
    assert (resolved.project, resolved.repository, resolved.image) == ("proj", "repo", "team/app")


def test_path_style_needs_a_project_and_repository() -> None:
    # NAME_UNKNOWN: docker gives up at once on it (it retries NAME_INVALID for ~50 s).
    with pytest.raises(NameUnknown, match="project first"):
        split_name("onlyone", None)


@pytest.mark.parametrize("name", ["demo", "a", "0", "my-proj", "a1-b2-c3", "a" * 63])
def test_project_names_are_dns_labels(name: str) -> None:
    assert project_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("my_proj", "it contains '_'"),
        ("a.b", "it contains '.'"),
        ("-demo", "starts or ends with '-'"),
        ("demo-", "starts or ends with '-'"),
        ("Demo", "uppercase"),
        ("a" * 64, "64 characters"),
        ("", "empty"),
        ("dé", "it contains 'é'"),
    ],
)
def test_a_project_name_that_is_no_dns_label_is_refused_readably(name: str, why: str) -> None:
    problem = project_name_problem(name)
    assert problem is not None
    assert why in problem
    assert "lowercase letters, digits and '-' (not first or last), at most 63" in problem
    assert "^[" not in problem and "pattern" not in problem  # never a regular expression


@pytest.mark.parametrize(
    ("host", "normalized"),
    [
        ("demo.kr-central-2.kcr.dev", "demo.kr-central-2.kcr.dev"),
        ("DEMO.Kr-Central-2.KCR.dev:443", "demo.kr-central-2.kcr.dev:443"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("localhost", "localhost"),
        ("Demo.kr-central-2.kcr.dev.:8443", "demo.kr-central-2.kcr.dev:8443"),
        ('a",realm="http://evil.example/x', None),
        ("a b", None),
        ("a/b", None),
        ("a,b", None),
        ("", None),
        ("a:", None),
        ("a:123456", None),
        ("x" * 300, None),
    ],
)
def test_the_host_header_grammar(host: str, normalized: str | None) -> None:
    assert normalized_host(host) == normalized


@pytest.mark.parametrize(
    ("host", "login", "prefix"),
    [
        # Reached under the region's domain: the project's own host, with the port used.
        ("kr-central-2.kcr.dev", "demo.kr-central-2.kcr.dev", "demo.kr-central-2.kcr.dev"),
        ("web.kr-central-2.kcr.dev:8443", "demo.kr-central-2.kcr.dev:8443", None),
        # Anywhere else: path style on that same host and port.
        ("localhost:5000", "localhost:5000", "localhost:5000/demo"),
        ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:5000/demo"),
        ("berth.corp:5000", "berth.corp:5000", "berth.corp:5000/demo"),
        ("[::1]:5000", "[::1]:5000", "[::1]:5000/demo"),
    ],
)
def test_the_registry_address_of_a_project(host: str, login: str, prefix: str | None) -> None:
    address = registry_address("demo", host, ".kr-central-2.kcr.dev")
    assert address.login == login
    assert address.prefix == (prefix or login)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b"])
def test_invalid_tags(tag: str) -> None:
    assert not is_valid_tag(tag)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "md5:" + "a" * 32,
        "sha256:../../etc/passwd",
        "sha512:" + "a" * 64,
        "sha256:" + "a" * 64 + "/x",
    ],
)
def test_bad_digests_are_refused(digest: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(digest)


def test_sha512_digest_is_accepted() -> None:
    assert parse_digest("sha512:" + "b" * 128).algorithm == "sha512"


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
        (_manifest(schemaVersion=1), "schemaVersion"),
        (_manifest(layers="x"), "list of descriptors"),
        (_manifest(config={"mediaType": "x", "digest": "sha256:zz", "size": 1}), "digest"),
        (_manifest(config={"mediaType": "x", "digest": DIGEST, "size": -1}), "size"),
        (_manifest(mediaType="application/vnd.example+json"), "unsupported"),
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


def test_an_overlong_host_is_refused_before_the_host_cache_keeps_it() -> None:
    from berth.domain import names

    cached = names._normalized_host.cache_info().currsize
    assert names.normalized_host("a" * 400_000) is None
    assert names._normalized_host.cache_info().currsize == cached
