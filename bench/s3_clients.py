"""Which async S3 client the S3 blob store is built on: aiobotocore against obstore, on one
256 MiB blob written and read back on a SeaweedFS on loopback (as the tests run it).

For each client, the requests the driver makes for an upload and a pull:

- write: the blob as 16 MiB pieces, one PUT each (what `S3BlobStore` writes for an upload);
- commit: the pieces made into the blob. aiobotocore copies each piece server-side
  (UploadPartCopy, what the driver does); obstore has no UploadPartCopy, so its commit streams
  the pieces back through the client into a multipart PUT;
- read: one streaming GET of the whole blob, in 1 MiB chunks.

The aiobotocore side runs through `S3BlobStore` itself; the obstore side makes the same
requests with obstore (there is no obstore driver). Runs alternate, the median of `--runs`.

    .venv/bin/uv pip install obstore   # not a project dependency: only for this comparison
    .venv/bin/python bench/s3_clients.py [--runs 3] [--size-mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from berth.storage.s3 import S3BlobStore  # noqa: E402
from berth.storage.s3_pieces import PIECE_BYTES  # noqa: E402
from tests.s3 import BUCKET, SeaweedFS, seaweedfs_server  # noqa: E402

MiB = 1024 * 1024
WRITE_BYTES = 4 * MiB  # the upload service's writes


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def with_driver(server: SeaweedFS, data: bytes, digest: str) -> dict[str, float]:
    store = S3BlobStore(server.location())
    upload_id = os.urandom(8).hex()
    try:

        async def write() -> None:
            writer = await store.open_upload(upload_id, 0)
            for start in range(0, len(data), WRITE_BYTES):
                await writer.write([data[start : start + WRITE_BYTES]])
            await writer.close()

        async def read() -> None:
            hasher = hashlib.sha256()
            async for chunk in store.read(digest):
                hasher.update(chunk)
            assert "sha256:" + hasher.hexdigest() == digest

        return {
            "write": await timed(write),
            "commit": await timed(lambda: store.commit_upload(upload_id, digest)),
            "read": await timed(read),
        }
    finally:
        await store.close()


async def with_obstore(server: SeaweedFS, data: bytes, digest: str) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=server.endpoint,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
        prefix=f"obstore-{os.urandom(8).hex()}",
    )
    pieces = [f"uploads/u/{start:020d}" for start in range(0, len(data), PIECE_BYTES)]

    async def write() -> None:
        for key, start in zip(pieces, range(0, len(data), PIECE_BYTES), strict=True):
            await obstore.put_async(store, key, data[start : start + PIECE_BYTES])

    async def commit() -> None:
        async def streamed() -> AsyncIterator[bytes]:
            for key in pieces:
                answer = await obstore.get_async(store, key)
                async for chunk in answer.stream(min_chunk_size=MiB):
                    yield bytes(chunk)

        await obstore.put_async(store, "blob", streamed(), chunk_size=PIECE_BYTES)

    async def read() -> None:
        hasher = hashlib.sha256()
        answer = await obstore.get_async(store, "blob")
        async for chunk in answer.stream(min_chunk_size=MiB):
            hasher.update(chunk)
        assert "sha256:" + hasher.hexdigest() == digest

    return {"write": await timed(write), "commit": await timed(commit), "read": await timed(read)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    arguments = parser.parse_args()
    data = os.urandom(arguments.size_mib * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    clients = {"aiobotocore (S3BlobStore)": with_driver, "obstore (same requests)": with_obstore}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in clients}
    with tempfile.TemporaryDirectory() as directory, seaweedfs_server(Path(directory)) as server:
        for _ in range(arguments.runs):
            for name, measure in clients.items():
                for step, seconds in asyncio.run(measure(server, data, digest)).items():
                    times[name].setdefault(step, []).append(seconds)
    size_mb = len(data) / 1e6
    print(f"{arguments.size_mib} MiB blob, median of {arguments.runs} runs (MB = 10^6 bytes)")
    print("| client | write (pieces) | commit | read (streamed GET) |")
    print("| --- | ---: | ---: | ---: |")
    for name, steps in times.items():
        write, commit, read = (statistics.median(steps[s]) for s in ("write", "commit", "read"))
        print(
            f"| {name} | {size_mb / write:.0f} MB/s | {commit:.2f} s | {size_mb / read:.0f} MB/s |"
        )


if __name__ == "__main__":
    main()
