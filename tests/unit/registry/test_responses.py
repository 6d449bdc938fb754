"""A blob file's response under an ASGI server without pathsend (httpx's in-process
transport offers none): the file is read and sent in chunks, and metered as it goes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from berth.registry.responses import CHUNK, BlobFileResponse


def answer_of(path: Path, size: int, method: str = "GET") -> tuple[httpx.Response, list[int]]:
    """The response to one request for the blob `path` recorded at `size` bytes, and what it
    metered as sent."""
    digest = blob_digest(path)
    sent: list[int] = []
    response = BlobFileResponse(str(path), size, digest, sent.append)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.pathsend" not in scope.get("extensions", {})
        await response(scope, receive, send)

    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            return await client.request(method, f"/v2/a/blobs/{digest}")

    return asyncio.run(request()), sent


def blob_digest(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def blob_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    content = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(content)
    return path, content


def test_a_get_sends_the_whole_file_in_chunks_and_meters_it(tmp_path: Path) -> None:
    path, content = blob_file(tmp_path, 2 * CHUNK + 123)
    answer, sent = answer_of(path, len(content))
    assert answer.status_code == 200
    assert answer.content == content
    assert answer.headers["content-length"] == str(len(content))
    assert answer.headers["docker-content-digest"] == blob_digest(path)
    assert answer.headers["etag"] == f'"{blob_digest(path)}"'
    assert sent == [len(content)]


def test_a_head_sends_the_headers_and_no_bytes(tmp_path: Path) -> None:
    path, _ = blob_file(tmp_path, 4096)
    answer, sent = answer_of(path, 4096, "HEAD")
    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["content-length"] == "4096"
    assert sent == []


@pytest.mark.parametrize("size", [0, CHUNK])
def test_the_body_ends_at_the_recorded_size(tmp_path: Path, size: int) -> None:
    path, content = blob_file(tmp_path, size)
    with path.open("ab") as grown:  # bytes past the recorded size are never sent
        grown.write(b"x" * 100)
    answer, sent = answer_of(path, size)
    assert answer.content == content
    assert sent == [size]


def test_a_file_shorter_than_recorded_is_metered_as_sent(tmp_path: Path) -> None:
    """Cut short on disk (damage the scrub finds): the body ends where the file does, and
    only the bytes sent count as outbound traffic."""
    path, content = blob_file(tmp_path, CHUNK + 10)
    os.truncate(path, CHUNK + 4)
    answer, sent = answer_of(path, len(content))
    assert answer.content == content[: CHUNK + 4]
    assert sent == [CHUNK + 4]
