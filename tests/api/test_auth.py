"""Who may call the management API: access keys, API tokens, passwords; the problem shape."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from berth.access.credentials import has_key_id_format, looks_like_key_id, may_be_key_id
from berth.api.app import create_api
from berth.metadata.tables import audit_log
from berth.services.audit import AUDIT_FLUSH_SECONDS
from berth.services.keys import new_key_id
from berth.state import Services
from tests.api.conftest import PASSWORD, Team, api, assert_problem, ok, services, until
from tests.servers import ADMIN_PASSWORD, BerthServer

# Every operation of the API's OpenAPI document except those it marks public (`security: []`),
# so an endpoint added later is checked without anyone remembering to list it here.
PATH_VALUES = {
    "repository": "app",
    "digest": "sha256:" + "0" * 64,
    "tag": "v1",
    "user": "someone",
    "key_id": "BKNOTAKEY0000000000",
    "run_id": "1",
    "webhook_id": "1",
    "delivery_id": "1",
    "rule_id": "1",
    "upload_id": "0" * 32,
}


def _protected_operations() -> list[tuple[str, str]]:
    document = create_api().openapi()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") != []
    ]


ENDPOINTS = _protected_operations()


def test_openapi_document_and_offline_docs(server: BerthServer) -> None:
    with api(server) as client:
        document = ok(client.get("/openapi.json"))
        assert document["openapi"].startswith("3.")
        assert document["servers"] == [{"url": "/api/v1"}]
        assert "/projects/{project}/repositories" in document["paths"]
        schemas = document["components"]["schemas"]
        assert "Problem" in schemas and "HTTPValidationError" not in schemas
        create = document["paths"]["/projects/{project}/repositories"]["post"]
        assert "application/problem+json" in create["responses"]["422"]["content"]
        assert document["components"]["securitySchemes"]["accessKey"]["scheme"] == "basic"
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        assert "cdn" not in docs.text.lower()  # the page's scripts come from this server
        # It runs requests with the browser's session: no other site may frame it.
        assert docs.headers["x-frame-options"] == "DENY"
        assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert docs.headers["cache-control"] == "no-store"
        script = client.get("/docs/static/swagger-ui-bundle.js")
        assert script.status_code == 200 and "cache-control" not in script.headers


def test_the_console_address_without_its_slash_is_sent_on_relatively(
    server: BerthServer,
) -> None:
    """Not to the Host the request named (which a client chooses)."""
    moved = httpx.get(f"{server.url}/console", headers={"Host": "evil.example"})
    assert moved.status_code == 307 and moved.headers["location"] == "/console/"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_needs_credentials(shared_team: Team, method: str, path: str) -> None:
    with api(shared_team.server) as client:
        values = {**PATH_VALUES, "project": shared_team.project}
        response = client.request(method, path.format(**values), json={})
        body = assert_problem(response, 401, code="UNAUTHORIZED")
        challenges = response.headers["WWW-Authenticate"]
        assert challenges.startswith("Basic ") and ", Bearer " in challenges, challenges
        # The console's session answers in its own words; every other endpoint in one phrase.
        expected = "not signed in" if path == "/session" else "authentication required"
        assert expected in body["detail"]


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"BKNOTAKEY0000000000:wrong").decode(),
        "Basic " + base64.b64encode(b"nobody:wrong-password").decode(),
        "Basic !!!",
        "Bearer not-a-token",
        "Digest whatever",
    ],
)
def test_wrong_credentials_are_refused(shared_team: Team, header: str) -> None:
    with api(shared_team.server) as client:
        response = client.get("/projects", headers={"Authorization": header})
        assert_problem(response, 401, code="UNAUTHORIZED")


def test_access_key_token_and_password_callers(team: Team) -> None:
    ok(team["member"].get(team.url()))
    with api(team.server, (team.users["member"], PASSWORD)) as by_password:
        project = ok(by_password.get(team.url()))
        assert project["role"] == "member" and project["can_manage"]
    with api(team.server, (team.users["member"], "wrong password")) as wrong:
        assert_problem(wrong.get(team.url()), 401)
    # A password caller sees every project they are a member of; a key only its own.
    with api(team.server, ("admin", ADMIN_PASSWORD)) as admin:
        names = {p["name"] for p in ok(admin.get("/projects"))}
        assert team.project in names
    assert [p["name"] for p in ok(team["member"].get("/projects"))] == [team.project]


def test_api_tokens(team: Team) -> None:
    issued = ok(team["member"].post("/auth/tokens"), 201)
    assert issued["token_type"] == "Bearer" and issued["access_key_id"] == team.keys["member"][0]
    assert issued["expires_in"] == 12 * 3600
    claims = jwt.decode(issued["token"], options={"verify_signature": False})
    assert claims["aud"] == "berth-api" and claims["typ"] == "api"
    assert abs(claims["exp"] - time.time() - 12 * 3600) < 60
    bearer = {"Authorization": f"Bearer {issued['token']}"}
    with api(team.server, headers=bearer) as client:
        assert ok(client.get(team.url()))["role"] == "member"
        assert [p["name"] for p in ok(client.get("/projects"))] == [team.project]
        # A token is for the API, not for the registry, and it cannot mint more tokens.
        assert_problem(client.post("/auth/tokens"), 403)
    registry = httpx.get(f"{team.server.url}/v2/{team.oci_name()}/tags/list", headers=bearer)
    assert registry.status_code == 401

    short = ok(team["member"].post("/auth/tokens", json={"expires_in": 120}), 201)
    assert short["expires_in"] == 120
    assert_problem(
        team["member"].post("/auth/tokens", json={"expires_in": 10**9}), 422, fields=("expires_in",)
    )
    assert_problem(
        team["member"].post("/auth/tokens", json={"expires_in": 5}), 422, fields=("expires_in",)
    )
    # Only access keys get tokens.
    with api(team.server, (team.users["member"], PASSWORD)) as by_password:
        assert_problem(by_password.post("/auth/tokens"), 403, code="DENIED")

    # The token dies with its key.
    key_id = team.keys["member"][0]
    ok(team["member"].post(team.url(f"/keys/{key_id}/disable")))
    with api(team.server, headers=bearer) as client:
        refused = until(lambda: _refused(client, team))
        assert refused is not None, "the token still works after its key was disabled"
        body = assert_problem(refused, 401)
        assert key_id in body["detail"]


def _refused(client: httpx.Client, team: Team) -> httpx.Response | None:
    response = client.get(team.url())
    return response if response.status_code == 401 else None


def test_registry_tokens_are_not_api_tokens(team: Team) -> None:
    realm = httpx.get(f"{team.server.url}/auth/token", auth=team.keys["admin"])
    token = realm.json()["token"]
    with api(team.server, headers={"Authorization": f"Bearer {token}"}) as client:
        assert_problem(client.get("/projects"), 401)


def test_a_key_works_only_in_its_own_project(team: Team) -> None:
    body = assert_problem(team["stranger"].get(team.url()), 403, code="DENIED")
    assert "works only in project" in body["detail"]
    # Authorization comes before existence: an unknown project looks the same.
    assert_problem(team["stranger"].get("/projects/no-such-project"), 403)
    assert_problem(team["member"].get("/projects/no-such-project"), 403)


def test_a_user_without_a_role_learns_nothing(team: Team) -> None:
    stranger = (team.users["stranger"], PASSWORD)
    with api(team.server, stranger) as client:
        assert_problem(client.get(team.url()), 403)
        assert_problem(client.get("/projects/no-such-project"), 403)
        assert team.project not in {p["name"] for p in ok(client.get("/projects"))}
    with api(team.server, ("admin", ADMIN_PASSWORD)) as admin:
        assert_problem(admin.get("/projects/no-such-project"), 404, code="NAME_UNKNOWN")


def test_unknown_paths_and_methods_are_problems(team: Team) -> None:
    assert_problem(team.admin.get("/nothing-here"), 404)
    assert_problem(team.admin.put("/projects"), 405)


def test_login_through_the_api_is_audited(team: Team) -> None:
    ok(team["member"].post("/auth/tokens"), 201)

    def logins() -> list[dict[str, object]]:
        entries = ok(team.admin.get(team.url("/audit")))["items"]
        return [e for e in entries if e["action"] == "login"]

    found = until(logins)
    assert found and found[0]["actor"] == team.users["member"]


def test_throttles_password_guessing(server: BerthServer) -> None:
    name = "guessed-" + str(int(time.time() * 1000))
    services(server, lambda s: s.identity.users.create_user(name, PASSWORD, actor="test"))
    with api(server, (name, "wrong-password")) as client:
        answers = [client.get("/projects") for _ in range(12)]
    statuses = [answer.status_code for answer in answers]
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429
    # Said of what was typed: a user name, not an access key.
    assert "too many failed logins for this user; try again in" in answers[-1].text
    # Each guess is audited; the refusals for too many add nothing.
    guesses = until(lambda: len(failed_logins_outside_projects(server, name)) >= 10)
    time.sleep(AUDIT_FLUSH_SECONDS * 2)
    assert guesses and len(failed_logins_outside_projects(server, name)) == statuses.count(401)


NO_SUCH_USER = "(no such user)"  # what a failed login names for a user name nobody has


def server_audit(server: BerthServer) -> list[dict[str, Any]]:
    with api(server, ("admin", ADMIN_PASSWORD)) as admin:
        items: list[dict[str, Any]] = ok(admin.get("/audit", params={"per_page": 100}))["items"]
    return items


def failed_logins_outside_projects(server: BerthServer, target: str) -> list[dict[str, Any]]:
    return [
        entry
        for entry in server_audit(server)
        if entry["action"] == "login.failed" and entry["target"] == target
    ]


def failed_logins_in_project(team: Team, target: str) -> list[dict[str, Any]]:
    entries = ok(team.admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
    return [e for e in entries if e["action"] == "login.failed" and e["target"] == target]


def audited_once(entries: Callable[[], list[dict[str, Any]]], before: int = 0) -> dict[str, Any]:
    """The one entry `entries()` finds beyond the `before` it found earlier (newest first),
    once audit entries have been written."""
    until(lambda: len(entries()) > before)
    time.sleep(AUDIT_FLUSH_SECONDS * 2)  # a second entry would be written by now
    found = entries()
    assert len(found) == before + 1, found
    return found[0]


def test_a_wrong_access_key_secret_is_audited_on_every_surface(team: Team) -> None:
    """Basic on /v2 and on the management API, not only the token endpoint: once each, in
    the key's project, naming the key and the client, never as the actor."""
    by_surface = {"/v2/": team.keys["member"][0], "/api/v1/projects": team.keys["reader"][0]}
    with httpx.Client(base_url=team.server.url, timeout=30) as client:
        for path, key_id in by_surface.items():
            assert client.get(path, auth=(key_id, "wrong-secret")).status_code == 401
    for key_id, through in zip(by_surface.values(), ("/v2 Basic", "/api/v1 Basic"), strict=True):
        failed = audited_once(partial(failed_logins_in_project, team, key_id))
        assert failed["actor"] == "(unverified)" and failed["client"] == "127.0.0.1"
        assert "invalid" in failed["detail"]["reason"]
        assert failed["detail"]["through"] == through


