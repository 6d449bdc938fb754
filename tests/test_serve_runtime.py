"""The granian command line `berth serve` hands over to: what it pins down and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.servers import free_port

# `berth serve` up to its exec into granian, which prints the command line instead.
SERVE_AND_SHOW = """
import json, os, sys
def show(path, argv):
    print("GRANIAN " + json.dumps(argv), flush=True)
    sys.exit(0)
os.execv = show
sys.argv = ["berth", "serve"]
from berth.cli.main import app
app()
"""


def granian_command(tmp_path: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {
        "BERTH_CONFIG": str(tmp_path / "no-berth.toml"),
        "BERTH_DATA_DIR": str(tmp_path / "data"),
        "BERTH_LISTEN": f"127.0.0.1:{free_port()}",
    }
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_SHOW],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    shown = [line for line in done.stdout.splitlines() if line.startswith("GRANIAN ")]
    assert shown, done.stdout + done.stderr
    command: list[str] = json.loads(shown[0].removeprefix("GRANIAN "))
    return command


def test_the_server_runs_on_uvloop_whatever_else_is_installed(tmp_path: Path) -> None:
    """granian's default loop is rloop whenever it is importable, and asyncpg fails on it
    ("TCPTransport protocol cannot be changed": every PostgreSQL query answers 500): the
    server names uvloop, a dependency of Berth's."""
    command = granian_command(tmp_path)
    assert command[command.index("--loop") + 1] == "uvloop"
    assert command[-1] == "berth.app:create_app"
