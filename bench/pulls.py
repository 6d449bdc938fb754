"""What recording last pull times costs manifest GETs: rates with `record_pulls` on and off.

Two Berth servers side by side (bench/pairs.py: SQLite, one worker, fresh data directories),
identical but for `BERTH_RECORD_PULLS`; wrk rounds alternate between them and the median of the
paired on/off ratios is the figure (target: at least 0.98, recording costs at most 2%). Also
measured in-process, where noise is small: the CPU time `PullRecorder.pulled` adds per GET.

    .venv/bin/python bench/pulls.py [--rounds 10] [--wrk-seconds 2] [--connections 32] [--json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs
from run import ROOT

sys.path.insert(0, str(ROOT))
from berth.metadata.database import Database
from berth.services.pulls import PullRecorder

TARGET_RATIO = 0.98


def hot_path_us(calls: int = 200_000) -> float:
    """Microseconds per `pulled` call of a manifest seen within the minute (the common case)."""
    recorder = PullRecorder(Database(f"sqlite+aiosqlite:///{tempfile.gettempdir()}/unused.db"))
    digest = "sha256:" + "a" * 64
    started = time.perf_counter()
    for _ in range(calls):
        recorder.pulled(1, "img", digest)
    return (time.perf_counter() - started) / calls * 1e6


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers = []
    try:
        on = pairs.launch(work / "on", "pulls-on", {"BERTH_RECORD_PULLS": "true"})
        servers.append(on)
        off = pairs.launch(work / "off", "pulls-off", {"BERTH_RECORD_PULLS": "false"})
        servers.append(off)
        targets = {"on": pairs.prepare(on), "off": pairs.prepare(off)}
        rounds = pairs.alternate(targets, args.rounds, args.wrk_seconds, args.connections, "pulls")
        medians = pairs.medians(rounds)
        return {
            "rounds": args.rounds,
            "on": medians["on"],
            "off": medians["off"],
            "ratio_on_over_off": pairs.paired_ratios(rounds, "on", "off"),
            "pulled_us": hot_path_us(),
        }
    finally:
        for server in servers:
            server.stop()


def report(figures: dict[str, Any]) -> str:
    ratio = figures["ratio_on_over_off"]["manifest_rps"]
    return (
        f"manifest GET: {figures['on']['manifest_rps']:,.0f} req/s recording, "
        f"{figures['off']['manifest_rps']:,.0f} req/s not; paired ratio {ratio:.3f} "
        f"(target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'missed'}); "
        f"PullRecorder.pulled {figures['pulled_us']:.2f} µs a call"
    )


def main() -> None:
    pairs.run_on_off_bench(__doc__, "pulls", 10, measure, report)


if __name__ == "__main__":
    main()