def test_a_wrong_password_is_audited_naming_only_a_user_that_exists(team: Team) -> None:
    """Basic on the API and the console's sign-in: the user's name when there is such a
    user, and nothing of what was typed otherwise (it may be a password)."""
    member, stranger = team.users["member"], team.users["stranger"]
    typed_as_user = f"hunter2-{team.project}"  # a password typed into the user field
    # These users may be other teams' too (see tests/api/conftest.py), with failures of their own.
    failures_of = {
        user: partial(failed_logins_outside_projects, team.server, user)
        for user in (member, stranger)
    }
    before = {user: len(failures()) for user, failures in failures_of.items()}
    with httpx.Client(base_url=f"{team.server.url}/api/v1", timeout=30) as client:
        assert client.get("/projects", auth=(member, "wrong")).status_code == 401
        signed_in = client.post("/session", json={"user": stranger, "password": "wrong"})
        assert signed_in.status_code == 401
        through = {member: "/api/v1 Basic", stranger: "console sign-in"}
        for user, failures in failures_of.items():
            failed = audited_once(failures, before[user])
            assert failed["actor"] == "(unverified)" and failed["client"] == "127.0.0.1"
            assert failed["detail"]["through"] == through[user]
        assert client.get("/projects", auth=(typed_as_user, "wrong")).status_code == 401

    def newest_failed_login() -> dict[str, Any]:
        return next(e for e in server_audit(team.server) if e["action"] == "login.failed")

    assert until(lambda: newest_failed_login()["target"] == NO_SUCH_USER)
    assert typed_as_user not in str(server_audit(team.server))


