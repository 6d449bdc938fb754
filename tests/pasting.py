"""`berth` run as a user runs it with only --data-dir naming a server's data (no environment or
config file pointing at it), and the commands it prints pasted back exactly as printed."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers import BERTH, BerthServer
from tests.terminal import typed_at_terminal


@dataclass(frozen=True)
class DataDirOnly:
    """A server's data reached only through `--data-dir DATA_DIR` (relative to `cwd`, an
    empty directory where every command here runs): a pasted command that drops the option
    finds no data."""

    env: dict[str, str]
    cwd: Path
    data_dir: str

    def berth(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`berth --data-dir DATA_DIR ARGS...`, which must succeed (unless not `check`)."""
        return self._run([*BERTH, "--data-dir", self.data_dir, *args], input, check)

    def paste(self, printed: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a printed command line as a shell would, which must succeed: it names the
        data directory this one was given, absolute (it may be pasted anywhere)."""
        words = shlex.split(printed)
        self._names_the_data_dir(words)
        return self._run(words, input)

    def _names_the_data_dir(self, words: list[str]) -> None:
        assert words[1] == "--data-dir" and Path(words[2]).is_absolute(), words
        assert Path(words[2]).resolve() == (self.cwd / self.data_dir).resolve(), words

    def paste_at_terminal(self, printed: str, answer: str) -> subprocess.CompletedProcess[str]:
        """As `paste`, at a terminal where `answer` is typed (to what the command asks)."""
        words = shlex.split(printed)
        self._names_the_data_dir(words)
        done = typed_at_terminal(words, answer, env=self.env, cwd=self.cwd)
        assert done.returncode == 0, (words, done.stdout, done.stderr)
        return done

    def _run(
        self, words: list[str], input: str | None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            words,
            env=self.env,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            timeout=120,
            input=input,
        )
        assert not check or done.returncode == 0, (words, done.stdout, done.stderr)
        return done


def data_dir_only(server: BerthServer) -> DataDirOnly:
    env = {
        name: value
        for name, value in server.env.items()
        if name not in ("BERTH_DATA_DIR", "BERTH_CONFIG")  # a database URL stays named
    }
    # Not the checkout: `make run` leaves berth-data there, which a command without
    # --data-dir would find.
    cwd = server.data_dir.with_name(f"{server.data_dir.name}-cwd")
    cwd.mkdir(exist_ok=True)
    assert not (cwd / "berth-data").exists()
    return DataDirOnly(env, cwd, os.path.relpath(server.data_dir, cwd))


def line_after(output: str, heading: str) -> str:
    """The line after the line `heading`, without its indent: a printed command."""
    lines = output.splitlines()
    return lines[lines.index(heading) + 1].strip()
