"""Debian's nginx in the foreground for a test: a proxy or file server on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import wait_for


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


@contextlib.contextmanager
def running_nginx(
    directory: Path, server_block: str, ready: Callable[[], bool], user: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Debian's nginx in the foreground with its files under `directory`, serving
    `server_block` (one `server {...}`), until the block ends. Its worker runs as root when
    the tests do, or as `user` (Debian's is www-data): then `directory` must be reachable
    for it."""
    worker = f"user {user};" if user else "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"""
{worker}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
daemon off;
events {{}}
http {{
    access_log {directory}/access.log;
{temp}
{server_block}
}}
"""
    )
    process = subprocess.Popen(
        [nginx_binary(), "-p", str(directory), "-c", str(directory / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "stderr.log", "wb"),  # noqa: SIM115 - lives with the process
        start_new_session=True,
    )
    try:
        wait_for(ready, 20, f"nginx ({(directory / 'stderr.log').read_text()})")
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
