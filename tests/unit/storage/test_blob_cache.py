"""The node-local blob cache of the S3 store (`berth.storage.blob_cache`) on a real directory:
which copies eviction picks, how a copy becomes visible (whole and matching its digest, or not
at all), and the sizes `s3_cache_size` accepts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import time
from pathlib import Path

import pytest

from berth.config_loading import SettingsError, load_settings
from berth.storage.blob_cache import (
    EVICTION_GRACE_SECONDS,
    BlobCache,
    CachedCopy,
    CacheFill,
    FillFeed,
    copies_to_evict,
)

MiB = 1024 * 1024
NOW = 1_000_000.0


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_eviction_removes_the_least_recently_used_until_the_rest_fit() -> None:
    copies = [
        CachedCopy("recent", 4 * MiB, NOW - 100),
        CachedCopy("oldest", 4 * MiB, NOW - 900),
        CachedCopy("older", 4 * MiB, NOW - 500),
    ]
    assert [c.name for c in copies_to_evict(copies, 12 * MiB, NOW)] == []
    assert [c.name for c in copies_to_evict(copies, 10 * MiB, NOW)] == ["oldest"]
    assert [c.name for c in copies_to_evict(copies, 5 * MiB, NOW)] == ["oldest", "older"]
    assert [c.name for c in copies_to_evict(copies, 0, NOW)] == ["oldest", "older", "recent"]


def test_eviction_spares_copies_used_within_the_grace_period_even_over_the_bound() -> None:
    copies = [
        CachedCopy("in-use", 8 * MiB, NOW - EVICTION_GRACE_SECONDS / 2),
        CachedCopy("idle", 1 * MiB, NOW - EVICTION_GRACE_SECONDS * 2),
    ]
    # Over by 5 MiB: only the idle copy may go, which leaves the cache over its bound.
    assert [c.name for c in copies_to_evict(copies, 4 * MiB, NOW)] == ["idle"]


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_root: Path) -> BlobCache:
    """A cache far larger than what the tests put in it."""
    return BlobCache(cache_root, 64 * MiB)


def fill(cache: BlobCache, data: bytes, digest: str | None = None) -> bool:
    started = cache.start_fill(digest or digest_of(data), len(data))
    assert started is not None
    for first in range(0, len(data), 64 * 1024):
        started.add(data[first : first + 64 * 1024])
    return started.finish()


def visible(cache: BlobCache) -> list[str]:
    return sorted(os.listdir(cache.root / "blobs"))


def scratch(cache: BlobCache) -> list[str]:
    return sorted(os.listdir(cache.root / "tmp"))


def test_a_whole_matching_copy_becomes_visible_and_is_found_at_its_size(cache: BlobCache) -> None:
    data = os.urandom(300_000)
    digest = digest_of(data)
    assert cache.hit(digest, len(data)) is None
    assert fill(cache, data)
    path = cache.hit(digest, len(data))
    assert path is not None and path.read_bytes() == data
    assert scratch(cache) == []  # the lock and the temporary file are gone
    assert cache.start_fill(digest, len(data)) is None  # there already
    assert cache.hit(digest, len(data) + 1) is None  # recorded at another size: not this copy


def test_a_copy_held_is_answered_without_counting_as_a_use(cache: BlobCache) -> None:
    """What a conditional pull asks (is the blob here, whole?): neither the copy's recency
    (eviction order) nor a copy of another size is touched, as a pull sent from it would."""
    data = os.urandom(10_000)
    digest = digest_of(data)
    assert not cache.holds(digest, len(data))
    assert fill(cache, data)
    long_ago = time.time() - 600
    os.utime(cache.copy_path(digest), (long_ago, long_ago))
    assert cache.holds(digest, len(data))
    assert not cache.holds(digest, len(data) + 1)
    assert cache.copy_path(digest).stat().st_mtime == long_ago
    assert cache.hit(digest, len(data)) is not None


def test_bytes_that_do_not_match_the_digest_never_become_a_copy(cache: BlobCache) -> None:
    data = os.urandom(200_000)
    damaged = bytes(len(data))
    assert not fill(cache, damaged, digest_of(data))
    short = cache.start_fill(digest_of(data), len(data))
    assert short is not None
    short.add(data[:1000])  # the store's object ended early
    assert not short.finish()
    assert visible(cache) == [] and scratch(cache) == []
    assert cache.hit(digest_of(data), len(data)) is None


def test_only_a_whole_read_of_other_bytes_is_called_damaged(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", 64 * MiB)
    data = os.urandom(200_000)
    for stored in (bytes(len(data)), data[:1000], data + b"x"):
        damaged = cache.start_fill(digest_of(data), len(data))
        assert damaged is not None
        damaged.add(stored)
        assert not damaged.finish() and damaged.damaged
    matching = cache.start_fill(digest_of(data), len(data))
    assert matching is not None
    matching.add(data)
    assert matching.finish() and not matching.damaged


def written_not_finished(cache: BlobCache, data: bytes) -> tuple[CacheFill, Path]:
    """A fill that took every chunk of `data` (written to disk) and is not finished yet, and
    the file its copy is in."""
    filling = cache.start_fill(digest_of(data), len(data))
    assert filling is not None
    filling.add_all([data[: 2 * MiB], data[2 * MiB :]])
    (part,) = (cache.root / "tmp").glob("*.part")
    return filling, part


def test_the_copy_is_checked_as_written_to_disk(cache: BlobCache) -> None:
    """The hash is of the file that will be sent later, not of the bytes handed over: a copy
    changed on disk between the download's last chunk and `finish` is not kept."""
    data = os.urandom(3 * MiB + 5)
    digest = digest_of(data)
    changed, part = written_not_finished(cache, data)
    with part.open("r+b") as written:
        written.seek(MiB)
        written.write(b"\x00" * 16)
    assert not changed.finish() and changed.damaged
    assert visible(cache) == [] and scratch(cache) == []
    assert fill(cache, data)  # the same bytes written faithfully are kept
    path = cache.hit(digest, len(data))
    assert path is not None and path.read_bytes() == data


