"""A per-process periodic task (berth.jobs.periodic) refused by the database again and again:
its log says so once, then at most every `repeat_every` seconds with how many refusals came
meanwhile, a new reason at once, and once that the work succeeds again."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from berth.domain.errors import StorageFull, Unavailable
from berth.jobs.periodic import Periodic

FULL = "the database's disk is full; nothing was stored"
AWAY = "the database is unreachable"
FAILURE = "could not write audit entries"


def test_a_refusal_repeated_every_few_ms_is_said_once_then_summed_and_its_end_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    done = asyncio.Event()

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls <= 40:
            raise StorageFull(FULL)
        if calls <= 42:
            raise Unavailable(AWAY, retry_after=1)
        done.set()

    async def run() -> float:
        task = Periodic("audit flush", 0.01, work, failure=FAILURE, repeat_every=0.3)
        started = time.monotonic()
        task.start()
        await asyncio.wait_for(done.wait(), 30)
        await task.stop()
        return time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="berth.jobs.periodic"):
        elapsed = asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records]
    full = [line for line in lines if FULL in line and "works again" not in line]
    assert full[0] == f"{FAILURE}: {FULL}", lines
    # 40 refusals over `elapsed` seconds: the first said, then at most one line a 0.3 s window.
    assert 1 <= len(full) <= 2 + elapsed / 0.3, lines
    assert len(full) < 40, lines
    summed = [int(m[1]) for line in full[1:] if (m := re.search(r"\((\d+) more times", line))]
    assert len(summed) == len(full) - 1 and 1 + sum(summed) <= 40, lines
    # Another reason is said at once, though the last line was said a moment ago.
    away = [line for line in lines if AWAY in line and "works again" not in line]
    assert away[0] == f"{FAILURE}: {AWAY}", lines
    assert lines[-1] == f"audit flush: works again, after 2 refusals ({AWAY})", lines
    assert [r.levelname for r in caplog.records][-1] == "INFO"
