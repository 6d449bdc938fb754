"""Upstream 03_discovery_test.go: tag listing and the referrers API."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conformance.checks import (
    ANNOTATION,
    ARTIFACT_TYPE_A,
    DUMMY_DIGEST,
    PULL_TAG,
    Classic,
    assert_teardown_blob_delete,
    assert_teardown_manifest_delete,
    check_error,
    classic_data,
    listed,
    populate,
    populate_manifest,
    referrers,
    same_descriptor,
)
from tests.conftest import Repo, new_repo
from tests.oci import (
    EMPTY_JSON_DIGEST,
    Blob,
    assert_status,
    blob_path,
    describe,
    manifest_path,
    referrer_descriptor,
    referrers_path,
    tags_path,
)

if TYPE_CHECKING:
    from tests.servers import BerthServer


DISCOVERY_TAGS = [tag for n in range(4) for tag in (f"test{n}", f"TEST{n}")]


@dataclass
class Discovery:
    data: Classic
    # The response to each referrer's manifest PUT, by the referrer's digest.
    referrer_puts: dict[str, httpx.Response] = field(default_factory=dict)


def discover(repo: Repo, classic: Classic) -> Discovery:
    """Discovery setup: eight tags (test0..3, TEST0..3) on manifests[2], then referrers of
    manifests[4] pushed partly before and partly after manifests[4] itself (tagged
    "tagtest0"), and one referrer of manifests[3], which is never pushed."""
    result = Discovery(classic)
    populate(repo, classic.configs[2], classic.layer)
    for tag in DISCOVERY_TAGS:
        populate_manifest(repo, tag, classic.manifests[2])

    def refer(manifest: Blob) -> None:
        result.referrer_puts[manifest.digest] = populate_manifest(repo, manifest.digest, manifest)

    assert classic.empty_json.digest == EMPTY_JSON_DIGEST
    populate(repo, classic.empty_json, classic.ref_blob_a)
    refer(classic.refs_a_config)
    refer(classic.refs_a_layer)
    refer(classic.refs_index)
    populate(repo, classic.configs[4], classic.layer)
    populate_manifest(repo, PULL_TAG, classic.manifests[4])
    populate(repo, classic.ref_blob_b)
    refer(classic.refs_b_config)
    refer(classic.refs_b_layer)
    refer(classic.refs_c_layer)
    return result


@pytest.fixture(scope="class")
def shared(server: BerthServer) -> Iterator[Repo]:
    """The repository the read-only tests look at: the discovery setup, some twenty pushes,
    made once per backend instead of once per test (they change nothing in it)."""
    created = new_repo(server)
    yield created
    created.client.close()


@pytest.fixture(scope="class")
def discovered(shared: Repo) -> Discovery:
    return discover(shared, classic_data())


@pytest.fixture
def discovered_to_delete(repo: Repo, classic: Classic) -> Discovery:
    """The discovery setup in a repository of its own, for the test that deletes it."""
    return discover(repo, classic)


class TestContentDiscovery:
    def test_manifest_put_with_subject_answers_oci_subject(self, discovered: Discovery) -> None:
        """Every PUT of a manifest with a `subject` is answered with `OCI-Subject: <subject>`,
        whether or not the subject exists yet."""
        data = discovered.data
        for referrer in (data.refs_a_config, data.refs_a_layer, data.refs_index):
            response = discovered.referrer_puts[referrer.digest]
            assert response.headers.get("OCI-Subject") == data.manifests[4].digest, describe(
                response
            )
        for referrer in (data.refs_b_config, data.refs_b_layer):
            response = discovered.referrer_puts[referrer.digest]
            assert response.headers.get("OCI-Subject") == data.manifests[4].digest, describe(
                response
            )
        response = discovered.referrer_puts[data.refs_c_layer.digest]
        assert response.headers.get("OCI-Subject") == data.manifests[3].digest, describe(response)

    def test_list_tags_sorted(self, shared: Repo, discovered: Discovery) -> None:
        """200 and the tags in lexical (case-insensitive, stable) or ASCII order.

        spec: the body is {"name": <name>, "tags": [...]} and lists every tag."""
        response = shared.client.get(tags_path(shared.name))
        assert_status(response, 200)
        body = response.json()
        assert body.get("name") == shared.name, describe(response)
        tags = body["tags"]
        assert tags in (sorted(tags, key=str.lower), sorted(tags)), f"not sorted: {tags}"
        assert set(tags) == {*DISCOVERY_TAGS, PULL_TAG}

    def test_list_tags_n(self, shared: Repo, discovered: Discovery) -> None:
        """`n` limits the list to exactly n tags (half of them here).

        spec: a `Link` header, when present, is an RFC 5988 `rel="next"` link."""
        everything = shared.client.get(tags_path(shared.name)).json()["tags"]
        half = len(everything) // 2
        response = shared.client.get(tags_path(shared.name), params={"n": half})
        assert_status(response, 200)
        assert len(response.json()["tags"]) == half, describe(response)
        link = response.headers.get("Link")
        if link:
            assert 'rel="next"' in link, f"Link without rel=next: {link!r}"

    def test_list_tags_last(self, shared: Repo, discovered: Discovery) -> None:
        """`last` starts the list after the given tag: with n, at most n tags, without `last`.

        Redesigned suite: without n, every tag after `last` and none up to it."""
        client = shared.client
        everything = client.get(tags_path(shared.name)).json()["tags"]
        half = len(everything) // 2
        first_page = client.get(tags_path(shared.name), params={"n": half}).json()["tags"]
        last = first_page[half - 1]
        response = client.get(tags_path(shared.name), params={"n": half, "last": last})
        assert_status(response, 200)
        page = response.json()["tags"]
        assert len(page) <= half and last not in page, describe(response)

        rest = client.get(tags_path(shared.name), params={"last": last})
        assert_status(rest, 200)
        assert rest.json()["tags"] == everything[half:], describe(rest)

    def test_list_tags_n_zero(self, shared: Repo, discovered: Discovery) -> None:
        """spec: `n=0` returns an empty list and no Link header."""
        response = shared.client.get(tags_path(shared.name), params={"n": 0})
        assert_status(response, 200)
        assert response.json()["tags"] == [], describe(response)
        assert "Link" not in response.headers, describe(response)

    def test_list_tags_pages(self, shared: Repo, discovered: Discovery) -> None:
        """spec: paging with n=2 (following `Link` when given, else `last`) visits every tag
        once, in order; a page is short only at the end or when a Link is given."""
        client = shared.client
        everything = client.get(tags_path(shared.name)).json()["tags"]
        seen: list[str] = []
        url: str | None = tags_path(shared.name)
        params: dict[str, Any] | None = {"n": 2}
        while url is not None and len(seen) <= len(everything):
            response = client.get(url, params=params)
            assert_status(response, 200)
            page = response.json()["tags"] or []
            seen += page
            link = response.headers.get("Link")
            if link:
                target = link.split(";")[0].strip()
                assert target.startswith("<") and target.endswith(">"), f"bad Link {link!r}"
                url, params = target[1:-1], None
            elif len(page) == 2:
                url, params = tags_path(shared.name), {"n": 2, "last": page[-1]}
            else:
                assert len(seen) == len(everything), f"short page {page} before the end"
                url = None
        assert seen == everything

    def test_referrers_of_unknown_subject(self, shared: Repo, discovered: Discovery) -> None:
        """A subject nothing refers to: 200 and an empty OCI index."""
        response = referrers(shared.client, shared.name, DUMMY_DIGEST)
        assert listed(response) == []

    def test_referrers(self, shared: Repo, discovered: Discovery) -> None:
        """manifests[4] has five referrers (two config artifacts, two layer artifacts, one
        index), each listed once with its annotation, media type, size and artifactType."""
        data = discovered.data
        found = listed(referrers(shared.client, shared.name, data.manifests[4].digest))
        assert len(found) == 5, found
        assert found[0]["digest"] != found[1]["digest"]
        assert len({item["digest"] for item in found}) == 5, found
        expected = data.annotated_referrers
        for item in found:
            assert item.get("annotations") == {ANNOTATION: expected[item["digest"]]}, item
        for manifest in (
            data.refs_a_config,
            data.refs_b_config,
            data.refs_a_layer,
            data.refs_b_layer,
            data.refs_index,
        ):
            goal = referrer_descriptor(manifest)
            assert any(same_descriptor(item, goal) for item in found), (goal, found)

    def test_referrers_filtered_by_artifact_type(self, shared: Repo, discovered: Discovery) -> None:
        """`artifactType=` with `OCI-Filters-Applied: artifactType` returns the two referrers
        of that type only; a registry that does not filter returns all five (warning)."""
        data = discovered.data
        response = referrers(
            shared.client, shared.name, data.manifests[4].digest, artifactType=ARTIFACT_TYPE_A
        )
        found = listed(response)
        expected = data.annotated_referrers
        if response.headers.get("OCI-Filters-Applied"):
            assert response.headers["OCI-Filters-Applied"] == "artifactType", describe(response)
            assert len(found) == 2, found
            assert {item["digest"] for item in found} == {
                data.refs_a_config.digest,
                data.refs_a_layer.digest,
            }
            assert all(item.get("artifactType") == ARTIFACT_TYPE_A for item in found), found
        else:
            assert len(found) == 5, found
            warnings.warn("referrers: filtering by artifactType is not implemented", stacklevel=1)
        for item in found:
            assert item.get("annotations") == {ANNOTATION: expected[item["digest"]]}, item

    def test_referrers_of_missing_subject(self, shared: Repo, discovered: Discovery) -> None:
        """A manifest whose subject was never pushed is still listed as its referrer."""
        data = discovered.data
        found = listed(referrers(shared.client, shared.name, data.manifests[3].digest))
        assert len(found) == 1, found
        assert found[0]["digest"] == data.refs_c_layer.digest
        assert same_descriptor(found[0], referrer_descriptor(data.refs_c_layer)), found

    def test_referrers_of_malformed_digest(self, repo: Repo) -> None:
        """spec: a referrers request with an invalid digest is 400."""
        response = repo.client.get(referrers_path(repo.name, "sha256:totallywrong"))
        assert_status(response, 400)
        check_error(response)

    def test_teardown(self, repo: Repo, discovered_to_delete: Discovery) -> None:
        """Manifests delete with a 2xx, 404 or 405; then configs, referrer blobs and the empty
        JSON blob with a 2xx, 404 or 405."""
        client, data = repo.client, discovered_to_delete.data
        for manifest in (
            data.refs_index,
            data.manifests[2],
            data.manifests[4],
            data.refs_a_config,
            data.refs_a_layer,
            data.refs_b_config,
            data.refs_b_layer,
            data.refs_c_layer,
        ):
            assert_teardown_manifest_delete(
                client.delete(manifest_path(repo.name, manifest.digest)), allow_404=True
            )
        for blob in (
            data.configs[2],
            data.layer,
            data.configs[4],
            data.ref_blob_a,
            data.ref_blob_b,
            data.empty_json,
        ):
            assert_teardown_blob_delete(client.delete(blob_path(repo.name, blob.digest)))