def test_a_copy_cut_short_on_disk_is_dropped_and_not_called_damaged(cache: BlobCache) -> None:
    """The copy lost its end between the last chunk and `finish` (it cannot be read back
    whole for its hash): no copy is kept and no scratch file left, and the store's bytes,
    which the client received whole, are not judged damaged."""
    data = os.urandom(3 * MiB + 5)
    cut, part = written_not_finished(cache, data)
    os.truncate(part, MiB)
    assert not cut.finish() and not cut.damaged
    assert visible(cache) == [] and scratch(cache) == []
    assert fill(cache, data)


def test_a_disk_that_refuses_the_copy_still_tells_damaged_bytes_from_whole(
    tmp_path: Path,
) -> None:
    cache = BlobCache(tmp_path / "cache", 64 * MiB)
    data = os.urandom(300_000)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    fills = []
    # Files may not grow past 100 kB: the kernel refuses the writes (EFBIG), as a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limit[1]))
    try:
        for stored in (data, bytes(len(data))):
            filling = cache.start_fill(digest_of(data), len(data))
            assert filling is not None
            filling.add_all([stored[:150_000], stored[150_000:]])
            fills.append((filling, filling.finish()))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    (whole, whole_kept), (damaged, damaged_kept) = fills
    assert not whole_kept and not whole.damaged  # the copy is lost, the bytes were right
    assert not damaged_kept and damaged.damaged
    assert visible(cache) == [] and scratch(cache) == []


