"""The filesystem driver against the blob store contract, plus what only it promises."""

from __future__ import annotations

import asyncio
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from berth.storage.base import BlobStore
from berth.storage.filesystem import FilesystemBlobStore, ReadOnlyFilesystemBlobStore
from tests.unit.storage.contract import (
    BlobStoreContract,
    Scratch,
    digest_of,
    put,
    read_all,
    write_upload,
)

pytestmark = pytest.mark.anyio


class TestFilesystemBlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> BlobStore:
        return FilesystemBlobStore(tmp_path / "blobs")


async def test_blobs_sit_under_their_algorithm_and_hex_prefix(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    digest = await put(store, b"layer")
    hex_digest = digest.split(":", 1)[1]
    assert store.local_path(digest) == tmp_path / "sha256" / hex_digest[:2] / hex_digest


def _tree(root: Path) -> dict[str, int]:
    """Everything under `root` (itself too), by relative name, with its mode."""
    return {
        str(path.relative_to(root)): path.lstat().st_mode
        for path in [root, *sorted(root.rglob("*"))]
    }


async def test_a_store_opened_read_only_creates_nothing_and_refuses_every_write(
    tmp_path: Path,
) -> None:
    """What `berth data copy` reads the old install's blobs with: its directory is left as it
    was, even without the upload area (or the directory itself)."""
    store = FilesystemBlobStore(tmp_path / "blobs")
    digest = await put(store, b"an old layer")
    shutil.rmtree(store.uploads)
    before = _tree(tmp_path)
    opened = ReadOnlyFilesystemBlobStore(tmp_path / "blobs")
    assert await read_all(opened, digest) == b"an old layer"
    assert await opened.stat(digest) == len(b"an old layer")
    assert [found async for found, _ in opened.list_blobs()] == [digest]
    assert await opened.list_uploads() == []
    await opened.check()
    writes = [
        opened.check_writable(),
        opened.open_upload(uuid.uuid4().hex, 0),
        opened.commit_upload(uuid.uuid4().hex, digest),
        opened.delete_upload(uuid.uuid4().hex),
        opened.quarantine(digest),
        opened.delete(digest),
        opened.delete_many([digest]),
    ]
    for write in writes:
        with pytest.raises(OSError, match="opened read-only"):
            await write
    with pytest.raises(OSError, match="opened read-only"):
        async with opened.upload_exclusive(uuid.uuid4().hex):
            pass
    assert _tree(tmp_path) == before

    nowhere = ReadOnlyFilesystemBlobStore(tmp_path / "nowhere")
    assert await nowhere.stat(digest) is None
    assert not (tmp_path / "nowhere").exists()


async def test_the_write_check_finds_an_upload_area_that_takes_no_file(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    await store.check_writable()
    shutil.rmtree(store.uploads)
    store.uploads.write_bytes(b"")  # a file in its place: root is refused it too
    with pytest.raises(NotADirectoryError):
        await store.check_writable()
    assert sorted(os.listdir(tmp_path)) == ["_uploads"]


async def test_no_upload_starts_in_another_directory_found_where_the_blobs_were(
    tmp_path: Path,
) -> None:
    """A blob mount gone leaves the empty directory it was mounted on: the upload area is made
    again only in the blob directory the store opened, never there, where what a push stored
    would be hidden once the mount is back."""
    store = FilesystemBlobStore(tmp_path / "blobs")
    (tmp_path / "blobs").rename(tmp_path / "mounted")
    (tmp_path / "blobs").mkdir()
    with pytest.raises(FileNotFoundError):
        await store.open_upload(uuid.uuid4().hex, 0)
    assert os.listdir(tmp_path / "blobs") == []


async def test_a_crash_mid_commit_leaves_files_that_go_with_their_upload(tmp_path: Path) -> None:
    """`{id}.commit.{token}` and `{id}.copy` (left by a process that died) are listed as the
    upload and removed with it."""
    store = FilesystemBlobStore(tmp_path)
    upload_id = (await write_upload(store, b"data")).id
    for suffix in (".commit.0123456789abcdef", ".commit.fedcba9876543210", ".copy"):
        (store.uploads / f"{upload_id}{suffix}").write_bytes(b"left over")
    (store.uploads / "not-an-upload.tmp").write_bytes(b"someone else's")
    assert [found for found, _ in await store.list_uploads()] == [upload_id]
    await store.delete_upload(upload_id)
    assert sorted(os.listdir(store.uploads)) == ["not-an-upload.tmp"]


async def _seconds_to_remove_uploads(store: FilesystemBlobStore, count: int) -> float:
    ids = [(await write_upload(store, b"data")).id for _ in range(count)]
    started = time.perf_counter()
    for upload_id in ids:
        await store.delete_upload(upload_id)
    return time.perf_counter() - started


async def test_removing_an_upload_costs_the_same_amid_many_abandoned_ones(tmp_path: Path) -> None:
    """Every finished push removes its upload's scratch files; the directory also holds every
    abandoned upload until it expires (a project's max_open_uploads, times the projects), and
    that must not slow every push down (listing it took 15 ms a push amid 10,000 files)."""
    store = FilesystemBlobStore(tmp_path)
    # The best of three each: one slice of a loaded machine's time must not decide it.
    alone = min([await _seconds_to_remove_uploads(store, 100) for _ in range(3)])
    for _ in range(20_000):
        (store.uploads / uuid.uuid4().hex).write_bytes(b"")
    amid_abandoned = min([await _seconds_to_remove_uploads(store, 100) for _ in range(3)])
    assert amid_abandoned < 5 * alone + 0.05, (alone, amid_abandoned)
    assert len(os.listdir(store.uploads)) == 20_000  # only what each removal named went


async def test_a_damaged_blob_is_kept_aside_for_inspection(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    digest = await put(store, b"bytes that rotted")
    await store.quarantine(digest)
    assert (store.damaged / digest.replace(":", "-")).read_bytes() == b"bytes that rotted"
    assert digest == digest_of(b"bytes that rotted")


def _writes(data: bytes, seed: int) -> list[list[list[bytes]]]:
    """`data` cut as pushes cut it: PATCHes, each a few write calls, each call a list of the
    body's chunks, of sizes that leave every offset unaligned somewhere."""
    rng = random.Random(seed)
    sizes = [1, 511, 4095, 4096, 4097, 65_536, 262_144, 1_000_003, 3 * 1024 * 1024]
    patches: list[list[list[bytes]]] = []
    position = 0
    while position < len(data):
        patch: list[list[bytes]] = []
        for _ in range(rng.randint(1, 3)):
            parts: list[bytes] = []
            for _ in range(rng.randint(1, 12)):
                size = rng.choice(sizes)
                parts.append(data[position : position + size])
                position += size
            patch.append([part for part in parts if part])
        patches.append(patch)
    return patches


def _scratch_roots(tmp_path: Path) -> list[Path]:
    """The test's directory, and one on tmpfs (which has O_DIRECT since Linux 6.6) where the
    machine has one."""
    roots = [tmp_path / "disk"]
    if Path("/dev/shm").is_dir():
        roots.append(Path(tempfile.mkdtemp(dir="/dev/shm", prefix="berth-test-")))
    return roots


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_large_writes_at_any_offset_store_exactly_the_bytes(
    tmp_path: Path, seed: int
) -> None:
    """Large writes skip the page cache in aligned blocks; whatever the offsets and sizes of
    the chunks, PATCHes and write calls, the upload holds exactly the bytes sent, on a disk
    and on tmpfs alike."""
    data = os.urandom(14 * 1024 * 1024 + 4321)
    for root in _scratch_roots(tmp_path):
        try:
            store = FilesystemBlobStore(root)
            scratch = Scratch(store)
            for patch in _writes(data, seed):
                writer = await store.open_upload(scratch.id, scratch.offset)
                for parts in patch:
                    await writer.write(parts)
                await writer.close()
                scratch.offset += sum(len(part) for parts in patch for part in parts)
            assert scratch.offset == len(data)
            assert await scratch.read() == data
            await scratch.commit(digest_of(data))
            assert await read_all(store, digest_of(data)) == data
        finally:
            shutil.rmtree(root, ignore_errors=True)


_WRITE_WITHOUT_DIRECT_IO = """
import asyncio, os, sys
from pathlib import Path
from berth.storage.filesystem import FilesystemBlobStore, ReadOnlyFilesystemBlobStore
from tests.unit.storage.contract import Scratch, digest_of, read_all

root = Path(sys.argv[1])
try:
    os.close(os.open(root / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    print("this kernel's ramfs takes O_DIRECT: no fallback to test")
    sys.exit(77)
except OSError:
    pass

async def main() -> None:
    store = FilesystemBlobStore(root / "blobs")
    data = os.urandom(7 * 1024 * 1024 + 4321)
    scratch = Scratch(store)
    # Large batches (past the page cache where O_DIRECT exists) at unaligned offsets.
    for start, end in [(0, 1536 * 1024 + 3), (1536 * 1024 + 3, 6 << 20), (6 << 20, len(data))]:
        writer = await store.open_upload(scratch.id, scratch.offset)
        chunks = range(start, end, 256 * 1024)
        await writer.write([data[at : min(at + 256 * 1024, end)] for at in chunks])
        await writer.close()
        scratch.offset = end
    assert await scratch.read() == data
    await scratch.commit(digest_of(data))
    assert await read_all(store, digest_of(data)) == data
    print("stored exactly")

asyncio.run(main())
"""


async def test_large_writes_on_a_filesystem_without_o_direct_store_exactly_the_bytes(
    tmp_path: Path,
) -> None:
    """Where the filesystem refuses O_DIRECT (ramfs; tmpfs before Linux 6.6), large writes
    are ordinary ones and the upload holds exactly the bytes sent. Run in a mount namespace
    of its own, where a ramfs can be mounted without touching the machine's mounts."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    root = tmp_path / "ramfs"
    root.mkdir()
    mounted = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            'mount -t ramfs none "$1" || exit 77; exec "$2" -c "$3" "$1"',
            "sh",
            str(root),
            sys.executable,
            _WRITE_WITHOUT_DIRECT_IO,
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=120,
    )
    if mounted.returncode == 77 or "unshare failed" in mounted.stderr:
        pytest.skip(f"no ramfs without O_DIRECT here: {(mounted.stdout + mounted.stderr).strip()}")
    assert mounted.returncode == 0, mounted.stdout + mounted.stderr
    assert mounted.stdout.strip() == "stored exactly"


def _resident_bytes(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


def _has_direct_io(directory: Path) -> bool:
    try:
        os.close(os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    return True


needs_fincore = pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore")


@needs_fincore
async def test_a_large_upload_is_written_past_the_page_cache(tmp_path: Path) -> None:
    """A 32 MiB push, written as the upload service writes (batches of the body's chunks),
    leaves at most a few pages of itself in the page cache: the kernel's copy into it was the
    largest part of a large push's CPU."""
    if not _has_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} has no O_DIRECT")
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = os.urandom(32 * 1024 * 1024 + 100)
    chunk, batch = 256 * 1024, 4 * 1024 * 1024
    writer = await store.open_upload((scratch := Scratch(store)).id, 0)
    for start in range(0, len(data), batch):
        piece = data[start : start + batch]
        await writer.write([piece[at : at + chunk] for at in range(0, len(piece), chunk)])
    await writer.close()
    scratch.offset = len(data)
    assert _resident_bytes(store.uploads / scratch.id) <= 64 * 1024
    assert await scratch.read() == data


def _share_in_large_folios(path: Path) -> float:
    """The share of a file's cached pages that belong to large folios (compound pages), read
    from /proc/kpageflags through a mapping of the file; -1 where this process may not read
    page frame numbers (not root)."""
    size = path.stat().st_size
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as view:
        for offset in range(0, size, mmap.PAGESIZE):
            view[offset]  # map each (already cached) page into this process
        start = next(
            int(line.split("-", 1)[0], 16)
            for line in Path("/proc/self/maps").read_text().splitlines()
            if line.endswith(" " + str(path.resolve()))
        )
        pages = size // mmap.PAGESIZE
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(start // mmap.PAGESIZE * 8)
            entries = struct.unpack(f"<{pages}Q", pagemap.read(pages * 8))
    frames = [entry & ((1 << 55) - 1) for entry in entries if entry >> 63]
    if not frames or not any(frames):
        return -1.0
    compound = 0
    with open("/proc/kpageflags", "rb") as flags:
        for frame in frames:
            flags.seek(frame * 8)
            (bits,) = struct.unpack("<Q", flags.read(8))
            compound += bool(bits & (1 << 15 | 1 << 16))  # KPF_COMPOUND_HEAD, _TAIL
    return compound / len(frames)


@needs_fincore
async def test_a_committed_blob_is_read_back_into_the_page_cache_in_large_folios(
    tmp_path: Path,
) -> None:
    """Once committed, a blob written past the page cache is read back into it by the disk in
    the background, so a pull right after the push is served from memory; and in large folios,
    as a buffered write leaves it (POSIX_FADV_WILLNEED leaves single pages: every later read of
    the blob is slower)."""
    if not _has_direct_io(tmp_path):
        pytest.skip(f"{tmp_path} has no O_DIRECT")
    if not os.access("/proc/kpageflags", os.R_OK):
        pytest.skip("reading page flags needs root")
    written = tmp_path / "written-buffered"
    written.write_bytes(os.urandom(8 * 1024 * 1024))
    if _share_in_large_folios(written) < 0.5:
        pytest.skip(f"{tmp_path}'s filesystem caches files in single pages")
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = os.urandom(24 * 1024 * 1024)
    scratch = Scratch(store)
    writer = await store.open_upload(scratch.id, 0)
    await writer.write([data[at : at + 4 * 1024 * 1024] for at in range(0, len(data), 4 << 20)])
    await writer.close()
    scratch.offset = len(data)
    assert _resident_bytes(store.uploads / scratch.id) <= 64 * 1024
    await scratch.commit(digest_of(data))
    blob = store.local_path(digest_of(data))
    assert blob is not None
    deadline = time.monotonic() + 20
    while _resident_bytes(blob) < len(data):
        assert time.monotonic() < deadline, f"{_resident_bytes(blob)} of {len(data)} bytes read"
        await asyncio.sleep(0.05)
    assert _share_in_large_folios(blob) >= 0.9
    assert blob.read_bytes() == data


async def test_small_writes_still_go_through_the_page_cache(tmp_path: Path) -> None:
    """Manifests and small layers (the bulk of pushes by count) are written as before: one
    write of 1 MiB less a byte is never split into aligned blocks."""
    store = FilesystemBlobStore(tmp_path)
    data = os.urandom(1024 * 1024 - 1)
    scratch = await write_upload(store, data, chunk=len(data))
    assert await scratch.read() == data
    if shutil.which("fincore") and _has_direct_io(tmp_path):
        assert _resident_bytes(store.uploads / scratch.id) == len(data) + 1  # whole pages
