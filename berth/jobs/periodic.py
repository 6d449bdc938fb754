"""A task that does some work every few seconds in this process (flushing buffers, looking for
interrupted runs): one loop for all of them, so each stops the same way.

Unlike `Scheduler` jobs, this work is per process: every node flushes its own buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from berth.domain.errors import StorageRefused, Unavailable

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def unwritten_said(said_by: logging.Logger, what: Callable[[], str]) -> Iterator[None]:
    """For what a stopping process writes last (buffered counts, audit entries): a failure is
    logged, never raised, so that the rest of the shutdown goes on. The database refusing it
    for a reason of its own (its disk full or read-only, it unreachable) is one warning line,
    `what` was not written (called after the failure: how much) and why; anything else a
    traceback."""
    try:
        yield
    except (Unavailable, StorageRefused) as exc:
        said_by.warning("%s: %s", what(), exc.message)
    except Exception:
        said_by.exception(what())


class Periodic:
    """Runs `work` every `interval` seconds (first at once when `at_start`) until stopped.

    A failure is logged as `failure` and the loop goes on (the database away is one warning line
    with the reason, as the database's own log says why: no traceback every few seconds); a stop
    never cancels `work` in the middle: it waits for the current call to end.

    The same refusal again and again (a full disk for an hour, every 5 s, in each of a node's
    workers and each of their loops) would bury the rest of the log: after its first line it
    is said again at most every `repeat_every` seconds, with how many times it came meanwhile,
    and once when the work succeeds again.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], Awaitable[object]],
        *,
        failure: str,
        at_start: bool = False,
        repeat_every: float = 60.0,
    ) -> None:
        self.name = name
        self.interval = interval
        self._work = work
        self._failure = failure
        self._at_start = at_start
        self._repeat_every = repeat_every
        self._refused: str | None = None  # the reason of the refusals going on, if any
        self._refusals = 0  # since that reason was first said
        self._unsaid = 0  # refusals since it was last said
        self._said_at = 0.0
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
            # The database away, or its disk full or read-only.
            except (Unavailable, StorageRefused) as exc:
                self._refused_again(exc.message)
            except Exception:
                logger.exception(self._failure)
            else:
                if self._refused is not None:
                    logger.info(
                        "%s: works again, after %d refusals (%s)",
                        self.name,
                        self._refusals,
                        self._refused,
                    )
                    self._refused = None

    def _refused_again(self, reason: str) -> None:
        now = time.monotonic()
        if reason != self._refused:
            self._refused, self._refusals, self._unsaid = reason, 1, 0
        else:
            self._refusals += 1
            self._unsaid += 1
            if now - self._said_at < self._repeat_every:
                return
        if self._unsaid:
            logger.warning(
                "%s: %s (%d more times since it was last said)",
                self._failure,
                reason,
                self._unsaid,
            )
        else:
            logger.warning("%s: %s", self._failure, reason)
        self._said_at, self._unsaid = now, 0
