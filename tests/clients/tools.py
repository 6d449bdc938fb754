"""Running client commands: one place for timeouts, environments and readable failures."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

COMMAND_TIMEOUT = 300


class CommandFailed(AssertionError):
    """A client exited non-zero; the message carries everything it printed."""


def require_binary(name: str) -> str:
    """The path of an installed client, or skip: `make test-deps` installs them all."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/test-deps.sh installs it)")
    return path


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
    return path


def describe(command: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {shlex.join(command)}\n"
        f"exit status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n"
        f"--- stderr ---\n{result.stderr}"
    )


def run(
    command: Sequence[str | Path],
    env: Mapping[str, str] | None = None,
    *,
    check: bool = True,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure raise with its command line and output."""
    args = [str(part) for part in command]
    merged = dict(os.environ)
    if env:
        merged.update(env)
    result = subprocess.run(
        args,
        env=merged,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise CommandFailed(describe(args, result))
    return result


def output(result: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr together: clients print progress on either."""
    return result.stdout + result.stderr
