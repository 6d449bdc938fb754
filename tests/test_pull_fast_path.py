"""The pull fast path (berth/registry/fastpath.py) answers exactly as the router does.

One data directory is served twice on the same port: first as configured by default (manifest
and blob GETs and HEADs skip the router), then with `pull_fast_path = false`. The same matrix of
requests goes to both: manifests and blobs, by tag and by digest, GET and HEAD, path-style and
project-host addressing, public and private repositories, a repository whose project refuses
pulls of the image (DENIED), every kind of credentials (none, access keys with and without a
role there or from another project, a wrong secret, bearer tokens for the repository, for
another one and anonymous, a forged one), missing and invalid references, an Accept header
that does not list the manifest's type or refuses it (q=0), If-None-Match, and byte ranges.
Each answer's status, headers (but Date) and body must be the same; so must each request's
access log line (but its duration) and what the requests added to /metrics (but the
durations)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from berth.metadata.tables import manifests, scans
from berth.state import Services
from tests.metrics import scrape
from tests.oci import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    image_config,
    image_manifest,
    push_blob,
    push_manifest,
    random_blob,
)
from tests.servers import BerthServer, free_port

PATH_HOST = "registry.test"  # a host that names no project: path-style names
PROJECT_HOST = "fp.local.localhost"  # `{project}.{region}.{domain}`: project fp
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
PULL_ROUTES = re.compile(r"/v2/\{name:path\}/(manifests|blobs)/")


@dataclass(frozen=True)
class Answer:
    request: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def basic(key: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()


def token(server: BerthServer, host: str, scope: str, key: tuple[str, str] | None) -> str:
    headers = {"Host": host, **({"Authorization": basic(key)} if key else {})}
    response = httpx.get(
        f"{server.url}/auth/token", params={"service": host, "scope": scope}, headers=headers
    )
    assert response.status_code == 200, response.text
    return f"Bearer {response.json()['token']}"


# What one server answered: the answers, the access log lines, what /metrics added.
Series = tuple[str, frozenset[tuple[str, str]]]  # a sample's name and labels
Recorded = tuple[list["Answer"], list[dict[str, object]], Counter[Series]]


@dataclass
class World:
    """What the matrix addresses: digests, and the Authorization headers by name."""

    manifest: str
    layer: str
    auths: dict[str, str | None]


def arrange(server: BerthServer) -> World:
    """Projects fp (a private and a public repository) and fpr (its pull policy refuses the
    image: a finished scan found a high vulnerability), the same image in each; users with and
    without roles; keys and tokens."""
    server.create_repository("fp", "priv")
    server.create_repository("fp", "pub", public=True)
    server.create_repository("fpr", "refused")
    server.create_repository("fpo", "other")
    server.create_user("reader", "reader-password-1")
    server.add_member("fp", "reader", "reader")
    server.add_member("fpr", "reader", "reader")
    server.create_user("stranger", "stranger-password-1")
    server.add_member("fpo", "stranger", "member")
    admin = server.access_key("fp")
    layer = random_blob(4096, OCI_LAYER_GZIP)
    config = image_config(author="fast path")
    manifest = image_manifest(config.descriptor(), [layer.descriptor()])
    for project, repository in (("fp", "priv"), ("fp", "pub"), ("fpr", "refused")):
        key = server.access_key(project)
        with httpx.Client(base_url=server.url, auth=key) as client:
            name = f"{project}/{repository}"
            for blob in (config, layer):
                push_blob(client, name, blob)
            push_manifest(client, name, "v1", manifest)

    async def refuse(services: Services) -> None:
        await services.pull_policy.set("fpr", "high", "admin")
        async with services.db.write() as conn:
            manifest_id = (
                await conn.execute(
                    select(manifests.c.id).where(manifests.c.digest == manifest.digest)
                )
            ).scalars()
            for found in list(manifest_id):
                await conn.execute(
                    scans.insert().values(
                        manifest_id=found,
                        state="done",
                        high=1,
                        vulndb_state=1,  # matched against imported data (0: none, no result)
                        requested_by="admin",
                        requested_at=dt.datetime.now(dt.UTC),
                    )
                )

    server._services(refuse)
    # The server learns of the pull policy (set behind its back, in-process) once its 1 s
    # repository cache has let the pushes' lookups go.
    time.sleep(1.2)
    reader = server.access_key("fp", "reader")
    auths: dict[str, str | None] = {
        "anonymous": None,
        "admin key": basic(admin),
        "reader key": basic(reader),
        "reader key of fpr": basic(server.access_key("fpr", "reader")),
        "key of another project": basic(server.access_key("fpo", "stranger")),
        "unsupported scheme": "Digest username=admin",
        "admin token": token(server, PATH_HOST, "repository:fp/priv:pull", admin),
        "reader token for fpr": token(
            server, PATH_HOST, "repository:fpr/refused:pull", server.access_key("fpr", "reader")
        ),
        "token for another repository": token(server, PATH_HOST, "repository:fp/pub:pull", admin),
        "anonymous token": token(server, PATH_HOST, "repository:fp/pub:pull", None),
        "host-style token": token(server, PROJECT_HOST, "repository:priv:pull", admin),
        "forged token": "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl",
    }
    return World(manifest.digest, layer.digest, auths)


def matrix(world: World) -> list[tuple[str, str, str, dict[str, str]]]:
    """(method, host, path, headers) of every request, in order."""
    targets = [
        (PATH_HOST, "fp/priv"),
        (PATH_HOST, "fp/pub"),
        (PROJECT_HOST, "priv"),
        (PATH_HOST, "fpr/refused"),
        (PATH_HOST, "nope/priv"),  # no such project
        (PROJECT_HOST, "fp/priv"),  # the project named twice
    ]
    accept = {"Accept": OCI_MANIFEST}
    unknown = "sha256:" + "0" * 64
    references = ["v1", world.manifest, "missing", unknown, "bad!tag", "sha256:xyz"]
    blob_digests = [world.layer, unknown, "sha256:xyz"]
    manifest_variants: list[dict[str, str]] = [
        {"Accept": DOCKER_V2},
        {"Accept": f"{OCI_MANIFEST};q=0, */*"},  # refused by its quality
        {},
        {"Accept": OCI_MANIFEST, "If-None-Match": f'"{world.manifest}"'},
    ]
    blob_variants: list[dict[str, str]] = [
        {"Range": "bytes=0-99"},
        {"Range": "bytes=-10"},
        {"Range": "bytes=500-0"},
        {"Range": "bytes=5000-6000"},
        {"If-None-Match": f'"{world.layer}"'},
        {"If-None-Match": f'"{world.layer}"', "Range": "bytes=0-99"},
    ]
    requests: list[tuple[str, str, str, dict[str, str]]] = []
    few = ("anonymous", "admin key", "admin token")
    for method in ("GET", "HEAD"):
        # Every kind of credentials, on each kind of repository.
        for host, name in targets[:4]:
            for auth in world.auths.values():
                sent = {"Authorization": auth} if auth else {}
                requests.append((method, host, f"/v2/{name}/manifests/v1", {**sent, **accept}))
                requests.append((method, host, f"/v2/{name}/blobs/{world.layer}", sent))
        # Every reference, and (on the first three) every header variant, for three callers.
        for index, (host, name) in enumerate(targets):
            for auth_name in few:
                auth = world.auths[auth_name]
                sent = {"Authorization": auth} if auth else {}
                for reference in references:
                    path = f"/v2/{name}/manifests/{reference}"
                    requests.append((method, host, path, {**sent, **accept}))
                for digest in blob_digests:
                    requests.append((method, host, f"/v2/{name}/blobs/{digest}", sent))
                if index > 2:
                    continue
                for variant in manifest_variants:
                    path = f"/v2/{name}/manifests/v1"
                    requests.append((method, host, path, {**sent, **variant}))
                for variant in blob_variants:
                    path = f"/v2/{name}/blobs/{world.layer}"
                    requests.append((method, host, path, {**sent, **variant}))
    # Not pulls: the router's to answer either way.
    requests += [
        ("DELETE", PATH_HOST, "/v2/fp/priv/manifests/missing", {}),
        (
            "GET",
            PATH_HOST,
            "/v2/fp/priv/tags/list",
            {"Authorization": world.auths["admin key"] or ""},
        ),
        ("GET", PATH_HOST, "/v2/fp/priv/blobs/uploads", {}),
        ("GET", PATH_HOST, "/v2/fp/priv/manifests/", {}),
        ("GET", PATH_HOST, "/v2/", {}),
    ]
    # Last: wrong secrets (their failures are throttled per address).
    wrong = basic(("AKWRONGWRONGWRONG", "not-the-secret"))
    requests += [
        ("GET", PATH_HOST, "/v2/fp/priv/manifests/v1", {"Authorization": wrong}),
        ("HEAD", PATH_HOST, f"/v2/fp/pub/blobs/{world.layer}", {"Authorization": wrong}),
    ]
    return requests


def pull_metrics(server: BerthServer) -> Counter[Series]:
    found: Counter[Series] = Counter()
    for (name, labels), count in scrape(server).items():
        if not PULL_ROUTES.match(dict(labels).get("route", "")):
            continue
        if "duration" in name and not name.endswith("_count"):
            continue  # which bucket a request's time falls in is the clock's
        found[(name, labels)] += int(count)  # counts and bytes: whole numbers
    return found


def access_lines(server: BerthServer, since: int) -> list[dict[str, object]]:
    lines = []
    text = (server.data_dir / "server.log").read_bytes()[since:].decode()
    for line in text.splitlines():
        if line.startswith("{") and '"request_id":"req-' in line:
            entry = json.loads(line)
            for varying in ("duration_ms", "time"):
                entry.pop(varying)
            lines.append(entry)
    # In the order the requests were sent: a line is written when its response is done, and
    # a ranged file response closes its file in a thread after the client has its bytes.
    return sorted(lines, key=lambda entry: int(str(entry["request_id"]).removeprefix("req-")))


def record(server: BerthServer, world: World) -> Recorded:
    since = (server.data_dir / "server.log").stat().st_size
    before = pull_metrics(server)
    answers = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for number, (method, host, path, headers) in enumerate(matrix(world)):
            sent = {"Host": host, "X-Request-ID": f"req-{number}", **headers}
            response = client.request(method, path, headers=sent)
            kept = tuple(
                (name, value) for name, value in response.headers.multi_items() if name != "date"
            )
            answers.append(
                Answer(
                    f"{method} {host}{path} {headers}", response.status_code, kept, response.content
                )
            )
    added = pull_metrics(server) - before
    deadline = time.monotonic() + 30
    while len(access_lines(server, since)) < len(answers) and time.monotonic() < deadline:
        time.sleep(0.2)  # the access log is written out every second
    lines = access_lines(server, since)
    server.stop()
    return answers, lines, added


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorded, Recorded]]:
    data_dir = tmp_path_factory.mktemp("fastpath")
    env = {"BERTH_LOG_FORMAT": "json", "BERTH_NODE_NAME": "node-a"}
    server = BerthServer(data_dir, port=free_port(), extra_env=env)
    try:
        server.start()
        world = arrange(server)
        fast = record(server, world)
        server.extra_env["BERTH_PULL_FAST_PATH"] = "false"
        server.start()
        routed = record(server, world)
        yield fast, routed
    finally:
        server.stop()


def test_the_fast_path_answers_every_pull_as_the_router_does(
    both: tuple[Recorded, Recorded],
) -> None:
    (fast_answers, _, _), (routed_answers, _, _) = both
    assert len(fast_answers) == len(routed_answers) > 500
    for fast_answer, routed_answer in zip(fast_answers, routed_answers, strict=True):
        assert fast_answer == routed_answer
    statuses = Counter(answer.status for answer in fast_answers)
    # The matrix reaches every kind of answer a pull can get.
    assert {200, 206, 304, 401, 403, 404, 400, 416} <= set(statuses), statuses
    blob_statuses = Counter(answer.status for answer in fast_answers if "/blobs/" in answer.request)
    assert {200, 206, 304, 416} <= set(blob_statuses), blob_statuses


def test_the_fast_path_logs_and_counts_every_pull_as_the_router_does(
    both: tuple[Recorded, Recorded],
) -> None:
    (fast_answers, fast_lines, fast_metrics), (_, routed_lines, routed_metrics) = both
    assert len(fast_lines) == len(fast_answers) and fast_lines == routed_lines
    assert fast_metrics and fast_metrics == routed_metrics
