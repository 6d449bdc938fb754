"""SIGTERM (systemctl stop) with shutdown_drain: the node keeps serving for the drain with
/readyz answering 503, so a balancer's health check takes it out before it closes the
connections the balancer uses; then it finishes the requests in progress and exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.oci import assert_status, location, start_upload
from tests.servers import BerthServer

DRAIN = 3.0


def test_a_node_sent_sigterm_drains_then_finishes_its_requests_and_exits_0(
    tmp_path: Path,
) -> None:
    server = BerthServer(
        tmp_path / "node", extra_env={"BERTH_SHUTDOWN_DRAIN": f"{DRAIN:g}"}
    ).start()
    try:
        server.create_repository("drain", "app")
        auth = server.access_key("drain")
        with httpx.Client(base_url=server.url, auth=auth, timeout=60) as client:
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            upload = location(start_upload(client, "drain/app"))

            # An upload whose body is still coming in when the drain ends.
            chunks = 2 * int(DRAIN + 2)

            def trickled() -> Iterator[bytes]:
                for _ in range(chunks):
                    yield b"x" * 1024
                    time.sleep(0.5)

            patched: list[httpx.Response] = []
            sending = threading.Thread(
                target=lambda: patched.append(
                    client.patch(
                        upload,
                        content=trickled(),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                )
            )
            sending.start()
            assert client.get("/v2/").status_code == 200  # a keep-alive connection in use
            time.sleep(0.5)
            assert server.process is not None
            stopped_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            # The drain: not ready, and still serving, on kept-alive and new connections.
            deadline = time.monotonic() + 2
            while (ready := httpx.get(f"{server.url}/readyz")).status_code != 503:
                assert time.monotonic() < deadline, "/readyz still ready after SIGTERM"
                time.sleep(0.1)
            assert "stopping" in ready.text
            while time.monotonic() - stopped_at < DRAIN - 1:
                assert client.get("/v2/").status_code == 200
                assert httpx.get(f"{server.url}/healthz").status_code == 200
                assert_status(start_upload(client, "drain/app"), 202)
                time.sleep(0.3)

            assert server.process.wait(timeout=30) == 0, server.log_tail()
            assert time.monotonic() - stopped_at >= DRAIN
            sending.join(30)
        assert len(patched) == 1, "the upload in progress got no answer"
        assert_status(patched[0], 202)
        assert patched[0].headers["range"] == f"0-{chunks * 1024 - 1}"
    finally:
        server.stop()
