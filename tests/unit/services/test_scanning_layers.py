"""Package inventories of images built here from real packages (`berth.services.scanning`).

The layers are made in the test from the unmodified downloads in tests/fixtures/packages
(tests/fixtures/osv/README.md says where each came from): Debian packages unpacked with their
dpkg status entries made from their own control files, a Python wheel installed with
`pip install --target`, npm packages as `npm pack` made them under node_modules. The layers
go into a real filesystem blob store and are read back as streams.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import hashlib
import io
import json
import lzma
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from berth.domain.manifests import Descriptor
from berth.domain.packages import Package, parse_os_release
from berth.domain.vulns import findings_for, parse_advisory
from berth.services.scanning import layers as layers_module
from berth.services.scanning.layers import (
    Inventory,
    LayerRefused,
    image_inventory,
    read_layer,
)
from berth.storage.filesystem import FilesystemBlobStore

FIXTURES = Path(__file__).parents[2] / "fixtures"
PACKAGES = FIXTURES / "packages"
SITE = "usr/local/lib/python3.11/site-packages"
APP = "usr/src/app/node_modules"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DPKG = "var/lib/dpkg/status"

Entry = tuple[tarfile.TarInfo, bytes | None]


# --- building layers ------------------------------------------------------------------------


def file_entry(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def layer(entries: list[Entry]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), compresslevel=1)


def zeros_layer(size: int, name: str = "zeros", then: Sequence[Entry] = ()) -> bytes:
    """A gzip layer of one file of `size` zeros (a whole number of MiB), about 1000 times
    smaller: a decompression bomb; the entries `then` follow it. Each MiB compresses to the
    same bytes after a full flush, so it is compressed once and repeated; the stream is a
    complete gzip file."""
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    mib = bytes(1024 * 1024)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    deflate.compress(mib)
    deflate.flush(zlib.Z_FULL_FLUSH)
    piece = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH) == piece
    following = io.BytesIO()
    with tarfile.open(fileobj=following, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for entry, data in then:
            tar.addfile(entry, io.BytesIO(data) if data is not None else None)
    # tarfile ends what it writes with the end-of-archive blocks, and pads to a whole record.
    end_of_archive = following.getvalue()
    end = deflate.compress(end_of_archive) + deflate.flush()
    crc = zlib.crc32(header)
    for _ in range(size // len(mib)):
        crc = zlib.crc32(mib, crc)
    crc = zlib.crc32(end_of_archive, crc)
    total = len(header) + size + len(end_of_archive)
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, total & 0xFFFFFFFF)
    return gzip_header + start + piece * (size // len(mib)) + end + trailer


def ar_members(path: Path) -> dict[str, bytes]:
    """The members of a .deb (an ar archive)."""
    data = path.read_bytes()
    assert data.startswith(b"!<arch>\n")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def deb_entries(path: Path) -> tuple[list[Entry], bytes]:
    """A .deb's files as layer entries, and its dpkg status stanza (its control file with
    the Status dpkg writes on installing it)."""
    members = ar_members(path)
    entries: list[Entry] = []
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members["data.tar.xz"]))) as data:
        for info in data.getmembers():
            content = data.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            entries.append((info, content))
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members["control.tar.xz"]))) as ctl:
        control = ctl.extractfile("./control").read().decode()  # type: ignore[union-attr]
    first, rest = control.split("\n", 1)
    return entries, f"{first}\nStatus: install ok installed\n{rest}".encode()


def debian_base() -> list[Entry]:
    entries: list[Entry] = []
    stanzas: list[bytes] = []
    for deb in (
        "base-files_12.4+deb12u15_amd64.deb",
        "python3-six_1.16.0-4_all.deb",
        "zlib1g_1.2.13.dfsg-1_amd64.deb",
    ):
        files, stanza = deb_entries(PACKAGES / deb)
        entries.extend(files)
        stanzas.append(stanza)
    entries.append(file_entry("./var/lib/dpkg/status", b"\n".join(stanzas)))
    return entries


def pip_installed(wheel: str, target: Path) -> list[Entry]:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"),
            *("--no-compile", "--disable-pip-version-check", "--target", str(target)),
            str(PACKAGES / wheel),
        ],
        check=True,
        timeout=120,
    )
    return [
        file_entry(f"{SITE}/{p.relative_to(target).as_posix()}", p.read_bytes())
        for p in sorted(target.rglob("*"))
        if p.is_file()
    ]


def npm_package(tgz: str, name: str) -> list[Entry]:
    entries: list[Entry] = []
    with tarfile.open(PACKAGES / tgz) as packed:
        for info in packed.getmembers():
            if info.isreg():
                inside = info.name.split("/", 1)[1]  # npm pack puts all under package/
                data = packed.extractfile(info).read()  # type: ignore[union-attr]
                entries.append(file_entry(f"{APP}/{name}/{inside}", data))
    return entries


def vulnerable_app_layers(site: Path, *, mixin_deep: bool = True) -> list[bytes]:
    """A Debian 12 base, then requests 2.30.0 (pip installed into `site`, a new directory),
    ms 0.7.0 and, with `mixin_deep`, mixin-deep 1.3.1: each affected by a genuine record in
    tests/fixtures/osv. Gzipped layers, base first."""
    packages = pip_installed("requests-2.30.0-py3-none-any.whl", site) + npm_package(
        "ms-0.7.0.tgz", "ms"
    )
    if mixin_deep:
        packages += npm_package("mixin-deep-1.3.1.tgz", "mixin-deep")
    return [layer(debian_base()), layer(packages)]


def whiteout(path: str) -> Entry:
    directory, _, name = path.rpartition("/")
    return file_entry(f"{directory}/.wh.{name}", b"")


# --- storing and reading --------------------------------------------------------------------


class StreamedStore(FilesystemBlobStore):
    """The filesystem store without its local-file shortcut, as S3 is read: through the
    store's async reader."""

    def local_path(self, digest: str) -> Path | None:
        return None


