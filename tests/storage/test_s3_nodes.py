"""What makes `berth serve` nodes on one bucket safe to run side by side: S3 with SQLite is
for one node only, every node must have the install's keys, and each answer names its node
(when the node has a name)."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from berth.access.keyring import Keyring
from berth.config import Settings
from berth.config_loading import SettingsError
from berth.data_location import create_data
from berth.services.start_up import check_keys
from tests.oci import random_blob
from tests.s3 import BUCKET, SeaweedFS
from tests.servers import (
    FORGET_STORAGE_RECORD,
    BerthServer,
    PostgresCluster,
    serve_refused,
    unstarted_environ,
)

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


def _start_ups_at_once(nodes: list[Settings], database_url: str) -> list[Keyring | str]:
    """The key check of each of `nodes` (as `berth serve` runs it), started at once and let
    through together once all of them wait to record their keys: each one's keys, or its
    refusal. The recording is held by a lock on its table, which lets reads through."""

    def start_up(settings: Settings) -> Keyring | str:
        try:
            return check_keys(settings)
        except SettingsError as refused:
            return str(refused)

    waiting = text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'install_facts'::regclass"
    )

    async def race() -> list[Keyring | str]:
        loop = asyncio.get_running_loop()
        engine = create_async_engine(database_url)
        try:
            with ThreadPoolExecutor(len(nodes)) as pool:
                async with engine.begin() as holder:
                    await holder.execute(
                        text("LOCK TABLE install_facts IN SHARE ROW EXCLUSIVE MODE")
                    )
                    started = [loop.run_in_executor(pool, start_up, node) for node in nodes]
                    for _ in range(300):
                        if (await holder.execute(waiting)).scalar_one() == len(nodes):
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError("the start-ups never reached their record")
                return list(await asyncio.gather(*started))
        finally:
            await engine.dispose()

    return asyncio.run(race())


def test_of_two_first_nodes_starting_at_once_one_makes_the_keys_the_other_writes_none(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """Two nodes of an install that has no keys yet start at once: the one whose keys are
    recorded first writes them, the other is refused before writing any key file, and told
    to copy the first's."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    nodes = [
        Settings(
            data_dir=tmp_path / name,
            database_url=url,
            storage="s3",
            s3_bucket="berth",
            single_node=False,
        )
        for name in ("first", "second")
    ]
    create_data(nodes[0])
    outcomes = _start_ups_at_once(nodes, url)
    (keyring,) = [o for o in outcomes if isinstance(o, Keyring)]
    (refusal,) = [o for o in outcomes if isinstance(o, str)]
    winner, loser = nodes if outcomes[0] is keyring else reversed(nodes)
    assert "not the ones the other nodes of this install use" in refusal
    assert f"this node has no {loser.signing_key_file} and no {loser.secret_key_file}" in refusal
    assert "copy them from a node that serves" in refusal
    assert not (loser.data_dir / "keys").exists()
    assert Keyring(winner.signing_key_file, winner.secret_key_file).fingerprint == (
        keyring.fingerprint
    )
    # As the refusal says: the first node's key files, and the second starts.
    shutil.copytree(winner.data_dir / "keys", loser.data_dir / "keys")
    assert check_keys(loser).fingerprint == keyring.fingerprint


