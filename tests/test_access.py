"""Who may do what (issue 3), over HTTP against a running server, on SQLite and PostgreSQL.

The client side is what docker does: GET /v2/ answers 401 with a Bearer challenge; the realm
gives a token for the requested scope in exchange for Basic access-key credentials; requests
carry `Authorization: Bearer`. Basic credentials sent straight to /v2 are accepted too, so the
permission matrix runs both ways.

The scene (`World`, one per server): project `acme` with a public, a private and a second
private repository, project `globex` with one private repository, each holding an image, and
an actor per role: acme's admin, member and reader, a repository member and a repository viewer
(granted on acme's public and private repositories), a service account that is an acme member,
an acme admin signing in with a key made for globex, and anonymous.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from berth.state import Services
from tests.auth import (
    Credentials,
    bearer,
    challenge,
    claims,
    fetch_token,
    granted,
    hmac_signed,
    ping,
    resign,
    tampered,
    token_response,
    unsigned,
)
from tests.oci import (
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    error_codes,
    image_config,
    image_manifest,
    location,
    manifest_path,
    patch_upload,
    push_blob,
    push_manifest,
    put_upload,
    start_upload,
    uploads_path,
)
from tests.servers import (
    ADMIN_PASSWORD,
    BACKENDS,
    BerthServer,
    eventually,
    running_server,
    server_fixture,
    wait_for,
)

PASSWORD = "correct-horse-battery-staple"
P, Q = "acme", "globex"
# Identity caches what it looked up for a second: a change made elsewhere (another process, the
# CLI) must take effect on the server within that, plus a request's time.
TAKES_EFFECT_WITHIN = 1.5

PULL = frozenset({"pull"})
PUSH = frozenset({"pull", "push"})
FULL = frozenset({"pull", "push", "delete"})
NOTHING: frozenset[str] = frozenset()

# What each actor may do on acme's private repository; on the public one, anyone may also pull.
ACTORS: dict[str, frozenset[str]] = {
    "project-admin": FULL,
    "project-member": FULL,
    "project-reader": PULL,
    "repository-member": PUSH,
    "repository-viewer": PULL,
    "service-account": FULL,
    "other-project-key": NOTHING,
    "anonymous": NOTHING,
}
VISIBILITIES = ("public", "private")
OPERATIONS = {
    "pull-manifest": "pull",
    "pull-blob": "pull",
    "list-tags": "pull",
    "push": "push",
    "delete": "delete",
}
# The scope docker asks for to do an action (and the scope a challenge names).
SCOPE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}
VERBS = {"pull": "pull", "push": "push", "delete": "delete"}
ACCEPT = {"Accept": OCI_MANIFEST}


def rights(actor: str, visibility: str) -> frozenset[str]:
    return ACTORS[actor] | (PULL if visibility == "public" else NOTHING)


# ---------------------------------------------------------------- the scene


@dataclass
class Image:
    config: Blob
    layer: Blob
    manifest: Blob


@dataclass
class World:
    server: BerthServer
    http: httpx.Client  # no credentials of its own
    admin: httpx.Client  # Basic with the server administrator's key for acme: sets the scene
    repos: dict[str, str]  # "public", "private", "second", "foreign" -> OCI name
    users: dict[str, str]  # actor -> user name
    keys: dict[str, Credentials]  # actor -> access key (anonymous has none)
    images: dict[str, Image] = field(default_factory=dict)  # OCI name -> the image it holds
    secrets: list[str] = field(default_factory=list)  # every secret handed out

    def credentials(self, actor: str) -> Credentials | None:
        return self.keys.get(actor)

    def client_as(self, actor: str, mode: str, scope: str) -> httpx.Client:
        """A client for `actor`: Basic credentials on every request, or a Bearer token that
        the token endpoint issued for `scope`."""
        credentials = self.credentials(actor)
        if mode == "basic":
            return httpx.Client(base_url=self.server.url, timeout=30, auth=credentials)
        token = fetch_token(self.http, credentials, scope)
        return httpx.Client(base_url=self.server.url, timeout=30, headers=bearer(token))

    def push_image(self, name: str, tag: str | None = None) -> Blob:
        """A fresh image in `name` (a new layer over the repository's config), pushed by the
        administrator under `tag` (a random one by default)."""
        seed = self.images[name]
        fresh = Blob(os.urandom(256), OCI_LAYER)
        push_blob(self.admin, name, fresh)
        manifest = image_manifest(seed.config.descriptor(), [fresh.descriptor()])
        push_manifest(self.admin, name, tag or "t" + uuid.uuid4().hex[:12], manifest)
        return manifest

    def new_user(
        self,
        role: str = "member",
        *,
        repository: str | None = None,
        key: bool = True,
    ) -> tuple[str, Credentials | None]:
        """A new user with `role` in acme (or, with `repository`, that repository role) and,
        unless `key` is false, an access key there."""
        name = "u" + uuid.uuid4().hex[:10]

        async def create(s: Services) -> Credentials | None:
            await s.identity.users.create_user(name, PASSWORD, actor="test")
            if repository is None:
                await s.identity.members.add_member(P, name, role, actor="test")
            else:
                await s.identity.members.grant(P, repository, name, role, actor="test")
            if not key:
                return None
            created = await s.identity.keys.create_key(name, P, actor="test")
            return created.key_id, created.secret

        credentials = self.server._services(create)
        if credentials is not None:
            self.secrets.append(credentials[1])
        return name, credentials


registry = server_fixture(
    "access",
    backends=BACKENDS,
    env={"BERTH_LOGIN_FAILURES_PER_CLIENT": "100000"},
    doc="""A running registry per backend. Every test here calls from 127.0.0.1, and several fail
    logins on purpose: the per-address limit is raised so they do not lock each other out
    (`test_failed_logins_are_throttled` checks the limits on a server of its own).""",
)


@pytest.fixture(scope="module")
def world(registry: BerthServer) -> Iterator[World]:
    repos = {
        "public": f"{P}/pub",
        "private": f"{P}/priv",
        "second": f"{P}/second",
        "foreign": f"{Q}/app",
    }
    users = {actor: actor for actor in ACTORS if actor != "anonymous"}

    async def populate(s: Services) -> dict[str, Credentials]:
        for project in (P, Q):
            await s.repositories.create_project(project, actor="test")
        await s.repositories.create(P, "pub", public=True, actor="test")
        await s.repositories.create(P, "priv", actor="test")
        await s.repositories.create(P, "second", actor="test")
        await s.repositories.create(Q, "app", actor="test")
        for actor in ("project-admin", "project-member", "project-reader"):
            await s.identity.users.create_user(actor, PASSWORD, actor="test")
            await s.identity.members.add_member(
                P, actor, actor.removeprefix("project-"), actor="test"
            )
        for actor in ("repository-member", "repository-viewer"):
            await s.identity.users.create_user(actor, PASSWORD, actor="test")
            for repository in ("pub", "priv"):
                await s.identity.members.grant(
                    P, repository, actor, actor.removeprefix("repository-"), actor="test"
                )
        await s.identity.users.create_user(
            "service-account", None, service_account=True, actor="test"
        )
        await s.identity.members.add_member(P, "service-account", "member", actor="test")
        # An admin of both projects, signing in with the key made for the other one.
        await s.identity.users.create_user("other-project-key", PASSWORD, actor="test")
        await s.identity.members.add_member(P, "other-project-key", "admin", actor="test")
        await s.identity.members.add_member(Q, "other-project-key", "admin", actor="test")
        keys = {}
        for actor, user in users.items():
            created = await s.identity.keys.create_key(
                user, Q if actor == "other-project-key" else P, actor="test"
            )
            keys[actor] = (created.key_id, created.secret)
        return keys

    keys = registry._services(populate)
    http = httpx.Client(base_url=registry.url, timeout=30)
    admin = httpx.Client(base_url=registry.url, timeout=30, auth=registry.access_key(P))
    home = httpx.Client(base_url=registry.url, timeout=30, auth=registry.access_key(Q))
    built = World(registry, http, admin, repos, users, keys)
    built.secrets += [secret for _, secret in keys.values()]
    built.secrets += [secret for _, secret in registry.keys.values()]
    for name in repos.values():
        client = home if name.startswith(f"{Q}/") else admin
        config = image_config(extra={"repository": name})
        layer = Blob(os.urandom(512), OCI_LAYER)
        push_blob(client, name, config)
        push_blob(client, name, layer)
        manifest = image_manifest(config.descriptor(), [layer.descriptor()])
        push_manifest(client, name, "seed", manifest)
        built.images[name] = Image(config, layer, manifest)
    yield built
    for client in (http, admin, home):
        client.close()


# ---------------------------------------------------------------- assertions


def message(response: httpx.Response) -> str:
    return str(response.json()["errors"][0].get("message") or "")


def assert_unauthorized(response: httpx.Response, scope: str | None = None) -> None:
    """401 UNAUTHORIZED with a Bearer challenge (naming `scope` when given) a client can follow."""
    assert response.status_code == 401, (
        f"expected 401: {response.request.method} {response.request.url} -> "
        f"{response.status_code} {response.text[:300]}"
    )
    assert error_codes(response) == ["UNAUTHORIZED"]
    found = challenge(response)
    assert found.scheme == "Bearer"
    assert found.realm.endswith("/auth/token") and found.service
    if scope is not None:
        assert found.params.get("scope") == scope, found
    assert message(response), "an UNAUTHORIZED error must say what to do"


def assert_denied(response: httpx.Response) -> None:
    assert response.status_code == 403, (
        f"expected 403: {response.request.method} {response.request.url} -> "
        f"{response.status_code} {response.text[:300]}"
    )
    assert error_codes(response) == ["DENIED"]


def assert_refused(
    world: World, actor: str, response: httpx.Response, name: str, action: str
) -> None:
    """The refusal a caller without the right gets: 401 and a challenge for anonymous callers,
    403 DENIED for a signed-in one, with a message that names what was refused and why."""
    text = message(response) if response.headers.get("content-type", "").endswith("json") else ""
    if actor == "anonymous":
        assert_unauthorized(response, f"repository:{name}:{SCOPE_ACTIONS[action]}")
        assert name in text and "authentication required" in text, text
        return
    assert_denied(response)
    assert world.users[actor] in text and name in text and VERBS[action] in text, text


def until(
    attempt: Callable[[], httpx.Response],
    done: Callable[[httpx.Response], bool],
    within: float = TAKES_EFFECT_WITHIN,
) -> tuple[httpx.Response, float]:
    """Repeat `attempt` until `done` holds or `within` seconds pass; the last answer and when."""
    start = time.monotonic()
    while True:
        response = attempt()
        waited = time.monotonic() - start
        if done(response) or waited > within:
            return response, waited
        time.sleep(0.05)


def refused(response: httpx.Response) -> bool:
    return response.status_code in (401, 403)


def succeeded(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


def basic_header(key_id: str, secret: str) -> dict[str, str]:
    pair = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


# ---------------------------------------------------------------- the operations


def pull_manifest(world: World, client: httpx.Client, name: str) -> list[httpx.Response]:
    response = client.get(manifest_path(name, "seed"), headers=ACCEPT)
    if response.status_code == 200:
        assert response.content == world.images[name].manifest.data
    return [response]


def pull_blob(world: World, client: httpx.Client, name: str) -> list[httpx.Response]:
    layer = world.images[name].layer
    response = client.get(f"/v2/{name}/blobs/{layer.digest}")
    if response.status_code == 200:
        assert response.content == layer.data
    return [response]


def list_tags(world: World, client: httpx.Client, name: str) -> list[httpx.Response]:
    response = client.get(f"/v2/{name}/tags/list")
    if response.status_code == 200:
        assert "seed" in response.json()["tags"]
    return [response]


def push(world: World, client: httpx.Client, name: str) -> list[httpx.Response]:
    """Upload a layer (POST, then PUT with the digest) and PUT a manifest naming it. When the
    upload is refused, the manifest PUT is still tried, naming only blobs the repository has."""
    seed = world.images[name]
    fresh = Blob(os.urandom(256), OCI_LAYER)
    started = client.post(uploads_path(name), headers={"Content-Length": "0"})
    responses = [started]
    if started.status_code == 202:
        responses.append(put_upload(client, location(started), fresh.digest, fresh.data))
        layers = [fresh.descriptor()]
    else:
        layers = [seed.layer.descriptor()]
    manifest = image_manifest(seed.config.descriptor(), layers, annotations={"n": uuid.uuid4().hex})
    tag = "t" + uuid.uuid4().hex[:12]
    responses.append(push_manifest(client, name, tag, manifest, check=False))
    stored = world.admin.get(manifest_path(name, tag), headers=ACCEPT)
    assert stored.status_code == (200 if succeeded(responses[-1]) else 404)
    return responses


def delete(world: World, client: httpx.Client, name: str) -> list[httpx.Response]:
    """DELETE a manifest (a fresh one, by digest) and check whether it is gone."""
    manifest = world.push_image(name)
    response = client.delete(manifest_path(name, manifest.digest))
    after = world.admin.get(manifest_path(name, manifest.digest), headers=ACCEPT)
    assert after.status_code == (404 if succeeded(response) else 200)
    return [response]


PERFORM: dict[str, Callable[[World, httpx.Client, str], list[httpx.Response]]] = {
    "pull-manifest": pull_manifest,
    "pull-blob": pull_blob,
    "list-tags": list_tags,
    "push": push,
    "delete": delete,
}


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize("mode", ["token", "basic"])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("visibility", VISIBILITIES)
@pytest.mark.parametrize("actor", ACTORS)
def test_permission_matrix(
    world: World, actor: str, visibility: str, operation: str, mode: str
) -> None:
    name = world.repos[visibility]
    action = OPERATIONS[operation]
    with world.client_as(actor, mode, f"repository:{name}:{SCOPE_ACTIONS[action]}") as client:
        responses = PERFORM[operation](world, client, name)
    if action in rights(actor, visibility):
        for response in responses:
            assert succeeded(response), f"{response.request.method} -> {response.text[:300]}"
    else:
        for response in responses:
            assert_refused(world, actor, response, name, action)


@pytest.mark.parametrize("visibility", VISIBILITIES)
@pytest.mark.parametrize("actor", ACTORS)
def test_token_grants_what_was_asked_and_is_allowed(
    world: World, actor: str, visibility: str
) -> None:
    name = world.repos[visibility]
    token = fetch_token(world.http, world.credentials(actor), f"repository:{name}:pull,push,delete")
    expected = rights(actor, visibility)
    assert granted(token) == ({f"repository:{name}": set(expected)} if expected else {})
    body = claims(token)
    assert body["sub"] == world.users.get(actor, "anonymous")
    assert body["aud"] == world.server.address and body["iss"]
    assert 60 <= body["exp"] - body["iat"] <= 3600


# ---------------------------------------------------------------- the token flow


def test_docker_token_flow(world: World) -> None:
    found = ping(world.http)
    assert found.realm == f"{world.server.url}/auth/token"
    assert found.service == world.server.address
    credentials = world.keys["project-member"]
    name = world.repos["private"]
    response = token_response(world.http, credentials, f"repository:{name}:pull,push", realm=found)
    assert response.status_code == 200, response.text
    assert "no-store" in response.headers.get("Cache-Control", "")
    body = response.json()
    assert body["token"] == body["access_token"]
    assert isinstance(body["expires_in"], int) and body["expires_in"] >= 60
    issued = dt.datetime.fromisoformat(body["issued_at"])
    assert issued.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - issued).total_seconds()) < 60
    token = body["token"]
    assert world.http.get("/v2/", headers=bearer(token)).json() == {}
    pulled = world.http.get(manifest_path(name, "seed"), headers={**bearer(token), **ACCEPT})
    assert pulled.status_code == 200
    # Basic straight to the API works as well, and docker login's token request (no scope,
    # client_id, offline_token) succeeds.
    assert world.http.get("/v2/", auth=credentials).status_code == 200
    login = token_response(world.http, credentials, client_id="docker", offline_token="true")
    assert login.status_code == 200 and login.json()["refresh_token"], login.text
    assert granted(login.json()["token"]) == {}


def test_wrong_credentials_are_refused_clearly(world: World) -> None:
    key_id, secret = world.keys["project-reader"]
    for credentials in ((key_id, secret + "x"), ("BKNOSUCHKEY234567890", secret)):
        response = world.http.get("/v2/", auth=credentials)
        assert_unauthorized(response)
        assert message(response) == "invalid access key ID or secret access key"
        token = token_response(world.http, credentials, f"repository:{P}/priv:pull")
        assert token.status_code == 401 and error_codes(token) == ["UNAUTHORIZED"]
        assert message(token) == "invalid access key ID or secret access key"


def test_a_mistyped_key_id_is_told_it_is_wrong(world: World) -> None:
    """A key ID with a typo is still key-shaped (`BK` and 18 capitals or digits): it is told
    the key ID or secret is wrong, not that registry clients take an access key. `O` and `1`
    are outside the key alphabet, so no key has these IDs."""
    key_id, secret = world.keys["project-reader"]
    for typo in (key_id[:-1] + "O", key_id[:7] + "1" + key_id[8:]):
        assert typo != key_id and len(typo) == len(key_id)
        response = world.http.get("/v2/", auth=(typo, secret))
        assert_unauthorized(response)
        assert message(response) == "invalid access key ID or secret access key"
        token = token_response(world.http, (typo, secret), f"repository:{P}/priv:pull")
        assert message(token) == "invalid access key ID or secret access key"


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Bearer not.a.token",
        "Bearer",
        "Digest username=x",
    ],
)
def test_malformed_authorization_is_unauthorized(world: World, header: str) -> None:
    name = world.repos["private"]
    response = world.http.get(manifest_path(name, "seed"), headers={"Authorization": header})
    assert_unauthorized(response)


def test_a_key_works_only_in_its_own_project(world: World) -> None:
    """An admin of both projects, signing in with their globex key, gets nothing in acme."""
    credentials = world.keys["other-project-key"]
    home, away = world.repos["foreign"], world.repos["private"]
    assert world.http.get(manifest_path(home, "seed"), auth=credentials, headers=ACCEPT).is_success
    refused_here = world.http.get(manifest_path(away, "seed"), auth=credentials, headers=ACCEPT)
    assert_refused(world, "other-project-key", refused_here, away, "pull")
    # The user is an admin of acme: the message must point at the key and the project it is
    # for, not send them to ask for a role they have.
    text = message(refused_here)
    assert "key" in text and Q in text and "ask a project admin" not in text, text
    token = fetch_token(
        world.http, credentials, f"repository:{home}:pull,push", f"repository:{away}:pull,push"
    )
    assert granted(token) == {f"repository:{home}": {"pull", "push"}}
    replayed = world.http.get(manifest_path(away, "seed"), headers={**bearer(token), **ACCEPT})
    assert refused(replayed)


def login_token(world: World, credentials: Credentials, host: str | None = None) -> httpx.Response:
    """docker login's token request (no scope) on `host` (path style without)."""
    host = host or world.server.address
    return world.http.get(
        "/auth/token",
        params={"service": host, "account": credentials[0], "client_id": "docker"},
        auth=credentials,
        headers={"Host": host},
    )


def test_signing_in_on_a_project_host_fails_for_another_project_or_no_project(
    world: World,
) -> None:
    """docker login's two requests, the token request and GET /v2/ with Basic credentials,
    are refused at once on a project host that is not the key's project or no project."""
    acme = f"{P}.local.localhost:{world.server.port}"
    nope = f"nope.local.localhost:{world.server.port}"
    globex_key = world.keys["other-project-key"]  # an acme admin's key made for globex
    acme_key = world.keys["project-reader"]
    for host, credentials, said in [
        (acme, globex_key, f"belongs to project '{Q}', not '{P}'"),
        (nope, acme_key, "there is no project 'nope'"),
    ]:
        token = login_token(world, credentials, host)
        assert token.status_code == 401 and error_codes(token) == ["UNAUTHORIZED"], token.text
        assert said in message(token)
        basic = world.http.get("/v2/", auth=credentials, headers={"Host": host})
        assert_unauthorized(basic)
        assert said in message(basic)
    text = message(login_token(world, globex_key, acme))
    # The host to sign in to, as docker login takes it: with the port the client used.
    assert f"sign in to {Q}.local.localhost:{world.server.port} with it" in text

    # Refused for the host, the login is audited as failed in the key's project, whether it
    # came to the token endpoint or as Basic straight to /v2.
    def refused_for_the_host() -> list[str]:
        return [
            (e["detail"] or {})["through"]
            for e in world.server.cli_items("audit", Q)
            if e["action"] == "login.failed"
            and "belongs to project" in (e["detail"] or {})["reason"]
        ]

    # Sign-ins are audited in batches a few times a second: read once the batch is written.
    # Newest first: two token requests and a Basic /v2/ above.
    before = eventually(refused_for_the_host, lambda found: len(found) == 3)
    assert sorted(before) == ["/auth/token", "/auth/token", "/v2 Basic"]
    assert_unauthorized(world.http.get("/v2/", auth=globex_key, headers={"Host": acme}))
    after = eventually(refused_for_the_host, lambda found: len(found) == 4)
    assert after == ["/v2 Basic", *before]
    # The same keys on their own project's host, and anywhere in path style, sign in.
    assert login_token(world, acme_key, acme).status_code == 200
    assert world.http.get("/v2/", auth=acme_key, headers={"Host": acme}).status_code == 200
    assert login_token(world, globex_key).status_code == 200
    # Host names are case-insensitive: ACME.LOCAL.LOCALHOST is acme's host.
    upper = {"Host": acme.upper(), **ACCEPT}
    assert world.http.get("/v2/", auth=acme_key, headers=upper).status_code == 200
    pulled = world.http.get("/v2/priv/manifests/seed", auth=acme_key, headers=upper)
    assert pulled.status_code == 200, pulled.text


def test_a_refused_push_names_the_role_that_may_not_push(world: World) -> None:
    name = world.repos["private"]
    with world.client_as("project-reader", "basic", "") as reader:
        refused_push = reader.post(uploads_path(name), headers={"Content-Length": "0"})
    assert_denied(refused_push)
    text = message(refused_push)
    assert f"their role reader in project '{P}' may only pull" in text, text
    assert "ask a project admin for a role that may push" in text
    with world.client_as("repository-viewer", "basic", "") as viewer:
        refused_push = viewer.post(uploads_path(name), headers={"Content-Length": "0"})
    assert f"their role viewer on repository {name} may only pull" in message(refused_push)


def test_an_upload_is_pushing_a_pull_only_caller_cannot_see_or_touch_it(world: World) -> None:
    """As on Distribution, every route of an upload needs push: a reader (Basic), and a pull
    token of a member who may push, are refused its status, a chunk, the final PUT and a
    cancel, even holding its ID; the upload is left as it was and its pusher finishes it."""
    name = world.repos["private"]
    blob = Blob(os.urandom(1000))
    started = start_upload(world.admin, name)
    assert started.status_code == 202, started.text
    upload = location(patch_upload(world.admin, location(started), blob.data[:600], "0-599"))
    token = fetch_token(world.http, world.keys["project-member"], f"repository:{name}:pull")

    def attempts(client: httpx.Client) -> list[httpx.Response]:
        chunk = {"Content-Type": "application/octet-stream", "Content-Range": "600-999"}
        return [
            client.get(upload),
            client.patch(upload, content=blob.data[600:], headers=chunk),
            client.put(upload, params={"digest": blob.digest}, content=blob.data[600:]),
            client.delete(upload),
        ]

    with world.client_as("project-reader", "basic", "") as reader:
        for response in attempts(reader):
            assert_denied(response)
            assert f"their role reader in project '{P}' may only pull" in message(response)
    with httpx.Client(base_url=world.server.url, timeout=30, headers=bearer(token)) as puller:
        for response in attempts(puller):
            assert_unauthorized(response, f"repository:{name}:pull,push")
            assert challenge(response).params.get("error") == "insufficient_scope"
    status = world.admin.get(upload)
    assert status.status_code == 204 and status.headers["Range"] == "0-599", status.text
    finished = put_upload(world.admin, upload, blob.digest, blob.data[600:])
    assert finished.status_code == 201, finished.text


def test_a_user_password_is_not_an_access_key(world: World) -> None:
    """docker login with the console's user name and password: told to use an access key."""
    for credentials in (("admin", ADMIN_PASSWORD), (world.users["project-member"], PASSWORD)):
        response = world.http.get("/v2/", auth=credentials)
        assert_unauthorized(response)
        text = message(response)
        assert text.startswith("invalid access key ID or secret access key")
        assert "not with a user name and password" in text, text
        assert "not with a user name and password" in message(login_token(world, credentials))


@pytest.mark.parametrize("mode", ["token", "basic"])
def test_a_repository_role_does_not_reach_other_repositories_blobs(world: World, mode: str) -> None:
    """A repository member may push to acme/priv but not read acme/second: neither a mount
    (with or without `from`) nor a manifest naming second's blobs may bring them into priv."""
    name, other = world.repos["private"], world.repos["second"]
    hidden = world.images[other]
    scope = f"repository:{name}:pull,push repository:{other}:pull"
    with world.client_as("repository-member", mode, scope) as client:
        assert_refused(
            world,
            "repository-member",
            client.get(f"/v2/{other}/blobs/{hidden.layer.digest}"),
            other,
            "pull",
        )
        for params in (
            {"mount": hidden.layer.digest, "from": other},
            {"mount": hidden.layer.digest},
        ):
            mounted = client.post(uploads_path(name), params=params)
            assert mounted.status_code == 202, f"{params} -> {mounted.status_code}"
        manifest = image_manifest(hidden.config.descriptor(), [hidden.layer.descriptor()])
        response = push_manifest(client, name, "borrowed", manifest, check=False)
        assert response.status_code == 400 and error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
        for blob in (hidden.layer, hidden.config):
            leaked = client.get(f"/v2/{name}/blobs/{blob.digest}")
            assert leaked.status_code == 404, f"{other}'s blob readable through {name}"


def test_a_token_for_one_repository_mounts_nothing_from_another(world: World) -> None:
    """A project member may read acme/second, but a token granting only acme/priv mounts
    none of second's blobs into priv, with or without `from`; with Basic credentials, which
    carry the member's whole standing, the automatic mount does."""
    name, other = world.repos["private"], world.repos["second"]
    layer = Blob(os.urandom(256), OCI_LAYER)
    push_blob(world.admin, other, layer)
    scope = f"repository:{name}:pull,push"
    with world.client_as("project-member", "token", scope) as client:
        for params in ({"mount": layer.digest, "from": other}, {"mount": layer.digest}):
            mounted = client.post(uploads_path(name), params=params)
            assert mounted.status_code == 202, f"{params} -> {mounted.status_code}"
        assert client.head(f"/v2/{name}/blobs/{layer.digest}").status_code == 404
    with world.client_as("project-member", "basic", scope) as client:
        mounted = client.post(uploads_path(name), params={"mount": layer.digest})
        assert mounted.status_code == 201, mounted.text
        assert client.head(f"/v2/{name}/blobs/{layer.digest}").status_code == 200


def test_a_key_cannot_mount_from_another_project(world: World) -> None:
    """An admin of both projects pushing to globex with the globex key cannot mount acme's
    blobs, explicitly or automatically."""
    credentials = world.keys["other-project-key"]
    home, away = world.repos["foreign"], world.repos["private"]
    digest = world.images[away].layer.digest
    for params in ({"mount": digest, "from": away}, {"mount": digest}):
        mounted = world.http.post(uploads_path(home), params=params, auth=credentials)
        assert mounted.status_code == 202, f"{params} -> {mounted.status_code}"
    assert world.http.get(f"/v2/{home}/blobs/{digest}", auth=credentials).status_code == 404


# ---------------------------------------------------------------- key lifecycle


def pull_with(world: World, credentials: Credentials) -> httpx.Response:
    return world.http.get(
        manifest_path(world.repos["private"], "seed"), auth=credentials, headers=ACCEPT
    )


def pull_with_token(world: World, token: str) -> httpx.Response:
    return world.http.get(
        manifest_path(world.repos["private"], "seed"), headers={**bearer(token), **ACCEPT}
    )


def private_pull_token(world: World, credentials: Credentials) -> httpx.Response:
    return token_response(world.http, credentials, f"repository:{world.repos['private']}:pull")


def test_an_expired_key_stops_working(world: World) -> None:
    user, _ = world.new_user("member", key=False)

    async def create(s: Services) -> tuple[Credentials, dt.datetime]:
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
        created = await s.identity.keys.create_key(user, P, expires_at=expires_at, actor="test")
        return (created.key_id, created.secret), expires_at

    credentials, expires_at = world.server._services(create)
    world.secrets.append(credentials[1])
    token = fetch_token(world.http, credentials, f"repository:{world.repos['private']}:pull")
    assert pull_with(world, credentials).status_code == 200
    assert pull_with_token(world, token).status_code == 200
    time.sleep(max(0.0, (expires_at - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)
    response = pull_with(world, credentials)
    assert_unauthorized(response)
    assert "expired" in message(response)
    assert "expired" in message(private_pull_token(world, credentials))
    assert_unauthorized(pull_with_token(world, token))
    listed = world.server._services(lambda s: s.identity.keys.list_keys(project=P))
    assert {k.access_key_id: k.state for k in listed}[credentials[0]] == "expired"


def test_a_disabled_key_stops_working_and_works_again_when_enabled(world: World) -> None:
    _, credentials = world.new_user("member")
    assert credentials is not None
    token = fetch_token(world.http, credentials, f"repository:{world.repos['private']}:pull")
    assert pull_with(world, credentials).status_code == 200
    world.server._services(
        lambda s: s.identity.keys.set_key_disabled(credentials[0], True, actor="test")
    )
    response, _ = until(lambda: pull_with(world, credentials), refused)
    assert_unauthorized(response)
    assert "disabled" in message(response)
    assert_unauthorized(pull_with_token(world, token))
    refused_token = private_pull_token(world, credentials)
    assert refused_token.status_code == 401 and "disabled" in message(refused_token)
    world.server._services(
        lambda s: s.identity.keys.set_key_disabled(credentials[0], False, actor="test")
    )
    # Watched through the token: each refused Basic login would count against the key's
    # failed-login limit.
    response, _ = until(lambda: pull_with_token(world, token), succeeded)
    assert response.status_code == 200
    assert pull_with(world, credentials).status_code == 200
    assert private_pull_token(world, credentials).status_code == 200


def test_a_deleted_key_stops_working(world: World) -> None:
    _, credentials = world.new_user("member")
    assert credentials is not None
    token = fetch_token(world.http, credentials, f"repository:{world.repos['private']}:pull")
    assert pull_with(world, credentials).status_code == 200
    world.server._services(lambda s: s.identity.keys.delete_key(credentials[0], actor="test"))
    response, _ = until(lambda: pull_with(world, credentials), refused)
    assert_unauthorized(response)
    assert message(response) == "invalid access key ID or secret access key"
    assert_unauthorized(pull_with_token(world, token))
    assert private_pull_token(world, credentials).status_code == 401


def test_leaving_the_project_ends_the_users_keys_within_a_second(world: World) -> None:
    user, credentials = world.new_user("member")
    assert credentials is not None
    token = fetch_token(world.http, credentials, f"repository:{world.repos['private']}:pull")
    assert pull_with_token(world, token).status_code == 200
    world.server._services(lambda s: s.identity.members.remove_member(P, user, actor="test"))
    response, waited = until(lambda: pull_with_token(world, token), refused)
    assert_unauthorized(response)
    assert waited <= TAKES_EFFECT_WITHIN
    assert_unauthorized(pull_with(world, credentials))
    listed = world.server._services(lambda s: s.identity.keys.list_keys(user=user))
    assert listed == []


def test_losing_the_last_repository_role_ends_the_users_keys(world: World) -> None:
    user, credentials = world.new_user("viewer", repository="priv")
    assert credentials is not None
    assert pull_with(world, credentials).status_code == 200
    world.server._services(lambda s: s.identity.members.revoke(P, "priv", user, actor="test"))
    response, _ = until(lambda: pull_with(world, credentials), refused)
    assert_unauthorized(response)


def test_a_role_change_applies_to_keys_and_outstanding_tokens(world: World) -> None:
    """A member demoted to reader can no longer push, with Basic or with a token they got
    while they were a member."""
    user, credentials = world.new_user("member")
    assert credentials is not None
    name = world.repos["private"]
    token = fetch_token(world.http, credentials, f"repository:{name}:pull,push")

    def start_upload(auth: dict[str, str]) -> httpx.Response:
        return world.http.post(uploads_path(name), headers={**auth, "Content-Length": "0"})

    assert start_upload(bearer(token)).status_code == 202
    world.server._services(lambda s: s.identity.members.add_member(P, user, "reader", actor="test"))
    response, _ = until(lambda: start_upload(basic_header(*credentials)), refused)
    assert_denied(response)
    response, _ = until(lambda: start_upload(bearer(token)), refused)
    assert_denied(response)
    # Promoted again: the key can push again.
    world.server._services(lambda s: s.identity.members.add_member(P, user, "admin", actor="test"))
    response, _ = until(lambda: start_upload(basic_header(*credentials)), succeeded)
    assert response.status_code == 202


# ---------------------------------------------------------------- tokens out of place


def test_a_token_for_one_repository_is_refused_on_another(world: World) -> None:
    name, other = world.repos["private"], world.repos["second"]
    token = fetch_token(world.http, world.keys["project-member"], f"repository:{name}:pull,push")
    response = world.http.get(manifest_path(other, "seed"), headers={**bearer(token), **ACCEPT})
    # The member may pull there, but not with this token: ask for a fitting one.
    assert_unauthorized(response, f"repository:{other}:pull")
    assert challenge(response).params.get("error") == "insufficient_scope"
    foreign = world.repos["foreign"]
    response = world.http.get(manifest_path(foreign, "seed"), headers={**bearer(token), **ACCEPT})
    assert refused(response)


def test_a_pull_token_does_not_push_or_delete(world: World) -> None:
    name = world.repos["private"]
    token = fetch_token(world.http, world.keys["project-member"], f"repository:{name}:pull")
    response = world.http.post(uploads_path(name), headers=bearer(token))
    assert_unauthorized(response, f"repository:{name}:pull,push")
    assert challenge(response).params.get("error") == "insufficient_scope"
    digest = world.images[name].manifest.digest
    response = world.http.delete(manifest_path(name, digest), headers=bearer(token))
    assert_unauthorized(response, f"repository:{name}:delete")
    # A reader asking for push gets a pull-only token, which cannot push either.
    token = fetch_token(world.http, world.keys["project-reader"], f"repository:{name}:pull,push")
    assert granted(token) == {f"repository:{name}": {"pull"}}
    assert_denied(world.http.post(uploads_path(name), headers=bearer(token)))


def test_a_token_for_another_service_is_refused(world: World) -> None:
    name = world.repos["private"]
    credentials = world.keys["project-member"]
    token = fetch_token(world.http, credentials, f"repository:{name}:pull")
    elsewhere = {**bearer(token), **ACCEPT, "Host": f"localhost:{world.server.port}"}
    assert_unauthorized(world.http.get(manifest_path(name, "seed"), headers=elsewhere))
    asked = world.http.get(
        "/auth/token",
        params={"service": "registry.example.com", "scope": f"repository:{name}:pull"},
        auth=credentials,
    )
    assert asked.status_code == 401 and error_codes(asked) == ["UNAUTHORIZED"]
    # Project hosts: a token issued on acme's host is worthless on globex's and in path style.
    acme = f"{P}.local.localhost:{world.server.port}"
    globex = f"{Q}.local.localhost:{world.server.port}"
    issued = world.http.get(
        "/auth/token",
        params={"service": acme, "scope": "repository:priv:pull"},
        auth=credentials,
        headers={"Host": acme},
    )
    assert issued.status_code == 200, issued.text
    host_token = issued.json()["token"]
    assert claims(host_token)["aud"] == acme
    at_home = {**bearer(host_token), **ACCEPT, "Host": acme}
    assert world.http.get("/v2/priv/manifests/seed", headers=at_home).status_code == 200
    on_globex = {**bearer(host_token), **ACCEPT, "Host": globex}
    assert_unauthorized(world.http.get("/v2/app/manifests/seed", headers=on_globex))
    path_style = {**bearer(host_token), **ACCEPT}
    assert_unauthorized(world.http.get(manifest_path(name, "seed"), headers=path_style))


def server_signing_key(world: World) -> ec.EllipticCurvePrivateKey:
    pem = (world.server.data_dir / "keys" / "token-signing.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


FORGERIES = [
    "signed-with-another-key",
    "alg-none",
    "hs256-with-the-public-key",
    "tampered-claims",
    "expired",
    "not-yet-valid",
    "without-expiry",
    "another-issuer",
]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_tokens_are_refused(world: World, forgery: str) -> None:
    """Tokens that did not come from this server, or that it issued with other claims, are
    refused (the last four are signed with the server's own key, to isolate the claim check)."""
    name = world.repos["private"]
    token = fetch_token(world.http, world.keys["project-reader"], f"repository:{name}:pull")
    assert pull_with_token(world, token).status_code == 200  # the genuine token works
    now = int(time.time())
    full = [{"type": "repository", "name": name, "actions": ["pull", "push", "delete"]}]
    public_pem = (
        server_signing_key(world)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = {
        "signed-with-another-key": lambda: resign(token, ec.generate_private_key(ec.SECP256R1())),
        "alg-none": lambda: unsigned(token, access=full),
        "hs256-with-the-public-key": lambda: hmac_signed(token, public_pem),
        "tampered-claims": lambda: tampered(token, access=full),
        "expired": lambda: resign(
            token, server_signing_key(world), iat=now - 600, nbf=now - 600, exp=now - 300
        ),
        "not-yet-valid": lambda: resign(token, server_signing_key(world), nbf=now + 300),
        "without-expiry": lambda: resign(token, server_signing_key(world), exp=None),
        "another-issuer": lambda: resign(token, server_signing_key(world), iss="someone-else"),
    }[forgery]()
    assert_unauthorized(pull_with_token(world, forged))
    response = world.http.post(uploads_path(name), headers=bearer(forged))
    assert response.status_code == 401 and error_codes(response) == ["UNAUTHORIZED"]


def test_a_token_request_naming_too_many_scopes_is_refused(world: World) -> None:
    """A token holds every scope granted: without a bound, one request could have a token of
    hundreds of KB signed. Repeated scopes are granted once."""
    credentials = world.keys["project-member"]
    name = world.repos["private"]
    repeated = token_response(world.http, credentials, *[f"repository:{name}:pull"] * 100)
    assert repeated.status_code == 200, repeated.text
    assert claims(repeated.json()["token"])["access"] == [
        {"type": "repository", "name": name, "actions": ["pull"]}
    ]
    too_many = [f"repository:{P}/r{n}:pull" for n in range(101)]
    asked = token_response(world.http, credentials, *too_many)
    assert asked.status_code == 400 and error_codes(asked) == ["UNSUPPORTED"]
    assert "at most 100 scopes" in asked.json()["errors"][0]["message"]
    # The OAuth2 form: its one scope field, space-separated.
    posted = post_token(
        world,
        grant_type="password",
        username=credentials[0],
        password=credentials[1],
        scope=" ".join(too_many),
    )
    assert posted.status_code == 400 and error_codes(posted) == ["UNSUPPORTED"]
    assert "at most 100 scopes" in posted.json()["errors"][0]["message"]


# ---------------------------------------------------------------- refresh tokens


def post_token(world: World, **form: str) -> httpx.Response:
    return world.http.post(
        "/auth/token", data={"service": world.server.address, "client_id": "tests", **form}
    )


def test_refresh_token_flow(world: World) -> None:
    _, credentials = world.new_user("member")
    assert credentials is not None
    name = world.repos["private"]
    response = post_token(
        world,
        grant_type="password",
        username=credentials[0],
        password=credentials[1],
        scope=f"repository:{name}:pull",
        access_type="offline",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == f"repository:{name}:pull"
    refresh_token = body["refresh_token"]
    assert pull_with_token(world, body["access_token"]).status_code == 200
    # Without access_type=offline there is no refresh token.
    plain = post_token(
        world, grant_type="password", username=credentials[0], password=credentials[1]
    )
    assert plain.status_code == 200 and "refresh_token" not in plain.json()

    def refresh(scope: str) -> httpx.Response:
        return post_token(
            world, grant_type="refresh_token", refresh_token=refresh_token, scope=scope
        )

    renewed = refresh(f"repository:{name}:pull,push")
    assert renewed.status_code == 200, renewed.text
    assert granted(renewed.json()["access_token"]) == {f"repository:{name}": {"pull", "push"}}
    started = world.http.post(uploads_path(name), headers=bearer(renewed.json()["access_token"]))
    assert started.status_code == 202
    # A refresh token is not an access token, nor the other way round.
    assert_unauthorized(pull_with_token(world, refresh_token))
    wrong_way = post_token(
        world, grant_type="refresh_token", refresh_token=body["access_token"], scope=""
    )
    assert wrong_way.status_code == 401
    assert post_token(world, grant_type="client_credentials").status_code == 400
    wrong_password = post_token(
        world, grant_type="password", username=credentials[0], password="nope"
    )
    assert wrong_password.status_code == 401 and error_codes(wrong_password) == ["UNAUTHORIZED"]
    # Disabling the key ends the refresh token too; enabling brings it back.
    world.server._services(
        lambda s: s.identity.keys.set_key_disabled(credentials[0], True, actor="test")
    )
    response, _ = until(lambda: refresh(f"repository:{name}:pull"), refused)
    assert response.status_code == 401 and error_codes(response) == ["UNAUTHORIZED"]
    world.server._services(
        lambda s: s.identity.keys.set_key_disabled(credentials[0], False, actor="test")
    )
    response, _ = until(lambda: refresh(f"repository:{name}:pull"), succeeded)
    assert response.status_code == 200


# ---------------------------------------------------------------- anonymous and the catalog


def test_anonymous_callers_get_pull_only_tokens_for_public_repositories(world: World) -> None:
    public, private, second = (world.repos[k] for k in ("public", "private", "second"))
    response = token_response(
        world.http,
        None,
        f"repository:{public}:pull,push,delete",
        f"repository:{private}:pull",
        f"repository:{second}:*",
        "registry:catalog:*",
        offline_token="true",
    )
    assert response.status_code == 200, response.text
    assert "refresh_token" not in response.json()
    token = response.json()["token"]
    assert granted(token) == {f"repository:{public}": {"pull"}}
    assert claims(token)["sub"] == "anonymous"
    assert pull_manifest(world, world.http, public)[0].status_code == 200  # no token at all
    assert world.http.get(manifest_path(public, "seed"), headers=bearer(token)).is_success
    assert_unauthorized(
        world.http.get(manifest_path(private, "seed"), headers=bearer(token)),
        f"repository:{private}:pull",
    )
    assert_unauthorized(world.http.get("/v2/_catalog", headers=bearer(token)))


CATALOG: dict[str, set[str]] = {
    "project-admin": {"public", "private", "second"},
    "project-member": {"public", "private", "second"},
    "project-reader": {"public", "private", "second"},
    "repository-member": {"public", "private"},
    "repository-viewer": {"public", "private"},
    "service-account": {"public", "private", "second"},
    # An admin of both projects with a key of the other: that project only. The public
    # repository is pullable with the key, but not listed: one tenant's catalog does not
    # enumerate another's.
    "other-project-key": {"foreign"},
}


@pytest.mark.parametrize("mode", ["token", "basic"])
@pytest.mark.parametrize("actor", CATALOG)
def test_catalog_lists_only_what_the_caller_may_see(world: World, actor: str, mode: str) -> None:
    with world.client_as(actor, mode, "registry:catalog:*") as client:
        response = client.get("/v2/_catalog", params={"n": 1000})
    assert response.status_code == 200, response.text
    listed = set(response.json()["repositories"]) & set(world.repos.values())
    assert listed == {world.repos[which] for which in CATALOG[actor]}


def test_catalog_needs_a_caller_and_a_catalog_scope(world: World) -> None:
    """Both refusals name the scope to ask a token for (python-dxf asks for the one the
    first challenge names)."""
    assert_unauthorized(world.http.get("/v2/_catalog"), "registry:catalog:*")
    name = world.repos["private"]
    token = fetch_token(world.http, world.keys["project-member"], f"repository:{name}:pull")
    response = world.http.get("/v2/_catalog", headers=bearer(token))
    assert_unauthorized(response, "registry:catalog:*")


# ---------------------------------------------------------------- secrets and the audit log


def test_audit_log_shows_logins_keys_and_role_changes(world: World) -> None:
    project = "audited"
    world.server.create_repository(project, "app")
    user, viewer = "auditee", "audit-viewer"

    async def scene(s: Services) -> Credentials:
        await s.identity.users.create_user(user, PASSWORD, actor="test")
        await s.identity.users.create_user(viewer, PASSWORD, actor="test")
        await s.identity.members.add_member(project, user, "reader", actor="test")
        await s.identity.members.add_member(project, user, "member", actor="test")
        await s.identity.members.grant(project, "app", viewer, "viewer", actor="test")
        created = await s.identity.keys.create_key(user, project, actor="test")
        return created.key_id, created.secret

    key_id, secret = world.server._services(scene)
    world.secrets.append(secret)
    fetch_token(world.http, (key_id, secret), f"repository:{project}/app:pull")
    world.server._services(
        lambda s: s.identity.members.grant(project, "app", viewer, "member", actor="test")
    )
    world.server._services(lambda s: s.identity.keys.delete_key(key_id, actor="test"))
    world.server._services(lambda s: s.identity.members.remove_member(project, user, actor="test"))
    # The sign-in is audited in a batch a few times a second: read once it is written.
    entries = eventually(
        lambda: world.server.cli_items("audit", project),
        lambda found: any(e["action"] == "login" for e in found),
    )
    assert secret not in json.dumps(entries)
    seen = [(e["action"], e["target"], (e["detail"] or {}).get("role")) for e in reversed(entries)]
    assert seen == [
        ("repository.create", "app", None),
        ("member.add", user, "reader"),
        ("member.add", user, "member"),
        ("repository.grant", f"app:{viewer}", "viewer"),
        ("key.create", key_id, None),
        ("login", key_id, None),
        ("repository.grant", f"app:{viewer}", "member"),
        ("key.delete", key_id, None),
        ("member.remove", user, None),
    ]
    login = next(e for e in entries if e["action"] == "login")
    assert login["actor"] == user and login["client"] == "127.0.0.1"


def test_a_secret_is_shown_once_and_never_listed(world: World) -> None:
    user, _ = world.new_user("member", key=False)
    printed = world.server.cli("key", "create", "--user", user, "--project", P).stdout
    key_id = re.search(r"Access key ID:\s*(\S+)", printed)
    secret = re.search(r"Secret access key:\s*(\S+)", printed)
    assert key_id and secret and "shown only now" in printed, printed
    world.secrets.append(secret.group(1))
    credentials = (key_id.group(1), secret.group(1))
    assert world.http.get("/v2/", auth=credentials).status_code == 200
    listed = world.server.cli_items("key", "list", "--user", user)
    assert [k["access_key_id"] for k in listed] == [credentials[0]]
    assert listed[0]["state"] == "active" and listed[0]["last_used_at"], listed
    assert not any("secret" in name for name in listed[0]), listed
    assert credentials[1] not in json.dumps(listed)
    database = world.server.data_dir / "berth.db"
    if database.exists():  # SQLite: the secret is stored only as a keyed hash
        files = [database, *world.server.data_dir.glob("berth.db-*")]
        assert all(credentials[1].encode() not in f.read_bytes() for f in files)


def test_no_secret_reaches_the_server_log(world: World) -> None:
    """Runs after the other tests on its server: everything above has gone through it."""
    log = (world.server.data_dir / "server.log").read_text(errors="replace")
    assert "Listening" in log or "Berth registry" in log
    assert len(world.secrets) > len(ACTORS)
    for secret in [*world.secrets, PASSWORD, ADMIN_PASSWORD]:
        assert secret not in log


# ---------------------------------------------------------------- throttling


def test_failed_logins_are_throttled(tmp_path: Path) -> None:
    """Failed logins are limited per access key ID from one address, then per address: 429
    TOOMANYREQUESTS with Retry-After, even for the right secret, until the window passes."""
    per_key, per_client = 3, 6
    server = BerthServer(
        tmp_path,
        extra_env={
            "BERTH_LOGIN_FAILURES_PER_KEY": str(per_key),
            "BERTH_LOGIN_FAILURES_PER_CLIENT": str(per_client),
        },
    ).start()
    try:
        server.create_repository(P, "app")
        target = server.access_key(P, "admin")
        server.create_user("spare", PASSWORD)
        server.add_member(P, "spare", "reader")
        spare = server.access_key(P, "spare")
        with httpx.Client(base_url=server.url, timeout=30) as http:

            def token(credentials: Credentials) -> httpx.Response:
                return token_response(http, credentials, f"repository:{P}/app:pull")

            wrong = (target[0], "not-the-secret")
            for _ in range(per_key):
                assert token(wrong).status_code == 401
            for attempt in (wrong, target):
                response = token(attempt)
                assert response.status_code == 429 and error_codes(response) == ["TOOMANYREQUESTS"]
                assert 1 <= int(response.headers["Retry-After"]) <= 60
                assert "access key" in message(response) and "try again in" in message(response)
            basic = http.get("/v2/", auth=target)
            assert basic.status_code == 429 and "Retry-After" in basic.headers
            # The key's owner, elsewhere, is not locked out by someone who knows its ID.
            elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(base_url=server.url, timeout=30, transport=elsewhere) as owner:
                assert token_response(owner, target, f"repository:{P}/app:pull").status_code == 200
            # Another key from the same address still works, until the address is over its own
            # limit (unknown key IDs count as failures too).
            assert token(spare).status_code == 200
            for n in range(per_client - per_key):
                assert token((f"BKUNKNOWN{n}", "whatever")).status_code == 401
            response = token(spare)
            assert response.status_code == 429 and "address" in message(response)
            assert 1 <= int(response.headers["Retry-After"]) <= 60
    finally:
        server.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_worker_counts_the_same_failed_logins(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """The failed-login counts are in the database: a guesser whose connections land on
    different workers gets the per-key limit once, and one attempt more per other worker
    (until that worker has seen the count), not the limit once per worker."""
    per_key, workers = 4, 2

    def start_every_worker(server: BerthServer) -> BerthServer:
        server.start()

        def started() -> bool:
            log = server.log_tail(400).rpartition("Starting granian")[2]
            return log.count("Started worker-") >= workers

        wait_for(started, 30, "every worker")
        return server

    with running_server(
        request,
        "throttle-workers",
        backend,
        workers=workers,
        start=start_every_worker,
        extra_env={
            "BERTH_LOGIN_FAILURES_PER_KEY": str(per_key),
            "BERTH_LOGIN_FAILURES_PER_CLIENT": "0",
        },
    ) as server:
        server.create_repository(P, "app")
        key_id, _ = server.access_key(P, "admin")
        statuses = []
        for _ in range(4 * per_key):
            # A connection of its own each time: any worker may take it.
            with httpx.Client(base_url=server.url, timeout=30) as fresh:
                response = fresh.get(
                    "/auth/token", params={"service": server.address}, auth=(key_id, "wrong")
                )
            statuses.append(response.status_code)
        assert statuses[:per_key] == [401] * per_key, statuses
        # Each other worker lets one attempt through at its first connection after the limit
        # was reached, which may come late (the kernel decides which worker takes a
        # connection): so the bound is on the count of 401s, not on where they fall.
        assert set(statuses) == {401, 429}, statuses
        assert statuses.count(401) <= per_key + workers - 1, statuses


def test_behind_a_trusted_proxy_failed_logins_count_per_forwarded_client(tmp_path: Path) -> None:
    """With the proxy in `trusted_proxies`, a login counts against the client X-Forwarded-For
    names (as nginx appends it, rightmost), not against the proxy: a guesser of a key does not
    lock its owner out through the same proxy, and with `login_failures_per_client = 0` no
    number of failures from one address locks anyone else out. A client that is not a trusted
    proxy cannot pose as another address with the header."""
    per_key = 3
    server = BerthServer(
        tmp_path,
        extra_env={
            "BERTH_LOGIN_FAILURES_PER_KEY": str(per_key),
            "BERTH_LOGIN_FAILURES_PER_CLIENT": "0",
            "BERTH_TRUSTED_PROXIES": "127.0.0.1, 10.9.0.0/16",
        },
    ).start()
    scope = f"repository:{P}/app:pull"
    try:
        server.create_repository(P, "app")
        target = server.access_key(P, "admin")
        wrong = (target[0], "not-the-secret")

        def proxied(*forwarded_for: str, source: str = "127.0.0.1") -> httpx.Client:
            return httpx.Client(
                base_url=server.url,
                timeout=30,
                headers=[("X-Forwarded-For", value) for value in forwarded_for],
                transport=httpx.HTTPTransport(local_address=source),
            )

        with proxied("203.0.113.7") as guesser:
            for _ in range(per_key):
                assert token_response(guesser, wrong, scope).status_code == 401
            refusal = token_response(guesser, target, scope)
            assert refusal.status_code == 429 and "access key" in message(refusal)
        # What the guesser wrote itself, left of what the proxies appended, is not believed;
        # a second trusted proxy (10.9.0.3) in the chain is looked past.
        with proxied("198.51.100.1, 203.0.113.7", "10.9.0.3") as posing:
            assert token_response(posing, target, scope).status_code == 429
        # The key's owner, through the same proxy from elsewhere, signs in.
        with proxied("203.0.113.8") as owner:
            assert token_response(owner, target, scope).status_code == 200
        # Far more failures from one address than any per-address limit: nobody else is
        # refused for them (made-up key IDs are the per-address limit's alone).
        with proxied("203.0.113.9") as noisy:
            for n in range(40):
                assert token_response(noisy, (f"BKUNKNOWN{n}", "x"), scope).status_code == 401
            assert token_response(noisy, target, scope).status_code == 200
        # 127.0.0.2 is no trusted proxy: its X-Forwarded-For is ignored and its failures are
        # its own address's, whichever address it claims.
        for n in range(per_key):
            with proxied(f"192.0.2.{n}", source="127.0.0.2") as direct:
                assert token_response(direct, wrong, scope).status_code == 401
        with proxied("192.0.2.200", source="127.0.0.2") as direct:
            assert token_response(direct, target, scope).status_code == 429

        def failed_logins() -> list[dict[str, object]]:
            with httpx.Client(base_url=server.url, timeout=30) as admin:
                response = admin.get(
                    f"/api/v1/projects/{P}/audit",
                    params={"per_page": 100},
                    auth=("admin", ADMIN_PASSWORD),
                )
            assert response.status_code == 200, response.text
            items: list[dict[str, object]] = response.json()["items"]
            return [entry for entry in items if entry["action"] == "login.failed"]

        # The audit log names the client, not the proxy.
        deadline = time.monotonic() + 10
        while len(failed_logins()) < 2 * per_key and time.monotonic() < deadline:
            time.sleep(0.1)
        clients = {entry["client"] for entry in failed_logins()}
        assert clients == {"203.0.113.7", "127.0.0.2"}
    finally:
        server.stop()
