"""The API's contract as a client sees it: strict request bodies, one answer for each kind of
bad input, problem documents for every 404 and 405, the challenges of a 401, and an OpenAPI
document that lists what the server answers."""

from __future__ import annotations

import re
import time

from berth.domain.patterns import TAG_RULE
from berth.state import Services
from tests.api.conftest import (
    PASSWORD,
    PROBLEM,
    Team,
    api,
    assert_problem,
    ok,
    push_image,
    services,
)
from tests.servers import ADMIN_PASSWORD


def test_a_body_field_takes_only_its_own_json_type(team: Team) -> None:
    admin = team.admin
    ok(admin.put(team.url("/quota"), json={"repository_quota": 7}))
    # false is not the quota 0, nor 1.0 the quota 1.
    for wrong in (False, True, 1.0, "3"):
        assert_problem(
            admin.put(team.url("/quota"), json={"repository_quota": wrong}),
            422,
            fields=("repository_quota",),
        )
    assert ok(admin.get(team.url()))["repository_quota"] == 7
    # "yes" is not true, nor 0 false.
    for wrong in ("yes", "true", 0, 1):
        assert_problem(
            team["member"].patch(team.repo_url(), json={"tag_overwrite": wrong}),
            422,
            fields=("tag_overwrite",),
        )
    assert ok(team["member"].get(team.repo_url()))["tag_overwrite"] is True
    # Enumerations and dates still arrive as JSON strings.
    ok(team["member"].patch(team.repo_url(), json={"visibility": "public", "scan_mode": "auto"}))
    ok(admin.put(team.url(f"/members/{team.users['robot']}"), json={"role": "reader"}))


def test_every_body_refuses_a_field_it_does_not_define(team: Team) -> None:
    admin = team.admin
    name = f"{team.project}-x"
    server_admin = api(team.server, ("admin", ADMIN_PASSWORD))
    assert_problem(
        server_admin.post("/projects", json={"name": name, "repository_quota": 1}),
        422,
        fields=("repository_quota",),
    )
    assert server_admin.get(f"/projects/{name}").status_code == 404
    refused = [
        admin.put(team.url("/quota"), json={"repository_quota": 5, "quota": 6}),
        admin.put(team.url("/pull-policy"), json={"refuse_severity": None, "refuse_sevrity": "x"}),
        api(team.server, team.keys["member"]).post(
            "/auth/tokens", json={"expires_in": 600, "expires": 60}
        ),
        api(team.server).post(
            "/session",
            json={"user": team.users["member"], "password": PASSWORD, "remember": True},
        ),
    ]
    for response, field in zip(
        refused, ("quota", "refuse_sevrity", "expires", "remember"), strict=True
    ):
        assert_problem(response, 422, fields=(field,), code="VALIDATION_FAILED")
    assert ok(admin.get(team.url()))["quota_is_default"] is True


def test_a_date_alone_as_a_key_expiry_is_the_end_of_that_day(team: Team) -> None:
    created = ok(team["member"].post(team.url("/keys"), json={"expires_at": "2027-06-01"}), 201)
    assert created["expires_at"] in ("2027-06-01T23:59:59Z", "2027-06-01T23:59:59+00:00")
    # A time says the moment itself, a zone how to read it.
    created = ok(
        team["reader"].post(team.url("/keys"), json={"expires_at": "2027-06-01T12:00:00+02:00"}),
        201,
    )
    assert created["expires_at"] in ("2027-06-01T10:00:00Z", "2027-06-01T10:00:00+00:00")
    assert_problem(
        team["reader"].post(team.url("/keys"), json={"expires_at": "2027-13-01"}),
        422,
        fields=("expires_at",),
    )


def test_a_body_that_is_not_utf8_is_invalid_json_as_any_other(shared_team: Team) -> None:
    admin = shared_team.admin
    url = shared_team.url("/pull-policy")
    json_type = {"Content-Type": "application/json"}
    for body in (b"\xff", b'{"refuse_severity": "hi\xff"}', b"{bad"):
        answer = assert_problem(
            admin.put(url, content=body, headers=json_type),
            422,
            fields=("body",),
            code="VALIDATION_FAILED",
        )
        assert "not valid JSON" in answer["errors"][0]["message"], answer
    assert "UTF-8" in admin.put(url, content=b"\xff", headers=json_type).json()["detail"]


