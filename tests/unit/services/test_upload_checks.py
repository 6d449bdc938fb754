"""What a push's checks tell when the bytes do not add up: a body of another length than its
Content-Length, and a digest that disagrees, told apart by whose bytes they are."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from sqlalchemy import update

from berth.domain.errors import BlobUploadInvalid, DigestInvalid
from berth.domain.hash_state import resumable_sha256
from berth.metadata.database import Database
from berth.metadata.tables import uploads as uploads_table
from berth.services.uploads import Uploads
from berth.storage.filesystem import FilesystemBlobStore
from tests.unit.services.test_upload_bodies import chunked
from tests.unit.services.test_uploads_nodes import REPO, MiB, digest_of, read_blob, run


@pytest.mark.parametrize("received", [MiB - 1, MiB + 1], ids=["cut-short", "run-long"])
def test_a_body_of_another_length_than_its_content_length_stores_nothing(
    received: int, database_url: str, tmp_path: Path
) -> None:
    """The chunk is refused with BLOB_UPLOAD_INVALID, the upload stays where it was, and the
    chunk sent again (whole) completes the blob byte-exact."""
    first, second = os.urandom(MiB), os.urandom(MiB)

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        node = Uploads(db, store)
        upload = await node.start(REPO, "app")
        upload = await node.append(upload, chunked(first, [65_536]), None, MiB)
        odd = (second + b"x")[:received]
        with pytest.raises(BlobUploadInvalid, match=f"held {received} bytes.*said {MiB}"):
            await node.append(upload, chunked(odd, [65_536]), None, MiB)
        assert (await node.get(REPO, "app", upload.id)).offset == MiB
        digest = await node.complete(
            REPO, upload, digest_of(first + second), chunked(second, [65_536]), None, MiB
        )
        assert await read_blob(store, digest) == first + second

    run(database_url, tmp_path / "blobs", scenario)


def _state_of(data: bytes) -> tuple[bytes, str]:
    assert resumable_sha256 is not None
    hasher = resumable_sha256()
    hasher.update(data)
    return hasher.state(), "sha256:" + hasher.copy().hexdigest()


def test_an_intact_push_whose_running_hash_went_wrong_is_stored_and_logged(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hash state saved with the offset is not that of the stored bytes (here: another
    chunk's, written into the row; a running hash gone wrong for any reason looks the same):
    the node finishing the upload hashes what it stored before refusing, finds the client's
    digest, stores the blob byte-exact and logs the disagreement as an error."""
    first, last = os.urandom(MiB), os.urandom(MiB // 2)
    whole = first + last

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        upload = await Uploads(db, store).start(REPO, "app")
        upload = await Uploads(db, store).append(upload, chunked(first, [65_536]), None)
        wrong_state, wrong_digest = _state_of(os.urandom(MiB))
        async with db.write() as conn:
            await conn.execute(
                update(uploads_table)
                .where(uploads_table.c.id == upload.id)
                .values(hash_state=wrong_state, digest_at_offset=wrong_digest)
            )
        other_node = Uploads(db, store)
        upload = await other_node.get(REPO, "app", upload.id)
        with caplog.at_level(logging.ERROR, logger="berth.uploads"):
            digest = await other_node.complete(
                REPO, upload, digest_of(whole), chunked(last, [65_536]), None
            )
        assert digest == digest_of(whole)
        assert await read_blob(store, digest) == whole
        assert f"upload {upload.id}: its {len(whole)} stored bytes hash to the client's" in (
            caplog.text
        )

    run(database_url, tmp_path / "blobs", scenario)


def test_a_client_digest_of_other_bytes_is_refused_saying_how_many_bytes_arrived(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bytes stored are the bytes received and hash to something else than the client
    says: DIGEST_INVALID naming the size received, nothing stored, and the log says whose
    bytes they were (no error: the client's)."""
    data = os.urandom(MiB + 5)

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        node = Uploads(db, store)
        upload = await node.start(REPO, "app")
        claimed = digest_of(b"other bytes")
        refused = f"uploaded content \\({len(data)} bytes\\)"
        with (
            caplog.at_level(logging.INFO, logger="berth.uploads"),
            pytest.raises(DigestInvalid, match=refused),
        ):
            await node.complete(REPO, upload, claimed, chunked(data, [65_536]), None)
        assert f"the {len(data)} bytes received hash to {digest_of(data)}, not to" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [name async for name in store.iter_digests()] == []

    run(database_url, tmp_path / "blobs", scenario)
