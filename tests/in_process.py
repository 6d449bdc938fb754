"""`berth` verbs run in the test process (Typer's CliRunner) rather than as a new interpreter:
the same code, output and exit codes, without the second or so that each start costs (most of
a CLI test's time). What needs a process of its own (a terminal, a command pasted into a
shell, a signal) still runs `tests.servers.BERTH`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from berth.cli.main import app
from tests.servers import ROOT, BerthServer, CliReads, in_own_thread


@dataclass
class Typed:
    returncode: int
    stdout: str
    stderr: str


def invoked(
    directory: Path, args: list[str], env: dict[str, str | None], input: str | None = None
) -> Typed:
    """`berth ARGS` run in this process in `directory`, with no BERTH_* settings but `env`'s
    and `input` on a standard input that is no terminal."""
    settings: dict[str, str | None] = {k: None for k in os.environ if k.startswith("BERTH_")}
    previous = Path.cwd()
    os.chdir(directory)
    try:
        result = in_own_thread(
            lambda: CliRunner().invoke(
                app, args, input=input, prog_name="berth", env={**settings, **env}
            )
        )
    finally:
        os.chdir(previous)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Typed(result.exit_code, result.stdout, result.stderr)


@dataclass
class InProcessCli(CliReads):
    """`BerthServer.cli` and its kin, run in this process with the server's settings."""

    server: BerthServer

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> Typed:
        env: dict[str, str | None] = {
            k: v for k, v in self.server.env.items() if k.startswith("BERTH_")
        }
        # As a pipe to a new process has it: COLUMNS only if the environment sets it.
        env["COLUMNS"] = self.server.env.get("COLUMNS")
        done = invoked(ROOT, list(args), env, input)
        if check and done.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done


def in_process(server: BerthServer) -> InProcessCli:
    return InProcessCli(server)
