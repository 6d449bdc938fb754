"""A `berth serve`'s memory, this tree's against another commit's, alternated.

    .venv/bin/python bench/serve_memory.py --before REF [--rounds 3] [--workers 2]
        [--after-env NAME=VALUE ...]

Each round starts a Berth of each (on a fresh data directory, SQLite, the given number of
workers), the order flipping every round so drift in the machine's load falls on both alike.
REF's tree comes from `git archive` and runs on this virtualenv with PYTHONPATH pointing at
it; `--after-env` gives this tree's server environment variables of its own (to compare a
setting: `--before HEAD --after-env BERTH_...=...`). Per server: the memory once ready (idle), its peak while `regbench.py run` pushes and pulls
a blob and drives manifest and 4 KiB blob GETs with wrk (load), and after it; each as PSS (the
proportional set size: a page shared by several processes counts once, split between them)
summed over granian's supervisor and its workers, with the summed RSS beside it, and the
anonymous part of the PSS (the processes' own memory, not the files they map: libraries are
shared with every other process on the machine that maps them, so their share moves with what
else runs). Figures in MB (10⁶ bytes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import MemorySampler, process_tree
from method import alternate_rounds
from servers import IMAGE_NAME, launch_berth, log_in_berth, wait_ready

ROOT = Path(__file__).resolve().parent.parent
REGBENCH = Path(__file__).resolve().parent / "regbench.py"
MB = 1_000_000
FIGURES = ("idle", "peak", "after")


def pss_anon_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss_Anon:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def tree_of(ref: str, into: Path) -> Path:
    """`ref`'s files (git archive) in `into`."""
    into.mkdir(parents=True)
    archive = into / "tree.tar"
    subprocess.run(["git", "archive", "--output", str(archive), ref], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def measure(
    work: Path, tree: Path | None, workers: int, size_mib: int, env: dict[str, str]
) -> dict[str, float]:
    settings = {"PYTHONPATH": str(tree)} if tree else env
    server = launch_berth(work, workers, settings)
    sampler = MemorySampler(server.pid)
    try:
        sampler.start()
        wait_ready(server)
        log_in_berth(server)
        time.sleep(2)  # every worker started and settled
        sampler.pids = process_tree(server.pid)
        figures = {
            "workers": len(sampler.pids) - 1,
            "idle_pss": sampler.current_pss() / MB,
            "idle_rss": sampler.current() / MB,
            "idle_anon": pss_anon_bytes(sampler.pids) / MB,
        }
        sampler.restart_peak()
        assert server.user and server.password
        credentials = ["--user", server.user, "--password", server.password]
        load = ["--size-mib", str(size_mib), "--runs", "1", "--wrk-seconds", "3"]
        ran = subprocess.run(
            [sys.executable, str(REGBENCH), "run", server.url, IMAGE_NAME, *credentials, *load],
            check=True,
            capture_output=True,
            text=True,
        )
        time.sleep(1)
        sampler.pids = process_tree(server.pid)
        figures |= {
            "peak_pss": max(sampler.peak_pss, sampler.current_pss()) / MB,
            "peak_rss": sampler.peak / MB,
            "after_pss": sampler.current_pss() / MB,
            "after_rss": sampler.current() / MB,
            "after_anon": pss_anon_bytes(sampler.pids) / MB,
        }
        # regbench's figures, to see what a setting costs in speed (loaded: only a hint)
        for line in ran.stdout.splitlines():
            name, _, value = line.rpartition(" ")
            if name.strip().endswith("MiBps"):
                figures[name.strip()] = float(value)
        return figures
    finally:
        sampler.stop()
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--before", required=True, help="the commit to compare this tree with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size-mib", type=int, default=256, help="regbench's blob")
    p.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE")
    args = p.parse_args()
    after_env = dict(setting.split("=", 1) for setting in args.after_env)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="berth-serve-memory-") as tmp:
        work = Path(tmp)
        before = tree_of(args.before, work / "before")

        def measure_side(round_: int, side: str) -> dict[str, float]:
            tree = before if side == "before" else None
            figures = measure(
                work / f"{side}-{round_}", tree, args.workers, args.size_mib, after_env
            )
            shown = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
            print(f"round {round_ + 1} {side:6}: {shown}", flush=True)
            return figures

        results = alternate_rounds(["before", "after"], args.rounds, measure_side)
        print(f"load at the end {os.getloadavg()}")
        for figure in ("idle_pss", "peak_pss", "after_pss", "idle_rss", "peak_rss", "idle_anon"):
            a = [r[figure] for r in results["before"]]
            b = [r[figure] for r in results["after"]]
            ratios = [y / x for x, y in zip(a, b, strict=True)]
            print(
                f"{figure:10} before {statistics.median(a):6.1f} ({min(a):.1f}-{max(a):.1f})"
                f"  after {statistics.median(b):6.1f} ({min(b):.1f}-{max(b):.1f})"
                f"  after/before {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
