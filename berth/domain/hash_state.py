"""A SHA-256 whose running state can be saved and picked up by another process or node.

hashlib cannot export its state, so uploads that move between nodes would have to hash their
stored bytes again at every move. This drives OpenSSL's SHA-256 (the same code hashlib runs)
through its public `SHA256_CTX`, whose fields are saved in a fixed little-endian layout of 108
bytes. (The `rehash` package does this by reaching into hashlib's private objects and has not
been released since 2022, so it is not used.)

Where OpenSSL's libcrypto cannot be loaded, or fails the self-test at import, `resumable_sha256`
is None and uploads fall back to hashing their stored bytes again when they change node.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
from typing import Any

STATE_TAG = b"sha256/openssl/1:"
_FIELDS = struct.Struct("<10I64sI")  # h0..h7, Nl, Nh, the pending block, its length


class _Context(ctypes.Structure):
    """openssl/sha.h's SHA256_CTX (public, and unchanged since OpenSSL 0.9.8)."""

    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * 64),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _load_libcrypto() -> Any | None:
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"]
    for name in names:
        if not name:
            continue
        try:
            library = ctypes.CDLL(name)  # CDLL: the GIL is released during each call
            context = ctypes.POINTER(_Context)
            library.SHA256_Init.argtypes = [context]
            library.SHA256_Update.argtypes = [context, ctypes.c_char_p, ctypes.c_size_t]
            library.SHA256_Final.argtypes = [ctypes.c_char_p, context]
            return library
        except (OSError, AttributeError):
            continue
    return None


_LIBCRYPTO = _load_libcrypto()


class ResumableSha256:
    """hashlib.sha256's update/copy/hexdigest, plus `state()` and `from_state()`."""

    name = "sha256"

    def __init__(self) -> None:
        assert _LIBCRYPTO is not None
        self._context = _Context()
        _LIBCRYPTO.SHA256_Init(ctypes.byref(self._context))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes):  # ctypes passes bytes without a copy, not other buffers
            data = bytes(data)
        assert _LIBCRYPTO is not None
        _LIBCRYPTO.SHA256_Update(ctypes.byref(self._context), data, len(data))

    def copy(self) -> ResumableSha256:
        twin = ResumableSha256.__new__(ResumableSha256)
        twin._context = _Context.from_buffer_copy(self._context)
        return twin

    def digest(self) -> bytes:
        assert _LIBCRYPTO is not None
        out = ctypes.create_string_buffer(32)
        _LIBCRYPTO.SHA256_Final(out, ctypes.byref(self.copy()._context))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def state(self) -> bytes:
        context = self._context
        return STATE_TAG + _FIELDS.pack(
            *context.h, context.Nl, context.Nh, bytes(context.data), context.num
        )

    @classmethod
    def from_state(cls, state: bytes) -> ResumableSha256:
        if not state.startswith(STATE_TAG) or len(state) != len(STATE_TAG) + _FIELDS.size:
            raise ValueError("not a saved SHA-256 state")
        *h, nl, nh, data, num = _FIELDS.unpack(state[len(STATE_TAG) :])
        if num >= 64:
            raise ValueError("not a saved SHA-256 state")
        hasher = cls()
        context = hasher._context
        context.h[:] = h
        context.Nl, context.Nh, context.num, context.md_len = nl, nh, num, 32
        ctypes.memmove(context.data, data, 64)
        return hasher


def _works() -> bool:
    """Whether the saved state round-trips to hashlib's answer on this machine."""
    if _LIBCRYPTO is None:
        return False
    try:
        sample = bytes(range(256)) * 3
        first = ResumableSha256()
        first.update(sample[:77])
        resumed = ResumableSha256.from_state(first.state())
        resumed.update(sample[77:])
        return resumed.hexdigest() == hashlib.sha256(sample).hexdigest()
    except (OSError, ValueError, AttributeError):
        return False


resumable_sha256: type[ResumableSha256] | None = ResumableSha256 if _works() else None