def test_a_failed_login_never_stores_what_was_typed_as_the_key_id(team: Team) -> None:
    key_id, secret = team.keys["member"]
    with httpx.Client(base_url=team.server.url, timeout=30) as registry:
        # A real key ID with a wrong secret, and the secret pasted into the ID field (IDs
        # and secrets swapped).
        assert registry.get("/auth/token", auth=(key_id, "wrong-secret")).status_code == 401
        assert registry.get("/auth/token", auth=(secret, key_id)).status_code == 401

    def failures() -> list[dict[str, Any]]:
        entries = ok(team.admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
        return [e for e in entries if e["action"] == "login.failed"]

    [failed] = until(failures)
    # The well-formed ID is the target; nobody unverified is named as the actor.
    assert failed["target"] == key_id and failed["actor"] == "(unverified)"
    assert failed["detail"]["through"] == "/auth/token"

    async def every_entry(s: Services) -> list[str]:
        async with s.db.read() as conn:
            rows = await conn.execute(select(audit_log))
            return [" ".join(str(value) for value in row) for row in rows]

    def swapped_login_recorded() -> list[str]:
        return [e for e in services(team.server, every_entry) if "(not a key ID)" in e]

    assert until(swapped_login_recorded)
    stored = "\n".join(services(team.server, every_entry))
    assert secret not in stored and secret[:20] not in stored


def test_key_id_shapes_are_ascii() -> None:
    """One definition of what a key ID looks like, in ASCII: other scripts' capitals and
    digits (which `str.isalnum` and `str.isupper` accept) are no key ID."""
    key = new_key_id()
    assert has_key_id_format(key) and looks_like_key_id(key) and may_be_key_id(key)
    mistyped = key[:-1] + "O"  # outside the alphabet: no key has it, but it is a key's shape
    assert not has_key_id_format(mistyped) and looks_like_key_id(mistyped)
    for foreign in ("BK" + "\u00c4" * 18, "BK" + "\u0663" * 18, "BK" + "\uff21" * 18):
        assert not looks_like_key_id(foreign) and not may_be_key_id(foreign), foreign
    assert may_be_key_id("alice") and not looks_like_key_id("alice")
    assert not may_be_key_id("user-1") and not may_be_key_id("A" * 33)
    assert not may_be_key_id(key + "\n")
