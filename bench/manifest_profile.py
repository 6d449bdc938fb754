"""What one manifest GET or HEAD (and a 4 KiB blob GET) costs inside Berth, request by request,
with token auth on.

A real `berth serve` is started (bench/pairs.py) to create the project, an access key, a bearer
token, a 4 KiB blob and a manifest tagged `bench`; it is stopped, and the same data directory is
then served in-process: the ASGI application is called directly, N times per case, so the time
is Berth's own (no HTTP parsing, no socket, no client). Each case reports the mean microseconds
per request and, from cProfile, the share of that time in each part of the request's path.
In-process CPU time is what a quiet 2-core machine would turn into req/s; it is also far less
disturbed by other load than wrk figures are (though not immune to it: read the ratios).

    .venv/bin/python bench/manifest_profile.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs
import regbench

# cProfile's functions, grouped by the part of the request they belong to (first match wins:
# file path fragment, function name fragment or "").
PARTS: list[tuple[str, str, str]] = [
    ("observability/requests.py", "", "request observer (ID, metrics, access log)"),
    ("observability/metrics.py", "", "request observer (ID, metrics, access log)"),
    ("observability/logs.py", "", "request observer (ID, metrics, access log)"),
    ("berth/limits.py", "", "limits middleware"),
    ("berth/app.py", "__call__", "Host check and registry header middleware"),
    ("access/tokens.py", "", "token verification (cached)"),
    ("access/identify.py", "", "caller identification"),
    ("access/credentials.py", "", "access key still works (1 s cache)"),
    ("access/roles.py", "", "role lookup (1 s cache)"),
    ("access/scopes.py", "", "token scope ∩ current rights"),
    ("auth/guard.py", "", "caller identification"),
    ("services/repositories.py", "", "repository lookup (1 s cache)"),
    ("metadata/database.py", "", "database round trip (SQLite point read)"),
    ("sqlite3", "", "database round trip (SQLite point read)"),
    ("execute' of 'sqlite3", "", "database round trip (SQLite point read)"),
    ("domain/digests.py", "", "hashing the manifest"),
    ("_hashlib", "", "hashing the manifest"),
    ("services/manifests.py", "", "manifest lookup (service)"),
    ("services/manifest_cache.py", "", "manifest cache"),
    ("domain/manifests.py", "accepts", "Accept header check"),
    ("starlette/responses.py", "", "response building and sending"),
    ("starlette/datastructures.py", "", "request headers and URL (Starlette)"),
    ("starlette/requests.py", "", "request headers and URL (Starlette)"),
    ("starlette/routing.py", "", "routing (Starlette)"),
    ("starlette/middleware", "", "Starlette middleware plumbing"),
    ("starlette/applications.py", "", "Starlette middleware plumbing"),
    ("starlette/_exception_handler.py", "", "Starlette middleware plumbing"),
    ("registry/routes.py", "", "the handler itself"),
    ("registry/fastpath.py", "", "pull fast path (instead of routing)"),
    ("domain/names.py", "", "name parsing and host routing"),
    ("berth/state.py", "", "name parsing and host routing"),
    ("sqlalchemy", "", "SQL statements built per request (SQLAlchemy)"),
    ("cachetools", "", "cache lookups (cachetools)"),
    ("asyncio", "", "event loop (asyncio)"),
    ("manifest_profile.py", "", "this bench's own ASGI calls"),
]


def part_of(filename: str, function: str) -> str:
    for fragment, name, part in PARTS:
        if fragment in filename and name in function:
            return part
    return "other (asyncio, Python built-ins)"


def scope_for(method: str, path: str, headers: dict[str, str], port: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", f"127.0.0.1:{port}".encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", port),
        "state": {},
        # As granian offers it: a blob file is handed to the server, not read by Berth.
        "extensions": {"http.response.pathsend": {}},
    }


async def call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
    status = 0
    body = bytearray()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
        elif message["type"] == "http.response.pathsend":
            pass  # the server would send the file: not Berth's CPU

    await app(dict(scope, headers=list(scope["headers"])), receive, send)
    return status, bytes(body)


async def run_case(
    app: Any, scope: dict[str, Any], requests: int, profile: bool
) -> tuple[float, dict[str, float]]:
    """Mean CPU µs per request; and with `profile`, the share of own time per part."""
    for _ in range(200):  # warm the caches and the code paths
        status, _ = await call(app, scope)
        assert status == 200, status
    profiler = cProfile.Profile() if profile else None
    # CPU time of this process, not wall time: other load on the machine delays a request
    # more than it makes it cost more.
    began = time.process_time()
    if profiler is not None:
        profiler.enable()
    for _ in range(requests):
        await call(app, scope)
    if profiler is not None:
        profiler.disable()
    mean_us = (time.process_time() - began) / requests * 1e6
    shares: dict[str, float] = {}
    if profiler is not None:
        stats = pstats.Stats(profiler)
        total = 0.0
        for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
            own = row[2]
            part = part_of(f"{filename}:{function}", function)
            shares[part] = shares.get(part, 0.0) + own
            total += own
        shares = {k: v / total for k, v in shares.items()}
    return mean_us, shares


def prepare(work: Path) -> tuple[Path, str, str, int, str]:
    """A data directory with the bench image; its token, the manifest's digest, the port and
    the 4 KiB blob's digest."""
    server = pairs.launch(work / "server", "Berth")
    try:
        target, small = pairs.prepare(server)
        status, headers, _ = regbench._request(
            "HEAD",
            target.api("manifests/bench"),
            {**target.headers, "Accept": regbench.MANIFEST_TYPE},
        )
        assert status == 200, status
        port = int(server.url.rsplit(":", 1)[1])
        return (
            work / "server" / "berth-data",
            target.headers["Authorization"],
            headers["docker-content-digest"],
            port,
            small,
        )
    finally:
        server.stop()


