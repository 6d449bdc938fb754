"""How the user runs this `berth`, for the commands it prints to paste: `berth` only when their
shell finds this very program by that name (after `make run` it is `.venv/bin/berth`)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path


def berth_command() -> str:
    """`berth` if the PATH finds the running program by that name; else its path, relative
    to the working directory when it lies below it."""
    running = Path(sys.argv[0])
    if running.name != "berth":  # `python -m berth.cli.main`: the environment's own script
        running = Path(sys.executable).parent / "berth"
        if not running.exists():
            return "berth"
    on_path = shutil.which("berth")
    if on_path is not None and Path(on_path).resolve() == running.resolve():
        return "berth"
    absolute, here = running.absolute(), Path.cwd()
    if here != Path(here.anchor) and absolute.is_relative_to(here):
        return shlex.quote(str(absolute.relative_to(here)))
    return shlex.quote(str(absolute))


def pasteable_command(*words: str, data_dir: Path | None = None) -> str:
    """A `berth` command to print for the user to paste: it runs as printed from where this
    one ran, on the same data (with `data_dir`, the --data-dir this one was given, if any:
    the environment and the config file that named the data still do when pasted)."""
    given = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return " ".join([berth_command(), *map(shlex.quote, [*given, *words])])
