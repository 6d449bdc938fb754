"""The web console's session: sign in with a password, a cookie for the API, CSRF protection
of unsafe requests, sign out and expiry (SQLite and PostgreSQL, over real HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from berth.metadata.tables import audit_log, console_sessions
from berth.services.sessions import session_id
from berth.state import Services
from tests.api.conftest import PASSWORD, Team, api, assert_problem, ok, services, until
from tests.servers import ADMIN_PASSWORD, BerthServer
from tests.tls import make_ca_and_cert

EVIL = "http://evil.example"


@contextmanager
def signed_in(
    team: Team, actor: str = "member", **headers: str
) -> Iterator[tuple[httpx.Client, Any]]:
    """A client holding the actor's session cookie (as a browser would), and the session."""
    with api(team.server) as client:
        response = client.post(
            "/session", json={"user": team.users[actor], "password": PASSWORD}, headers=headers
        )
        yield client, ok(response, 201)


def cookie_attributes(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """(the cookie's value, its attributes with lower-case names) from Set-Cookie."""
    (header,) = response.headers.get_list("set-cookie")
    pair, *attributes = (part.strip() for part in header.split(";"))
    name, _, value = pair.partition("=")
    assert name == "berth_session", header
    parsed = {}
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        parsed[key.lower()] = val
    return value, parsed


def repository_exists(team: Team, name: str) -> bool:
    response = team.admin.get(team.repo_url(repository=name))
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def new_name() -> str:
    return "r" + uuid.uuid4().hex[:8]


def test_sign_in_sets_an_http_only_strict_cookie_that_the_api_accepts(team: Team) -> None:
    with api(team.server) as client:
        response = client.post(
            "/session", json={"user": team.users["member"], "password": PASSWORD}
        )
        session = ok(response, 201)
        assert session["user"] == team.users["member"] and session["server_admin"] is False
        assert len(session["csrf_token"]) >= 32
        expires = dt.datetime.fromisoformat(session["expires_at"])
        remaining = (expires - dt.datetime.now(dt.UTC)).total_seconds()
        assert 12 * 3600 - 60 < remaining <= 12 * 3600
        token, attributes = cookie_attributes(response)
        assert len(token) >= 40 and token not in response.text
        assert "httponly" in attributes and attributes["samesite"] == "Strict"
        assert attributes["path"] == "/" and attributes["max-age"] == str(12 * 3600)
        assert "secure" not in attributes  # served over plain http here
        assert response.headers["cache-control"] == "no-store"

        # The browser sends the cookie back: the session reads and the API answers.
        assert ok(client.get("/session")) == session
        assert team.project in {p["name"] for p in ok(client.get("/projects"))}
        assert ok(client.get(team.url()))["role"] == "member"

    async def logins(s: Services) -> list[Any]:
        async with s.db.read() as conn:
            rows = await conn.execute(
                select(audit_log.c.detail).where(
                    audit_log.c.actor == team.users["member"], audit_log.c.action == "login"
                )
            )
            return [json.loads(r.detail) for r in rows if r.detail]

    assert until(lambda: {"via": "console"} in services(team.server, logins))
    assert token not in team.server.log_tail(400)


def test_a_write_with_the_session_needs_the_csrf_token(team: Team) -> None:
    with signed_in(team) as (client, session):
        refused = []
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}, {"X-CSRF-Token": ""}):
            name = new_name()
            body = assert_problem(
                client.post(team.url("/repositories"), json={"name": name}, headers=headers),
                403,
                code="DENIED",
            )
            assert "X-CSRF-Token" in body["detail"]
            refused.append(name)
        # Every unsafe method is guarded, not only POST.
        patch = client.patch(team.repo_url(), json={"description": "changed"})
        assert_problem(patch, 403)
        assert_problem(client.delete(team.repo_url()), 403)
        assert ok(team.admin.get(team.repo_url()))["description"] == ""
        assert not any(repository_exists(team, name) for name in refused)

        csrf = {"X-CSRF-Token": session["csrf_token"]}
        name = new_name()
        created = ok(client.post(team.url("/repositories"), json={"name": name}, headers=csrf), 201)
        assert created["name"] == name and repository_exists(team, name)
        # The browser's own origin is fine.
        same_origin = {**csrf, "Origin": team.server.url, "Sec-Fetch-Site": "same-origin"}
        patched = client.patch(team.repo_url(), json={"description": "new"}, headers=same_origin)
        assert ok(patched)["description"] == "new"