async def measure(
    data_dir: Path,
    auth: str,
    digest: str,
    port: int,
    blob: str,
    requests: int,
    profile: bool = True,
) -> dict[str, tuple[float, dict[str, float]]]:
    os.environ["BERTH_DATA_DIR"] = str(data_dir)
    os.environ["BERTH_TOKEN_TTL"] = "3600"
    os.environ["BERTH_CONFIG"] = os.devnull
    os.environ["BERTH_LOG_LEVEL"] = "warning"
    from berth.app import create_app

    app = create_app()
    base = f"/v2/{pairs.PROJECT}/{pairs.REPOSITORY}/img/manifests"
    headers = {"Authorization": auth, "Accept": regbench.MANIFEST_TYPE}
    cases = {
        "GET by tag": scope_for("GET", f"{base}/bench", headers, port),
        "GET by digest": scope_for("GET", f"{base}/{digest}", headers, port),
        "HEAD by tag": scope_for("HEAD", f"{base}/bench", headers, port),
        "4 KiB blob GET": scope_for(
            "GET", f"/v2/{pairs.PROJECT}/{pairs.REPOSITORY}/img/blobs/{blob}", headers, port
        ),
    }
    found: dict[str, tuple[float, dict[str, float]]] = {}
    async with app.router.lifespan_context(app):
        for name, scope in cases.items():
            timed = [(await run_case(app, scope, requests, False))[0] for _ in range(5)]
            shares = (await run_case(app, scope, requests, True))[1] if profile else {}
            found[name] = (sorted(timed)[2], shares)
    return found


def report(figures: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for `--json`'s figures (bench/run.py appends it)."""
    cases = figures["cases"]
    names = list(cases)
    parts = sorted(
        {part for case in cases.values() for part in case["shares"]},
        key=lambda part: -max(case["shares"].get(part, 0.0) for case in cases.values()),
    )
    lines = [
        "## What a manifest GET or HEAD costs (bench/manifest_profile.py)",
        "",
        "The application called in-process (no HTTP, no socket, no client) on a data directory "
        "a real server prepared, with a bearer token as docker sends it: CPU time of the process "
        f"per request (median of 5 runs of {figures['requests']:,}), and from cProfile the share "
        "of that time in each part of the request's path (cProfile inflates small calls; read "
        "the shares as relative). Load average before / after: "
        f"{figures['load_before']} / {figures['load_after']}.",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        "| CPU per request | " + " | ".join(f"{cases[n]['cpu_us']:.0f} µs" for n in names) + " |",
        *(
            f"| {part} | "
            + " | ".join(f"{cases[n]['shares'].get(part, 0.0):.1%}" for n in names)
            + " |"
            for part in parts
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--no-profile", action="store_true", help="CPU time only, no breakdown")
    p.add_argument("--json", action="store_true", help="figures as JSON (for bench/run.py)")
    args = p.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="berth-mprof-") as tmp:
        data_dir, auth, digest, port, blob = prepare(Path(tmp))
        found = asyncio.run(
            measure(data_dir, auth, digest, port, blob, args.requests, not args.no_profile)
        )
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    if args.json:
        figures = {
            "requests": args.requests,
            "load_before": " ".join(load_before),
            "load_after": " ".join(load_after),
            "cases": {
                name: {"cpu_us": us, "shares": shares} for name, (us, shares) in found.items()
            },
        }
        print(json.dumps(figures))
        return
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    for name, (mean_us, shares) in found.items():
        print(
            f"\n{name}: {mean_us:.0f} µs of CPU per request (median of 5 runs of {args.requests:,})"
        )
        for part, share in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"  {share:6.1%}  {part}")


if __name__ == "__main__":
    main()
