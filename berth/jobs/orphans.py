"""Noticing that the process which started this one has died: a serving worker whose main
process was killed with SIGKILL, a scan process whose serving worker was. The kernel hands an
orphan to PID 1 and tells it nothing, so it is polled for (prctl's PR_SET_PDEATHSIG fires when
the *thread* that started the process ends, which depends on the starter's internals)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

CHECK_SECONDS = 1.0


def when_orphaned(act: Callable[[int], None], name: str) -> threading.Event:
    """Call `act(the dead parent's pid)` from a daemon thread (`name`) once this process's
    parent has died, checking every CHECK_SECONDS; set the returned event to stop watching."""
    parent = os.getppid()
    done = threading.Event()

    def watch() -> None:
        while os.getppid() == parent:
            if done.wait(CHECK_SECONDS):
                return
        act(parent)

    threading.Thread(target=watch, name=name, daemon=True).start()
    return done