async def put(store: FilesystemBlobStore, blob: bytes) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    upload = hashlib.sha256(blob).hexdigest()[:16]
    writer = await store.open_upload(upload, 0)
    await writer.write([blob])
    await writer.close()
    await store.commit_upload(upload, digest)
    return Descriptor(LAYER, digest, len(blob))


def scan(store: FilesystemBlobStore, layers: list[bytes]) -> Inventory:
    async def run() -> Inventory:
        descriptors = [await put(store, blob) for blob in layers]
        return await image_inventory(store, descriptors)

    return asyncio.run(run())


@pytest.fixture(params=["local file", "streamed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FilesystemBlobStore:
    kind = FilesystemBlobStore if request.param == "local file" else StreamedStore
    return kind(tmp_path / "blobs")


@pytest.fixture(scope="module")
def image_layers(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A Debian 12 base; requests 2.30.0, ms 0.7.0 and mixin-deep 1.3.1 on it; then a layer
    that upgrades requests to 2.31.0 (a whiteout of the old dist-info), and replaces the
    node_modules directory (opaque) with ms 0.7.1 alone."""
    work = tmp_path_factory.mktemp("site")
    base = layer(debian_base())
    apps = layer(
        pip_installed("requests-2.30.0-py3-none-any.whl", work / "old")
        + npm_package("ms-0.7.0.tgz", "ms")
        + npm_package("mixin-deep-1.3.1.tgz", "mixin-deep")
    )
    upgrade = layer(
        [
            whiteout(f"{SITE}/requests-2.30.0.dist-info"),
            whiteout(f"{SITE}/requests"),
            *pip_installed("requests-2.31.0-py3-none-any.whl", work / "new"),
            file_entry(f"{APP}/.wh..wh..opq", b""),
            *npm_package("ms-0.7.1.tgz", "ms"),
        ]
    )
    return [base, apps, upgrade]


def purls(inventory: Inventory) -> list[str]:
    return sorted(p.purl for p in inventory.packages)


def genuine_findings(packages: list[Package]) -> list[tuple[str, str, str | None]]:
    advisories = [
        parse_advisory(json.loads(p.read_text())) for p in sorted((FIXTURES / "osv").glob("*.json"))
    ]
    found = []
    for package in packages:
        installed = package.installed()
        assert installed is not None
        found += [(f.package, f.advisory_id, f.fixed) for f in findings_for(installed, advisories)]
    return sorted(found)


# --- tests ----------------------------------------------------------------------------------


def test_packages_of_real_releases_as_purls(
    store: FilesystemBlobStore, image_layers: list[bytes]
) -> None:
    inventory = scan(store, image_layers[:2])

    assert inventory.os is not None
    assert (inventory.os.id, inventory.os.version_id) == ("debian", "12")
    assert inventory.os.ecosystem == "Debian:12"
    assert purls(inventory) == [
        "pkg:deb/debian/base-files@12.4%2Bdeb12u15?arch=amd64&distro=debian-12",
        "pkg:deb/debian/python3-six@1.16.0-4?arch=all&distro=debian-12",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12",
        "pkg:npm/mixin-deep@1.3.1",
        "pkg:npm/ms@0.7.0",
        "pkg:pypi/requests@2.30.0",
        "pkg:pypi/six@1.16.0",
    ]
    zlib = next(p for p in inventory.packages if p.name == "zlib1g")
    assert (zlib.source, zlib.ecosystem, zlib.path) == ("zlib", "Debian:12", "var/lib/dpkg/status")
    six = next(p for p in inventory.packages if p.type == "pypi" and p.name == "six")
    assert six.path == "usr/lib/python3/dist-packages/six-1.16.0.egg-info/PKG-INFO"
    requests = next(p for p in inventory.packages if p.name == "requests")
    assert requests.path == f"{SITE}/requests-2.30.0.dist-info/METADATA"
    # Matched against the genuine records of those releases.
    assert genuine_findings(inventory.packages) == [
        ("mixin-deep", "GHSA-fhjf-83wg-r2j9", "1.3.2"),
        ("ms", "GHSA-3fx5-fwvr-xrjg", "0.7.1"),
        ("requests", "PYSEC-2023-74", "2.31.0"),
    ]


def test_a_later_layer_removes_and_replaces_packages_by_whiteouts(
    store: FilesystemBlobStore, image_layers: list[bytes]
) -> None:
    inventory = scan(store, image_layers)

    assert purls(inventory) == [
        "pkg:deb/debian/base-files@12.4%2Bdeb12u15?arch=amd64&distro=debian-12",
        "pkg:deb/debian/python3-six@1.16.0-4?arch=all&distro=debian-12",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12",
        "pkg:npm/ms@0.7.1",
        "pkg:pypi/requests@2.31.0",
        "pkg:pypi/six@1.16.0",
    ]
    assert genuine_findings(inventory.packages) == []


def test_names_that_climb_out_and_links_are_never_followed(tmp_path: Path) -> None:
    base = layer(debian_base())
    link = tarfile.TarInfo("var/lib/dpkg/status")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    _, stanza = deb_entries(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")
    hostile = layer(
        [
            (link, None),
            file_entry("../../var/lib/dpkg/status", stanza),
            file_entry("usr/../../etc/os-release", b"ID=alpine\nVERSION_ID=3.18.0\n"),
        ]
    )

    inventory = scan(FilesystemBlobStore(tmp_path / "blobs"), [base, hostile])

    # The symlink replaced the status file (no Debian packages listed there any more; six's
    # egg-info is still there); the entries whose names climb out were skipped, and said so.
    assert [p.purl for p in inventory.packages] == ["pkg:pypi/six@1.16.0"]
    assert inventory.os is not None and inventory.os.id == "debian"
    assert any("../../var/lib/dpkg/status" in note for note in inventory.notes)
    assert not (tmp_path / "var").exists() and not (tmp_path.parent / "var").exists()


def test_an_absolute_name_is_read_from_the_image_root(tmp_path: Path) -> None:
    _, stanza = deb_entries(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")

    inventory = scan(
        FilesystemBlobStore(tmp_path / "b"), [layer([file_entry("/var/lib/dpkg/status", stanza)])]
    )

    assert [p.name for p in inventory.packages] == ["zlib1g"]


def test_an_oversized_package_file_is_skipped_unread(tmp_path: Path) -> None:
    big = json.dumps({"name": "ms", "version": "0.7.0", "pad": "x" * 2_000_000}).encode()

    inventory = scan(
        FilesystemBlobStore(tmp_path / "b"), [layer([file_entry(f"{APP}/ms/package.json", big)])]
    )

    assert inventory.packages == []
    assert any("more than 1048576" in note for note in inventory.notes)


def test_a_huge_header_is_refused_before_it_is_read() -> None:
    info = tarfile.TarInfo("a")
    info.pax_headers = {"comment": "x" * 2_000_000}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    raw.seek(0)

    with pytest.raises(LayerRefused, match="a tar header of"):
        read_layer(raw)


def test_too_many_entries_are_refused() -> None:
    many = layer([file_entry(f"f{i}", b"") for i in range(50)])

    with pytest.raises(LayerRefused, match="more than 20 entries"):
        read_layer(io.BytesIO(many), max_entries=20)


def test_a_layer_that_inflates_is_read_in_bounded_memory() -> None:
    """100 MiB of zeros (about 100 kB compressed) pass through without being held: a small
    layer of zeros is read, however far it inflates (MIN_INFLATION_BOUND)."""
    size = 100 * 1024 * 1024
    info = tarfile.TarInfo("usr/share/big")
    info.size = size
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=9) as out:
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        zeros = b"\0" * (1024 * 1024)
        for _ in range(size // len(zeros)):
            out.write(zeros)
        out.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # the end of the archive
    bomb = compressed.getvalue()
    assert len(bomb) < 1024 * 1024

    tracemalloc.start()
    try:
        changes = read_layer(io.BytesIO(bomb), compressed_size=len(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert changes.files == {}
    assert peak < 16 * 1024 * 1024, peak


def test_a_layer_that_inflates_far_more_than_real_layers_is_refused_at_once() -> None:
    """3 GiB of zeros from 3 MB: past MAX_INFLATION times its size and past the floor, it is
    refused as its header is read, not after the scanner has inflated all of it."""
    bomb = zeros_layer(3 * 1024**3)
    assert len(bomb) < 3 * 1024**3 / 1000
    with tarfile.open(fileobj=io.BytesIO(zeros_layer(2 * 1024 * 1024)), mode="r:gz") as small:
        [member] = small.getmembers()  # the builder makes a complete, valid gzip tar
        assert small.extractfile(member).read() == bytes(2 * 1024 * 1024)  # type: ignore[union-attr]

    started = time.process_time()  # CPU time: a loaded machine stretches wall time
    with pytest.raises(LayerRefused) as refused:
        read_layer(io.BytesIO(bomb), compressed_size=len(bomb))
    assert time.process_time() - started < 1
    assert str(refused.value) == (
        f"the layer inflates to more than 2,147,483,648 bytes from {len(bomb):,} compressed "
        "(a decompression bomb?): a scan reads a layer up to 100 times its compressed size, "
        "or 2 GiB if that is more"
    )


def test_packages_after_a_large_file_of_zeros_are_listed(store: FilesystemBlobStore) -> None:
    """`useradd` with UID 1,000,000 writes a /var/log/lastlog of 292 MB of zeros (300 kB
    gzipped): far past 100 times its size, but under the floor, so the packages after it are
    listed, read from a local file and streamed."""
    _, stanza = deb_entries(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")
    lastlog = zeros_layer(279 * 1024 * 1024, "var/log/lastlog", [file_entry(DPKG, stanza)])
    assert len(lastlog) < 400 * 1024

    found = scan(store, [lastlog])

    assert [(p.name, p.version) for p in found.packages] == [("zlib1g", "1:1.2.13.dfsg-1")]


def test_a_layer_is_read_however_runtimes_would_decompress_it() -> None:
    """A tar as it is, gzip (one stream, or several concatenated, which Go's gzip reader and
    so containerd read on), bzip2 and xz: each lists the same files."""
    _, stanza = deb_entries(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")
    entries = [file_entry("etc/os-release", b"ID=debian\nVERSION_ID=12\n")]
    entries += [file_entry(f"usr/share/doc/f{n}", bytes(5000)) for n in range(20)]
    entries.append(file_entry(DPKG, stanza))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    tar_bytes = raw.getvalue()
    middle = len(tar_bytes) // 2 // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE + 100
    variants = {
        "tar": tar_bytes,
        "gzip": gzip.compress(tar_bytes),
        "gzip, two members": gzip.compress(tar_bytes[:middle]) + gzip.compress(tar_bytes[middle:]),
        "bzip2": bz2.compress(tar_bytes),
        "xz": lzma.compress(tar_bytes),
    }

    listed = {name: sorted(read_layer(io.BytesIO(blob)).files) for name, blob in variants.items()}

    assert listed == {name: ["etc/os-release", DPKG] for name in variants}


@pytest.mark.parametrize("damage", ["cut short", "corrupted"])
def test_a_damaged_compressed_layer_is_refused_saying_so(damage: str) -> None:
    blob = zeros_layer(4 * 1024 * 1024, then=[file_entry(DPKG, b"Package: a\n")])
    if damage == "cut short":
        blob = blob[: len(blob) // 2]
    else:
        blob = blob[:200] + b"\xff" * 300 + blob[500:]

    with pytest.raises(LayerRefused, match=r"^not a readable tar layer: "):
        read_layer(io.BytesIO(blob))


@pytest.mark.parametrize("tail", [0, 3])
def test_a_layer_that_ends_after_its_last_file_is_read(tail: int) -> None:
    """umoci's layers end right after the last file's data: no padding to a whole block (or
    part of it, `tail` bytes), no two empty blocks closing the archive. Runtimes read them
    (Go's tar reader takes the stream's end there as the archive's); so does the scanner."""
    _, stanza = deb_entries(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")
    entries = [
        file_entry("etc/os-release", b"ID=debian\nVERSION_ID=12\n"),
        file_entry(DPKG, stanza),
    ]
    tar_bytes = gzip.decompress(layer(entries))
    end = len(stanza) + tar_bytes.rindex(stanza)
    assert (end + tail) % tarfile.BLOCKSIZE  # the layer stops inside a block

    changes = read_layer(io.BytesIO(gzip.compress(tar_bytes[: end + tail])))

    assert sorted(changes.files) == ["etc/os-release", DPKG]
    assert changes.files[DPKG][1] == stanza


def test_a_layer_whose_last_file_is_cut_short_is_refused() -> None:
    entries = [file_entry("etc/os-release", b"ID=debian\n"), file_entry(DPKG, b"Package: a\n" * 40)]
    tar_bytes = gzip.decompress(layer(entries))
    end = tar_bytes.rindex(b"Package: a\n") + len(b"Package: a\n")

    with pytest.raises(LayerRefused, match=r"^not a readable tar layer: "):
        read_layer(io.BytesIO(gzip.compress(tar_bytes[: end - 5])))


def test_a_layer_the_scanner_cannot_read_says_why(tmp_path: Path) -> None:
    async def run() -> None:
        store = FilesystemBlobStore(tmp_path / "b")
        stored = await put(store, layer([]))
        zstd = Descriptor("application/vnd.oci.image.layer.v1.tar+zstd", stored.digest, 1)
        await image_inventory(store, [zstd])

    with pytest.raises(LayerRefused, match=r"tar\+zstd, which the scanner cannot read"):
        asyncio.run(run())


def test_distroless_status_d_files_list_packages(tmp_path: Path) -> None:
    """Distroless images keep each package's control file in var/lib/dpkg/status.d/ (no
    Status field); the files beside them (md5sums) list nothing."""
    members = ar_members(PACKAGES / "zlib1g_1.2.13.dfsg-1_amd64.deb")
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members["control.tar.xz"]))) as ctl:
        control = ctl.extractfile("./control").read()  # type: ignore[union-attr]
        md5sums = ctl.extractfile("./md5sums").read()  # type: ignore[union-attr]
    blob = layer(
        [
            file_entry("var/lib/dpkg/status.d/zlib1g", control),
            file_entry("var/lib/dpkg/status.d/zlib1g.md5sums", md5sums),
        ]
    )

    inventory = scan(FilesystemBlobStore(tmp_path / "b"), [blob])

    assert [(p.name, p.version, p.source) for p in inventory.packages] == [
        ("zlib1g", "1:1.2.13.dfsg-1", "zlib")
    ]


def test_an_opaque_directory_keeps_what_its_own_layer_puts_there(tmp_path: Path) -> None:
    """The opaque marker may come after the layer's own files in the tar: it empties the
    directory of the layers below only."""
    below = layer(npm_package("mixin-deep-1.3.1.tgz", "mixin-deep"))
    above = layer([*npm_package("ms-0.7.1.tgz", "ms"), file_entry(f"{APP}/.wh..wh..opq", b"")])

    inventory = scan(FilesystemBlobStore(tmp_path / "b"), [below, above])

    assert purls(inventory) == ["pkg:npm/ms@0.7.1"]


def test_package_databases_past_the_memory_budget_are_refused(tmp_path: Path) -> None:
    """Many package files, each within its bound, cannot together take unbounded memory."""
    manifests = [
        file_entry(
            f"{APP}/p{i}/package.json", json.dumps({"name": f"p{i}", "version": "1.0.0"}).encode()
        )
        for i in range(100)
    ]
    blob = layer(manifests)

    async def run(budget: int) -> Inventory:
        store = FilesystemBlobStore(tmp_path / "b")
        return await image_inventory(store, [await put(store, blob)], budget=budget)

    assert len(asyncio.run(run(budget=100_000)).packages) == 100
    with pytest.raises(LayerRefused, match="package databases take more than"):
        asyncio.run(run(budget=2_000))


def test_long_names_of_empty_package_files_count_against_the_memory_budget(
    tmp_path: Path,
) -> None:
    """A name costs memory however empty its file: 60 empty package.json files named by PAX
    headers of 100 kB each (6 MB of names from a layer of a few kB) pass a budget of 2 MB
    only if the names are counted; so do the names a layer's whiteouts remove."""
    deep = "d/" * 50_000
    named = layer([file_entry(f"{deep}{i}/{APP}/p/package.json", b"") for i in range(60)])
    whiteouts = layer([file_entry(f"{deep}{i}/.wh.gone", b"") for i in range(60)])
    assert len(named) < 64 * 1024 and len(whiteouts) < 64 * 1024

    async def run(blob: bytes) -> Inventory:
        store = FilesystemBlobStore(tmp_path / "b")
        return await image_inventory(store, [await put(store, blob)], budget=2_000_000)

    for blob in (named, whiteouts):
        with pytest.raises(LayerRefused, match="package databases take more than"):
            asyncio.run(run(blob))


def test_notes_of_skipped_entries_are_few_and_short(tmp_path: Path) -> None:
    """A layer of 500 entries that climb out, each named by 10 kB: the first MAX_NOTES are
    noted, each name cut short, and the rest counted."""
    long = "x" * 10_000
    blob = layer([file_entry(f"../{long}{i}", b"") for i in range(500)])

    inventory = scan(FilesystemBlobStore(tmp_path / "b"), [blob])

    assert len(inventory.notes) == layers_module.MAX_NOTES + 1
    assert all(len(note) < 400 for note in inventory.notes)
    assert "(10,004 characters)" in inventory.notes[0]
    assert inventory.notes[-1] == "and 400 more entries skipped (the first 100 are noted)"


def test_whiteouts_of_a_layer_apply_in_time_that_grows_with_the_names(tmp_path: Path) -> None:
    """30,000 empty package files below and 30,000 whiteouts above (two layers of a few
    hundred kB): each whiteout was compared with every file below, 900 million comparisons
    (minutes); the files under each removed name are found by bisection instead."""
    count = 30_000
    below = layer([file_entry(f"{APP}/p{i}/package.json", b"") for i in range(count)])
    above = layer(
        [file_entry(f"{APP}/.wh.p{i}", b"") for i in range(0, count, 2)]
        + [file_entry(f"tmp/.wh.other{i}", b"") for i in range(count // 2)]
    )

    # CPU time, not wall time: a loaded machine (a CI run beside other work) stretches the
    # latter many times over, while the quadratic way took minutes of CPU.
    started = time.process_time()
    inventory = scan(FilesystemBlobStore(tmp_path / "b"), [below, above])
    spent = time.process_time() - started

    # The empty files list no package; the layers were read and the whiteouts applied.
    assert inventory.packages == []
    assert spent < 30, spent


def test_a_scan_reads_a_bounded_amount_however_often_a_manifest_lists_a_layer(
    store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small layer that inflates to much (zeros compress a thousandfold) listed again and
    again: a layer listed again is read again (its place in the stack matters), so the scan
    stops once the layers it read hold more than MAX_IMAGE_BYTES together, or when the
    image lists more than MAX_IMAGE_LAYERS layers, saying which."""
    monkeypatch.setattr(layers_module, "MAX_IMAGE_BYTES", 3 * 1024 * 1024)
    zeros = layer([file_entry("zeros", bytes(1024 * 1024))])
    assert len(zeros) < 16 * 1024
    assert scan(store, [zeros] * 2).packages == []
    with pytest.raises(LayerRefused, match="layers hold more than 3145728 bytes uncompressed"):
        scan(store, [zeros] * 4)
    # Bounded by what was pushed, too: the layer once, not each time it is listed.
    monkeypatch.setattr(layers_module, "MAX_IMAGE_BYTES", 64 * 1024**3)
    monkeypatch.setattr(layers_module, "MIN_INFLATION_BOUND", 3 * 1024 * 1024)
    assert scan(store, [zeros] * 2).packages == []
    with pytest.raises(LayerRefused, match="layers hold more than 3145728 bytes uncompressed"):
        scan(store, [zeros] * 4)
    monkeypatch.setattr(layers_module, "MAX_IMAGE_LAYERS", 3)
    with pytest.raises(LayerRefused, match="the image has 4 layers; a scan reads at most 3"):
        scan(store, [layer([file_entry("a", b"a")])] * 4)


def test_only_the_start_of_a_long_python_metadata_file_is_read(tmp_path: Path) -> None:
    """Name and Version come first; a description of megabytes after them is not kept."""
    with zipfile.ZipFile(PACKAGES / "requests-2.30.0-py3-none-any.whl") as wheel:
        metadata = wheel.read("requests-2.30.0.dist-info/METADATA")
    long = metadata + b"x" * (3 * 1024 * 1024)
    entries = [file_entry(f"{SITE}/requests-2.30.0.dist-info/METADATA", long)]

    changes = read_layer(io.BytesIO(layer(entries)))

    [(_, kept)] = changes.files.values()
    assert len(kept) == 64 * 1024
    inventory = scan(FilesystemBlobStore(tmp_path / "b"), [layer(entries)])
    assert purls(inventory) == ["pkg:pypi/requests@2.30.0"]


# Alpine: no genuine Alpine package or installed database is reachable offline (neither the
# Debian archive, PyPI nor npm carries one), so this layer is written here in the format of
# apk's installed database (one stanza a package, one-letter fields: P name, V version,
# A architecture, o origin: the source package Alpine's advisories name) and of Alpine 3.8's
# os-release. The record it is matched against, CVE-2018-5407, is the genuine one.
ALPINE_38_OS_RELEASE = b"""NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.8.5
PRETTY_NAME="Alpine Linux v3.8"
HOME_URL="http://alpinelinux.org"
BUG_REPORT_URL="http://bugs.alpinelinux.org"
"""
APK_INSTALLED = b"""C:Q1aaaaaaaaaaaaaaaaaaaaaaaaaaa=
P:musl
V:1.1.19-r11
A:x86_64
S:370597
I:610304
T:the musl c library (libc) implementation
U:http://www.musl-libc.org/
L:MIT
o:musl
F:lib
R:ld-musl-x86_64.so.1

C:Q1bbbbbbbbbbbbbbbbbbbbbbbbbbb=
P:libcrypto1.0
V:1.0.2p-r0
A:x86_64
S:1758928
I:2482176
T:libcrypto library from openssl
U:http://openssl.org
L:openssl
o:openssl
F:lib
R:libcrypto.so.1.0.0

C:Q1ccccccccccccccccccccccccccc=
P:openssl
V:1.0.2q-r0
A:x86_64
o:openssl

P:half-written
"""


def test_an_alpine_image_lists_apk_packages_and_matches_them_by_origin(
    store: FilesystemBlobStore,
) -> None:
    base = layer(
        [
            file_entry("etc/os-release", ALPINE_38_OS_RELEASE),
            file_entry("lib/apk/db/installed", APK_INSTALLED),
        ]
    )
    inventory = scan(store, [base])

    assert inventory.os is not None
    assert inventory.os.ecosystem == "Alpine:v3.8"
    assert purls(inventory) == [
        "pkg:apk/alpine/libcrypto1.0@1.0.2p-r0?arch=x86_64&distro=alpine-3.8.5",
        "pkg:apk/alpine/musl@1.1.19-r11?arch=x86_64&distro=alpine-3.8.5",
        "pkg:apk/alpine/openssl@1.0.2q-r0?arch=x86_64&distro=alpine-3.8.5",
    ]
    libcrypto = next(p for p in inventory.packages if p.name == "libcrypto1.0")
    assert (libcrypto.source, libcrypto.path) == ("openssl", "lib/apk/db/installed")
    # libcrypto1.0 is built from openssl 1.0.2p-r0, which the advisory names; openssl
    # 1.0.2q-r0 is the fixed release.
    assert genuine_findings(inventory.packages) == [("libcrypto1.0", "CVE-2018-5407", "1.0.2q-r0")]


@pytest.mark.parametrize(
    ("os_release", "ecosystem"),
    [
        (b'ID=ubuntu\nVERSION_ID="22.04"\n', "Ubuntu:22.04"),
        (b"ID=alpine\nVERSION_ID=3.18.4\n", "Alpine:v3.18"),
        (b'ID=debian\nVERSION_ID="11"\n', "Debian:11"),
        (b"ID=debian\n", None),  # testing and sid name no version
        (b'ID=fedora\nVERSION_ID="39"\n', None),  # no OSV data Berth matches
    ],
)
def test_the_release_names_the_ecosystem_of_its_packages(
    os_release: bytes, ecosystem: str | None
) -> None:
    assert parse_os_release(os_release).ecosystem == ecosystem


def test_an_image_listing_more_packages_than_a_scan_reads_is_refused(tmp_path: Path) -> None:
    """A package database of a few MB can list a million packages (each a purl, an SBOM
    component, a match): a scan reads at most MAX_PACKAGES, and past it says so, the rest
    of the database left unread."""
    bound = layers_module.MAX_PACKAGES

    def apk_database(count: int) -> bytes:
        return "".join(f"P:p{i}\nV:1.{i}-r0\nA:x86_64\n\n" for i in range(count)).encode()

    store = FilesystemBlobStore(tmp_path / "b")
    at_bound = scan(store, [layer([file_entry("lib/apk/db/installed", apk_database(bound))])])
    assert len(at_bound.packages) == bound
    over = layer([file_entry("lib/apk/db/installed", apk_database(bound + 1))])
    with pytest.raises(LayerRefused, match=f"more than {bound:,} packages"):
        scan(store, [over])


def test_a_package_json_nested_too_deeply_is_skipped_and_the_rest_listed(
    tmp_path: Path,
) -> None:
    """JSON nested deeper than the parser goes is not a package, not a failed scan that would
    hide the image's other packages (and their advisories)."""
    blob = layer(
        [
            file_entry(f"{APP}/deep/package.json", b"[" * 100_000),
            *npm_package("ms-0.7.0.tgz", "ms"),
        ]
    )
    inventory = scan(FilesystemBlobStore(tmp_path / "b"), [blob])
    assert purls(inventory) == ["pkg:npm/ms@0.7.0"]
