"""What a scan process costs in memory, through a real `berth serve`: PSS and RSS
(/proc/PID/smaps_rollup, as smem reads them) of every process of the server's tree, sampled
every 0.1 s while `scan_workers` images are scanned at once, and how long the first scan
(which starts the pool) and a second one (the pool warm) took.

    .venv/bin/python bench/scan_memory.py [--size-mib 300] [--scan-workers 1] [--workers 1]

The image is bench/scan.py's (real package databases and Go executables, padded to the size),
pushed into `scan_workers` repositories so that as many scans run at once. The vulnerability
data is the genuine fixture records. With --modules DIR, every process of the server imports
a probe (sitecustomize on PYTHONPATH) that writes its `sys.modules` to DIR/PID.txt on
SIGUSR2, which is sent to each scan process while it scans: a separate run, as the probe
changes what is measured. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers
from scan import RECORD_FIXTURES, image_layout, load, push
from servers import BERTH, PROJECT, REPOSITORY, launch_berth, log_in_berth, wait_ready

PROBE = """\
import os, signal, sys

def _dump(*_):
    with open(os.path.join({folder!r}, f"{{os.getpid()}}.txt"), "w") as out:
        out.write("\\n".join(sorted(sys.modules)))

signal.signal(signal.SIGUSR2, _dump)
"""


def memory(pid: int) -> dict[str, int] | None:
    """kB of the process's smaps_rollup: Pss, Rss and their anonymous part."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
    return {key: int(fields[key].split()[0]) for key in ("Pss", "Rss", "Pss_Anon")}


def tree(root: int) -> dict[int, tuple[int, str]]:
    """Every process under `root` (itself included): its parent and what it runs."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.update(children)
        frontier += children
    result = {}
    for pid in found:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        result[pid] = (parents.get(pid, 0), " ".join(a.decode() for a in argv).strip())
    return result


def role(pid: int, processes: dict[int, tuple[int, str]], root: int) -> str:
    parent, argv = processes[pid]
    if pid == root:
        return "supervisor"
    if "forkserver" in argv:
        return "forkserver"
    if "resource_tracker" in argv:
        return "resource tracker"
    if parent == root:
        return "serving worker"
    return "scan process"


def scan_rows(database: Path) -> list[tuple[str, float | None]]:
    """Each scan's state and, once done, the seconds from its start to its end as recorded."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT state, reason, (julianday(finished_at) - julianday(started_at)) * 86400"
            " FROM scans"
        ).fetchall()
    failed = [reason for state, reason, _ in rows if state == "failed"]
    if failed:
        raise RuntimeError(f"a scan failed: {failed}")
    return [(state, took) for state, _, took in rows]


def berth(env: dict[str, str], cwd: Path, *argv: str) -> None:
    subprocess.run([str(BERTH), *argv], env=env, cwd=cwd, check=True, capture_output=True)


def scan_round(
    server: servers.Server, repositories: list[str], probe: Path | None
) -> dict[str, Any]:
    """Request a scan of each repository's image at once; sample the tree until all are done."""
    database = Path(server.env["BERTH_DATA_DIR"]) / "berth.db"
    cwd = server.log.parent
    idle = tree(server.pid)
    idle_pss = sum((memory(pid) or {"Pss": 0})["Pss"] for pid in idle)
    for repository in repositories:
        berth(server.env, cwd, "scan", f"{PROJECT}/{repository}:v1")
    began = time.monotonic()
    peaks: dict[int, dict[str, Any]] = {}
    peak_tree = 0
    first_seen: float | None = None
    while True:
        rows = scan_rows(database)
        if all(state == "done" for state, _ in rows):
            break
        processes = tree(server.pid)
        total = 0
        for pid in processes:
            figures = memory(pid)
            if figures is None:
                continue
            total += figures["Pss"]
            kind = role(pid, processes, server.pid)
            if kind == "scan process" and first_seen is None:
                first_seen = time.monotonic() - began
            kept = peaks.setdefault(pid, {"role": kind, "Pss": 0, "Rss": 0, "Pss_Anon": 0})
            for key, value in figures.items():
                kept[key] = max(kept[key], value)
            if probe is not None and kind == "scan process":  # the last one written wins
                os.kill(pid, signal.SIGUSR2)
        peak_tree = max(peak_tree, total)
        time.sleep(0.1)
    return {
        "scan_s": [round(took or 0, 2) for _, took in rows],
        "scan_process_seen_after_s": None if first_seen is None else round(first_seen, 2),
        "tree_pss_MB": {"idle": round(idle_pss / 1024, 1), "peak": round(peak_tree / 1024, 1)},
        "processes": {
            str(pid): {
                "role": kept["role"],
                **{f"{k}_MB": round(kept[k] / 1024, 1) for k in ("Pss", "Rss", "Pss_Anon")},
            }
            for pid, kept in sorted(peaks.items())
            if kept["role"] != "supervisor"
        },
        "load": load(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size-mib", type=int, default=300)
    p.add_argument("--scan-workers", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="the first starts the pool")
    p.add_argument("--work", type=Path, help="keep the image here (default: temp)")
    p.add_argument("--port", type=int, help="the server's port (default: a free one)")
    p.add_argument("--modules", type=Path, help="write each scan process's sys.modules here")
    args = p.parse_args()
    if args.port:
        servers.free_port = lambda: args.port  # launch_berth asks it for the port
    report: dict[str, Any] = {"command": " ".join(["bench/scan_memory.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="berth-scanmem-", dir="/var/tmp") as tmp:
        work = args.work or Path(tmp)
        layout = image_layout(work, args.size_mib)
        settings = {
            "BERTH_SCAN_WORKERS": str(args.scan_workers),
            "BERTH_SCAN_CHECK_INTERVAL": "0.2",
        }
        if args.modules is not None:
            args.modules.mkdir(parents=True, exist_ok=True)
            probe = Path(tmp) / "probe"
            probe.mkdir()
            (probe / "sitecustomize.py").write_text(PROBE.format(folder=str(args.modules)))
            settings["PYTHONPATH"] = str(probe)
        serve = work / "serve"
        subprocess.run(["rm", "-rf", str(serve)], check=True)
        server = launch_berth(serve, args.workers, settings)
        try:
            wait_ready(server)
            log_in_berth(server)
            cwd = server.log.parent
            for folder in RECORD_FIXTURES:
                berth(server.env, cwd, "vulndb", "import", str(folder))
            repositories = [REPOSITORY] + [
                f"{REPOSITORY}{n}" for n in range(2, args.scan_workers + 1)
            ]
            for repository in repositories:
                if repository != REPOSITORY:
                    berth(server.env, cwd, "repo", "create", f"{PROJECT}/{repository}")
                push(server, layout, repository)
            report["rounds"] = []
            for _ in range(args.rounds):
                figures = scan_round(server, repositories, args.modules)
                print(json.dumps(figures), flush=True)
                report["rounds"].append(figures)
        finally:
            server.stop()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