def test_a_copy_that_fails_and_cannot_be_read_back_is_dropped_without_judging_the_store(
    tmp_path: Path,
) -> None:
    """The disk refuses a write after the copy lost what it had taken, so the bytes written
    before cannot be hashed again: the copy is dropped, and the store's blob is called damaged
    only on what was still known (its size), never on a hash of part of it (which would set a
    good blob aside in the store, for the next pulls, over a fault of this node's disk)."""
    cache = BlobCache(tmp_path / "cache", 64 * MiB)
    data = os.urandom(3 * MiB)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    outcomes = []
    # (what the store sent, what the fill should call it): the blob, other bytes of its size
    # (not judged: nothing checked them), and an object cut short (its size tells).
    cases = [(data, False), (bytes(len(data)), False), (data[: 2 * MiB], True)]
    for stored, _ in cases:
        filling = cache.start_fill(digest_of(data), len(data))
        assert filling is not None
        (part,) = (cache.root / "tmp").glob("*.part")
        # Files may not grow past 1 MiB: the first MiB is written whole, and the next write,
        # which starts at the limit, is refused (EFBIG), as a full disk refuses it.
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, limit[1]))
        try:
            filling.add_all([stored[:MiB]])
            os.truncate(part, 1000)  # the copy loses its end (its disk, an operator)
            filling.add_all([stored[MiB:]])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        outcomes.append((filling.finish(), filling.damaged))
        assert visible(cache) == [] and scratch(cache) == []
    assert outcomes == [(False, damaged) for _, damaged in cases]
    assert fill(cache, data)  # the disk is fine again: the same blob is kept whole
    path = cache.hit(digest_of(data), len(data))
    assert path is not None and path.read_bytes() == data


async def feed(cache: BlobCache, data: bytes, chunk: int, stop_at: int | None = None) -> bool:
    """Chunks of a download fed to a fill as the S3 store does; stopped at `stop_at` bytes
    (the client gone) if given."""
    started = cache.start_fill(digest_of(data), len(data))
    assert started is not None
    fed = FillFeed(started)
    for first in range(0, len(data), chunk):
        if stop_at is not None and first >= stop_at:
            fed.abandon()
            return False
        await fed.add(data[first : first + chunk])
    await fed.drain()
    return await asyncio.to_thread(started.finish)


