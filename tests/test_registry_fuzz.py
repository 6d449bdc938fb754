"""Bad input on /v2 gets a 4xx, never a server error: a table of inputs that once answered 500,
then property-based fuzzing (hypothesis) over methods, paths, query parameters, headers and
bodies with "no 5xx" as the property, as schemathesis does for /api/v1."""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import Repo, new_repo
from tests.oci import OCI_INDEX, OCI_MANIFEST, error_code, put_manifest, random_image
from tests.servers import BerthServer

# Fixed, so a failure reproduces; BERTH_FUZZ_SEED explores others.
SEED = int(os.environ.get("BERTH_FUZZ_SEED", "20261201"))
EXAMPLES = int(os.environ.get("BERTH_FUZZ_EXAMPLES", "250"))


@pytest.fixture(scope="module")
def target(server: BerthServer) -> Iterator[Repo]:
    """A repository holding a tagged image, so requests reach the handlers."""
    repo = new_repo(server)
    assert put_manifest(
        repo.client, repo.name, "v1", random_image(repo.client, repo.name)
    ).is_success
    yield repo
    repo.client.close()


def nested(depth: int, inner: str = "[]") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("tags/list", {"n": "99999999999999999999"}),
        ("tags/list", {"n": "²"}),
        ("tags/list", {"n": "10001"}),
        ("tags/list", {"n": "-1"}),
        ("tags/list", {"n": "1e3"}),
        ("/v2/_catalog", {"n": "²"}),
        ("/v2/_catalog", {"n": "99999999999999999999"}),
    ],
)
def test_bad_page_sizes_are_pagination_errors(
    target: Repo, path: str, params: dict[str, str]
) -> None:
    url = path if path.startswith("/") else target.url(path)
    response = target.client.get(url, params=params)
    assert response.status_code == 400, response.text
    assert error_code(response) == "PAGINATION_NUMBER_INVALID"


def test_the_largest_page_size_is_served(target: Repo) -> None:
    response = target.client.get(target.url("tags/list"), params={"n": "10000"})
    assert response.status_code == 200
    assert response.json()["tags"] == ["v1"]


@pytest.mark.parametrize("depth", [1_000, 5_000, 200_000])
@pytest.mark.parametrize("where", ["document", "annotations", "layers"])
def test_deeply_nested_manifests_are_manifest_invalid(target: Repo, depth: int, where: str) -> None:
    if where == "document":
        body = nested(depth)
    elif where == "annotations":
        body = b'{"schemaVersion":2,"mediaType":"%s","annotations":{"a":%s}}' % (
            OCI_MANIFEST.encode(),
            nested(depth),
        )
    else:
        body = b'{"schemaVersion":2,"mediaType":"%s","manifests":%s}' % (
            OCI_INDEX.encode(),
            nested(depth, "{}"),
        )
    content_type = OCI_INDEX if where == "layers" else OCI_MANIFEST
    response = put_manifest(target.client, target.name, "nested", body, content_type)
    assert response.status_code == 400, response.text[:300]
    assert error_code(response) == "MANIFEST_INVALID"
    assert target.client.get(target.url("manifests/nested")).status_code == 404


def test_nested_annotations_within_the_parser_limit_are_no_server_error(target: Repo) -> None:
    config = random_image(target.client, target.name)
    document = json.loads(config)
    for depth in (200, 900, 990):
        body = json.dumps(document)[:-1].encode() + b',"annotations":{"a":%s}}' % nested(depth)
        response = put_manifest(target.client, target.name, f"deep{depth}", body, OCI_MANIFEST)
        assert response.status_code in (201, 400), response.text[:300]


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "tags/list", {"last": "\x00"}),
        ("GET", "/v2/_catalog", {"last": "\x00", "n": "1"}),
        ("GET", "manifests/a%00b", {}),
        ("GET", "manifests/sha256:" + "0" * 63 + "%00", {}),
        ("GET", "blobs/sha256:%00", {}),
        ("GET", "referrers/sha256:" + "a" * 64, {"artifactType": "\x00"}),
        ("POST", "blobs/uploads/", {"mount": "sha256:" + "a" * 64, "from": "\x00/x"}),
        ("POST", "blobs/uploads/", {"digest": "sha256:\x00"}),
    ],
)
def test_nul_characters_are_no_server_error(
    target: Repo, method: str, path: str, params: dict[str, str]
) -> None:
    """PostgreSQL refuses NUL in text: such values must not reach a query as they are."""
    url = path if path.startswith("/") else target.url(path)
    response = target.client.request(method, url, params=params)
    assert response.status_code < 500, response.text[:300]


