"""Ports for the servers the tests start (Berth, PostgreSQL, nginx, SeaweedFS), handed out so
that two of them never share one.

Asking the kernel for a free port (bind port 0, close) is racy: the port is free again the moment
it is closed, so two xdist workers (or two fixtures of one worker) can be handed the same one, and
granian binds with SO_REUSEPORT, so two Berth servers on one port both serve, each answering half
of the other's clients with 401. Here instead:

- each xdist worker (PYTEST_XDIST_WORKER gw0, gw1, ...) takes ports from a slice of its own;
- the slices lie outside the kernel's ephemeral range (ip_local_port_range), so the kernel never
  gives one of them to an outgoing connection or to another program's port 0;
- a process never hands out a port twice;
- a port is taken only if it can be bound (skips whatever listens there), and only if no other
  process on the machine has reserved it: a byte-range lock at offset PORT of one lock file per
  user, held until the process exits (test runs of other worktrees side by side stay apart);
- never a port browsers refuse to open (the console's tests drive Chromium).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000  # below this, services of the machine more often have fixed ports
HIGHEST = 65535
LOCK_FILE = Path(tempfile.gettempdir()) / f"berth-test-ports-{os.getuid()}.lock"
# The Fetch standard's "bad ports" from LOWEST up: Chromium and Firefox refuse to load a page
# there (net::ERR_UNSAFE_PORT), which failed a console test handed 10080.
BROWSERS_REFUSE = frozenset({10080})


def ephemeral_range(path: Path = EPHEMERAL_RANGE) -> tuple[int, int]:
    """The kernel's range for port 0 and outgoing connections (Linux's default if unknown)."""
    try:
        low, high = map(int, path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def worker_ports(worker: str | None, workers: int, ephemeral: tuple[int, int]) -> range:
    """The ports of one xdist worker ("gw3"; None outside xdist): an equal slice, one per
    worker, of the ports from LOWEST up that lie below the ephemeral range, or above it when
    that leaves more."""
    low, high = ephemeral
    below = range(LOWEST, max(LOWEST, low))
    above = range(max(LOWEST, high + 1), HIGHEST + 1)
    usable = below if len(below) >= len(above) else above
    if len(usable) < 100 * max(workers, 1):  # an ephemeral range covering almost everything
        usable = range(LOWEST, HIGHEST + 1)
    index = int(worker[2:]) if worker and worker.startswith("gw") and worker[2:].isdigit() else 0
    count = max(workers, index + 1)
    size = len(usable) // count
    start = usable.start + index * size
    return range(start, start + size)


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (no SO_REUSEADDR: a port in use in any
    way, TIME_WAIT included, is left alone)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out the ports of `ports` in order, each once, skipping ones in use or reserved by
    another process through `lock_file`."""

    def __init__(self, ports: Sequence[int], lock_file: Path = LOCK_FILE) -> None:
        self.ports = ports
        self._next = 0
        self._mutex = threading.Lock()
        self._lock_file = lock_file
        self._lock_fd: int | None = None

    def _reserve(self, port: int) -> bool:
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:  # released when this process exits; never closed before (that drops every lock)
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError:
            return False
        return True

    def take(self, host: str = "127.0.0.1") -> int:
        with self._mutex:
            while self._next < len(self.ports):
                port = self.ports[self._next]
                self._next += 1
                if port in BROWSERS_REFUSE:
                    continue
                if self._reserve(port) and bindable(host, port):
                    return port
        raise RuntimeError(f"this test process has used up its ports ({self.ports})")

    def close(self) -> None:
        """Give up the reservations (tests of the allocator itself)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


_allocator: PortAllocator | None = None
_allocator_mutex = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` no other server of this test run (or of another on this machine) gets."""
    global _allocator
    with _allocator_mutex:
        if _allocator is None:
            _allocator = PortAllocator(
                worker_ports(
                    os.environ.get("PYTEST_XDIST_WORKER"),
                    int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
                    ephemeral_range(),
                )
            )
    return _allocator.take(host)
