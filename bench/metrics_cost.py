"""What Prometheus metrics cost the registry core: manifest GET rates with `metrics` on and off.

Starts two Berth servers side by side on free ports of 127.0.0.1, each on a fresh temporary data
directory with the defaults `make bench` uses (SQLite, one worker, request log lines at `info`
written to a file), identical but for `BERTH_METRICS`. Pushes a 4 KiB blob and a manifest to
each, then alternates the two round by round (the order flips every round) with the same wrk
runs as `regbench.py`: manifest GET by tag and 4 KiB blob GET. Prints the medians and the median
over rounds of on / off (each round's pair back to back): the target is at least 0.95.

On a shared two-core machine wrk's rates drift by more than 5% between runs, so the cost is
also measured in-process: the CPU time per request the request observer adds to a no-op
application, with metrics off and its log line off (the request ID, the header and the timing),
then with metrics, then with the log line too.

    .venv/bin/python bench/metrics_cost.py [--rounds 10] [--wrk-seconds 2] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs
from run import ROOT, Server

sys.path.insert(0, str(ROOT))
# The in-process measure counts as a server's worker does: into files (multiprocess mode).
VALUES = tempfile.mkdtemp(prefix="berth-metrics-values-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = VALUES
atexit.register(shutil.rmtree, VALUES, True)
from berth.observability import logs, metrics  # noqa: E402 - after the variable is set
from berth.observability.requests import RequestObserver  # noqa: E402

TARGET_RATIO = 0.95


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Server] = []
    load_start = os.getloadavg()
    try:
        for side in ("on", "off"):
            setting = {"BERTH_METRICS": "true" if side == "on" else "false"}
            servers.append(pairs.launch(work / side, f"metrics-{side}", setting))
        targets = {"on": pairs.prepare(servers[0]), "off": pairs.prepare(servers[1])}
        rounds = pairs.alternate(
            targets, args.rounds, args.wrk_seconds, args.connections, "metrics"
        )
    finally:
        for server in servers:
            server.stop()
    medians = pairs.medians(rounds)
    return {
        "rounds": args.rounds,
        "wrk_seconds": args.wrk_seconds,
        "connections": args.connections,
        "on": medians["on"],
        "off": medians["off"],
        "ratio_on_over_off": pairs.paired_ratios(rounds, "on", "off"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "hot_path": hot_path_cost(medians["off"]["manifest_rps"]),
    }


REPEATS = 5


def hot_path_cost(rate: float, calls: int = 20_000) -> dict[str, float]:
    """CPU microseconds per request the observer adds to a no-op app, by what it does."""
    scope_headers = [(b"host", b"127.0.0.1"), (b"accept", b"application/json")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 500})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    async def timed(handler: Any) -> float:
        started = time.process_time()
        for _ in range(calls):
            scope = {"type": "http", "method": "GET", "path": "/v2/p/r/manifests/bench",
                     "headers": scope_headers, "client": ("127.0.0.1", 1)}  # fmt: skip
            await handler(scope, receive, send)
        metrics.flush_requests()  # what the worker does once a second, with what it added up
        return (time.process_time() - started) / calls * 1e6

    logs.access.configure("text", "info")
    logs.access.stream = open(os.devnull, "w")  # noqa: SIM115

    async def all_of_them() -> dict[str, float]:
        observer = RequestObserver(app)
        best: dict[str, list[float]] = {"bare": [], "plain": [], "counted": [], "logged": []}
        for _ in range(REPEATS):  # interleaved; the least of each is the least disturbed
            best["bare"].append(await timed(app))
            metrics.set_enabled(False)
            logs.access.enabled = False
            best["plain"].append(await timed(observer))
            metrics.set_enabled(True)
            best["counted"].append(await timed(observer))
            logs.access.enabled = True
            best["logged"].append(await timed(observer))
        bare, plain, counted, logged = (
            min(best[k]) for k in ("bare", "plain", "counted", "logged")
        )
        return {
            "observer_us": plain - bare,
            "metrics_us": counted - plain,
            "log_line_us": logged - counted,
        }

    found = asyncio.run(all_of_them())
    found["metrics_share"] = found["metrics_us"] * 1e-6 * rate
    found["log_line_share"] = found["log_line_us"] * 1e-6 * rate
    return found


def report(figures: dict[str, Any]) -> str:
    """The figures as a BENCHMARKS.md section."""
    lines = [
        "",
        "## Prometheus metrics",
        "",
        f"`bench/metrics_cost.py`: two Berth servers (SQLite, 1 worker, a log line per request "
        f"written to a file in both) identical but for `BERTH_METRICS`, alternated over "
        f"{figures['rounds']} rounds of wrk ({figures['wrk_seconds']} s, "
        f"{figures['connections']} connections); medians, and the median of each round's on / "
        f"off. Measured {figures.get('date', '')} with the load average at "
        f"{' '.join(f'{x:.2f}' for x in figures['load_start'])} at the start, "
        f"{' '.join(f'{x:.2f}' for x in figures['load_end'])} at the end.",
        "",
        *pairs.on_off_rows(figures, "metrics on", "metrics off", TARGET_RATIO),
    ]
    hot = figures["hot_path"]
    lines += [
        "",
        "With other work on the machine (see the load averages) wrk's rates move by far more "
        "than 5% from one run to the next, so read the ratios with that spread in mind; the "
        "in-process figures below resolve what wrk cannot. In-process (no network), per request: the request observer itself (request ID, "
        f"header, timing) {hot['observer_us']:.1f} µs of CPU; counting the request in the "
        f"metrics {hot['metrics_us']:.1f} µs more ({hot['metrics_share']:.1%} of the server's "
        f"time at the metrics-off manifest rate above); the log line {hot['log_line_us']:.1f} µs "
        f"more ({hot['log_line_share']:.1%}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    pairs.run_on_off_bench(__doc__, "metrics", 10, measure, report)


if __name__ == "__main__":
    main()