def test_manifest_fields_with_nul_characters_are_refused(target: Repo) -> None:
    for field in ("artifactType", "mediaType"):
        body = (
            b'{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"a","digest":"sha256:%s",'
            b'"size":1},"layers":[],"%s":"x\\u0000y"}'
            % (OCI_MANIFEST.encode(), b"0" * 64, field.encode())
        )
        response = put_manifest(target.client, target.name, "nul", body, OCI_MANIFEST)
        assert 400 <= response.status_code < 500, response.text[:300]


# ---------------------------------------------------------------- property-based

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
HEADER_TEXT = st.text(st.sampled_from(string.printable.strip() + " "), max_size=40)
DIGESTS = st.one_of(
    st.just("sha256:" + "0" * 64),
    st.builds(lambda h: "sha256:" + h, st.text("0123456789abcdef", min_size=0, max_size=70)),
    st.builds(lambda a, h: f"{a}:{h}", TEXT, TEXT),
    TEXT,
)
REFERENCES = st.one_of(st.just("v1"), DIGESTS, TEXT)
UPLOAD_IDS = st.one_of(st.text("0123456789abcdef", min_size=30, max_size=34), TEXT)
SEGMENT = st.one_of(TEXT.map(lambda s: quote(s, safe="")), TEXT.map(lambda s: quote(s, safe="/")))
PARAM_NAMES = st.sampled_from(["n", "last", "digest", "mount", "from", "artifactType", "x"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


def manifest_like(draw_fields: Mapping[str, object]) -> bytes:
    document: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    document.update(draw_fields)
    return json.dumps(document).encode()


BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(
            ["config", "layers", "manifests", "subject", "annotations", "artifactType", "blobs"]
        ),
        JSON_VALUES,
        max_size=4,
    ).map(manifest_like),
)


@st.composite
def requests(draw: st.DrawFn, name: str) -> tuple[str, str, dict[str, str], dict[str, str], bytes]:
    shape = draw(
        st.sampled_from(
            [
                "blob",
                "manifest",
                "tags",
                "uploads",
                "upload",
                "referrers",
                "catalog",
                "name",
                "raw",
            ]
        )
    )
    repo_name = draw(st.one_of(st.just(name), SEGMENT, SEGMENT.map(lambda s: f"{name}/{s}")))
    paths: dict[str, Callable[[], str]] = {
        "blob": lambda: f"/v2/{repo_name}/blobs/{quote(draw(DIGESTS), safe=':')}",
        "manifest": lambda: f"/v2/{repo_name}/manifests/{quote(draw(REFERENCES), safe=':')}",
        "tags": lambda: f"/v2/{repo_name}/tags/list",
        "uploads": lambda: f"/v2/{repo_name}/blobs/uploads/",
        "upload": lambda: f"/v2/{repo_name}/blobs/uploads/{quote(draw(UPLOAD_IDS), safe='')}",
        "referrers": lambda: f"/v2/{repo_name}/referrers/{quote(draw(DIGESTS), safe=':')}",
        "catalog": lambda: "/v2/_catalog",
        "name": lambda: f"/v2/{repo_name}",
        "raw": lambda: "/v2/" + draw(SEGMENT),
    }
    path = paths[shape]()
    method = draw(st.sampled_from(["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]))
    params = draw(st.dictionaries(PARAM_NAMES, st.one_of(TEXT, DIGESTS), max_size=3))
    headers = draw(
        st.dictionaries(
            st.sampled_from(["Content-Type", "Content-Range", "Range", "Accept"]),
            st.one_of(
                HEADER_TEXT,
                st.sampled_from([OCI_MANIFEST, OCI_INDEX, "bytes=0-1", "0-0", "bytes=5-1"]),
            ),
            max_size=3,
        )
    )
    body = draw(BODIES) if method in ("PUT", "PATCH", "POST") else b""
    return method, path, params, headers, body


def test_no_server_errors_on_fuzzed_requests(target: Repo) -> None:
    client = target.client

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(target.name))
    def check(request: tuple[str, str, dict[str, str], dict[str, str], bytes]) -> None:
        method, path, params, headers, body = request
        response = client.request(method, path, params=params, headers=headers, content=body)
        assert response.status_code < 500, (
            f"{method} {response.request.url} {headers} {body[:200]!r} -> "
            f"{response.status_code} {response.text[:300]}"
        )

    check()
