"""Token endpoint throughput: how many Docker registry tokens a Berth server issues per second.

Starts `berth serve` on a free port of 127.0.0.1 with a fresh temporary data directory (SQLite
by default, or --database-url), creates a project, a repository and an access key in-process,
checks one token request by hand, then hammers `GET /auth/token?service=...&scope=...` with
Basic access-key credentials (a full login each time: key lookup, secret check, throttle,
audit entry, scope grant, ES256 signature) using wrk, and prints tokens per second and latency.

    .venv/bin/python bench/tokens.py [--seconds 10] [--connections 32] [--workers 1]

The server runs in its own session and is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servers import Server, free_port, spawn, wait_ready  # noqa: E402 - beside this file

from berth.config import Settings  # noqa: E402 - after the path is set
from berth.state import Services  # noqa: E402

PROJECT, REPOSITORY, USER = "bench", "app", "admin"
TARGET_PER_SECOND = 1000


class Berth:
    def __init__(self, data_dir: Path, workers: int, database_url: str | None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "BERTH_DATA_DIR": str(data_dir),
            "BERTH_LISTEN": f"127.0.0.1:{self.port}",
            "BERTH_CONFIG": os.devnull,  # no file: defaults and these only
            "BERTH_WORKERS": str(workers),
            "BERTH_ADMIN_PASSWORD": "bench-admin-password",
        }
        if database_url:
            self.env["BERTH_DATABASE_URL"] = database_url
        self.log = data_dir / "server.log"
        self.server: Server | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "berth.cli.main", "serve"]
        self.server = spawn("Berth", argv, self.env, self.log, self.port)
        try:
            wait_ready(self.server)
        except RuntimeError as exc:
            sys.exit(str(exc))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def setup(self) -> tuple[str, str]:
        """Project, repository and an access key for the administrator; (key ID, secret)."""
        settings = Settings(data_dir=self.data_dir, database_url=self.database_url)

        async def work() -> tuple[str, str]:
            services = Services.build(settings)
            try:
                await services.repositories.create_project(PROJECT, actor="bench")
                await services.repositories.create(PROJECT, REPOSITORY, actor="bench")
                created = await services.identity.keys.create_key(USER, PROJECT, actor="bench")
                return created.key_id, created.secret
            finally:
                await services.close()

        return asyncio.run(work())

    def settled_login_count(self) -> int:
        """The logins audited once the server has written those it holds: audit entries are
        written in batches, so a count taken at once misses the last requests' (and a count
        before a run would leave the warm-up's tail to the run)."""
        count = self.login_count()
        while True:
            time.sleep(0.5)
            again = self.login_count()
            if again == count:
                return count
            count = again

    def login_count(self) -> int:
        settings = Settings(data_dir=self.data_dir, database_url=self.database_url)

        async def work() -> int:
            services = Services.build(settings)
            try:
                entries = await services.identity.audit.entries(PROJECT, limit=10_000_000)
                return sum(1 for entry in entries if entry["action"] == "login")
            finally:
                await services.close()

        return asyncio.run(work())


def token_url(berth: Berth) -> str:
    query = urllib.parse.urlencode(
        {
            "service": f"127.0.0.1:{berth.port}",
            "scope": f"repository:{PROJECT}/{REPOSITORY}:pull,push",
        }
    )
    return f"{berth.url}/auth/token?{query}"


def check_once(url: str, authorization: str) -> None:
    """One token request by hand: 200, and the token grants what was asked."""
    request = urllib.request.Request(url, headers={"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        sys.exit(f"token request failed: HTTP {error.code} {error.read()[:300]!r}")
    payload = body["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    wanted = [
        {"type": "repository", "name": f"{PROJECT}/{REPOSITORY}", "actions": ["pull", "push"]}
    ]
    if claims.get("access") != wanted:
        sys.exit(f"unexpected token grant: {claims.get('access')}")


def run_wrk(
    url: str, authorization: str, seconds: int, connections: int, threads: int
) -> tuple[float, dict[str, float], int]:
    """(requests per second, latency percentiles in ms, requests done) from wrk."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-H",
        f"Authorization: {authorization}",
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk saw failed requests:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if rate is None or done is None:
        sys.exit(f"unexpected wrk output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    percentiles = {
        f"p{p}": float(value) * scale[unit]
        for p, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    return float(rate.group(1)), percentiles, int(done.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="how long wrk runs")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="berth serve worker processes")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")

    data_dir = Path(tempfile.mkdtemp(prefix="berth-tokens-"))
    berth = Berth(data_dir, args.workers, args.database_url)
    try:
        berth.start()
        key_id, secret = berth.setup()
        authorization = "Basic " + base64.b64encode(f"{key_id}:{secret}".encode()).decode()
        url = token_url(berth)
        check_once(url, authorization)
        run_wrk(url, authorization, 2, args.connections, args.threads)  # warm-up
        before = berth.settled_login_count()
        rate, percentiles, done = run_wrk(
            url, authorization, args.seconds, args.connections, args.threads
        )
        logins = berth.settled_login_count() - before
    finally:
        berth.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    figures = {
        "tokens_per_second": round(rate, 1),
        **{f"latency_{name}_ms": round(value, 2) for name, value in percentiles.items()},
        "requests": done,
        "logins_audited": logins,
        "workers": args.workers,
        "connections": args.connections,
        "database": "postgresql" if args.database_url else "sqlite",
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    verdict = "met" if rate >= TARGET_PER_SECOND else "NOT met"
    print(
        f"token endpoint: {rate:,.0f} tokens/s  (target >= {TARGET_PER_SECOND:,}/s: {verdict})\n"
        f"  latency p50 {percentiles.get('p50', 0):.2f} ms, p90 {percentiles.get('p90', 0):.2f} ms,"
        f" p99 {percentiles.get('p99', 0):.2f} ms; {done:,} requests, {logins:,} logins audited\n"
        f"  {figures['database']}, {args.workers} worker(s), {args.connections} connections, "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
