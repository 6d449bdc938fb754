"""A node's main process killed with SIGKILL (runit, supervisord, `kill -9`) cannot stop its
workers: each notices it and stops, so the port is free for the `berth serve` that replaces
it, instead of an orphan serving on it and the new node refused ("already in use")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import BerthServer, wait_for


def running(pid: int) -> bool:
    """Whether `pid` runs: a zombie (exited, not yet reaped by PID 1) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_the_workers_of_a_node_killed_stop_and_a_new_node_serves_on_its_port(
    tmp_path: Path, workers: int
) -> None:
    first = BerthServer(tmp_path / "node", workers=workers).start()
    second = BerthServer(tmp_path / "node", port=first.port, workers=workers)
    try:
        wait_for(lambda: first.log_tail(400).count("Started worker-") >= workers, 60, "workers")
        pids = first.worker_pids()
        assert len(pids) == workers
        serving = [row["holder"] for row in first.cli_json("status")["serving_processes"]]
        assert sorted(holder.rsplit(":", 1)[1] for holder in serving) == sorted(map(str, pids))

        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        killed_at = time.monotonic()
        wait_for(lambda: not any(map(running, pids)), 10, "the orphaned workers' exit")
        stopped_in = time.monotonic() - killed_at
        assert stopped_in < 5, f"the workers took {stopped_in:.1f} s to stop"
        log = first.log_tail(400)
        assert log.count("the server's main process") == workers, log
        assert "Traceback" not in log, log
        # Berth's own shutdown ran in each: it removed its row (a process that ends without it
        # is listed for 30 s more).
        assert first.cli_json("status")["serving_processes"] == []

        second.start()
        assert httpx.get(f"{second.url}/readyz").text == "ready"
        assert httpx.get(f"{second.url}/v2/").status_code == 401
    finally:
        second.stop()
        first.stop()  # its process group: whatever worker is left


SCAN_PARENT = """
import asyncio, os, sys
from pathlib import Path

from berth.config_loading import load_settings
from berth.services.scanning.processes import ScanProcesses


async def wait_long(db, store, pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    await asyncio.sleep(120)


async def main():
    processes = ScanProcesses(1, load_settings())
    await processes.run(wait_long, sys.argv[1])


if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_scan_process_stops_when_the_worker_that_started_it_is_killed(tmp_path: Path) -> None:
    """A serving worker killed with SIGKILL (the OOM killer picks the largest process) cannot
    end its scan processes: each notices and exits instead of waiting for work for ever."""
    script, pid_file = tmp_path / "worker.py", tmp_path / "scan.pid"
    script.write_text(SCAN_PARENT)
    env = {
        **os.environ,
        "BERTH_DATA_DIR": str(tmp_path / "data"),
        "BERTH_CONFIG": os.devnull,
    }
    worker = subprocess.Popen(
        [sys.executable, str(script), str(pid_file)], env=env, cwd=Path(__file__).parent.parent
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", 60, "the scan process")
        scan = int(pid_file.read_text())
        assert running(scan)
        # Background work, below the worker's CPU priority (what `top` shows as NI).
        assert os.getpriority(os.PRIO_PROCESS, scan) == os.getpriority(os.PRIO_PROCESS, 0) + 10
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at = time.monotonic()
        wait_for(lambda: not running(scan), 10, "the scan process's exit")
        assert time.monotonic() - killed_at < 5
    finally:
        worker.kill()
        worker.wait()
