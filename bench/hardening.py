"""What anonymous clients can cost the server (issue 9, items 21 to 23): memory and latency.

Starts one Berth (SQLite, one worker, the default limits and timeouts) on a free port of
127.0.0.1, on a fresh temporary data directory, pushes a small image with an administrator's
access key, and measures, reading the granian worker process's memory from /proc (VmRSS, and
VmHWM after writing 5 to /proc/PID/clear_refs so that the peak starts from now):

1. the peak RSS growth while a 256 MiB anonymous body is sent to `/auth/token`,
   `/api/v1/session` and `/api/v1/projects`, with Content-Length and chunked (target < 64 MB
   each; the largest is reported);
2. the RSS growth after 15,000 anonymous token requests with distinct 8 kB key IDs (before the
   fix: 115 MB and growing; target < 16 MB), also after 5,000 and 10,000;
3. with 1,100 slow connections open from 127.0.0.2-21 (a third each: unfinished headers, a
   trickled anonymous token form, a trickled anonymous blob PUT), the time of an authenticated
   pull (token, manifest GET, blob GET; target < 1 s, median of 3 tries);
4. the peak RSS growth while curl sends a 64 MiB anonymous body over HTTP/2 (h2c) to
   `/auth/token` (target < 32 MB).

MB here is 10^6 bytes. Loopback only; about half a minute.

    .venv/bin/python bench/hardening.py [--json]

`make bench` runs it with `--json` and puts `report()`'s section into BENCHMARKS.md. Every
process started here runs in its own session and is stopped on the way out.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs
import regbench  # the team's registry-neutral benchmark
from run import IMAGE_NAME, Server

MIB = 1 << 20
MB = 1_000_000
LARGE_BODY = 256 * MIB
LARGE_PATHS = ("/auth/token", "/api/v1/session", "/api/v1/projects")
BOGUS_KEYS = 15_000
SLOW_CLIENTS = 1100
PULL_TRIES = 3
HTTP2_BODY = 64 * MIB

TARGET_LARGE_MB = 64
TARGET_BOGUS_MB = 16
TARGET_PULL_S = 1.0
TARGET_HTTP2_MB = 32


# ---------------------------------------------------------------- server and memory


def worker_pid(server: Server) -> int:
    """The granian worker serving requests: the child of the server's main process."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server.pid and (
            b"berth.app:create_app" in cmdline or b"spawn" in cmdline
        ):
            workers.append(int(stat.parent.name))
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker process of {server.pid}, found {workers}")
    return workers[0]


