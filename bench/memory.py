"""Server memory for `make bench`: the summed RSS (and PSS) of a process and its descendants,
sampled from /proc on a thread of its own."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

SAMPLE_SECONDS = 0.02  # RSS of every process in the tree, from /proc/PID/statm
RESCAN_SECONDS = 0.1  # the process tree: workers start late and may be respawned
PSS_SECONDS = 0.5  # PSS, from /proc/PID/smaps_rollup (dearer to read)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    """root and all its descendants, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command sits in parentheses and may hold spaces; ppid is the 2nd field after it.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _kib_field(path: str, name: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: pages shared with other processes count for their share."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def hwm_bytes(pid: int) -> int:
    """The process's own peak RSS (VmHWM)."""
    return _kib_field(f"/proc/{pid}/status", "VmHWM:")


@dataclass
class MemorySampler:
    """Sums the RSS of a process and its descendants every `interval`, on its own thread."""

    root: int
    interval: float = SAMPLE_SECONDS
    peak: int = 0
    peak_pss: int = 0
    window_peak: int = 0
    pids: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def current(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def current_pss(self) -> int:
        return sum(pss_bytes(pid) for pid in self.pids)

    def start(self) -> MemorySampler:
        self.pids = process_tree(self.root)
        self.peak = self.window_peak = self.current()
        self.peak_pss = self.current_pss()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        rescan_at = pss_at = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if now >= rescan_at:
                self.pids = process_tree(self.root)
                rescan_at = now + RESCAN_SECONDS
            if now >= pss_at:
                self.peak_pss = max(self.peak_pss, self.current_pss())
                pss_at = now + PSS_SECONDS
            value = self.current()
            self.peak = max(self.peak, value)
            self.window_peak = max(self.window_peak, value)

    def restart_peak(self) -> tuple[int, int]:
        """Start the peaks over from now; returns the peaks so far (RSS, PSS)."""
        self.pids = process_tree(self.root)
        before = self.peak, self.peak_pss
        self.peak, self.peak_pss = self.current(), self.current_pss()
        return before

    def open_window(self) -> int:
        """Restart the window peak; returns the RSS now, the window's baseline."""
        self.pids = process_tree(self.root)
        self.window_peak = value = self.current()
        return value

    def summed_hwm(self) -> int:
        """Sum of each process's own peak: an upper bound on the peak of the sum."""
        return sum(hwm_bytes(pid) for pid in self.pids)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
