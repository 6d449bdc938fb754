"""The limits' refusals are sent before routing: the documents must still be the API's
problems and the registry's OCI errors, as their own error handlers write them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from berth.domain.errors import RequestTimeout, TooManyRequests
from berth.limits import SMALL_BODY_LIMIT, _refusal_messages, _too_large


def _sent(path: str, refusal: Any, http_version: str = "1.1") -> tuple[int, dict[str, str], Any]:
    start, body = _refusal_messages({"path": path, "http_version": http_version}, refusal)
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, json.loads(body["body"])


@pytest.mark.parametrize(
    ("refusal", "status", "code", "title"),
    [
        (_too_large(SMALL_BODY_LIMIT), 413, "SIZE_INVALID", "Request too large"),
        (RequestTimeout("slow"), 408, "REQUEST_TIMEOUT", "Request timeout"),
        (TooManyRequests("busy"), 429, "TOOMANYREQUESTS", "Too many requests"),
    ],
)
def test_the_api_gets_a_problem_the_registry_an_oci_error(
    refusal: Any, status: int, code: str, title: str
) -> None:
    sent, headers, problem = _sent("/api/v1/projects", refusal)
    assert (sent, headers["content-type"]) == (status, "application/problem+json")
    assert problem == {
        "type": f"urn:berth:problem:{code.lower().replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": refusal.message,
        "code": code,
        "errors": [],
    }
    for path in ("/v2/demo/app/blobs/uploads/", "/auth/token"):
        sent, headers, error = _sent(path, refusal)
        assert (sent, headers["content-type"]) == (status, "application/json")
        assert error == {"errors": [{"code": code, "message": refusal.message}]}


def test_a_refusal_closes_an_http1_connection_and_says_when_to_retry() -> None:
    refusal = TooManyRequests("busy")
    refusal.headers["Retry-After"] = "1"
    _status, headers, _body = _sent("/v2/", refusal)
    assert headers["connection"] == "close" and headers["retry-after"] == "1"
    _status, headers, _body = _sent("/v2/", refusal, http_version="2")
    assert "connection" not in headers  # HTTP/2 forbids it
