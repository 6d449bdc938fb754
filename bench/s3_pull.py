"""Where a streamed pull from Berth on S3 spends its CPU and time, against Distribution's `s3`
driver on the same SeaweedFS (issue 11's streamed pull): per pull, the wall time and the CPU
seconds of the registry, of SeaweedFS and of curl, per GiB, in rounds that alternate the
servers (the first one named is the reference of the paired ratios).

Each `--berth NAME[:VAR=VALUE,...]` starts one Berth on S3 (one worker, SQLite, single node,
`blob_redirect = "off"`) with those extra environment variables, e.g. an older checkout on
PYTHONPATH to compare against (`--berth base:PYTHONPATH=/tmp/berth-base`), or a node cache
(`--berth cached:BERTH_S3_CACHE_DIR=/tmp/cache`). With `--cold`, a Berth's cached copy is
deleted before each of its pulls: every pull is a node's first (streamed from S3 while the
copy is written).

    .venv/bin/python bench/s3_pull.py [--rounds 6] [--size-mib 256] [--berth now] [--cold]
        [--no-distribution]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import regbench  # noqa: E402
from run import IMAGE_NAME, Server, loadavg, process_tree_cpu  # noqa: E402
from s3 import cached_copy, eventually_exists, start_berth_s3, start_distribution_s3  # noqa: E402

from tests.s3 import seaweedfs_server  # noqa: E402

GIB = 1024


@dataclass
class Side:
    name: str
    server: Server
    target: regbench.Target
    cache: Path | None = None  # its s3_cache_dir, if set
    rates: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)  # CPU seconds per GiB
    store_cpu: list[float] = field(default_factory=list)
    curl_cpu: list[float] = field(default_factory=list)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def forget_copies(cache: Path) -> None:
    """A node's first pull again: its cached copies gone (no fill is under way between pulls)."""
    for copy in (cache / "blobs").glob("*"):
        copy.unlink()


def pull(side: Side, digest: str, size_mib: int, store_pid: int, cold: bool) -> None:
    if cold and side.cache is not None:
        forget_copies(side.cache)
    server0, store0, curl0 = (
        process_tree_cpu([side.server.pid]),
        process_tree_cpu([store_pid]),
        _children_cpu(),
    )
    seconds = regbench.pull_blob(side.target, digest)
    # The copy is hashed after the response: wait for it, so its CPU counts in this pull's.
    if cold and side.cache is not None and not eventually_exists(cached_copy(side.cache, digest)):
        raise RuntimeError(f"a cold pull kept no copy in {side.cache}")
    per_gib = GIB / size_mib
    side.rates.append(size_mib / seconds)
    side.server_cpu.append((process_tree_cpu([side.server.pid]) - server0) * per_gib)
    side.store_cpu.append((process_tree_cpu([store_pid]) - store0) * per_gib)
    side.curl_cpu.append((_children_cpu() - curl0) * per_gib)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--berth", action="append", default=[], help="NAME[:VAR=VALUE,...]")
    p.add_argument("--cold", action="store_true", help="delete cached copies before each pull")
    p.add_argument("--no-distribution", action="store_true")
    args = p.parse_args()
    berths = args.berth or ["now"]
    median = statistics.median
    with tempfile.TemporaryDirectory(prefix="berth-s3-pull-") as tmp:
        work = Path(tmp)
        with seaweedfs_server(work / "seaweedfs") as seaweedfs:
            assert seaweedfs.process is not None
            store_pid = seaweedfs.process.pid
            sides: list[Side] = []
            try:
                for spec in berths:
                    name, _, extra = spec.partition(":")
                    given = dict(item.split("=", 1) for item in extra.split(",") if item)
                    # Settings go to Berth's own environment; the rest (PYTHONPATH) through ours.
                    settings = {k: v for k, v in given.items() if k.startswith("BERTH_")}
                    env = {k: v for k, v in given.items() if k not in settings}
                    saved = {key: os.environ.get(key) for key in env}
                    os.environ.update(env)
                    try:
                        server = start_berth_s3(work, seaweedfs, name, "off", settings)
                    finally:
                        for key, value in saved.items():
                            if value is None:
                                os.environ.pop(key, None)
                            else:
                                os.environ[key] = value
                    target = regbench.Target(server.url, IMAGE_NAME, server.user, server.password)
                    cache = settings.get("BERTH_S3_CACHE_DIR")
                    sides.append(Side(name, server, target, Path(cache) if cache else None))
                if not args.no_distribution:
                    server = start_distribution_s3(work, seaweedfs)
                    sides.append(
                        Side("distribution", server, regbench.Target(server.url, IMAGE_NAME))
                    )
                path, digest = regbench.make_blob(args.size_mib, 0)
                for side in sides:
                    regbench.authenticate(side.target)
                    regbench.push_blob(side.target, path, digest)
                    regbench.pull_blob(side.target, digest)  # warm
                before = loadavg()
                for index in range(args.rounds):
                    shift = index % len(sides)
                    order = sides[shift:] + sides[:shift]
                    if index % 2:
                        order.reverse()
                    for side in order:
                        pull(side, digest, args.size_mib, store_pid, args.cold)
                after = loadavg()
            finally:
                for side in sides:
                    side.server.stop()
    print(
        f"load average {before} before, {after} after; {args.rounds} rounds, {args.size_mib} MiB"
        + (", cold" if args.cold else "")
    )
    print(
        "| server | MiB/s | server CPU s/GiB | SeaweedFS CPU s/GiB | curl CPU s/GiB "
        "| rate / first (paired median, range) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    first = sides[0]
    for side in sides:
        paired = [a / b for a, b in zip(side.rates, first.rates, strict=True)]
        print(
            f"| {side.name} | {median(side.rates):.0f} | {median(side.server_cpu):.2f} "
            f"| {median(side.store_cpu):.2f} | {median(side.curl_cpu):.2f} "
            f"| {median(paired):.2f}x ({min(paired):.2f} to {max(paired):.2f}) |"
        )


if __name__ == "__main__":
    main()
