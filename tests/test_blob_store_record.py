"""What `berth serve` does with the database's record of the install's blob store on the
filesystem: a store it cannot read while it looks for the database's blobs in it is refused
as any unusable store is, not a traceback."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import httpx

from berth.config import Settings
from berth.data_location import sqlite_file
from tests.oci import push_blob, random_blob
from tests.servers import BerthServer, serve_refused

_FORGET_STORAGE = "DELETE FROM install_facts WHERE name = 'storage_location';"


def test_a_blob_store_that_cannot_be_read_while_its_blobs_are_looked_for_is_refused(
    tmp_path: Path,
) -> None:
    """With no store recorded and blobs in the database (an install from before the record,
    here the record cleared), `berth serve` looks for some of them in its store before
    recording it; a store that fails then (a file where the blob tree's directory was: reads
    of it fail, as they do on a disk gone bad or a mount lost) is a refusal naming the store
    and what failed, exit status 2, as a store found unusable before it."""
    node = BerthServer(tmp_path / "node")
    blob = random_blob(1000)
    try:
        node.start()
        node.create_repository("nodes", "app")
        with httpx.Client(base_url=node.url, auth=node.access_key("nodes"), timeout=10) as client:
            push_blob(client, "nodes/app", blob)
    finally:
        node.stop()
    database = sqlite_file(Settings(data_dir=node.data_dir))
    assert database is not None
    with sqlite3.connect(database) as db:
        db.execute(_FORGET_STORAGE)  # as before the record
    tree = node.data_dir / "blobs" / "sha256"
    shutil.move(tree, tmp_path / "set-aside")
    tree.write_text("not a directory")

    problem = " ".join(serve_refused(node.env).split())
    assert 'this node\'s blob store, storage = "filesystem", cannot be read' in problem, problem
    assert f"{tree}/{blob.digest.removeprefix('sha256:')[:2]}" in problem, problem
    assert "Not a directory" in problem, problem

    # The tree back, the node serves what was pushed, and has recorded its store.
    tree.unlink()
    shutil.move(tmp_path / "set-aside", tree)
    try:
        node.start()
        with httpx.Client(base_url=node.url, auth=node.access_key("nodes"), timeout=10) as client:
            assert client.head(f"/v2/nodes/app/blobs/{blob.digest}").status_code == 200
    finally:
        node.stop()
    with sqlite3.connect(database) as db:
        recorded = db.execute(
            "SELECT value FROM install_facts WHERE name = 'storage_location'"
        ).fetchone()
    assert recorded == ("filesystem",)
