"""CPU time of the whole server per large blob push (granian's Rust side, the ASGI bridge and
Berth's Python together), and the push's MiB/s, for two Berth servers side by side.

Two Berth servers ("A" and "B", one worker each) serve two fresh data directories; `--a-env` and
`--b-env` give either side settings (BERTH_* variables, or PYTHONPATH=DIR to run another
checkout's `berth` package, e.g. main's exported with `git archive`), `--b-granian` granian
options. Each round pushes one blob of `--size-mib` MiB (POST, then one PUT streamed by curl,
as bench/regbench.py does) to each server in turn, the order flipping every round so drift in
the machine's load falls on both alike, and reads the server's CPU seconds from /proc around
the PUT: CPU per push is far less disturbed by other load on a shared machine than MiB/s.
Prints the median CPU seconds and MiB/s of A and B and the median (and range) of the paired
B/A ratios, with the load average before and after.

    .venv/bin/python bench/push_cpu.py --a-env PYTHONPATH=/tmp/berth-main [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import method
import regbench
from run import process_tree_cpu
from server_cpu import add_pair_options, launch_pair, print_pair_header
from servers import PROJECT, REPOSITORY, Server


def push_once(server: Server, target: regbench.Target, size_mib: int, index: int) -> list[float]:
    """[server CPU seconds, MiB/s] of one push of blob `index` of `size_mib` MiB."""
    path, digest = regbench.make_blob(size_mib, index)
    before = process_tree_cpu([server.pid])
    seconds = regbench.push_blob(target, path, digest)
    return [process_tree_cpu([server.pid]) - before, size_mib / seconds]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_pair_options(p)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--size-mib", type=int, default=256)
    args = p.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="berth-pushcpu-") as tmp:
        servers: list[Server] = []
        try:
            launch_pair(Path(tmp), args, servers)
            targets = []
            for server in servers:
                target = regbench.Target(
                    server.url, f"{PROJECT}/{REPOSITORY}/img", server.user, server.password
                )
                regbench.authenticate(target)
                push_once(server, target, 1, 0)  # warm up: first request's imports, the database
                targets.append(target)

            def push(index: int, which: int) -> list[float]:
                figures = push_once(servers[which], targets[which], args.size_mib, index)
                print(
                    f"round {index + 1} {'AB'[which]}: {figures[0]:.3f} s CPU, "
                    f"{figures[1]:.0f} MiB/s",
                    file=sys.stderr,
                    flush=True,
                )
                return figures

            by_server = method.alternate_rounds((0, 1), args.rounds, push)
        finally:
            for server in servers:
                server.stop()
    print_pair_header(args, load_before)
    for column, label in ((0, "CPU s/push"), (1, "MiB/s")):
        a = [r[column] for r in by_server[0]]
        b = [r[column] for r in by_server[1]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(
            f"{label:11} A {statistics.median(a):7.3f}  B {statistics.median(b):7.3f}"
            f"  B/A {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
