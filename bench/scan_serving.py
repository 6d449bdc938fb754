"""What an image scan costs a node's serving: manifest GETs by tag (wrk, token auth, as
bench/regbench.py sends them) against one `berth serve` with its default worker count (one
per usable core, as `make run` starts it), with no scan running and while a large image is
scanned by the server's background job, the two conditions alternating round by round.

    .venv/bin/python bench/scan_serving.py [--size-mib 500] [--rounds 5] [--seconds 6]

The image is bench/scan.py's (real package databases and Go executables of this machine,
padded with random files to the size). The vulnerability data is the genuine fixture records
(tests/fixtures/osv, osv-go): few, but matching runs against them. A scan is requested with
`berth scan` (no --wait: the server's job runs it); wrk starts once the scan is `scanning`
(each round says whether the scan outlasted wrk's window). Figures per
condition: the median over rounds of requests/s, p50 and p99 (ms); the load average is
recorded around each round. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import regbench
import servers
from scan import RECORD_FIXTURES, image_layout, load, push
from servers import BERTH, PROJECT, REPOSITORY, launch_berth, log_in_berth, wait_ready

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def wrk(target: regbench.Target, seconds: int, connections: int) -> dict[str, Any]:
    """Manifest GETs by tag for `seconds`: requests/s, p50 and p99 in ms."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for key, value in {**target.headers, "Accept": MANIFEST}.items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run(
        [*args, target.api("manifests/v1")], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw non-2xx answers:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {p: float(v) * scale[u] for p, v, u in LATENCY.findall(out)}
    if rate is None or set(latency) != {"50", "99"}:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {"rps": float(rate.group(1)), "p50_ms": latency["50"], "p99_ms": latency["99"]}


def scan_state(database: Path) -> str | None:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT state, reason FROM scans").fetchone()
    if row is not None and row[0] == "failed":
        raise RuntimeError(f"the scan failed: {row[1]}")
    return None if row is None else str(row[0])


def wait_state(database: Path, wanted: set[str], timeout: float = 600) -> float:
    began = time.monotonic()
    while (state := scan_state(database)) not in wanted:
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"the scan stayed {state}")
        time.sleep(0.05)
    return time.monotonic() - began


def berth(env: dict[str, str], cwd: Path, *argv: str) -> str:
    return subprocess.run(
        [str(BERTH), *argv], env=env, cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size-mib", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=6, help="wrk's run per round")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--work", type=Path, help="keep the image and data here (default: temp)")
    p.add_argument("--port", type=int, help="the server's port (default: a free one)")
    args = p.parse_args()
    if args.port:
        servers.free_port = lambda: args.port  # launch_berth asks it for the port
    report: dict[str, Any] = {"command": " ".join(["bench/scan_serving.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="berth-scanserve-", dir="/var/tmp") as tmp:
        work = args.work or Path(tmp)
        layout = image_layout(work, args.size_mib)
        report["image_MiB"] = round(
            sum(p.stat().st_size for p in work.glob("layer*.tar.gz")) / (1 << 20), 1
        )
        shutil.rmtree(work / "serve", ignore_errors=True)
        server = launch_berth(work / "serve", None, {"BERTH_SCAN_CHECK_INTERVAL": "0.2"})
        try:
            wait_ready(server)
            log_in_berth(server)
            cwd = server.log.parent
            for folder in RECORD_FIXTURES:
                berth(server.env, cwd, "vulndb", "import", str(folder))
            push(server, layout, REPOSITORY)
            target = regbench.Target(
                server.url, f"{PROJECT}/{REPOSITORY}", server.user, server.password
            )
            regbench.authenticate(target)
            database = work / "serve" / "berth-data" / "berth.db"
            wrk(target, 2, args.connections)  # warm up
            rounds: dict[str, list[dict[str, Any]]] = {"idle": [], "scanning": []}
            for number in range(args.rounds):
                order = ("idle", "scanning") if number % 2 == 0 else ("scanning", "idle")
                for condition in order:
                    before = load()
                    if condition == "idle":
                        figures = wrk(target, args.seconds, args.connections)
                    else:
                        began = time.monotonic()
                        berth(server.env, cwd, "scan", f"{PROJECT}/{REPOSITORY}:v1")
                        wait_state(database, {"scanning"})
                        figures = wrk(target, args.seconds, args.connections)
                        figures["scan_outlasted_wrk"] = scan_state(database) == "scanning"
                        wait_state(database, {"done"})
                        figures["scan_s"] = round(time.monotonic() - began, 1)
                    figures["load"] = f"{before} -> {load()}"
                    rounds[condition].append(figures)
                    print(condition, json.dumps(figures), flush=True)
            report["rounds"] = rounds
            # Every round counts: most scans end within the last second of wrk's window.
            report["scans_outlasting_wrk"] = sum(
                r["scan_outlasted_wrk"] for r in rounds["scanning"]
            )
            report["medians"] = {
                condition: {
                    key: round(statistics.median(r[key] for r in runs), 2)
                    for key in ("rps", "p50_ms", "p99_ms")
                }
                for condition, runs in rounds.items()
            }
        finally:
            server.stop()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
