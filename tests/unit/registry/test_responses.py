"""A blob file's response: read by Berth in pieces (under httpx's in-process transport, which
offers no pathsend, and under a server that does while few sends are in flight), or handed to
the server by pathsend when many are; metered as it goes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from berth.domain.errors import RegistryError
from berth.domain.ranges import ByteRange
from berth.registry import responses
from berth.registry.fastpath import PullFastPath
from berth.registry.responses import PIECE, SMALL_PIECE, BlobFileResponse, _in_page_cache


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


def test_a_get_sends_the_whole_file_in_pieces_and_meters_it(tmp_path: Path) -> None:
    path, content = blob_file(tmp_path, 2 * PIECE + 123)
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


@pytest.mark.parametrize("size", [0, PIECE])
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
    path, content = blob_file(tmp_path, PIECE + 10)
    os.truncate(path, PIECE + 4)
    answer, sent = answer_of(path, len(content))
    assert answer.content == content[: PIECE + 4]
    assert sent == [PIECE + 4]


def test_a_file_the_page_cache_dropped_is_read_and_sent_whole(tmp_path: Path) -> None:
    """Pieces not in memory are read in a thread (the loop never waits for the disk): the
    probe tells them apart, and the bytes are the same either way."""
    path, content = blob_file(tmp_path, 3 * PIECE + 5)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        for _ in range(100):  # advice: a page the journal has not committed yet (~5 s) stays
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if not _in_page_cache(fd, len(content) - 1):
                break
            time.sleep(0.1)
        else:
            pytest.skip("the kernel kept the file's pages in memory")
        answer, sent = answer_of(path, len(content))
        assert _in_page_cache(fd, len(content) - 1)  # read since
    finally:
        os.close(fd)
    assert answer.content == content
    assert sent == [len(content)]


class RecordingServer:
    """An ASGI server's side of one GET, as granian offers it (pathsend advertised): what the
    response sent, and a client that goes away after `leave_after` body messages."""

    def __init__(self, leave_after: int | None = None) -> None:
        self.messages: list[dict[str, object]] = []
        self.leave_after = leave_after
        self.left = asyncio.Event()
        self.scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": "/v2/a/blobs/x",
            "headers": [],
            "extensions": {"http.response.pathsend": {}},
        }

    async def receive(self) -> dict[str, object]:
        if not self.messages:
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, object]) -> None:
        self.messages.append(message)
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        if self.leave_after is not None and len(bodies) >= self.leave_after:
            self.left.set()
            for _ in range(3):  # the response's watcher takes the news
                await asyncio.sleep(0)

    def run(self, response: BlobFileResponse) -> None:
        asyncio.run(response(self.scope, self.receive, self.send))  # type: ignore[arg-type]

    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.messages if m["type"] == "http.response.body")  # type: ignore[misc]


def test_large_pieces_while_few_sends_are_in_flight_then_pathsend(tmp_path: Path) -> None:
    """Reading in large pieces is faster than the server's pathsend, but a slow client keeps
    several of them queued: past the worker's bound of such sends, a whole blob goes by
    pathsend and a range in small pieces."""
    path, content = blob_file(tmp_path, 3 * PIECE)
    digest = blob_digest(path)

    server = RecordingServer()
    server.run(BlobFileResponse(str(path), len(content), digest))
    assert [m["type"] for m in server.messages][:2] == ["http.response.start", "http.response.body"]
    assert server.body() == content
    assert {len(m["body"]) for m in server.messages[1:-1]} == {PIECE}  # type: ignore[arg-type]

    slots = responses._FAST_SENDS
    slots.taken = slots.limit  # every fast send in flight
    try:
        whole = RecordingServer()
        sent: list[int] = []
        whole.run(BlobFileResponse(str(path), len(content), digest, sent.append))
        assert whole.messages[1] == {"type": "http.response.pathsend", "path": str(path)}
        assert sent == [len(content)]

        ranged = RecordingServer()
        part = ByteRange(start=10, end=10 + 2 * SMALL_PIECE + 1, size=len(content))
        ranged.run(BlobFileResponse(str(path), len(content), digest, part=part))
        assert ranged.messages[0]["status"] == 206
        assert ranged.body() == content[10 : 10 + 2 * SMALL_PIECE + 1]
        assert len(ranged.messages[1]["body"]) == SMALL_PIECE  # type: ignore[arg-type]
    finally:
        slots.taken = 0


def test_a_client_gone_stops_the_reading_and_only_what_was_sent_counts(tmp_path: Path) -> None:
    path, content = blob_file(tmp_path, 8 * PIECE)
    server = RecordingServer(leave_after=2)
    sent: list[int] = []
    server.run(BlobFileResponse(str(path), len(content), blob_digest(path), sent.append))
    assert len(server.body()) < len(content)
    assert sent == [len(server.body())]
    assert responses._FAST_SENDS.taken == 0


def test_a_blob_file_gone_before_it_is_opened_is_blob_unknown(tmp_path: Path) -> None:
    """Removed between the handler's check and the send (garbage collection): nothing was
    sent yet, so the fast path answers the registry error, as the router does."""
    gone = tmp_path / "gone"

    async def handler(request: Request) -> BlobFileResponse:
        return BlobFileResponse(str(gone), 10, "sha256:" + "0" * 64)

    def error_response(exc: RegistryError) -> Response:
        return JSONResponse({"errors": [{"code": exc.code}]}, status_code=exc.status)

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a blob GET goes by the fast path")

    route = Route("/v2/{name:path}/blobs/{digest}", handler, methods=["GET", "HEAD"])
    app = PullFastPath(router, routes=[route], handlers=[handler], error_response=error_response)

    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            return await client.get("/v2/a/blobs/sha256:" + "0" * 64)

    answer = asyncio.run(request())
    assert answer.status_code == 404
    assert answer.json() == {"errors": [{"code": "BLOB_UNKNOWN"}]}
