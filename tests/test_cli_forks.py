"""The tests' fork server for `berth` runs (tests/cli_forks.py) answers as a new interpreter:
the same exit status, output and error output for the same arguments, environment, working
directory and input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import cli_forks
from tests.cli_forks import BERTH, run_berth


def fresh(
    args: list[str], env: dict[str, str], cwd: Path, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BERTH, *args], env=env, cwd=cwd, input=input or "", capture_output=True, text=True
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    environment["BERTH_DATA_DIR"] = str(tmp_path / "data")
    environment["BERTH_ADMIN_PASSWORD"] = "fork-server-pass-1"
    environment["TZ"] = "Pacific/Auckland"
    return environment


@pytest.mark.parametrize(
    ("args", "input"),
    [
        (["--version"], None),
        (["no-such-verb"], None),
        (["project", "list"], None),  # no data here yet: refused, naming the directory
        (["user", "set-password", "admin"], ""),
    ],
)
def test_a_forked_run_answers_as_a_new_interpreter(
    env: dict[str, str], tmp_path: Path, args: list[str], input: str | None
) -> None:
    forked = run_berth(args, env, cwd=tmp_path, input=input)
    new = fresh(args, env, tmp_path, input)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        new.returncode,
        new.stdout,
        new.stderr,
    )


def test_a_run_reads_its_input_and_sees_its_own_settings(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run_berth(["init"], env, cwd=tmp_path).returncode == 0
    changed = run_berth(
        ["user", "set-password", "admin", "--password-stdin"],
        env,
        cwd=tmp_path,
        input="another-password-1\n",
    )
    assert changed.returncode == 0, changed.stderr
    elsewhere = {**env, "BERTH_DATA_DIR": str(tmp_path / "other")}
    refused = run_berth(["project", "list"], elsewhere, cwd=tmp_path)
    assert refused.returncode == 1 and str(tmp_path / "other") in refused.stderr
    assert run_berth(["project", "list"], env, cwd=tmp_path).returncode == 0


def test_a_run_whose_imports_would_differ_gets_a_new_interpreter(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A new interpreter runs the sitecustomize its PYTHONPATH finds; a forked child, started
    long ago, would not."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nprint('a new interpreter', file=sys.stderr)\n"
    )
    forks = cli_forks._forks()
    assert forks.serves(env)
    assert not forks.serves({**env, "TERMINAL_WIDTH": "40"})
    started = {**env, "PYTHONPATH": str(tmp_path)}
    assert not forks.serves(started)
    ran = run_berth(["--version"], started, cwd=tmp_path)
    assert ran.returncode == 0 and "a new interpreter" in ran.stderr, ran
    assert "a new interpreter" not in run_berth(["--version"], env, cwd=tmp_path).stderr
