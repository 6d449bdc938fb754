"""The CPU work of image scans (reading layers, matching packages) in processes of their own,
so that a scan does not share a serving process's GIL with its requests: a scan in a
thread of a serving worker cut that worker's manifest GETs by more than half
(bench/findings.md, "An image scan and serving").

A pool of `scan_workers` processes (spawned, not forked: a serving worker holds threads and
connections a fork would copy) is started by the first scan and stopped LINGER_SECONDS after
the last one ended, so an idle server holds no scan process. A child opens its own database
and blob store (the same settings, the same drivers), does the work, and returns plain data;
the scan's rows are written by the process that claimed it. The children ignore SIGINT and
SIGTERM once started, which a terminal or service manager sends to the whole process group:
a stopping server ends them itself (`close`), leaving the scan it cut short to be queued
again as abandoned, not failed; one of those signals that reaches a child still starting
(importing) ends it, and its scan is left the same way (`ScanInterrupted`).

A spawned child imports its starter's main module and the modules of what it is handed (the
work, `open_scan_resources`): each one it need not load is memory once per child, which is
why the opener lives here and not in berth.state, which imports every service. A forkserver
(children forked from one process that preloaded this module) cost more for one scan process
and little less for two (bench/findings.md, "A scan process's memory").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from berth.jobs.orphans import when_orphaned
from berth.metadata.database import Database
from berth.storage.base import BlobStore
from berth.storage.drivers import blob_store

if TYPE_CHECKING:
    from berth.config import Settings

logger = logging.getLogger("berth.scans")

LINGER_SECONDS = 60.0
SCAN_NICENESS = 10  # added to the serving worker's
STOPPED_BY = (-signal.SIGINT, -signal.SIGTERM)  # a child's exit code when one ended it
T = TypeVar("T")
# What a child runs: given its own database and blob store.
Work = Callable[..., Awaitable[T]]


class ScanProcessFailed(Exception):
    """The scan's process failed in a way its exception could not say across processes."""


class ScanInterrupted(Exception):
    """The scan's process was stopped with the server (SIGTERM, SIGINT): the scan is left as
    it is, to be queued again as abandoned."""


def _start_child() -> None:
    """A child's start: it ignores SIGINT and SIGTERM (the module's docstring says why), and
    it exits when the process that started it dies. A serving worker killed with SIGKILL (the
    OOM killer's choice: the largest process) cannot end its pool, and a pool child waiting
    for work on a queue whose writing end it holds itself would wait for ever, with its
    ~75 MB RSS. Its scan is the dead process's, left to be queued again as abandoned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Background work: on a node short of cores, the serving worker's requests go first.
    os.nice(SCAN_NICENESS)
    when_orphaned(lambda _parent: os._exit(1), "berth-scan-orphan-watch")


def open_scan_resources(settings: Settings) -> tuple[Database, BlobStore]:
    """A scan process's own database and blob store, as `settings` name them."""
    return Database.for_settings(settings), blob_store(settings)


def _in_child(settings: Settings, work: Work[T], args: tuple[Any, ...]) -> T:
    async def run() -> T:
        db, store = open_scan_resources(settings)
        try:
            return await work(db, store, *args)
        finally:
            await store.close()
            await db.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            # An exception the parent could not unpickle would break the whole pool.
            raise ScanProcessFailed(f"{type(exc).__name__}: {exc}") from None
        raise


class ScanProcesses:
    """Runs scan work in the pool; a child opens the database and blob store `settings`
    name (`open_scan_resources`)."""

    def __init__(self, processes: int, settings: Settings) -> None:
        self.processes = processes
        self._settings = settings
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._running = 0
        self._linger: asyncio.TimerHandle | None = None

    async def run(self, work: Work[T], *args: Any) -> T:
        """`await work(db, store, *args)` in a scan process; its result or exception. A
        cancelled caller leaves the child to finish (its result is dropped)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        pool = self._pool
        if pool is None:
            pool = self._pool = concurrent.futures.ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
            )
        future = pool.submit(_in_child, self._settings, work, args)
        self._running += 1
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            # A child was killed: the pool takes no more work. By SIGTERM or SIGINT (sent to
            # the process group before the child came to ignore them: it was still starting),
            # the server is stopping, and the scan is no failure.
            children = list((pool._processes or {}).values())
            self._stop(pool)
            for child in children:
                child.join(1.0)
            if any(child.exitcode in STOPPED_BY for child in children):
                raise ScanInterrupted("the scan's process was stopped by a signal") from None
            raise ScanProcessFailed("the scan's process stopped before it finished") from None
        finally:
            self._running -= 1
            if self._running == 0 and self._pool is not None:
                self._linger = asyncio.get_running_loop().call_later(
                    LINGER_SECONDS, self._stop_if_idle
                )

    def _stop_if_idle(self) -> None:
        self._linger = None
        if self._running == 0 and self._pool is not None:
            self._stop(self._pool)

    def _stop(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        # The pool's processes, taken before shutdown forgets them; a running scan's child
        # would otherwise hold the server's exit until its scan ended.
        children = list((pool._processes or {}).values())  # no public way to end them
        pool.shutdown(wait=False, cancel_futures=True)
        for child in children:
            if child.is_alive():
                child.kill()

    def close(self) -> None:
        """End the pool and any scan still running in it (this process is stopping)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._pool is not None:
            self._stop(self._pool)
