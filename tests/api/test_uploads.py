"""Uploads in progress through the management API: project admins see who holds a project's
uploads (max_open_uploads counts them) and cancel one as its client's DELETE would, on the
filesystem and on S3; the client's next request to it is BLOB_UPLOAD_UNKNOWN."""

from __future__ import annotations

import datetime as dt
import os

import httpx

from tests.api.conftest import Team, api, assert_problem, ok
from tests.oci import (
    blob_path,
    digest_of,
    error_codes,
    location,
    patch_upload,
    path_of,
    put_upload,
    start_upload,
)
from tests.s3 import stored_keys
from tests.servers import ADMIN_PASSWORD, BACKENDS, S3_BACKEND, BerthServer, server_fixture

server = server_fixture(
    backends=[*BACKENDS, S3_BACKEND],
    doc="A running registry on SQLite, on PostgreSQL, and on PostgreSQL with blobs in S3.",
)

CHUNK = os.urandom(1000)


def started(client: httpx.Client, name: str, chunk: bytes | None = CHUNK) -> tuple[str, str]:
    """(upload ID, its URL) of an upload begun on /v2 as a client begins one: POST, a PATCH."""
    url = location(start_upload(client, name))
    if chunk is not None:
        sent = patch_upload(client, url, chunk)
        assert sent.status_code == 202, sent.text
        url = location(sent)
    return path_of(url).rstrip("/").rpartition("/")[2], url


def stored_scratch(server: BerthServer, upload_id: str) -> list[str]:
    """What the store holds for the upload (its scratch file, or its pieces on S3)."""
    if server.extra_env.get("BERTH_STORAGE") == "s3":
        return [key for key in stored_keys(server.extra_env, "uploads") if upload_id in key]
    scratch = server.data_dir / "blobs" / "_uploads"
    return [str(p) for p in scratch.glob(f"{upload_id}*") if p.is_file() and p.suffix != ".lock"]


def other_project(team: Team) -> str:
    """The team's second project, where the stranger is admin (`new_team`)."""
    return "q" + team.project[1:]


