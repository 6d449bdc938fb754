"""An image's package inventory, read from its layers in order as streams from the blob store.

Nothing is extracted and nothing is written to disk: each layer is read once, forward only,
decompressing on the fly (gzip, bzip2 and xz, by their magic bytes), and only the few files
that list packages are read, each up to a bound; every other entry's data is skipped,
decompressed in large pieces and dropped.
Go executables are found by what they are, not by name: of each regular file with an execute
bit (up to MAX_GO_BINARY bytes), the ELF header and program headers are read, then only its
writable data segment (up to MAX_GO_DATA_SCAN bytes), where Go's linker puts the build
information record; the bytes between are skipped as the stream passes them.
Whiteouts apply as the OCI image spec says: `.wh.NAME` removes NAME (and all under it) of the
layers below, `.wh..wh..opq` empties its directory of what the layers below put there.

Safety: entry names are never used as paths on this machine. A name with a `..` component is
ignored (counted in `Inventory.notes`); an absolute name is read relative to the image's root,
as runtimes do. Links are not followed: a symlink where a package database was leaves none.
A layer whose headers are too large (a long-name or PAX header meant to exhaust memory), with
too many entries, or that inflates past a bound (absolute, and relative to its compressed size)
is refused with the reason (`LayerRefused`). What the scanner keeps of a layer, the names of
the files it keeps and of what the layer removes included, counts against one memory budget
(a name costs memory however empty its file: an empty package.json under a name of a megabyte,
given in a PAX header, is a megabyte); the notes of skipped entries are a few, each short.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import io
import itertools
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, Any

from berth.domain.manifests import Descriptor
from berth.domain.packages import (
    OsRelease,
    Package,
    parse_apk_installed,
    parse_dpkg_status,
    parse_go_binary,
    parse_os_release,
    parse_package_json,
    parse_python_metadata,
)
from berth.services.scanning.go_executables import go_buildinfo
from berth.services.scanning.streams import INFLATED_BUFFER, AsyncStream, Inflated
from berth.storage.base import BlobStore

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# Bounds a hostile layer meets (a real image is far inside them).
MAX_HEADER = 1024 * 1024  # a long name or PAX header
MAX_ENTRIES = 2_000_000  # entries in one layer
MAX_LAYER_BYTES = 64 * 1024**3  # the sum of a layer's entry sizes, uncompressed
# One scan's whole work: every layer it reads, together (a layer listed again is read again,
# since where it lies in the stack decides what it hides). Real images stay far below both;
# a manifest listing a highly compressible layer thousands of times would otherwise hold
# the scanner for days.
MAX_IMAGE_BYTES = 64 * 1024**3
# A layer inflates to at most MAX_INFLATION times its compressed size (or MIN_INFLATION_BOUND,
# whichever is more), an image's layers together to that many times their distinct layers'
# size: the scanner's work then follows what was pushed. Real layers inflate 2 to 10 times and
# zeros about 1000 times. The floor lets a small layer with a large file of zeros still scan
# (`useradd` with a large UID writes a /var/log/lastlog of 292 bytes per UID below it: 292 MB
# for UID 1,000,000): skipping 2 GiB of zeros takes about 5 s on a slow 2-core machine.
MAX_INFLATION = 100
MIN_INFLATION_BOUND = 2 * 1024**3
MAX_IMAGE_LAYERS = 256  # Docker runs at most about 125
MAX_DATABASE = 64 * 1024 * 1024  # dpkg status, apk installed
MAX_SMALL_FILE = 1024 * 1024  # os-release, package.json, a status.d file
# Packages one image may list: large images list a few thousand (a big node_modules, many Go
# programs); the bound keeps a scan's memory and time, its stored SBOM and the CycloneDX
# document made of it, in bounds (a crafted 63 MB apk database listed 1.4 million).
MAX_PACKAGES = 50_000
# Of a Python METADATA/PKG-INFO only the start is read: Name and Version come first, and a
# long description after them can be any size.
PYTHON_HEADERS = 64 * 1024
# Go executables: larger files are skipped (with a note); of one, the writable data segment is
# searched (`go_executables.py`).
MAX_GO_BINARY = 1024**3
MIN_EXECUTABLE = 1024  # smaller files are scripts or stubs, not Go executables
# All package databases an image's layers hold, together with the names the scanner keeps
# (theirs, and those of a layer's whiteouts): what the scanner keeps in memory.
MAX_RETAINED = 96 * 1024 * 1024
# Notes of skipped entries an image's inventory keeps (the rest are counted), and the length
# of a name shown in one: a layer may hold millions of entries, each named by a PAX header.
MAX_NOTES = 100
NOTE_NAME_LENGTH = 256

# Layer media types whose compression tarfile reads (docker's and OCI's; "nondistributable"
# variants too). zstd layers are refused with a reason until Python reads zstd.
READABLE_LAYERS = ("tar", "tar+gzip", "tar.gzip", "tar+bzip2", "tar+xz")


class LayerRefused(Exception):
    """A layer the scanner will not read, and why (a user sees this as the scan's failure)."""


class Kind(Enum):
    OS_RELEASE = "os-release"
    DPKG = "dpkg"
    APK = "apk"
    PYTHON = "python"
    NPM = "npm"
    GO = "go-binary"


def _bound(kind: Kind) -> int:
    return MAX_DATABASE if kind in (Kind.DPKG, Kind.APK) else MAX_SMALL_FILE


def classify(path: str) -> Kind | None:
    """Which package database `path` (normalized, relative to the image root) is, if any."""
    if path in ("etc/os-release", "usr/lib/os-release"):
        return Kind.OS_RELEASE
    if path == "var/lib/dpkg/status" or (
        path.startswith("var/lib/dpkg/status.d/") and path.count("/") == 4
    ):
        return Kind.DPKG
    if path == "lib/apk/db/installed":
        return Kind.APK
    parts = path.split("/")
    if (len(parts) >= 2 and parts[-2].endswith(".dist-info") and parts[-1] == "METADATA") or (
        len(parts) >= 2 and parts[-2].endswith(".egg-info") and parts[-1] == "PKG-INFO"
    ):
        return Kind.PYTHON
    if parts[-1] == "package.json" and len(parts) >= 3:
        # node_modules/NAME/package.json or node_modules/@SCOPE/NAME/package.json: a
        # package's own manifest, not one of the files inside it.
        if parts[-3] == "node_modules" and not parts[-2].startswith("@"):
            return Kind.NPM
        if len(parts) >= 4 and parts[-4] == "node_modules" and parts[-3].startswith("@"):
            return Kind.NPM
    return None


def normalize(name: str) -> str | None:
    """An entry's name relative to the image root, or None when it climbs out (`..`)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


@dataclass
class LayerChanges:
    """What one layer does to the files the scanner cares about."""

    files: dict[str, tuple[Kind, bytes]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # whiteouts, and links over a wanted file
    opaque: set[str] = field(default_factory=set)  # directories emptied of lower layers
    notes: list[str] = field(default_factory=list)
    notes_left_out: int = 0  # skipped entries past MAX_NOTES, counted
    budget: int = MAX_RETAINED  # bytes of files and names this layer may keep
    retained: int = 0
    # Go executables of the layers below: a file this layer puts at one of their paths
    # replaces it, whatever the new file is.
    lower_go: frozenset[str] = frozenset()
    inflated: int = 0  # the sum of the layer's entry sizes, uncompressed

    def note(self, text: str) -> None:
        """Say why an entry was skipped (the first MAX_NOTES; the rest are counted)."""
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)
        else:
            self.notes_left_out += 1

    def charge(self, size: int) -> None:
        """Count `size` more bytes kept against the budget; LayerRefused past it."""
        self.retained += size
        if self.retained > self.budget:
            raise LayerRefused(
                f"the image's package databases take more than "
                f"{MAX_RETAINED // (1024 * 1024)} MiB (with the names of those files and of "
                "what its layers remove)"
            )

    def remove(self, path: str) -> None:
        """The layer removes `path` and all under it from the layers below."""
        if path not in self.removed:
            self.charge(len(path))
            self.removed.add(path)

    def empty(self, directory: str) -> None:
        """The layer empties `directory` of what the layers below put there."""
        if directory not in self.opaque:
            self.charge(len(directory))
            self.opaque.add(directory)


def kept_bytes(files: dict[str, tuple[Kind, bytes]]) -> int:
    """What the scanner keeps of these files: their names and contents."""
    return sum(len(path) + len(content) for path, (_, content) in files.items())


def shown(name: str) -> str:
    """An entry's name as a note shows it: its start, when it is long."""
    if len(name) <= NOTE_NAME_LENGTH:
        return repr(name)
    return f"{name[:NOTE_NAME_LENGTH]!r}... ({len(name):,} characters)"


@dataclass
class Inventory:
    os: OsRelease | None
    packages: list[Package]
    notes: list[str]  # entries skipped and why (a user can see why a package may be missing)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses a long-name or PAX header larger than MAX_HEADER before tarfile reads it into
    memory whole."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        header_types = (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        )
        if self.type in header_types and self.size > MAX_HEADER:
            raise LayerRefused(f"a tar header of {self.size} bytes (more than {MAX_HEADER})")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def read_layer(
    stream: IO[bytes],
    *,
    max_entries: int = MAX_ENTRIES,
    budget: int = MAX_RETAINED,
    lower_go: frozenset[str] = frozenset(),
    max_bytes: int = MAX_LAYER_BYTES,
    image_bound: int = MAX_IMAGE_BYTES,
    compressed_size: int | None = None,
) -> LayerChanges:
    """The wanted files, whiteouts and opaque directories of one layer, read as a stream;
    LayerRefused when the files it keeps would exceed `budget` bytes, its entries
    `max_bytes` uncompressed (what is left of the image's `image_bound`), or more than a layer
    of `compressed_size` bytes may inflate to (`inflation_bound`). `lower_go`: the paths of Go
    executables in the layers below."""
    layer_bound = MAX_LAYER_BYTES if compressed_size is None else inflation_bound(compressed_size)
    changes = LayerChanges(budget=budget, lower_go=lower_go)
    entries = 0
    inflated = 0
    member: tarfile.TarInfo | None = None
    try:
        inflated_stream = io.BufferedReader(Inflated(stream), INFLATED_BUFFER)
        with tarfile.open(fileobj=inflated_stream, mode="r:", tarinfo=_BoundedTarInfo) as tar:
            while (member := _next_entry(tar, inflated_stream, member)) is not None:
                tar.members.clear()  # type: ignore[attr-defined]  # else it keeps every header
                entries += 1
                inflated += max(member.size, 0)
                if entries > max_entries:
                    raise LayerRefused(f"more than {max_entries} entries in one layer")
                if inflated > layer_bound:
                    raise LayerRefused(_inflation_refusal(layer_bound, compressed_size))
                if inflated > max_bytes:
                    raise LayerRefused(
                        f"the image's layers hold more than {image_bound} bytes "
                        "uncompressed together"
                    )
                _take(tar, member, changes)
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise LayerRefused(f"not a readable tar layer: {exc}") from None
    changes.inflated = inflated
    return changes


def _next_entry(
    tar: tarfile.TarFile, stream: IO[bytes], last: tarfile.TarInfo | None
) -> tarfile.TarInfo | None:
    """The layer's next entry after `last`, None at its end. A layer may end right after its
    last entry's data, without the padding to a whole block and the two empty blocks that
    close a tar (umoci writes its layers so): docker, containerd and podman read such a layer
    (Go's tar reader takes the end of the stream there as the archive's), and so does the
    scanner. Data cut short is still refused."""
    try:
        return tar.next()
    except tarfile.ReadError:
        whole = last is not None and stream.tell() >= last.offset_data + last.size
        if whole and stream.read(1) == b"":
            return None
        raise


def inflation_bound(compressed_size: int, most: int = MAX_LAYER_BYTES) -> int:
    """The uncompressed bytes a scan reads of `compressed_size` bytes of layers, at most
    `most`."""
    return min(most, max(MIN_INFLATION_BOUND, MAX_INFLATION * compressed_size))


def _inflation_refusal(bound: int, compressed_size: int | None) -> str:
    if compressed_size is None or bound == MAX_LAYER_BYTES:
        return f"more than {bound} bytes uncompressed"
    return (
        f"the layer inflates to more than {bound:,} bytes from {compressed_size:,} compressed "
        f"(a decompression bomb?): a scan reads a layer up to {MAX_INFLATION} times its "
        f"compressed size, or {MIN_INFLATION_BOUND / 1024**3:g} GiB if that is more"
    )


def _take(tar: tarfile.TarFile, member: tarfile.TarInfo, changes: LayerChanges) -> None:
    path = normalize(member.name)
    if path is None:
        changes.note(f"skipped {shown(member.name)}: it climbs out of the image root")
        return
    directory, base = posixpath.split(path)
    if base == OPAQUE:
        changes.empty(directory)
        return
    if base.startswith(WHITEOUT):
        changes.remove(posixpath.join(directory, base[len(WHITEOUT) :]))
        return
    kind = classify(path)
    if kind is None:
        _take_executable(tar, member, path, changes)
        return
    if not member.isreg():
        # A link or device where a package database was: it no longer lists anything.
        changes.remove(path)
        changes.files.pop(path, None)
        return
    if kind is not Kind.PYTHON and member.size > _bound(kind):
        changes.note(f"skipped {shown(path)}: {member.size} bytes, more than {_bound(kind)}")
        changes.remove(path)
        return
    handle = tar.extractfile(member)
    if handle is None:
        return
    content = handle.read(PYTHON_HEADERS if kind is Kind.PYTHON else _bound(kind))
    _keep(changes, path, kind, content)


def _keep(changes: LayerChanges, path: str, kind: Kind, content: bytes) -> None:
    previous = changes.files.get(path)
    changes.charge(len(content) - len(previous[1]) if previous else len(path) + len(content))
    changes.files[path] = (kind, content)


def _take_executable(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, changes: LayerChanges
) -> None:
    """Keep the build information of a Go executable at `path`; any other file there
    replaces a Go executable of a lower layer (or earlier in this one)."""
    blob = None
    if member.isreg() and member.mode & 0o111 and member.size >= MIN_EXECUTABLE:
        if member.size > MAX_GO_BINARY:
            changes.note(
                f"skipped {shown(path)}: an executable of {member.size} bytes, more than "
                f"{MAX_GO_BINARY} (a Go program's modules there are not listed)"
            )
        else:
            handle = tar.extractfile(member)
            blob = go_buildinfo(handle) if handle is not None else None
    if blob is not None:
        _keep(changes, path, Kind.GO, blob)
    elif path in changes.lower_go or path in changes.files:
        changes.files.pop(path, None)
        changes.remove(path)


def _below(paths: list[str], directory: str) -> Iterable[str]:
    """The paths under `directory` (not itself) of `paths`, sorted: found by bisection, as
    a layer may remove a million names and the layers below keep as many."""
    if directory == "":
        return paths
    prefix = directory + "/"
    start = end = bisect.bisect_left(paths, prefix)
    while end < len(paths) and paths[end].startswith(prefix):
        end += 1
    return paths[start:end]


def apply_layer(files: dict[str, tuple[Kind, bytes]], changes: LayerChanges) -> None:
    """The files of the layers below with this layer's changes applied."""
    if changes.opaque or changes.removed:
        paths = sorted(files)
        gone: set[str] = set()
        for directory in changes.opaque:
            gone.update(_below(paths, directory))
        for removed in changes.removed:
            if removed in files:
                gone.add(removed)
            gone.update(_below(paths, removed))
        for path in gone:
            del files[path]
    files.update(changes.files)


def inventory(files: dict[str, tuple[Kind, bytes]], notes: Sequence[str] = ()) -> Inventory:
    """The packages the merged files list."""
    os = None
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        if candidate in files:
            os = parse_os_release(files[candidate][1])
            break
    packages: list[Package] = []
    for path in sorted(files):
        kind, content = files[path]
        found: Iterable[Package] = ()
        if kind is Kind.DPKG:
            found = parse_dpkg_status(content, path, os)
        elif kind is Kind.APK:
            found = parse_apk_installed(content, path, os)
        elif kind is Kind.PYTHON:
            found = filter(None, [parse_python_metadata(content, path)])
        elif kind is Kind.NPM:
            found = filter(None, [parse_package_json(content, path)])
        elif kind is Kind.GO:
            found = parse_go_binary(content, path)
        # One more than the bound tells a list past it; the rest of a database is not read.
        packages.extend(itertools.islice(found, MAX_PACKAGES + 1 - len(packages)))
        if len(packages) > MAX_PACKAGES:
            raise LayerRefused(
                f"the image lists more than {MAX_PACKAGES:,} packages (at {path}); "
                "a scan reads at most that many"
            )
    return Inventory(os, packages, list(notes))


def _readable(layer: Descriptor) -> None:
    media_type = layer.media_type
    if not any(media_type.endswith("." + suffix) for suffix in READABLE_LAYERS):
        raise LayerRefused(f"layer {layer.digest} is {media_type}, which the scanner cannot read")


async def read_stored_layer(
    store: BlobStore,
    layer: Descriptor,
    budget: int = MAX_RETAINED,
    lower_go: frozenset[str] = frozenset(),
    max_bytes: int = MAX_LAYER_BYTES,
    image_bound: int = MAX_IMAGE_BYTES,
) -> LayerChanges:
    """One layer's changes, streamed from the store (its file, where the store keeps blobs
    as local files; else its reader) in a worker thread."""
    _readable(layer)
    read = functools.partial(
        read_layer,
        budget=budget,
        lower_go=lower_go,
        max_bytes=max_bytes,
        image_bound=image_bound,
        # The manifest's size is the stored blob's: manifests giving another are refused.
        compressed_size=layer.size,
    )
    path = store.local_path(layer.digest)
    if path is not None:

        def from_file() -> LayerChanges:
            try:
                with path.open("rb") as handle:
                    return read(handle)
            except FileNotFoundError:
                raise LayerRefused(f"layer {layer.digest} is missing from storage") from None

        return await asyncio.to_thread(from_file)
    chunks = store.read(layer.digest)
    stream = io.BufferedReader(AsyncStream(chunks, asyncio.get_running_loop()), 1024 * 1024)
    try:
        return await asyncio.to_thread(read, stream)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def image_inventory(
    store: BlobStore, layers: Sequence[Descriptor], budget: int = MAX_RETAINED
) -> Inventory:
    """The packages of an image whose layers (bottom first) are `layers`; LayerRefused when
    a layer cannot be read, their package databases together exceed `budget` bytes, or the
    image is larger than a scan reads (MAX_IMAGE_LAYERS, MAX_IMAGE_BYTES, `inflation_bound`
    of its distinct layers)."""
    if len(layers) > MAX_IMAGE_LAYERS:
        raise LayerRefused(
            f"the image has {len(layers)} layers; a scan reads at most {MAX_IMAGE_LAYERS}"
        )
    files: dict[str, tuple[Kind, bytes]] = {}
    notes: list[str] = []
    inflated = 0
    # A layer listed again adds nothing pushed: it is counted once.
    distinct = sum({layer.digest: layer.size for layer in layers}.values())
    image_bound = inflation_bound(distinct, MAX_IMAGE_BYTES)
    left_out = 0
    for layer in layers:
        kept = kept_bytes(files)
        lower_go = frozenset(p for p, (kind, _) in files.items() if kind is Kind.GO)
        changes = await read_stored_layer(
            store, layer, budget - kept, lower_go, image_bound - inflated, image_bound
        )
        inflated += changes.inflated
        apply_layer(files, changes)
        room = MAX_NOTES - len(notes)
        notes.extend(changes.notes[:room])
        left_out += changes.notes_left_out + len(changes.notes[room:])
    if left_out:
        notes.append(f"and {left_out:,} more entries skipped (the first {MAX_NOTES} are noted)")
    # Parsing is CPU work (up to MAX_PACKAGES purls): off the event loop that serves requests.
    return await asyncio.to_thread(inventory, files, notes)
