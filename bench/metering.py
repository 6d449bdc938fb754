"""What counting outbound traffic costs the registry core: GET rates with metering on and off.

Starts two Berth servers side by side on free ports of 127.0.0.1, each on a fresh temporary data
directory with the defaults `make bench` uses (SQLite, one worker), identical but for
`BERTH_TRAFFIC_METERING` (true: the default; false: nothing is counted). Pushes a 4 KiB blob and
a manifest to each, then alternates the two round by round (the order flips every round, so
drift hits both alike) with the same wrk runs as `regbench.py`: manifest GET by tag and 4 KiB
blob GET. Prints the medians, and the median over rounds of metered / unmetered (each round's
pair ran back to back; many short rounds, so that the load of anything else running shifts
both sides of a pair alike): the target is at least 0.95 (metering costs at most 5%). Finally stops
the metered server (a clean shutdown writes the last counts) and checks what it counted against
what wrk says it received.

On a shared two-core machine wrk's rates drift by more than 5% from one run to the next, so the
same difference is also measured in-process, where noise is small: the CPU time per request that
metering adds to the two responses (building them and sending them to a no-op ASGI `send`), and
what share of a request's time that is at the measured rates.

    .venv/bin/python bench/metering.py [--rounds 20] [--wrk-seconds 2] [--connections 32] [--json]

Every process started here runs in its own session and is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs
import regbench  # the team's registry-neutral benchmark
from pairs import SMALL_BLOB
from run import BERTH, PROJECT, ROOT, Server, spawn, wait_ready

sys.path.insert(0, str(ROOT))

from berth.metadata.database import Database
from berth.registry.responses import BlobFileResponse, ManifestResponse
from berth.services.metering import TrafficMeter

TARGET_RATIO = 0.95


def wrk_requests(target: regbench.Target, path: str, args: argparse.Namespace) -> int:
    """One more short wrk run, for its request count (what the counters must have seen)."""
    argv = ["wrk", "-t2", f"-c{args.connections}", "-d2s"]
    for key, value in target.headers.items():
        argv += ["-H", f"{key}: {value}"]
    argv += ["-H", f"Accept: {regbench.MANIFEST_TYPE}", target.api(path)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+) requests in", out)
    if found is None or "Non-2xx" in out:
        sys.exit(f"unexpected wrk output:\n{out}")
    return int(found.group(1))


def counted(server: Server) -> dict[str, int]:
    """What the (stopped) server wrote to traffic_daily this month for the bench project."""
    out = subprocess.run(
        [str(BERTH), "usage", PROJECT, "--json", "--days", "1"],
        env=server.env,
        cwd=server.log.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    today: dict[str, int] = json.loads(out)["traffic"]["daily"][-1]
    return {"bytes": today["bytes"], "requests": today["requests"]}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Server] = []
    try:
        metered = pairs.launch(work / "metered", "metered", {"BERTH_TRAFFIC_METERING": "true"})
        servers.append(metered)
        unmetered = pairs.launch(
            work / "unmetered", "unmetered", {"BERTH_TRAFFIC_METERING": "false"}
        )
        servers.append(unmetered)
        targets = {"on": pairs.prepare(metered), "off": pairs.prepare(unmetered)}
        rounds = pairs.alternate(
            targets, args.rounds, args.wrk_seconds, args.connections, "metering"
        )
        medians = pairs.medians(rounds)
        paired = pairs.paired_ratios(rounds, "on", "off")
        # The counters' accuracy: the difference across one more run whose answers wrk counts.
        metered.stop()
        before = counted(metered)
        metered = launch_again(metered)
        servers.append(metered)
        target, _small = targets["on"]
        regbench.authenticate(target)
        sent = wrk_requests(target, "manifests/bench", args)
        metered.stop()
        after = counted(metered)
        return {
            "rounds": args.rounds,
            "wrk_seconds": args.wrk_seconds,
            "connections": args.connections,
            "on": medians["on"],
            "off": medians["off"],
            "ratio_on_over_off": paired,
            "hot_path": hot_path_cost(work, medians["off"]),
            "check": {
                "wrk_requests": sent,
                "counted_requests": after["requests"] - before["requests"],
                "counted_bytes": after["bytes"] - before["bytes"],
            },
        }
    finally:
        for server in servers:
            server.stop()


def hot_path_cost(work: Path, rates: dict[str, float], calls: int = 50_000) -> dict[str, float]:
    """Microseconds of CPU per request that metering adds to each response, in-process, and
    that cost times the unmetered request rate: the share of the server's time it takes."""
    meter = TrafficMeter(Database(f"sqlite+aiosqlite:///{work}/unused.db"))
    blob = work / "blob"
    blob.write_bytes(os.urandom(SMALL_BLOB))
    digest = "sha256:" + "0" * 64
    content = os.urandom(1200)
    scope = {"type": "http", "method": "GET", "extensions": {"http.response.pathsend": {}}}

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        return None

    def manifest(metered: bool) -> Any:
        counter = partial(meter.count, 1, 2) if metered else None
        return ManifestResponse(digest, regbench.MANIFEST_TYPE, content, on_sent=counter)

    def small_blob(metered: bool) -> Any:
        counter = partial(meter.count, 1, 2) if metered else None
        return BlobFileResponse(str(blob), SMALL_BLOB, digest, counter)

    async def timed(make: Callable[[bool], Any], metered: bool) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await make(metered)(scope, receive, send)
        return (time.perf_counter() - started) / calls * 1e6

    async def compare(make: Callable[[bool], Any]) -> float:
        # Best of several alternating tries: the least disturbed measurement of each.
        on, off = [], []
        for _ in range(7):
            on.append(await timed(make, True))
            off.append(await timed(make, False))
        return min(on) - min(off)

    async def both() -> dict[str, float]:
        return {
            "manifest_us": await compare(manifest),
            "small_blob_us": await compare(small_blob),
        }

    added = asyncio.run(both())
    return {
        **added,
        "manifest_share": added["manifest_us"] * 1e-6 * rates["manifest_rps"],
        "small_blob_share": added["small_blob_us"] * 1e-6 * rates["small_blob_rps"],
    }


