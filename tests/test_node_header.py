"""Which node answered (`X-Berth-Node`) is said only when the operator names the node: by
default an anonymous client learns nothing about the hosts behind a load balancer."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.servers import BerthServer


def _answers(server: BerthServer) -> list[httpx.Response]:
    """An anonymous 401, a health check and an authenticated 200 of the registry API."""
    server.create_repository("nodes", "app")
    key_id, secret = server.access_key("nodes")
    refused = httpx.get(f"{server.url}/v2/", timeout=10)
    healthy = httpx.get(f"{server.url}/healthz", timeout=10)
    allowed = httpx.get(f"{server.url}/v2/", auth=(key_id, secret), timeout=10)
    assert [refused.status_code, healthy.status_code, allowed.status_code] == [401, 200, 200]
    return [refused, healthy, allowed]


def test_a_server_without_a_node_name_does_not_name_its_host(tmp_path: Path) -> None:
    server = BerthServer(tmp_path / "data").start()
    try:
        for answer in _answers(server):
            assert "x-berth-node" not in answer.headers, answer.headers
    finally:
        server.stop()


def test_a_named_node_says_its_name_on_every_answer(tmp_path: Path) -> None:
    server = BerthServer(tmp_path / "data", extra_env={"BERTH_NODE_NAME": "node-7"}).start()
    try:
        for answer in _answers(server):
            assert answer.headers["x-berth-node"] == "node-7"
    finally:
        server.stop()
