"""One log line per request, in JSON, carrying the request ID the response carried; the ID in
every error body (the registry's OCI errors and the API's problems)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

import httpx

from tests.gc.conftest import GcProject
from tests.servers import BerthServer


def log_line(server: BerthServer, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The JSON log line of the request with this ID (log lines are written as each response
    ends: wait a moment for it)."""
    deadline = time.monotonic() + timeout
    while True:
        text = (server.data_dir / "server.log").read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("{") and request_id in line:
                document = json.loads(line)
                if document.get("request_id") == request_id:
                    return dict(document)
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.1)


def test_a_json_line_per_request_with_the_id_the_response_carried(
    observed: BerthServer, project: GcProject
) -> None:
    data = b"logged blob"
    digest = project.push_blob(data)
    pulled = project.registry.get(f"/v2/{project.name()}/blobs/{digest}")
    assert pulled.status_code == 200
    request_id = pulled.headers["x-request-id"]
    line = log_line(observed, request_id)
    key_id, secret = observed.access_key(project.project)
    assert line["level"] == "info"
    assert line["method"] == "GET"
    assert line["route"] == "/v2/{name:path}/blobs/{digest}"
    assert line["surface"] == "registry"
    assert line["status"] == 200
    assert line["sent_bytes"] == len(data)
    assert line["caller"] == key_id
    assert line["project"] == project.project
    assert line["duration_ms"] > 0
    assert secret not in json.dumps(line)

    # Every request has its own ID and line, the API's too.
    listed = project.api.get(f"/projects/{project.project}/repositories")
    assert listed.status_code == 200
    other = listed.headers["x-request-id"]
    assert other != request_id
    api_line = log_line(observed, other)
    assert api_line["route"] == "/api/v1/projects/{project}/repositories"
    assert api_line["project"] == project.project
    assert api_line["caller"] == key_id


def test_a_sane_incoming_request_id_is_kept_and_others_replaced(observed: BerthServer) -> None:
    given = f"lb-{uuid.uuid4()}"
    kept = httpx.get(f"{observed.url}/healthz", headers={"X-Request-ID": given})
    assert kept.headers["x-request-id"] == given
    assert log_line(observed, given)["route"] == "/healthz"
    odd = httpx.get(f"{observed.url}/healthz", headers={"X-Request-ID": "a b<script>"})
    assert odd.headers["x-request-id"] != "a b<script>"
    assert len(odd.headers["x-request-id"]) == 32


def test_a_node_without_a_node_name_is_named_by_its_host_name(observed: BerthServer) -> None:
    """Every line names the node that wrote it: with node_name unset, the machine's host name."""
    answer = httpx.get(f"{observed.url}/healthz")
    assert log_line(observed, answer.headers["x-request-id"])["node"] == socket.gethostname()


def test_request_id_in_an_oci_error(observed: BerthServer, project: GcProject) -> None:
    missing = project.registry.get(f"/v2/{project.name()}/manifests/absent")
    assert missing.status_code == 404
    body = missing.json()
    assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"  # still what clients parse
    assert body["request_id"] == missing.headers["x-request-id"]
    assert int(missing.headers["content-length"]) == len(missing.content)
    anonymous = httpx.get(f"{observed.url}/v2/{project.name()}/tags/list")
    assert anonymous.status_code == 401
    assert anonymous.json()["request_id"] == anonymous.headers["x-request-id"]
    assert log_line(observed, missing.headers["x-request-id"])["status"] == 404


def test_request_id_in_an_api_problem(observed: BerthServer, project: GcProject) -> None:
    refused = project.api.post(f"/projects/{project.project}/repositories", json={"name": "A!"})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "VALIDATION_FAILED"
    assert problem["request_id"] == refused.headers["x-request-id"]
    unknown = project.api.get("/projects/no-such-project-here")
    assert unknown.status_code in (403, 404)
    assert unknown.json()["request_id"] == unknown.headers["x-request-id"]
    # A refusal before any route (the body limit) carries it too.
    too_large = project.api.post(
        f"/projects/{project.project}/repositories", content=b"x" * (65 * 1024)
    )
    assert too_large.status_code == 413
    assert too_large.json()["request_id"] == too_large.headers["x-request-id"]
