"""Go executables in a layer, found by what they are, not by name: of an ELF file, the header
and program headers are read, then only its writable data segments (up to MAX_GO_DATA_SCAN
bytes), where Go's linker puts the build information record; read forward only, as a layer
is."""

from __future__ import annotations

import struct
from typing import IO

from berth.domain.packages import GO_BUILDINFO_MAGIC, parse_go_buildinfo

# Of a Go executable, the writable data segment is searched this far for the build
# information record, which is at most MAX_GO_BUILDINFO long.
MAX_GO_DATA_SCAN = 16 * 1024 * 1024
MAX_GO_BUILDINFO = 1024 * 1024


def _load_segments(head: bytes, table: bytes, endian: str, wide: bool) -> list[tuple[int, int]]:
    """(file offset, file size) of the writable loadable segments of an ELF program header
    table, in file order."""
    segments: list[tuple[int, int]] = []
    entry = 56 if wide else 32
    for start in range(0, len(table) - entry + 1, entry):
        if wide:
            kind, flags, offset, _, _, size = struct.unpack_from(endian + "IIQQQQ", table, start)
        else:
            kind, offset, _, _, size, _, flags = struct.unpack_from(endian + "7I", table, start)
        if kind == 1 and flags & 0x2 and size > 0:  # PT_LOAD, PF_W
            segments.append((offset, size))
    return sorted(segments)


def go_buildinfo(handle: IO[bytes]) -> bytes | None:
    """The Go build information record of an ELF executable read forward only from its
    start (a layer is never read back), or None when it is not a Go executable. Reads the
    headers, seeks forward to the writable data segments and searches only them, at the 16-byte
    alignment Go's linker gives the record."""
    head = handle.read(64)
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    wide, endian = head[4] == 2, "<" if head[5] == 1 else ">"
    if wide:
        (table_at,) = struct.unpack_from(endian + "Q", head, 32)
        entry_size, entries = struct.unpack_from(endian + "HH", head, 54)
    else:
        (table_at,) = struct.unpack_from(endian + "I", head, 28)
        entry_size, entries = struct.unpack_from(endian + "HH", head, 42)
    if entry_size != (56 if wide else 32) or not 0 < entries <= 256 or table_at < len(head):
        return None
    handle.seek(table_at)
    table = handle.read(entry_size * entries)
    position = table_at + len(table)
    for offset, size in _load_segments(head, table, endian, wide):
        if offset < position:
            continue  # overlaps what was read: not a layout Go's linker writes
        handle.seek(offset)
        found = _search_segment(handle, offset, min(size, MAX_GO_DATA_SCAN))
        if found is not None:
            return found
        position = offset + min(size, MAX_GO_DATA_SCAN)
    return None


def _search_segment(handle: IO[bytes], offset: int, size: int) -> bytes | None:
    """The record in the `size` bytes at file `offset` (where `handle` stands), read in
    chunks; the bytes after a match are read only as far as the record needs."""
    window = b""
    window_at = offset  # the file offset of window[0]
    remaining = size
    while remaining > 0:
        chunk = handle.read(min(64 * 1024, remaining))
        if not chunk:
            return None
        remaining -= len(chunk)
        window += chunk
        start = 0
        while (hit := window.find(GO_BUILDINFO_MAGIC, start)) >= 0:
            if (window_at + hit) % 16 == 0:
                record = window[hit:] + handle.read(max(0, MAX_GO_BUILDINFO - (len(window) - hit)))
                info = parse_go_buildinfo(record)
                return record[: info.length] if info is not None else None
            start = hit + 1
        keep = len(GO_BUILDINFO_MAGIC) - 1
        window_at += len(window) - keep
        window = window[-keep:]
    return None
