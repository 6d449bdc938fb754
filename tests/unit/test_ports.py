"""The test suite's port allocator (tests/ports.py): disjoint per xdist worker, outside the
kernel's ephemeral range, never a port twice, never one in use or reserved by another process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.ports import (
    BROWSERS_REFUSE,
    LOWEST,
    PortAllocator,
    ephemeral_range,
    worker_ports,
)
from tests.servers import ROOT


def test_each_worker_has_ports_of_its_own_outside_the_ephemeral_range(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("32768\t60999\n")
    assert ephemeral_range(tmp_path / "range") == (32768, 60999)
    for ephemeral in [(32768, 60999), (1024, 50000), ephemeral_range()]:
        low, high = ephemeral
        for workers in (1, 2, 4, 8):
            slices = [set(worker_ports(f"gw{i}", workers, ephemeral)) for i in range(workers)]
            assert all(len(ports) >= 500 for ports in slices), (ephemeral, workers)
            every = set().union(*slices)
            assert len(every) == sum(map(len, slices)), "two workers share a port"
            assert not any(low <= port <= high for port in every), ephemeral
            assert min(every) >= LOWEST and max(every) <= 65535
    # Outside xdist: the one slice of a single worker.
    assert worker_ports(None, 1, (32768, 60999)) == worker_ports("gw0", 1, (32768, 60999))


def listening_after(port: int) -> socket.socket:
    """A listener on the first port after `port` that is free (others may be taken by the
    servers of other tests)."""
    for candidate in range(port + 1, port + 100):
        try:
            return socket.create_server(("127.0.0.1", candidate))
        except OSError:
            continue
    raise AssertionError(f"no free port after {port}")


def test_a_process_never_gets_a_port_twice_nor_one_in_use(tmp_path: Path) -> None:
    ports = worker_ports("gw1", 2, ephemeral_range())
    allocator = PortAllocator(ports, tmp_path / "ports.lock")
    try:
        first = allocator.take()
        with listening_after(first) as listener:  # someone listens on a port up next
            listening = listener.getsockname()[1]
            taken = [first] + [allocator.take() for _ in range(200)]
        assert len(set(taken)) == len(taken)
        assert first < listening < max(taken)
        assert listening not in taken
        assert all(port in ports for port in taken)
    finally:
        allocator.close()


def test_a_port_another_process_reserved_is_skipped(tmp_path: Path) -> None:
    lock = tmp_path / "ports.lock"
    ports = range(LOWEST + 5000, LOWEST + 5100)
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from tests.ports import PortAllocator;"
            f"a = PortAllocator(range({ports.start}, {ports.stop}), Path({str(lock)!r}));"
            "print(a.take(), a.take(), flush=True); sys.stdin.read()",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        reserved = set(map(int, other.stdout.readline().split()))
        assert len(reserved) == 2
        allocator = PortAllocator(ports, lock)
        try:
            mine = {allocator.take() for _ in range(10)}
        finally:
            allocator.close()
        assert not mine & reserved
    finally:
        other.communicate("", timeout=10)


def test_no_port_a_browser_refuses_is_handed_out(tmp_path: Path) -> None:
    """The first worker's slice starts at LOWEST: its 81st server got 10080, where Chromium
    would not load the console (net::ERR_UNSAFE_PORT)."""
    (refused,) = BROWSERS_REFUSE
    allocator = PortAllocator(range(refused - 1, refused + 2), tmp_path / "ports.lock")
    try:
        taken = []
        while True:
            try:
                taken.append(allocator.take())
            except RuntimeError:
                break
        assert refused not in taken
        assert taken == [port for port in (refused - 1, refused + 1) if port in taken]
    finally:
        allocator.close()