def test_a_first_node_that_cannot_write_its_keys_leaves_no_record_of_them(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """Its keys are recorded before they are written; when writing fails (here the keys
    directory is a file) the record goes too, so once the operator fixes the directory the
    node starts as the first one, instead of being told to copy keys no node has."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    node = Settings(
        data_dir=tmp_path / "first",
        database_url=postgres.create_database(),
        storage="s3",
        s3_bucket="berth",
        single_node=False,
    )
    create_data(node)
    blocked = node.signing_key_file.parent
    blocked.write_text("not a directory")
    with pytest.raises(SettingsError, match="cannot create the key file"):
        check_keys(node)
    blocked.unlink()
    keyring = check_keys(node)
    assert Keyring(node.signing_key_file, node.secret_key_file).fingerprint == keyring.fingerprint


def test_a_node_on_another_blob_store_is_refused_until_its_storage_settings_are_the_installs(
    seaweedfs: SeaweedFS, postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """The first node records where the install's blobs are (the bucket and prefix, not the
    endpoint); a node of the same database on the filesystem, or on another prefix, would
    keep its pushes to itself and answer 404 for the others': refused, naming both."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    shared = {**seaweedfs.settings_environ(), "BERTH_SINGLE_NODE": "false"}
    on_s3 = 's3_bucket = "{}" with s3_prefix = "{}" (storage = "s3")'.format
    recorded = on_s3(BUCKET, shared["BERTH_S3_PREFIX"])
    first = BerthServer(tmp_path / "first", url, extra_env=shared)
    nodes: list[BerthServer] = []

    def node(name: str, **changes: str) -> BerthServer:
        made = BerthServer(tmp_path / name, url, extra_env={**shared, **changes})
        shutil.copytree(first.data_dir / "keys", made.data_dir / "keys")  # the install's
        nodes.append(made)
        return made

    try:
        first.start()
        first.create_repository("nodes", "app")
        key_id, secret = first.access_key("nodes")
        for changes, here in (
            ({"BERTH_STORAGE": "filesystem"}, 'storage = "filesystem"'),
            ({"BERTH_S3_PREFIX": "/typo/"}, on_s3(BUCKET, "typo")),
        ):
            other = node(f"other-{len(nodes)}", **changes)
            problem = " ".join(serve_refused(other.env).split())
            assert f"this node's blob store, {here}, is not the one" in problem, problem
            assert f"recorded as where its blobs are: {recorded};" in problem, problem
            assert "DELETE FROM install_facts WHERE name = 'storage_location';" in problem
            stored_at = "filesystem" if "filesystem" in here else f"s3://{BUCKET}/typo/"
            assert f"UPDATE install_facts SET value = '{stored_at}' WHERE" in problem, problem
            assert not (other.data_dir / "blobs").exists()  # nothing stored on the way

        # The same store at another address (each node may reach it at its own): serves.
        elsewhere = seaweedfs.endpoint.replace("127.0.0.1", "localhost")
        same = node("same", BERTH_S3_ENDPOINT=elsewhere).start()
        assert httpx.get(f"{same.url}/v2/", auth=(key_id, secret), timeout=10).status_code == 200

        # A move on purpose, as the refusal says: the record cleared, the next node records.
        postgres.sql(
            "DELETE FROM install_facts WHERE name = 'storage_location';",
            database=url.rsplit("/", 1)[1],
        )
        moved = node("moved", BERTH_S3_PREFIX="moved").start()
        assert httpx.get(f"{moved.url}/v2/", auth=(key_id, secret), timeout=10).status_code == 200
    finally:
        for started in nodes:
            started.stop()
        first.stop()


def test_a_first_record_of_the_blob_store_refuses_one_without_the_databases_blobs(
    seaweedfs: SeaweedFS, postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """A database from before the store was recorded (the record cleared here) holds blobs:
    the first node to start records its store only if that store holds them. A node set to a
    wrong prefix would otherwise be recorded as right, answer 404 for every blob, and have
    the nodes set right refused and told to use its prefix."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    shared = {**seaweedfs.settings_environ(), "BERTH_SINGLE_NODE": "false"}
    first = BerthServer(tmp_path / "first", url, extra_env=shared)
    blob = random_blob(1000)
    try:
        first.start()
        key = first.pushed("nodes", "app", blob)
    finally:
        first.stop()
    postgres.sql(FORGET_STORAGE_RECORD, database=url.rsplit("/", 1)[1])  # as before the record
    wrong = BerthServer(tmp_path / "wrong", url, extra_env={**shared, "BERTH_S3_PREFIX": "typo"})
    shutil.copytree(first.data_dir / "keys", wrong.data_dir / "keys")
    problem = " ".join(serve_refused(wrong.env).split())
    assert 's3_prefix = "typo" (storage = "s3"), holds none of the blobs' in problem, problem
    assert f"{blob.digest} among them" in problem, problem
    assert (
        "INSERT INTO install_facts (name, value, recorded_at) VALUES ('storage_location', "
        f"'s3://{BUCKET}/typo/', CURRENT_TIMESTAMP);"
    ) in problem, problem

    # The store that holds them is recorded, and serves what was pushed before.
    try:
        first.start()
        with httpx.Client(base_url=first.url, auth=key, timeout=10) as client:
            assert client.head(f"/v2/nodes/app/blobs/{blob.digest}").status_code == 200
    finally:
        first.stop()
    assert "holds none of the blobs" not in first.log_tail(200)