def memory_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Start VmHWM again from the current RSS; returns that RSS (kB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kb(pid, "VmRSS")


def peak_growth_mb(pid: int, before_kb: int) -> float:
    return (memory_kb(pid, "VmHWM") - before_kb) * 1024 / MB


def address(server: Server) -> str:
    return server.url.removeprefix("http://")


def connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    host, port = address(server).rsplit(":", 1)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


def read_response(sock: socket.socket, timeout: float = 30) -> bytes:
    """What the server sends until it closes (or `timeout` seconds pass)."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response.split(b" ", 2)[1])


# ---------------------------------------------------------------- 1: large bodies


def send_large_body(server: Server, path: str, size: int, chunked: bool) -> bytes:
    """POST `size` bytes anonymously, as fast as the server takes them; the response."""
    sock = connect(server)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address(server)}\r\n{framing}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    response: list[bytes] = []
    reader = threading.Thread(target=lambda: response.append(read_response(sock)), daemon=True)
    piece = b"x" * MIB
    with sock:
        sock.sendall(head.encode())
        reader.start()
        try:
            for _ in range(size // MIB):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused and closed before the whole body was sent
        reader.join(35)
    return response[0] if response else b""


def large_bodies(server: Server) -> list[dict[str, Any]]:
    worker = worker_pid(server)
    found = []
    for path in LARGE_PATHS:
        for chunked in (False, True):
            before = reset_peak(worker)
            started = time.monotonic()
            response = send_large_body(server, path, LARGE_BODY, chunked)
            found.append(
                {
                    "path": path,
                    "framing": "chunked" if chunked else "content-length",
                    "status": status_of(response),
                    "seconds": time.monotonic() - started,
                    "peak_growth_mb": peak_growth_mb(worker, before),
                }
            )
            log(f"256 MiB to {path} ({found[-1]['framing']}): {found[-1]}")
    return found


# ---------------------------------------------------------------- 2: made-up key IDs


def bogus_key_ids(server: Server) -> dict[str, Any]:
    worker = worker_pid(server)
    host, port = address(server).rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    query = urllib.parse.urlencode({"service": address(server)})
    statuses: dict[str, int] = {}

    def ask(number: int) -> None:
        bogus = f"{number:08d}" + "K" * 8192
        basic = base64.b64encode(f"{bogus}:x".encode()).decode()
        connection.request(
            "GET", f"/auth/token?{query}", headers={"Authorization": f"Basic {basic}"}
        )
        response = connection.getresponse()
        response.read()
        statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
        if response.will_close:
            connection.close()

    try:
        for number in range(200):  # warm up: the code paths, not the remembered IDs
            ask(10_000_000 + number)
        statuses.clear()
        before = memory_kb(worker, "VmRSS")
        growth: dict[str, float] = {}
        started = time.monotonic()
        for number in range(BOGUS_KEYS):
            ask(number)
            if (number + 1) % 5000 == 0:
                growth[str(number + 1)] = (memory_kb(worker, "VmRSS") - before) * 1024 / MB
                log(f"{number + 1:,} made-up key IDs: RSS +{growth[str(number + 1)]:.1f} MB")
        seconds = time.monotonic() - started
    finally:
        connection.close()
    return {
        "requests": BOGUS_KEYS,
        "statuses": statuses,
        "seconds": seconds,
        "rss_growth_mb": growth,
    }


# ---------------------------------------------------------------- 3: slow clients


def open_slow_clients(server: Server, stack: ExitStack, count: int) -> list[socket.socket]:
    """`count` connections from 127.0.0.2-21 that stop mid-request: an unfinished header, an
    unfinished token form, an unfinished anonymous blob PUT."""
    socks = []
    host = address(server)
    for number in range(count):
        sock = stack.enter_context(connect(server, f"127.0.0.{2 + number % 20}"))
        kind = number % 3
        if kind == 0:
            sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Slow:".encode())
        elif kind == 1:
            sock.sendall(
                f"POST /auth/token HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
                "grant_type=pass".encode()
            )
        else:
            sock.sendall(
                f"PUT /v2/{IMAGE_NAME}/blobs/uploads/x?digest=sha256:{'0' * 64} HTTP/1.1\r\n"
                f"Host: {host}\r\nContent-Length: {MIB}\r\n\r\n".encode()
                + b"z" * 1000
            )
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of the slow connections the server has neither answered nor closed."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            count += sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def pull_once(server: Server, service: str, layer: str) -> float:
    """Seconds for an authenticated pull: token, manifest GET, blob GET (new connections)."""
    basic = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    query = urllib.parse.urlencode({"service": service, "scope": f"repository:{IMAGE_NAME}:pull"})
    started = time.monotonic()
    status, _, body = regbench._request(
        "GET", f"{server.url}/auth/token?{query}", {"Authorization": f"Basic {basic}"}
    )
    if status != 200:
        raise RuntimeError(f"token answered HTTP {status} {body[:200]!r}")
    bearer = {"Authorization": f"Bearer {json.loads(body)['token']}"}
    target = regbench.Target(server.url, IMAGE_NAME)
    accept = {**bearer, "Accept": regbench.MANIFEST_TYPE}
    status, _, body = regbench._request("GET", target.api("manifests/bench"), accept)
    if status != 200:
        raise RuntimeError(f"manifest GET answered HTTP {status} {body[:200]!r}")
    status, _, body = regbench._request("GET", target.api(f"blobs/{layer}"), bearer)
    if status != 200:
        raise RuntimeError(f"blob GET answered HTTP {status} {body[:200]!r}")
    return time.monotonic() - started


def slow_clients(server: Server) -> dict[str, Any]:
    target = regbench.Target(server.url, IMAGE_NAME, server.user, server.password)
    regbench.authenticate(target)
    layer = regbench.push_blob_bytes(target, os.urandom(4096))
    regbench.put_manifest(target, layer, 4096, "bench")
    _, headers, _ = regbench._request("GET", f"{server.url}/v2/", {})
    service = dict(
        part.split("=", 1) for part in headers["www-authenticate"].split(" ", 1)[1].split(",")
    )["service"].strip('"')
    unloaded = [pull_once(server, service, layer) for _ in range(PULL_TRIES)]
    with ExitStack() as stack:
        started = time.monotonic()
        socks = open_slow_clients(server, stack, SLOW_CLIENTS)
        opened = time.monotonic() - started
        time.sleep(0.5)  # the server has taken them all
        tries = []
        for _ in range(PULL_TRIES):
            tries.append(pull_once(server, service, layer))
            log(f"pull beside {SLOW_CLIENTS:,} slow connections: {tries[-1]:.3f} s")
        open_after = still_open(socks)
    return {
        "connections": SLOW_CLIENTS,
        "open_seconds": opened,
        "still_open_after_pulls": open_after,
        "pull_seconds": tries,
        "pull_median_seconds": statistics.median(tries),
        "pull_unloaded_median_seconds": statistics.median(unloaded),
    }


# ---------------------------------------------------------------- 4: HTTP/2


def http2_body(server: Server) -> dict[str, Any]:
    worker = worker_pid(server)
    before = reset_peak(worker)
    curl = subprocess.run(
        [
            "curl", "-s", "--http2-prior-knowledge", "-X", "POST", "-T", "-", "-o", "/dev/null",
            "-w", "%{http_version} %{http_code}", f"{server.url}/auth/token",
        ],
        input=b"x" * HTTP2_BODY,
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    growth = peak_growth_mb(worker, before)
    version, _, code = curl.stdout.decode().partition(" ")
    found = {
        "curl_exit": curl.returncode,  # 92: the stream was reset, the body left unread
        "http_version": version,
        "status": code,
        "peak_growth_mb": growth,
    }
    log(f"64 MiB over h2c to /auth/token: {found}")
    return found


# ---------------------------------------------------------------- run and report


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(work: Path) -> dict[str, Any]:
    server = pairs.launch(work / "berth", "Berth")
    try:
        started = time.monotonic()
        large = large_bodies(server)
        bogus = bogus_key_ids(server)
        slow = slow_clients(server)
        http2 = http2_body(server)
        if server.process.poll() is not None:
            raise RuntimeError(f"Berth exited during the run:\n{server.log_tail()}")
        return {
            "measured": datetime.date.today().isoformat(),
            "seconds": time.monotonic() - started,
            "large_bodies": large,
            "bogus_key_ids": bogus,
            "slow_clients": slow,
            "http2_body": http2,
        }
    finally:
        server.stop()


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(figures: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for `--json`'s figures (bench/run.py appends it)."""
    large = max(figures["large_bodies"], key=lambda found: found["peak_growth_mb"])
    statuses = sorted({str(found["status"]) for found in figures["large_bodies"]})
    bogus = figures["bogus_key_ids"]
    growth = bogus["rss_growth_mb"]
    last = growth[str(bogus["requests"])]
    slow = figures["slow_clients"]
    http2 = figures["http2_body"]
    http2_answer = (
        f"HTTP {http2['status']}"
        if http2["status"] not in ("", "000")
        else f"stream reset (curl exit {http2['curl_exit']})"
    )
    lines = [
        "## Hardening (bench/hardening.py)",
        "",
        "`bench/hardening.py` sends what issue 9's denial-of-service probes sent (items 21 to 23) "
        "to one Berth (SQLite, 1 worker, default limits and timeouts) on loopback, and reads the "
        "granian worker's memory from /proc (VmRSS; VmHWM after `clear_refs`, for peaks). "
        f"MB = 10^6 bytes. Measured on {figures['measured']} (the measurements took "
        f"{figures['seconds']:.0f} s).",
        "",
        "| figure | measured | target | met |",
        "| --- | ---: | ---: | :---: |",
        f"| peak RSS growth, 256 MiB anonymous body (largest of {len(figures['large_bodies'])}: "
        f"{', '.join(LARGE_PATHS)}; Content-Length and chunked) | +{large['peak_growth_mb']:.1f} MB "
        f"| < {TARGET_LARGE_MB} MB | {_met(large['peak_growth_mb'] < TARGET_LARGE_MB)} |",
        f"| RSS growth after {bogus['requests']:,} anonymous token requests with distinct 8 kB "
        f"key IDs | +{last:.1f} MB | < {TARGET_BOGUS_MB} MB | {_met(last < TARGET_BOGUS_MB)} |",
        f"| authenticated pull (token, manifest, blob) beside {slow['connections']:,} slow "
        f"connections, median of {len(slow['pull_seconds'])} | {slow['pull_median_seconds']:.3f} s "
        f"| < {TARGET_PULL_S:g} s | {_met(slow['pull_median_seconds'] < TARGET_PULL_S)} |",
        f"| peak RSS growth, 64 MiB anonymous HTTP/2 (h2c) body to /auth/token "
        f"| +{http2['peak_growth_mb']:.1f} MB | < {TARGET_HTTP2_MB} MB "
        f"| {_met(http2['peak_growth_mb'] < TARGET_HTTP2_MB)} |",
        "",
        "Each large body was answered "
        + " / ".join(f"HTTP {s}" for s in statuses)
        + " (per body: "
        + ", ".join(
            f"{found['path']} {found['framing']} +{found['peak_growth_mb']:.1f} MB"
            for found in figures["large_bodies"]
        )
        + f"); the HTTP/2 body: {http2_answer}. The made-up key IDs were answered "
        + ", ".join(f"HTTP {code}: {count:,}" for code, count in sorted(bogus["statuses"].items()))
        + f" in {bogus['seconds']:.1f} s; RSS growth after "
        + ", ".join(f"{int(n):,}: +{mb:.1f} MB" for n, mb in growth.items())
        + " (before the fix: +115 MB and growing). The pulls took "
        + ", ".join(f"{s:.3f} s" for s in slow["pull_seconds"])
        + f" ({slow['pull_unloaded_median_seconds']:.3f} s without the slow connections); "
        f"{slow['still_open_after_pulls']:,} of the {slow['connections']:,} slow connections "
        "were still open after them (a third each: unfinished headers, a trickled anonymous "
        "token form, a trickled anonymous blob PUT, from 127.0.0.2-21).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = p.parse_args()
    pairs.stop_servers_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="berth-hardening-") as tmp:
        figures = measure(Path(tmp))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(report(figures))


if __name__ == "__main__":
    main()
