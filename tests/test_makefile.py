"""The Makefile as a developer uses it: `make install-dev`, then `make run`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.servers import ROOT


def test_make_run_keeps_the_dev_tools_of_make_install_dev(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # The Makefile installs uv into the environment when it is missing; reuse ours (offline).
    shutil.copy2(ROOT / ".venv" / "bin" / "uv", venv / "bin" / "uv")

    def make(*goal: str) -> None:
        subprocess.run(
            ["make", "-s", "-C", ROOT, *goal, f"VENV={venv}"],
            check=True,
            capture_output=True,
            timeout=300,
        )

    make("install-dev")
    assert (venv / "bin" / "pytest").exists()
    make("run", "BERTH=true")  # `make run` with the server start replaced: its install step

    for tool in ("pytest", "ruff", "mypy", "berth"):
        assert (venv / "bin" / tool).exists(), f"make run removed {tool}"
    version = subprocess.run([venv / "bin" / "pytest", "--version"], capture_output=True)
    assert version.returncode == 0
