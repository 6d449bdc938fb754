"""The servers `make bench` and the other benches start: Berth on a fresh data directory
(logged in with an access key when it asks for credentials) and Debian's docker-registry, each
in its own session, stopped with its whole process group."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import regbench  # the team's registry-neutral benchmark

BERTH = Path(sys.executable).parent / "berth"
DISTRIBUTION = Path("/usr/bin/docker-registry")
# The OCI name `bench/bench/img` is project `bench`, repository `bench`, image `img`.
PROJECT, REPOSITORY = "bench", "bench"
IMAGE_NAME = f"{PROJECT}/{REPOSITORY}/img"
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGTERM the child when this process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # registry credentials, when the server asks for them
    password: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server's process group (its own session), SIGKILL it if it lingers."""
        if self.process.poll() is not None:
            return  # exited and reaped: the group id is no longer ours to signal
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def spawn(name: str, argv: list[str], env: dict[str, str], log: Path, port: int) -> Server:
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Server(name, f"http://127.0.0.1:{port}", process, log, env)


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited at startup:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as err:
            if err.code == 401:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f}s:\n{server.log_tail()}")


def launch_berth(
    work: Path, workers: int | None, settings: dict[str, str] | None = None, name: str = "Berth"
) -> Server:
    """Create the project and repository, then start `berth serve` (not yet ready), with
    `settings` (BERTH_* variables) over the defaults; `workers` None is Berth's default (one
    per usable core)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {
        "BERTH_CONFIG": os.devnull,  # defaults, whatever the cwd holds
        "BERTH_DATA_DIR": str(work / "berth-data"),
        "BERTH_LISTEN": f"127.0.0.1:{port}",
        **({"BERTH_WORKERS": str(workers)} if workers is not None else {}),
        "BERTH_TOKEN_TTL": "3600",  # registry tokens outlive the run (settings ignore unknowns)
        **(settings or {}),
    }
    for argv in (
        [str(BERTH), "init"],  # admin verbs work only on data that exists
        [str(BERTH), "project", "create", PROJECT],
        [str(BERTH), "repo", "create", f"{PROJECT}/{REPOSITORY}"],
    ):
        subprocess.run(argv, env=env, cwd=work, check=True, capture_output=True)
    return spawn(name, [str(BERTH), "serve"], env, work / "berth.log", port)


def log_in_berth(server: Server) -> None:
    """When Berth asks for credentials, make an access key for the administrator its first
    start created (the way a user would), for regbench to exchange for a token."""
    status, _, _ = regbench._request("GET", f"{server.url}/v2/", {})
    if status != 401:
        return
    out = subprocess.run(
        [str(BERTH), "key", "create", "--user", "admin", "--project", PROJECT, "--json"],
        env=server.env,
        cwd=server.log.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    key = json.loads(out)
    server.user, server.password = key["access_key_id"], key["secret_access_key"]


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def start_distribution(work: Path) -> Server:
    root = work / "distribution-data"
    root.mkdir()
    port = free_port()
    config = work / "distribution.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=root, port=port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    argv = [str(DISTRIBUTION), "serve", str(config)]
    server = spawn("Distribution", argv, env, work / "distribution.log", port)
    wait_ready(server)
    return server


NGINX = Path(shutil.which("nginx") or "/usr/sbin/nginx")
ACCEL_SNIPPET = Path(__file__).resolve().parent.parent / "deploy" / "nginx-accel.conf"
ACCEL_LOCATION = "/_berth_blobs/"  # the snippet's internal location (Berth's X-Accel-Redirect)
DIRECT_LOCATION = "/_bench_direct/"  # the bench's nginx: blob files sent without Berth


def start_nginx_accel(work: Path, berth: Server) -> Server:
    """Debian's nginx on a free port in front of `berth` (started with blob_redirect = accel),
    with deploy/nginx-accel.conf as shipped but for its `alias`, pointed at Berth's blob
    directory: Berth authorises each blob GET and answers X-Accel-Redirect, nginx sends the
    file with sendfile. Beside it, `DIRECT_LOCATION`: the same blob directory with the same
    directives, open to clients (no Berth in the way). Ready, and logged in as `berth` is."""
    work.mkdir(parents=True)
    port = free_port()
    blobs = Path(berth.env["BERTH_DATA_DIR"]).resolve() / "blobs"
    snippet = ACCEL_SNIPPET.read_text()
    shipped = "alias /var/lib/berth/blobs/;"
    if shipped not in snippet:
        raise RuntimeError(f"{ACCEL_SNIPPET} no longer has `{shipped}`")
    snippet = snippet.replace(shipped, f"alias {blobs}/;")
    (work / "berth-accel.conf").write_text(snippet)
    # The same location, open to clients and without Berth: nginx sending the blob file by
    # itself, the reference the accel pull is read against.
    internal = (f"location {ACCEL_LOCATION} {{", "    internal;\n")
    if any(part not in snippet for part in internal):
        raise RuntimeError(f"{ACCEL_SNIPPET} no longer has `{internal[0]} {internal[1].strip()}`")
    direct = snippet.replace(internal[0], f"location {DIRECT_LOCATION} {{").replace(internal[1], "")
    (work / "direct.conf").write_text(direct)
    upstream = berth.url.removeprefix("http://")
    temp = "".join(
        f"  {kind}_temp_path {work}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + "worker_processes 1;\n"
        + f"pid {work}/nginx.pid;\n"
        + f"error_log {work}/error.log warn;\n"
        + "daemon off;\n"
        + "events { worker_connections 1024; }\n"
        + "http {\n"
        + "  access_log off;\n"
        + temp
        + f"  upstream berth {{ server {upstream}; keepalive 64; }}\n"
        + f"  server {{\n    listen 127.0.0.1:{port};\n"
        + "    proxy_http_version 1.1;\n"
        + "    proxy_set_header Host $http_host;\n"
        + '    proxy_set_header Connection "";\n'
        + "    location /v2/ {\n"
        + "      client_max_body_size 0;\n"
        + "      proxy_request_buffering off;\n"
        + "      proxy_buffering off;\n"
        + "      proxy_pass http://berth;\n"
        + "    }\n"
        + "    location / { proxy_pass http://berth; }\n"
        + f"    include {work}/berth-accel.conf;\n"
        + f"    include {work}/direct.conf;\n"
        + "  }\n}\n"
    )
    argv = [str(NGINX), "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr"]
    server = spawn("nginx (accel)", argv, {**os.environ}, work / "nginx.log", port)
    wait_ready(server)
    server.user, server.password = berth.user, berth.password
    return server