def test_a_cross_site_form_post_is_refused_and_changes_nothing(team: Team) -> None:
    with signed_in(team) as (client, session):
        name = new_name()
        form = client.post(
            team.url("/repositories"),
            content=f"name={name}",
            headers={"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_problem(form, 403, code="DENIED")  # before the body is looked at: not 422
        # Even with the token (which another site cannot read), a foreign origin is refused.
        csrf = {"X-CSRF-Token": session["csrf_token"]}
        for foreign in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            response = client.post(
                team.url("/repositories"), json={"name": name}, headers={**csrf, **foreign}
            )
            assert "cross-site" in assert_problem(response, 403)["detail"]
        assert not repository_exists(team, name)


def test_a_cross_site_form_post_is_refused_with_the_browsers_basic_credentials(team: Team) -> None:
    """A browser that was given a user name and password for the API (its Basic challenge to
    a page opened there) sends them with another site's form too, as it sends the cookie: a
    cross-site write is refused whatever authenticates it, a form without fields (which no
    JSON body check stops) included."""
    key_id = team.keys["member"][0]
    disable = team.url(f"/keys/{key_id}/disable")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    password = (team.users["member"], PASSWORD)
    with api(team.server, password) as browser:
        for foreign in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            for auth in (password, team.keys["member"]):
                response = browser.post(
                    disable, content=b"", headers={**form, **foreign}, auth=auth
                )
                assert "cross-site" in assert_problem(response, 403, code="DENIED")["detail"]
        [key] = [k for k in ok(browser.get(team.url("/keys"))) if k["access_key_id"] == key_id]
        assert key["state"] == "active"
        # From the server's own page, or from a client that is no browser, it works.
        same_origin = {"Origin": team.server.url, "Sec-Fetch-Site": "same-origin"}
        assert ok(browser.post(disable, headers=same_origin))["state"] == "disabled"
        assert ok(browser.post(team.url(f"/keys/{key_id}/enable")))["state"] == "active"


def test_a_refused_write_leaves_the_connection_open_for_the_next_request(team: Team) -> None:
    """A write refused before its handler runs (cross-site, or without the session's CSRF
    token) is answered once its body is read: the connection then takes the next request,
    as a browser or client that keeps connections open sends it."""
    body = {"description": "x" * 60_000}  # more than one read of the socket
    with api(team.server) as client:
        for _ in range(3):
            refused = client.patch(team.repo_url(), json=body, headers={"Origin": EVIL})
            assert_problem(refused, 403, code="DENIED")
            assert_problem(client.get("/session"), 401)
    with signed_in(team) as (client, _session):
        for _ in range(3):
            assert_problem(client.patch(team.repo_url(), json=body), 403, code="DENIED")
            ok(client.get("/session"))


def test_sign_in_from_another_site_is_refused(team: Team) -> None:
    for foreign in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        with api(team.server) as client:
            response = client.post(
                "/session",
                json={"user": team.users["member"], "password": PASSWORD},
                headers=foreign,
            )
            assert_problem(response, 403, code="DENIED")
            assert "set-cookie" not in response.headers
            assert_problem(client.get("/session"), 401)
    # From the server's own page it works.
    with signed_in(team, Origin=team.server.url) as (client, _session):
        ok(client.get("/session"))


def test_wrong_passwords_and_service_accounts_cannot_sign_in(team: Team) -> None:
    attempts = [
        (team.users["member"], "wrong password"),
        ("nobody-" + uuid.uuid4().hex[:6], PASSWORD),
        (team.users["robot"], PASSWORD),  # a service account has no password
    ]
    with api(team.server) as client:
        for user, password in attempts:
            response = client.post("/session", json={"user": user, "password": password})
            body = assert_problem(response, 401, code="UNAUTHORIZED")
            assert body["detail"] == "invalid user name or password"
            assert "set-cookie" not in response.headers
        assert_problem(client.post("/session", json={"user": "x"}), 422, fields=("password",))
        assert_problem(client.get("/session"), 401)


def test_a_readers_session_cannot_manage(team: Team) -> None:
    reader = "reader-" + uuid.uuid4().hex[:8]
    team.server.create_user(reader, PASSWORD)
    team.server.add_member(team.project, reader, "reader")
    team.users["reader-with-password"] = reader
    with signed_in(team, "reader-with-password") as (client, session):
        assert ok(client.get(team.url()))["role"] == "reader"
        name = new_name()
        response = client.post(
            team.url("/repositories"),
            json={"name": name},
            headers={"X-CSRF-Token": session["csrf_token"]},
        )
        assert "reader" in assert_problem(response, 403, code="DENIED")["detail"]
        assert not repository_exists(team, name)


def test_sign_out_ends_the_session(team: Team) -> None:
    with signed_in(team) as (client, session):
        token = client.cookies["berth_session"]
        assert_problem(client.delete("/session"), 403)  # unsafe: needs the CSRF token
        ok(client.get("/session"))
        response = client.delete("/session", headers={"X-CSRF-Token": session["csrf_token"]})
        assert response.status_code == 204, response.text
        value, attributes = cookie_attributes(response)
        assert value == "" and attributes["max-age"] == "0" and "httponly" in attributes
    # The old cookie, sent again, is worth nothing.
    with api(team.server, cookies={"berth_session": token}) as stale:
        assert_problem(stale.get("/session"), 401)
        assert_problem(stale.get("/projects"), 401)
        name = new_name()
        response = stale.post(
            team.url("/repositories"),
            json={"name": name},
            headers={"X-CSRF-Token": session["csrf_token"]},
        )
        assert_problem(response, 401)
        assert not repository_exists(team, name)


def test_signing_in_again_replaces_the_previous_session(team: Team) -> None:
    with signed_in(team) as (client, first):
        old = client.cookies["berth_session"]
        again = client.post("/session", json={"user": team.users["member"], "password": PASSWORD})
        second = ok(again, 201)
        assert second["csrf_token"] != first["csrf_token"]
        assert ok(client.get("/session")) == second
    with api(team.server, cookies={"berth_session": old}) as stale:
        assert_problem(stale.get("/session"), 401)


def _expire(server: BerthServer, token: str) -> None:
    async def expire(s: Services) -> None:
        async with s.db.write() as conn:
            await conn.execute(
                update(console_sessions)
                .where(console_sessions.c.id == session_id(token))
                .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
            )

    services(server, expire)


def _stored(server: BerthServer, token: str) -> bool:
    async def stored(s: Services) -> bool:
        async with s.db.read() as conn:
            found = await conn.execute(
                select(console_sessions.c.id).where(console_sessions.c.id == session_id(token))
            )
            return found.first() is not None

    return bool(services(server, stored))


def test_an_expired_session_is_refused_and_purged(team: Team) -> None:
    with signed_in(team) as (client, session):
        token = client.cookies["berth_session"]
        assert _stored(team.server, token)  # by its hash: the token itself is not stored
        _expire(team.server, token)
        assert_problem(client.get("/session"), 401)
        assert_problem(client.get("/projects"), 401)
        name = new_name()
        response = client.post(
            team.url("/repositories"),
            json={"name": name},
            headers={"X-CSRF-Token": session["csrf_token"]},
        )
        assert_problem(response, 401)
        assert not repository_exists(team, name)
    # The next sign-in (anyone's) clears expired sessions away.
    with signed_in(team):
        pass
    assert not _stored(team.server, token)


def test_an_authorization_header_wins_over_the_cookie(team: Team) -> None:
    with signed_in(team) as (client, session):  # the member's session
        stranger = httpx.BasicAuth(*team.keys["stranger"])
        # The stranger's key decides, not the member's cookie: no role in the project.
        assert_problem(client.get(team.url(), auth=stranger), 403)
        assert_problem(client.get("/session", auth=stranger), 401)
        bad = client.get(team.url(), headers={"Authorization": "Bearer not-a-token"})
        assert_problem(bad, 401)
        # With the member's key, no CSRF token is needed: the cookie is not what authenticates.
        name = new_name()
        member = httpx.BasicAuth(*team.keys["member"])
        ok(client.post(team.url("/repositories"), json={"name": name}, auth=member), 201)
        assert_problem(
            client.delete("/session", auth=member, headers={"X-CSRF-Token": session["csrf_token"]}),
            401,
        )
        ok(client.get("/session"))  # still signed in


def test_over_https_the_cookie_is_secure(tmp_path: Path) -> None:
    _ca, cert, key = make_ca_and_cert(tmp_path / "tls", ["localhost", "127.0.0.1"])
    server = BerthServer(tmp_path / "data", tls=(cert, key)).start()
    try:
        with api(server, verify=server.ssl_context()) as client:
            credentials = {"user": "admin", "password": ADMIN_PASSWORD}
            foreign = client.post("/session", json=credentials, headers={"Origin": EVIL})
            assert_problem(foreign, 403)
            response = client.post("/session", json=credentials, headers={"Origin": server.url})
            session = ok(response, 201)
            assert session["user"] == "admin" and session["server_admin"] is True
            _token, attributes = cookie_attributes(response)
            assert "secure" in attributes and "httponly" in attributes
            assert attributes["samesite"] == "Strict"
            assert ok(client.get("/session"))["user"] == "admin"
    finally:
        server.stop()


def test_behind_a_proxy_that_ends_tls_the_https_origin_is_this_server(server: BerthServer) -> None:
    """The browser speaks https to the proxy, the proxy http to Berth with the same Host."""
    with api(server) as client:
        credentials = {"user": "admin", "password": ADMIN_PASSWORD}
        proxied = client.post(
            "/session", json=credentials, headers={"Origin": f"https://{server.address}"}
        )
        session = ok(proxied, 201)
        name = new_name()
        elsewhere = client.post(
            "/projects",
            json={"name": name},
            headers={"Origin": "https://other.example", "X-CSRF-Token": session["csrf_token"]},
        )
        assert_problem(elsewhere, 403)
        assert client.get(f"/projects/{name}").status_code == 404