def test_admins_list_and_cancel_open_uploads(team: Team) -> None:
    pushing = team.registry("member")
    first, first_url = started(pushing, team.oci_name())
    second, _ = started(team.registry("project-admin"), team.oci_name("tools/lint"), None)
    # Another project's upload is not this project's to list.
    elsewhere = other_project(team)
    team.server.create_repository(elsewhere, "app")
    foreign, foreign_url = started(team.registry("stranger"), f"{elsewhere}/app")

    page = ok(team["project-admin"].get(team.url("/uploads")))
    assert page["total"] == 2 and page["page"] == 1, page
    newest, oldest = page["items"]
    assert [newest["id"], oldest["id"]] == [second, first]
    assert oldest == {
        **oldest,
        "repository": team.repository,
        "image": "",
        "started_by": team.users["member"],
        "bytes_received": len(CHUNK),
    }
    assert newest == {
        **newest,
        "image": "tools/lint",
        "started_by": team.users["project-admin"],
        "bytes_received": 0,
    }
    started_at = dt.datetime.fromisoformat(oldest["started_at"])
    last_activity = dt.datetime.fromisoformat(oldest["updated_at"])
    assert started_at <= last_activity <= dt.datetime.now(dt.UTC)
    assert dt.datetime.fromisoformat(oldest["expires_at"]) == last_activity + dt.timedelta(days=1)
    # Paged as every listing: one a page, the newest on the first.
    one = ok(team["project-admin"].get(team.url("/uploads"), params={"per_page": 1, "page": 2}))
    assert [u["id"] for u in one["items"]] == [first] and one["total"] == 2

    one_upload = ok(team["project-admin"].get(team.url(f"/uploads/{first}")))
    assert one_upload == oldest

    assert stored_scratch(team.server, first)
    assert ok(team["project-admin"].delete(team.url(f"/uploads/{first}")), 204) is None
    # The client's next chunk, or its closing PUT, is refused as for an upload it cancelled
    # itself, and the upload's bytes are gone from the store.
    refused = patch_upload(pushing, first_url, CHUNK)
    assert refused.status_code == 404 and error_codes(refused) == ["BLOB_UPLOAD_UNKNOWN"]
    closing = put_upload(pushing, first_url, digest_of(CHUNK), CHUNK)
    assert closing.status_code == 404 and error_codes(closing) == ["BLOB_UPLOAD_UNKNOWN"]
    assert pushing.head(blob_path(team.oci_name(), digest_of(CHUNK))).status_code == 404
    assert stored_scratch(team.server, first) == []
    listed = ok(team["project-admin"].get(team.url("/uploads")))
    assert [u["id"] for u in listed["items"]] == [second] and listed["total"] == 1

    (entry, *_) = ok(team["project-admin"].get(team.url("/audit")))["items"]
    assert entry["action"] == "upload.cancel" and entry["actor"] == team.users["project-admin"]
    assert entry["target"] == f"{team.repository}@{first}"
    assert entry["detail"] == {"started_by": team.users["member"], "bytes_received": len(CHUNK)}

    # Gone, another project's, or not an upload ID: nothing to cancel here.
    for gone in (first, foreign, "0" * 32):
        for method in ("GET", "DELETE"):
            unknown = team["project-admin"].request(method, team.url(f"/uploads/{gone}"))
            body = assert_problem(unknown, 404, code="BLOB_UPLOAD_UNKNOWN")
            assert f"upload '{gone}' is not in progress in project" in body["detail"]
    assert_problem(team["project-admin"].delete(team.url("/uploads/NOT-AN-ID")), 422)
    # The foreign upload was not touched: its client goes on.
    assert patch_upload(team.registry("stranger"), foreign_url, CHUNK).status_code == 202

    # A server administrator lists and cancels in any project.
    with api(team.server, ("admin", ADMIN_PASSWORD)) as server_admin:
        theirs = ok(server_admin.get(f"/projects/{elsewhere}/uploads"))
        assert [u["id"] for u in theirs["items"]] == [foreign]
        assert theirs["items"][0]["started_by"] == team.users["stranger"]
        ok(server_admin.delete(f"/projects/{elsewhere}/uploads/{foreign}"), 204)
        assert ok(server_admin.get(f"/projects/{elsewhere}/uploads"))["items"] == []
        # A project that does not exist (authorization came first for everyone else).
        for path in ("/projects/nosuchproject/uploads", f"/projects/nosuchproject/uploads/{first}"):
            body = assert_problem(server_admin.get(path), 404, code="NAME_UNKNOWN")
            assert "project 'nosuchproject' does not exist" in body["detail"]
        assert_problem(
            server_admin.delete(f"/projects/nosuchproject/uploads/{first}"),
            404,
            code="NAME_UNKNOWN",
        )


def test_only_project_admins_see_or_cancel_uploads(team: Team) -> None:
    upload_id, url = started(team.registry("member"), team.oci_name())
    for actor in ("member", "reader", "outsider", "robot", "stranger"):
        assert_problem(team[actor].get(team.url("/uploads")), 403)
        assert_problem(team[actor].get(team.url(f"/uploads/{upload_id}")), 403)
        assert_problem(team[actor].delete(team.url(f"/uploads/{upload_id}")), 403)
    # Authorization before existence: a caller without the role learns nothing of a project.
    assert_problem(team["member"].get("/projects/nosuchproject/uploads"), 403)
    # Nothing was cancelled: the client goes on.
    assert patch_upload(team.registry("member"), url, CHUNK).status_code == 202
    (listed,) = ok(team["project-admin"].get(team.url("/uploads")))["items"]
    assert listed["id"] == upload_id and listed["bytes_received"] == 2 * len(CHUNK)


def test_the_upload_endpoints_are_in_the_openapi_document(team: Team) -> None:
    document = ok(team["reader"].get("/openapi.json"))
    paths = document["paths"]
    assert "get" in paths["/projects/{project}/uploads"]
    assert {"get", "delete"} <= set(paths["/projects/{project}/uploads/{upload_id}"])
    cancel = paths["/projects/{project}/uploads/{upload_id}"]["delete"]
    assert {"204", "403", "404"} <= set(cancel["responses"])
    assert "application/problem+json" in cancel["responses"]["404"]["content"]
    fields = document["components"]["schemas"]["OpenUpload"]["properties"]
    assert {"id", "repository", "started_by", "bytes_received", "expires_at"} <= set(fields)
