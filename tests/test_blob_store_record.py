"""What `berth serve` does with the database's record of the install's blob store on the
filesystem, where the record ("filesystem") cannot tell one node's blob directory from
another's: a node looks for some of the database's blobs in its directory at every start,
and one that holds none of them (another data directory, a shared mount not mounted) is
refused; a store it cannot read meanwhile is refused as any unusable store is, not a
traceback (on S3 too, where the blobs are looked for only before the store is recorded)."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from berth.config import Settings
from berth.data_location import sqlite_file
from tests.oci import Blob, random_blob
from tests.s3 import SeaweedFS
from tests.servers import FORGET_STORAGE_RECORD, BerthServer, PostgresCluster, serve_refused


def _pushed_then_record_forgotten(node: BerthServer, blob: Blob) -> Path:
    """`blob` pushed through `node`, then the record of the store cleared from its SQLite
    database (as an install from before the record has it); the database's file."""
    try:
        node.start()
        node.pushed("nodes", "app", blob)
    finally:
        node.stop()
    database = sqlite_file(Settings(data_dir=node.data_dir))
    assert database is not None
    with sqlite3.connect(database) as db:
        db.execute(FORGET_STORAGE_RECORD)
    return database


def _serves_and_records(node: BerthServer, blob: Blob, database: Path) -> str:
    """`node` started serves `blob`; the store record it then left in `database`."""
    try:
        node.start()
        with httpx.Client(base_url=node.url, auth=node.access_key("nodes"), timeout=10) as client:
            assert client.head(f"/v2/nodes/app/blobs/{blob.digest}").status_code == 200
    finally:
        node.stop()
    with sqlite3.connect(database) as db:
        (recorded,) = db.execute(
            "SELECT value FROM install_facts WHERE name = 'storage_location'"
        ).fetchone()
    return str(recorded)


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
    database = _pushed_then_record_forgotten(node, blob)
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
    assert _serves_and_records(node, blob, database) == "filesystem"


def test_an_s3_store_that_refuses_reading_its_blobs_while_they_are_looked_for_is_refused(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """As on the filesystem, on S3: a bucket that answers its check (HeadBucket) but refuses
    the reads of the blobs looked for (HeadObject; here a bucket policy denies them, as
    credentials that may not read would) is a refusal naming the store and the request
    refused, exit status 2 (a setting or a right to put right, not an outage that passes);
    once the reads are allowed, the node serves and records its store."""
    bucket = f"berth-unreadable-{uuid.uuid4().hex[:12]}"  # of its own: it gets a policy
    seaweedfs.create_bucket(bucket)
    settings = seaweedfs.settings_environ() | {"BERTH_S3_BUCKET": bucket}
    prefix = settings["BERTH_S3_PREFIX"]
    node = BerthServer(tmp_path / "node", extra_env=settings)
    blob = random_blob(1000)
    database = _pushed_then_record_forgotten(node, blob)
    seaweedfs.deny(bucket, ["s3:GetObject"], f"arn:aws:s3:::{bucket}/{prefix}/*")

    problem = " ".join(serve_refused(node.env).split())
    assert (
        f'this node\'s blob store, s3_bucket = "{bucket}" with s3_prefix = "{prefix}" '
        '(storage = "s3"), cannot be read to look for the blobs' in problem
    ), problem
    hexadecimal = blob.digest.removeprefix("sha256:")
    assert (
        f"the bucket {bucket!r} at {seaweedfs.endpoint} refused HeadObject of "
        f"'{prefix}/blobs/sha256/{hexadecimal[:2]}/{hexadecimal}' (403)" in problem
    ), problem

    seaweedfs.client().delete_bucket_policy(Bucket=bucket)
    assert _serves_and_records(node, blob, database) == f"s3://{bucket}/{prefix}/"


def test_a_filesystem_node_on_another_blob_directory_than_the_installs_is_refused(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """Two data directories on one PostgreSQL database, with the install's keys: the node on
    the one that holds none of the database's blobs would answer 404 for each of them, and
    keep what is pushed to it from the other. It is refused (exit status 2) naming its
    directory and a blob it lacks, and serves once its directory is the install's (a shared
    mount, here a link to the first node's), or once told that the blobs are lost for good."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    first = BerthServer(tmp_path / "first", url)
    nodes = [first]

    def node(name: str) -> BerthServer:
        made = BerthServer(tmp_path / name, url)
        shutil.copytree(first.data_dir / "keys", made.data_dir / "keys")  # the install's
        nodes.append(made)
        return made

    blob = random_blob(1000)
    try:
        first.start()
        key = first.pushed("nodes", "app", blob)

        second = node("second")
        problem = " ".join(serve_refused(second.env).split())
        blobs = second.data_dir / "blobs"
        assert f"this node's blob directory, {blobs}, holds none of the blobs" in problem, problem
        assert f"{blob.digest} among them" in problem, problem
        assert "Set data_dir to the install's data directory" in problem, problem
        assert f"create the file {blobs / '_blobs_lost'}" in problem, problem

        # As the refusal says: the install's blob directory, mounted at a path of its own.
        shutil.rmtree(blobs)
        blobs.symlink_to(first.data_dir / "blobs")
        second.start()
        with httpx.Client(base_url=second.url, auth=key, timeout=10) as client:
            assert client.head(f"/v2/nodes/app/blobs/{blob.digest}").status_code == 200

        # Or the blobs lost for good, said as the refusal says: serves without them.
        lost = node("lost")
        (lost.data_dir / "blobs").mkdir()
        (lost.data_dir / "blobs" / "_blobs_lost").touch()
        lost.start()
        with httpx.Client(base_url=lost.url, auth=key, timeout=10) as client:
            assert client.head(f"/v2/nodes/app/blobs/{blob.digest}").status_code == 404
        said = " ".join(lost.log_path.read_text().split())
        assert f"as {lost.data_dir / 'blobs' / '_blobs_lost'} says" in said, said
        assert "Remove that file once they are restored" in said, said
    finally:
        for started in nodes:
            started.stop()


def test_a_node_whose_lowest_blobs_were_deleted_by_hand_starts_on_the_others(
    tmp_path: Path,
) -> None:
    """The blobs the database names looked for at start-up are spread over the digests: an
    install whose lowest ten blobs were deleted by hand (the first files of a listing) still
    holds the rest, and its node starts again on them instead of being refused as if its
    directory held none."""
    low: list[Blob] = []
    high: list[Blob] = []
    while len(low) < 10 or len(high) < 3:  # digests below sha256:8…, and above it
        blob = random_blob(200)
        below = blob.digest < "sha256:8"
        if below and len(low) < 10:
            low.append(blob)
        elif not below and len(high) < 3:
            high.append(blob)
    node = BerthServer(tmp_path / "node")
    try:
        node.start()
        node.pushed("nodes", "app", *low, *high)
    finally:
        node.stop()
    tree = node.data_dir / "blobs" / "sha256"
    for blob in low:  # the ten lowest digests of the thirteen
        hexadecimal = blob.digest.removeprefix("sha256:")
        (tree / hexadecimal[:2] / hexadecimal).unlink()

    try:
        node.start()
        with httpx.Client(base_url=node.url, auth=node.access_key("nodes"), timeout=10) as client:
            for blob in high:
                assert client.head(f"/v2/nodes/app/blobs/{blob.digest}").status_code == 200
            assert client.head(f"/v2/nodes/app/blobs/{low[0].digest}").status_code == 404
    finally:
        node.stop()
