"""argon2id password hashes, a few at a time per worker process.

Each hash or verification takes argon2's default 64 MiB and tens of milliseconds of CPU, in a
worker thread (not on the event loop). Unbounded, every concurrent sign-in with a password
holds its 64 MiB at once: 48 of them grew a worker from 120 MB to over 500 MB and slowed its
pulls twentyfold. More at once than there are cores only wait for CPU anyway, so at most
`slots` run at once; the rest wait their turn on the event loop, holding no memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import DEFAULT_MEMORY_COST, PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

T = TypeVar("T")
HASH_MEMORY = DEFAULT_MEMORY_COST * 1024  # bytes each hash holds (argon2-cffi gives KiB)


def password_slots(cores: int, workers: int) -> int:
    """Hashes at once per worker process: the cores each worker would have to itself, at least
    2 (argon2 already spreads one hash over up to 4 threads)."""
    return max(2, cores // workers)


class Passwords:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.in_progress = 0  # hashes running now (never more than `slots`)
        self._hasher = PasswordHasher()  # argon2id
        self._gate: asyncio.Semaphore | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Future[Any]] = set()

    async def hash(self, password: str) -> str:
        return await self._in_slot(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerifyMismatchError, InvalidHashError):
                return False

        return await self._in_slot(check)

    def _slot_gate(self) -> asyncio.Semaphore:
        # One per event loop: a semaphore belongs to the loop it first waited on (the CLI runs
        # a loop per command).
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:
            self._gate, self._gate_loop = asyncio.Semaphore(self.slots), loop
        return self._gate

    async def _in_slot(self, work: Callable[..., T], *args: object) -> T:
        gate = self._slot_gate()
        await gate.acquire()
        self.in_progress += 1

        def finished(_: object) -> None:
            self.in_progress -= 1
            gate.release()
            self._running.discard(running)

        # The slot is given back when the thread ends, not when the request does: a client
        # that goes away mid-hash cannot start another beside the one still running.
        running: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(work, *args))
        self._running.add(running)
        running.add_done_callback(finished)
        return await asyncio.shield(running)