def test_a_body_of_another_media_type_is_refused(shared_team: Team) -> None:
    admin = shared_team.admin
    body = b'{"name": "sent-as-text"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        answer = assert_problem(
            admin.post(
                shared_team.url("/repositories"),
                content=body,
                headers={"Content-Type": content_type},
            ),
            415,
            code="UNSUPPORTED_MEDIA_TYPE",
        )
        assert content_type in answer["detail"]
    assert admin.get(shared_team.repo_url(repository="sent-as-text")).status_code == 404
    # JSON under its own type (with a charset, or a +json type) is read as before.
    ok(
        admin.post(
            shared_team.url("/repositories"),
            content=b'{"name": "sent-as-json"}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        ),
        201,
    )
    document = ok(api(shared_team.server).get("/openapi.json"))
    create = document["paths"]["/projects/{project}/repositories"]["post"]
    assert "415" in create["responses"]


def test_a_path_no_route_takes_answers_in_the_format_of_its_surface(shared_team: Team) -> None:
    admin = shared_team.admin
    for path in (
        shared_team.url("/repositories/a%0Ab/tags"),
        shared_team.url("/repositories/a%0A"),
        "/projects%0A",
        "/no-such-thing",
    ):
        assert "no API endpoint" in assert_problem(admin.get(path), 404, code="NOT_FOUND")["detail"]
    registry = shared_team.registry()
    for path in (f"/v2/{shared_team.project}/tools%0A/tags/list", "/v2/a%0Ab/manifests/latest"):
        answer = registry.get(path)
        assert answer.status_code == 404 and answer.headers["content-type"].startswith(
            "application/json"
        ), (path, answer.headers, answer.text)
        [error] = answer.json()["errors"]
        assert error["code"] and error["message"], answer.text


def test_405_lists_every_method_of_the_path_and_head_is_get_without_a_body(
    shared_team: Team,
) -> None:
    admin = shared_team.admin
    expected = {
        shared_team.url(): "GET, HEAD, DELETE",
        shared_team.repo_url(): "GET, HEAD, PATCH, DELETE",
        "/projects": "GET, HEAD, POST",
    }
    for path, allow in expected.items():
        answer = admin.request("PUT" if path != "/projects" else "PATCH", path, json={})
        assert_problem(answer, 405, code="METHOD_NOT_ALLOWED")
        assert answer.headers["allow"] == allow, (path, answer.headers)
    got = admin.get(shared_team.url())
    head = admin.head(shared_team.url())
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
    # Refused as GET is: same status, no body.
    assert api(shared_team.server).head(shared_team.url()).status_code == 401
    assert admin.head("/no-such-thing").status_code == 404


def test_401_offers_basic_and_bearer_but_no_basic_to_a_browser_script(shared_team: Team) -> None:
    anonymous = api(shared_team.server)
    wrong_key = api(shared_team.server, ("BKNOTAKEY0000000000", "wrong"))
    for answer in (anonymous.get("/projects"), wrong_key.get(shared_team.url())):
        assert_problem(answer, 401, code="UNAUTHORIZED")
        assert answer.headers["WWW-Authenticate"] == (
            'Basic realm="berth-api", charset="UTF-8", Bearer realm="berth-api"'
        )
    # The console's requests: a Basic challenge would bring up the browser's password dialog.
    script = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
    for path in ("/session", "/projects"):
        answer = anonymous.get(path, headers=script)
        assert_problem(answer, 401)
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="berth-api"'


def test_a_patch_that_changes_nothing_leaves_updated_at(team: Team) -> None:
    member = team["member"]
    before = ok(member.get(team.repo_url()))
    time.sleep(0.01)
    for unchanged in ({}, {"tag_overwrite": before["tag_overwrite"]}, {"name": team.repository}):
        assert (
            ok(member.patch(team.repo_url(), json=unchanged))["updated_at"] == before["updated_at"]
        )
    assert ok(member.get(team.repo_url()))["updated_at"] == before["updated_at"]
    changed = ok(member.patch(team.repo_url(), json={"description": "changed"}))
    assert changed["updated_at"] > before["updated_at"]


def test_a_malformed_digest_is_refused_alike_by_every_operation(shared_team: Team) -> None:
    admin = shared_team.admin
    base = shared_team.repo_url()
    for digest in ("sha256:abc", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha512:" + "a" * 64):
        for method, path, params in (
            ("GET", f"/images/{digest}", {}),
            ("DELETE", f"/images/{digest}", {}),
            ("GET", f"/images/{digest}/deletion", {}),
            ("GET", f"/images/{digest}/scan", {}),
            ("POST", f"/images/{digest}/scan", {}),
            ("GET", f"/images/{digest}/sbom", {}),
            ("POST", f"/images/{digest}/sbom/referrer", {}),
            ("GET", "/history", {"digest": digest}),
        ):
            answer = assert_problem(
                admin.request(method, base + path, params=params), 422, code="VALIDATION_FAILED"
            )
            [error] = answer["errors"]
            assert error["field"] in ("path.digest", "query.digest"), answer
            assert "sha256:<64 lowercase hex digits>" in error["message"], answer
    document = ok(api(shared_team.server).get("/openapi.json"))
    show = document["paths"]["/projects/{project}/repositories/{repository}/images/{digest}"]
    [digest_parameter] = [p for p in show["get"]["parameters"] if p["name"] == "digest"]
    assert "sha256:[a-f0-9]{64}" in digest_parameter["schema"]["pattern"]


def test_the_openapi_document_lists_the_answers_every_operation_can_get(
    shared_team: Team,
) -> None:
    document = ok(api(shared_team.server).get("/openapi.json"))
    shared = document["components"]["responses"]
    default_security = document["security"]
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            answers = operation["responses"]
            listed = set(answers)
            security = operation.get("security", default_security)
            if any("accessKey" in way for way in security):
                assert {"401", "429"} <= listed, where
            if "requestBody" in operation:
                assert {"413", "415", "422"} <= listed, where
            assert "503" in listed, where
            for status, answer in answers.items():
                if "$ref" in answer:
                    answer = shared[answer["$ref"].removeprefix("#/components/responses/")]
                if status[0] in "45":
                    assert list(answer["content"]) == [PROBLEM], (where, status)
            checked += 1
    assert checked > 50
    # The password sign-in is throttled as Basic credentials are.
    assert "429" in document["paths"]["/session"]["post"]["responses"]


def test_the_openapi_document_states_what_the_server_answers_and_enforces(
    shared_team: Team,
) -> None:
    document = ok(api(shared_team.server).get("/openapi.json"))
    paths = document["paths"]
    server_admin = api(shared_team.server, ("admin", ADMIN_PASSWORD))
    for listing in ("keys", "members", "audit"):
        assert_problem(server_admin.get(f"/projects/p-none-{listing}/{listing}"), 404)
        assert "404" in paths[f"/projects/{{project}}/{listing}"]["get"]["responses"], listing
    referrer = paths["/projects/{project}/repositories/{repository}/images/{digest}/sbom/referrer"]
    assert {"200", "201"} <= set(referrer["post"]["responses"])

    [days] = [
        p for p in paths["/projects/{project}/traffic"]["get"]["parameters"] if p["name"] == "days"
    ]
    assert days["schema"]["maximum"] == 124
    ok(shared_team.admin.get(shared_team.url("/traffic"), params={"days": 124}))
    assert_problem(
        shared_team.admin.get(shared_team.url("/traffic"), params={"days": 125}),
        422,
        fields=("query.days",),
    )
    expires_in = document["components"]["schemas"]["TokenRequest"]["properties"]["expires_in"]
    [as_integer] = [a for a in expires_in["anyOf"] if a.get("type") == "integer"]
    assert as_integer["maximum"] == 12 * 3600
    token = api(shared_team.server, shared_team.keys["member"])
    assert ok(token.post("/auth/tokens", json={"expires_in": 12 * 3600}), 201)
    assert_problem(
        token.post("/auth/tokens", json={"expires_in": 12 * 3600 + 1}), 422, fields=("expires_in",)
    )
    url = document["components"]["schemas"]["NewWebhook"]["properties"]["url"]
    assert re.match(url["pattern"], "HTTPS://hooks.example/x")
    assert not re.match(url["pattern"], "ftp://hooks.example/x")


def test_a_manifest_asked_for_under_another_image_says_which_image_holds_it(team: Team) -> None:
    with team.registry() as registry:
        manifest = push_image(registry, team.oci_name("multi"), "v1")
    images = team["reader"]
    url = team.repo_url(f"/images/{manifest.digest}")
    missing = assert_problem(images.get(url), 404, code="MANIFEST_UNKNOWN")["detail"]
    assert "under image 'multi'" in missing and "pass ?image=multi" in missing, missing
    assert ok(images.get(url, params={"image": "multi"}))["digest"] == manifest.digest
    elsewhere = assert_problem(images.get(url, params={"image": "other"}), 404)["detail"]
    assert "pass ?image=multi" in elsewhere, elsewhere
    unknown = team.repo_url("/images/sha256:" + "0" * 64)
    assert "under image" not in assert_problem(images.get(unknown), 404)["detail"]


def test_a_page_past_the_last_is_empty_and_still_counts_the_listing(team: Team) -> None:
    with team.registry("member") as registry:
        for tag in ("v1", "v2", "v3"):
            push_image(registry, team.oci_name(), tag)
    reader, images = team["reader"], team.repo_url("/images")
    last = ok(reader.get(images, params={"per_page": 2, "page": 2}))
    assert len(last["items"]) == 1 and last["total"] == 3
    past = ok(reader.get(images, params={"per_page": 2, "page": 3}))
    assert past == {"items": [], "page": 3, "per_page": 2, "total": 3}


def test_every_paged_listing_answers_a_page_past_its_end_alike(team: Team) -> None:
    admin = api(team.server, ("admin", ADMIN_PASSWORD))
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "v1")

    async def add_webhook(s: Services) -> int:
        # Made here, on loopback: the server takes only public addresses, and nothing is sent
        # to it (no event comes after it).
        s.webhooks.allow_private = True
        return (await s.webhooks.create(team.project, "http://127.0.0.1:9/", actor="t")).id

    hook = services(team.server, add_webhook)
    values = {"project": team.project, "repository": team.repository, "webhook_id": hook}
    document = ok(api(team.server).get("/openapi.json"))
    paged = [
        path
        for path, operations in document["paths"].items()
        if {"page", "per_page"}
        <= {p["name"] for p in operations.get("get", {}).get("parameters", [])}
    ]
    assert len(paged) >= 11, paged
    for path in paged:
        url = path.format(**values)
        total = ok(admin.get(url, params={"per_page": 1}))["total"]
        for page in (total + 1, 100_000):
            past = admin.get(url, params={"page": page, "per_page": 1})
            assert ok(past) == {"items": [], "page": page, "per_page": 1, "total": total}, path


def test_a_malformed_tag_is_said_to_be_no_tag_wherever_it_is_given(shared_team: Team) -> None:
    """In the path (a tag delete), a query (history by tag) and a body (tag restore), a tag
    that cannot be one is refused saying what a tag is, not a generic form message."""
    member = shared_team["member"]
    for response, field in (
        (member.delete(shared_team.repo_url("/tags/-v1")), "path.tag"),
        (member.get(shared_team.repo_url("/history"), params={"tag": "v1!"}), "query.tag"),
        (member.post(shared_team.repo_url("/tags/restore"), json={"tag": "x" * 129}), "tag"),
    ):
        refused = assert_problem(response, 422, fields=(field,), code="VALIDATION_FAILED")
        [said] = refused["errors"]
        assert said["message"] == f"not a tag: {TAG_RULE}, 128 characters at most", refused
