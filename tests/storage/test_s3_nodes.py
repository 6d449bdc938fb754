"""What makes `berth serve` nodes on one bucket safe to run side by side: S3 with SQLite is
for one node only, every node must have the install's keys, and each answer names its node
(when the node has a name)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.s3 import SeaweedFS
from tests.servers import BerthServer, PostgresCluster, serve_refused, unstarted_environ

pytestmark = pytest.mark.clients


def test_s3_with_sqlite_refuses_unless_one_node_is_intended(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    env = unstarted_environ(tmp_path, seaweedfs.settings_environ())
    del env["BERTH_SINGLE_NODE"]
    problem = serve_refused(env)
    assert "single_node = true" in problem and "PostgreSQL" in problem
    assert not (tmp_path / "data").exists()  # refused before anything was created

    server = BerthServer(tmp_path / "one", extra_env={**seaweedfs.settings_environ()})
    try:
        server.start()
        assert httpx.get(f"{server.url}/v2/", timeout=10).status_code == 401
    finally:
        server.stop()


def test_a_node_with_other_keys_is_refused_until_it_has_the_installs_keys(
    seaweedfs: SeaweedFS, postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    shared = {**seaweedfs.settings_environ(), "BERTH_SINGLE_NODE": "false"}
    first = BerthServer(tmp_path / "first", url, extra_env={**shared, "BERTH_NODE_NAME": "n1"})
    second = BerthServer(tmp_path / "second", url, extra_env={**shared, "BERTH_NODE_NAME": "n2"})
    try:
        first.start()
        first.create_repository("nodes", "app")
        key_id, secret = first.access_key("nodes")

        problem = serve_refused(second.env)
        assert "not the ones the other nodes of this install use" in problem
        assert "token_signing_key and secret_hash_key" in problem
        assert "DELETE FROM install_facts WHERE name = 'key_fingerprint';" in problem
        assert not (second.data_dir / "keys").exists()  # refused before making keys of its own

        # As the message says: the first node's key files over the second's.
        shutil.copytree(first.data_dir / "keys", second.data_dir / "keys", dirs_exist_ok=True)
        second.start()
        for node, name in ((first, "n1"), (second, "n2")):
            answer = httpx.get(f"{node.url}/v2/", auth=(key_id, secret), timeout=10)
            assert answer.status_code == 200  # an access key made on the first works on both
            assert answer.headers["x-berth-node"] == name
    finally:
        second.stop()
        first.stop()