def launch_again(server: Server) -> Server:
    """The same server (same data, same port) started again."""
    port = int(server.url.rsplit(":", 1)[1])
    again = spawn(server.name, [str(BERTH), "serve"], server.env, server.log, port)
    wait_ready(again)
    again.user, again.password = server.user, server.password
    return again


def report(figures: dict[str, Any]) -> str:
    """The figures as a BENCHMARKS.md section."""
    lines = [
        "",
        "## Outbound traffic metering",
        "",
        f"`bench/metering.py`: two Berth servers (SQLite, 1 worker) identical but for "
        f"`BERTH_TRAFFIC_METERING`, alternated over {figures['rounds']} rounds of wrk "
        f"({figures['wrk_seconds']} s, {figures['connections']} connections); medians, and the "
        "median of each round's on / off.",
        "",
        *pairs.on_off_rows(figures, "metering on", "metering off", TARGET_RATIO),
    ]
    hot = figures["hot_path"]
    lines += [
        "",
        "On this shared machine wrk's rates move by more than 5% between runs; the ratios are "
        "medians of back-to-back pairs. Measured in-process instead (no network, no other load "
        "to speak of), metering adds "
        f"{hot['manifest_us']:.2f} µs of CPU to a manifest GET and {hot['small_blob_us']:.2f} µs "
        "to a blob GET (a bound function, one dict update, the response's extra call): at the "
        f"unmetered rates above, {hot['manifest_share']:.1%} and {hot['small_blob_share']:.1%} of "
        "the server's time.",
    ]
    check = figures["check"]
    lines += [
        "",
        f"A further 2 s wrk run of manifest GETs received {check['wrk_requests']:,} answers; the "
        f"metered server counted {check['counted_requests']:,} requests "
        f"({check['counted_bytes']:,} bytes), written at its clean shutdown (wrk does not count "
        "the requests still in flight when it stops).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    pairs.run_on_off_bench(__doc__, "metering", 20, measure, report)


if __name__ == "__main__":
    main()