@pytest.mark.anyio
async def test_chunks_fed_in_batches_make_the_whole_copy(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", 64 * MiB)
    # Batches of whole chunks and a tail; a chunk as large as the backlog.
    for data, chunk in ((os.urandom(5 * MiB + 12_345), 250_000), (os.urandom(9 * MiB), 4 * MiB)):
        assert await feed(cache, data, chunk)
        path = cache.hit(digest_of(data), len(data))
        assert path is not None and path.read_bytes() == data
    assert scratch(cache) == []


@pytest.mark.anyio
async def test_a_feed_stopped_midway_leaves_no_copy(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", 64 * MiB)
    data = os.urandom(6 * MiB)
    assert not await feed(cache, data, 250_000, stop_at=3 * MiB)
    for _ in range(100):  # the batch in the thread finishes, then the fill is dropped
        if not scratch(cache):
            break
        await asyncio.sleep(0.01)
    assert visible(cache) == [] and scratch(cache) == []
    assert await feed(cache, data, 250_000)  # the digest can be filled again


def test_an_abandoned_fill_leaves_nothing_and_one_digest_fills_once_at_a_time(
    cache: BlobCache,
) -> None:
    data = os.urandom(100_000)
    first = cache.start_fill(digest_of(data), len(data))
    assert first is not None
    first.add(data[:50_000])
    assert cache.start_fill(digest_of(data), len(data)) is None  # being written
    # Another process of the node (its own cache object, the same directory) waits too.
    assert BlobCache(cache.root, 64 * MiB).start_fill(digest_of(data), len(data)) is None
    assert [name for name in scratch(cache) if name.endswith(".part")]
    first.abandon()
    assert visible(cache) == [] and scratch(cache) == []
    assert fill(cache, data)


def test_a_blob_larger_than_the_bound_is_not_kept(cache_root: Path) -> None:
    cache = BlobCache(cache_root, 2 * MiB)
    assert cache.start_fill(digest_of(b"x"), 2 * MiB + 1) is None


def test_sweep_evicts_the_least_recently_used_and_removes_what_a_crash_left(
    cache_root: Path,
) -> None:
    cache = BlobCache(cache_root, 3 * MiB)
    blobs = [os.urandom(MiB) for _ in range(4)]
    for age, data in zip([500, 400, 300, 200], blobs, strict=True):
        assert fill(cache, data)
        path = cache.copy_path(digest_of(data))
        os.utime(path, (time.time() - age, time.time() - age))
    # A hit makes the oldest the most recently used.
    assert cache.hit(digest_of(blobs[0]), MiB) is not None
    # A temporary file whose writer died (no lock held).
    (cache.root / "tmp" / f"sha256-{'ab' * 32}.x1y2.part").write_bytes(b"partial")
    assert cache.sweep() == 1
    assert cache.hit(digest_of(blobs[1]), MiB) is None  # the least recently used went
    assert all(cache.hit(digest_of(d), MiB) for d in (blobs[0], blobs[2], blobs[3]))
    assert scratch(cache) == []
    assert cache.stored_bytes() == 3 * MiB


def test_a_new_cache_over_a_smaller_bound_sweeps_at_start(cache_root: Path) -> None:
    cache = BlobCache(cache_root, 8 * MiB)
    for data in (os.urandom(MiB), os.urandom(MiB)):
        assert fill(cache, data)
        old = time.time() - 600
        os.utime(cache.copy_path(digest_of(data)), (old, old))
    (cache.root / "tmp" / f"sha256-{'cd' * 32}.z9.part").write_bytes(b"partial")
    restarted = BlobCache(cache_root, MiB)
    assert restarted.stored_bytes() == MiB and scratch(restarted) == []


@pytest.mark.parametrize(
    ("given", "bound"),
    [("10GiB", 10 * 1024**3), ("500MB", 500 * 10**6), ("2097152", 2 * MiB), ("1.5 GiB", 3 * 2**29)],
)
def test_cache_sizes_are_read_with_units(given: str, bound: int, tmp_path: Path) -> None:
    settings = load_settings(
        storage="s3", s3_bucket="b", s3_cache_dir=tmp_path, s3_cache_size=given
    )
    assert settings.s3_cache_bound == bound
    # Passed to worker processes as a plain number of bytes, read back the same.
    assert settings.to_environ()["BERTH_S3_CACHE_SIZE"] == str(bound)


def test_cache_settings_are_refused_where_they_would_do_nothing(tmp_path: Path) -> None:
    assert load_settings(storage="s3", s3_bucket="b", s3_cache_dir=tmp_path).s3_cache_bound == (
        10 * 1024**3
    )
    with pytest.raises(SettingsError, match=r's3-cache-dir.*needs storage = "s3"'):
        load_settings(s3_cache_dir=tmp_path)
    with pytest.raises(SettingsError, match="s3_cache_dir, which is unset"):
        load_settings(storage="s3", s3_bucket="b", s3_cache_size="1GiB")
    with pytest.raises(SettingsError, match="is not a size"):
        load_settings(storage="s3", s3_bucket="b", s3_cache_dir=tmp_path, s3_cache_size="big")
    with pytest.raises(SettingsError, match="must be at least 1048576"):
        load_settings(storage="s3", s3_bucket="b", s3_cache_dir=tmp_path, s3_cache_size="1KiB")


def test_a_cache_directory_gone_while_serving_costs_the_copy_not_the_pull(
    cache: BlobCache,
) -> None:
    data = os.urandom(10_000)
    filling = cache.start_fill(digest_of(data), len(data))
    assert filling is not None
    shutil.rmtree(cache.root)  # an operator emptying it the wrong way
    filling.add(data)
    assert not filling.finish()  # no copy, and no error for the download
    assert cache.start_fill(digest_of(data), len(data)) is None
    assert cache.hit(digest_of(data), len(data)) is None


def test_a_cache_directory_that_cannot_be_made_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError, match=r"cannot use s3_cache_dir .*file/cache"):
        BlobCache(tmp_path / "file" / "cache", MiB)
