"""CPU time of the whole server per request (granian's Rust side, the ASGI bridge and Berth's
Python together), for the small requests docker sends most: manifest GET by tag and by digest,
manifest HEAD and a 4 KiB blob GET, each with a bearer token as bench/regbench.py sends them.

Two Berth servers ("A" and "B", one worker each) serve two fresh data directories; `--b-granian`
adds granian options to B's command line (berth serve builds the rest) and `--b-env` BERTH_*
settings. For each case, wrk drives each server in turn (the order flips every round, so drift in
the machine's load falls on both alike) and the CPU seconds of the server's processes (from
/proc) are divided by the requests wrk completed: CPU per request is far less disturbed by other
load on a shared machine than req/s. Prints per case the median µs per request of A and B and the
median of the paired B/A ratios, with the load average before and after.

    .venv/bin/python bench/server_cpu.py --b-granian="--runtime-mode st" [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import method
import pairs
import regbench
from run import process_tree_cpu
from servers import Server

# `berth serve` with extra arguments given to granian: its exec into granian is intercepted and
# the arguments put before the application's name (the last argument).
SERVE_WITH_EXTRA = """
import os, sys
extra = sys.argv[1:]
sys.argv = ["berth", "serve"]
real_execv = os.execv
os.execv = lambda path, argv: real_execv(path, [*argv[:-1], *extra, argv[-1]])
from berth.cli.main import app
app()
"""


def launch(work: Path, name: str, granian: list[str], settings: dict[str, str]) -> Server:
    """The bench's Berth (bench/pairs.py) with `granian` options given to its granian."""
    return pairs.launch(work, name, settings, [sys.executable, "-c", SERVE_WITH_EXTRA, *granian])


async def head_loop(url: str, headers: dict[str, str], seconds: int, conns: int) -> int:
    """HEADs on `conns` keep-alive connections for `seconds` (wrk waits for a HEAD's body)."""
    parts = urllib.parse.urlsplit(url)
    request = (
        f"HEAD {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        + "".join(f"{key}: {value}\r\n" for key, value in headers.items())
        + "\r\n"
    ).encode()
    deadline = time.monotonic() + seconds
    done = 0

    async def connection() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                sys.exit(f"HEAD {url} answered {head[:200]!r}")
            done += 1
        writer.close()

    await asyncio.gather(*(connection() for _ in range(conns)))
    return done


def wrk_requests(url: str, headers: dict[str, str], method: str, seconds: int, conns: int) -> int:
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    if method == "HEAD":
        return asyncio.run(head_loop(url, headers, seconds, conns))
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw non-2xx answers for {method} {url}:\n{out}")
    found = re.search(r"(\d+) requests in", out)
    if found is None or found.group(1) == "0":
        sys.exit(f"wrk completed no request for {method} {url}:\n{out}")
    assert found is not None, out
    return int(found.group(1))


def cpu_per_request(
    server: Server, case: tuple[str, str, dict[str, str]], args: argparse.Namespace
) -> float:
    method, url, headers = case
    before = process_tree_cpu([server.pid])
    done = wrk_requests(url, headers, method, args.seconds, args.connections)
    return (process_tree_cpu([server.pid]) - before) / done * 1e6


def cases_for(server: Server) -> dict[str, tuple[str, str, dict[str, str]]]:
    target, small = pairs.prepare(server)
    accept = {**target.headers, "Accept": regbench.MANIFEST_TYPE}
    status, headers, _ = regbench._request("HEAD", target.api("manifests/bench"), accept)
    assert status == 200, status
    digest = headers["docker-content-digest"]
    return {
        "manifest GET by tag": ("GET", target.api("manifests/bench"), accept),
        "manifest GET by digest": ("GET", target.api(f"manifests/{digest}"), accept),
        "manifest HEAD by tag": ("HEAD", target.api("manifests/bench"), accept),
        "4 KiB blob GET": ("GET", target.api(f"blobs/{small}"), dict(target.headers)),
    }


def add_pair_options(parser: argparse.ArgumentParser) -> None:
    """The options naming what the two servers A and B differ in."""
    parser.add_argument("--a-granian", default="", help="granian options for A")
    parser.add_argument("--b-granian", default="", help="granian options for B")
    parser.add_argument("--a-env", action="append", default=[], help="NAME=VALUE for A")
    parser.add_argument("--b-env", action="append", default=[], help="NAME=VALUE for B")


def launch_pair(tmp: Path, args: argparse.Namespace, servers: list[Server]) -> None:
    """Start A and B as the options say, appended to `servers` (for the caller to stop)."""
    for name, granian, env in (
        ("A", args.a_granian, args.a_env),
        ("B", args.b_granian, args.b_env),
    ):
        settings = dict(item.split("=", 1) for item in env)
        servers.append(launch(tmp / name, name, shlex.split(granian), settings))


def print_pair_header(args: argparse.Namespace, load_before: list[str]) -> None:
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"A: {args.a_granian!r} {args.a_env}  B: {args.b_granian!r} {args.b_env}")
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_pair_options(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--only", default="", help="run only cases whose name contains this")
    args = p.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="berth-scpu-") as tmp:
        servers = []
        try:
            launch_pair(Path(tmp), args, servers)
            cases = [cases_for(server) for server in servers]
            results: dict[str, tuple[list[float], list[float]]] = {}
            for case in cases[0]:
                if args.only not in case:
                    continue

                def cpu_us(_: int, which: int, case: str = case) -> float:
                    return cpu_per_request(servers[which], cases[which][case], args)

                by_server = method.alternate_rounds((0, 1), args.rounds, cpu_us)
                results[case] = (by_server[0], by_server[1])
        finally:
            for server in servers:
                server.stop()
    print_pair_header(args, load_before)
    for case, (a_us, b_us) in results.items():
        ratios = [b / a for a, b in zip(a_us, b_us, strict=True)]
        print(
            f"{case:24} A {statistics.median(a_us):6.0f} µs  B {statistics.median(b_us):6.0f} µs"
            f"  B/A {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
