"""The `berth` command the CLI prints for a user to paste: the name their shell finds, or the
path of the program that runs (after `make run`, `.venv/bin/berth`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from berth.invocation import berth_command

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "berth"  # this environment's `berth`


@pytest.fixture(autouse=True)
def _running_the_script(monkeypatch: pytest.MonkeyPatch) -> None:
    if not SCRIPT.exists():
        pytest.skip("no berth script beside the interpreter (not a virtual environment)")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "webhook", "create"])


def test_from_the_checkout_without_the_environment_on_path_it_is_the_relative_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(SCRIPT.parents[2])  # the directory holding .venv, as `make run` has it
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert berth_command() == str(SCRIPT.relative_to(SCRIPT.parents[2]))


def test_with_the_environment_on_path_it_is_the_bare_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{SCRIPT.parent}{os.pathsep}/usr/bin:/bin")
    assert berth_command() == "berth"


def test_another_berth_on_path_is_not_taken_for_this_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "bin" / "berth"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", f"{other.parent}{os.pathsep}/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    assert berth_command() == str(SCRIPT.absolute())


def test_run_as_a_module_it_names_the_environment_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "berth" / "cli" / "main.py")])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir("/")
    assert berth_command() == str(SCRIPT.absolute())
