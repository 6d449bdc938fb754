"""A task that does some work every few seconds in this process (flushing buffers, looking for
interrupted runs): one loop for all of them, so each stops the same way.

Unlike `Scheduler` jobs, this work is per process: every node flushes its own buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from berth.domain.errors import StorageFull, Unavailable

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def unwritten_said(said_by: logging.Logger, what: Callable[[], str]) -> Iterator[None]:
    """For what a stopping process writes last (buffered counts, audit entries): a failure is
    logged, never raised, so that the rest of the shutdown goes on. The database refusing it
    for a reason of its own (its disk full, it unreachable) is one warning line, `what` was
    not written (called after the failure: how much) and why; anything else a traceback."""
    try:
        yield
    except (Unavailable, StorageFull) as exc:
        said_by.warning("%s: %s", what(), exc.message)
    except Exception:
        said_by.exception(what())


class Periodic:
    """Runs `work` every `interval` seconds (first at once when `at_start`) until stopped.

    A failure is logged as `failure` and the loop goes on (the database away is one warning line
    with the reason, as the database's own log says why: no traceback every few seconds); a stop
    never cancels `work` in the middle: it waits for the current call to end.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], Awaitable[object]],
        *,
        failure: str,
        at_start: bool = False,
    ) -> None:
        self.name = name
        self.interval = interval
        self._work = work
        self._failure = failure
        self._at_start = at_start
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None

    async def _loop(self) -> None:
        first = self._at_start
        while not self._stopping.is_set():
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.interval)
                if self._stopping.is_set():
                    return
            first = False
            try:
                await self._work()
            except (Unavailable, StorageFull) as exc:  # the database away, or its disk full
                logger.warning("%s: %s", self._failure, exc.message)
            except Exception:
                logger.exception(self._failure)
