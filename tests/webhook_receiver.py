"""A real HTTP endpoint on loopback that receives webhook deliveries: it records each request
and answers with the next status of a script (then 200), `delay` seconds after it came (a slow
endpoint), or never answers (`silent`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> Any:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-berth-signature", ""), expected)


class Receiver:
    def __init__(
        self, statuses: list[int] | None = None, *, silent: bool = False, delay: float = 0.0
    ) -> None:
        self.statuses = list(statuses or [])
        self.silent = silent
        self.delay = delay
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(headers, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.silent:
                    receiver._stop.wait(60)  # hold the connection, answer nothing
                    return
                if receiver._stop.wait(receiver.delay):
                    return  # closing
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[Any]:
        with self._lock:
            return [r.event for r in self.received]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} deliveries, got {len(self.received)}")


def receiving(
    statuses: list[int] | None = None, *, silent: bool = False, delay: float = 0.0
) -> Iterator[Receiver]:
    receiver = Receiver(statuses, silent=silent, delay=delay).start()
    try:
        yield receiver
    finally:
        receiver.close()
