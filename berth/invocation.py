"""How the user runs this `berth`, for the commands it prints to paste: `berth` only when their
shell finds this very program by that name (after `make run` it is `.venv/bin/berth`)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from berth.config import CONFIG_FILE_ENV, config_file

DATABASE_URL_ENV = "BERTH_DATABASE_URL"


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


def named_config() -> Path | None:
    """The settings file BERTH_CONFIG names, when it is not the working directory's berth.toml
    that a pasted command would read anyway: the server's environment (a systemd unit's) is
    not the shell's its commands are pasted into."""
    if CONFIG_FILE_ENV not in os.environ:
        return None
    named = config_file()
    return named if named.is_file() and named != Path("berth.toml").absolute() else None


def _holds_password(database_url: str) -> bool:
    from sqlalchemy.engine import make_url  # here: most commands print nothing to paste
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(database_url).password is not None
    except ArgumentError:
        return False  # not a URL at all: nothing secret can be told apart in it


def pasteable_command(
    *words: str,
    data_dir: Path | None = None,
    config: Path | None = None,
    database_url: str | None = None,
) -> str:
    """A `berth` command to print for the user to paste: it runs as printed from where this
    one ran, on the same data (with `data_dir`, the --data-dir this one was given, if any,
    `config`, the settings file BERTH_CONFIG named, and `database_url`, the --database-url
    given: the rest of the environment and the config file that named the data still do when
    pasted). A database URL that holds a password is left out (see `unprinted_database`)."""
    named = [] if config is None else [f"{CONFIG_FILE_ENV}={shlex.quote(str(config))}"]
    if database_url is not None and not _holds_password(database_url):
        named.append(f"{DATABASE_URL_ENV}={shlex.quote(database_url)}")
    given = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return " ".join([*named, berth_command(), *map(shlex.quote, [*given, *words])])


def unprinted_database(database_url: str | None) -> str | None:
    """What to say before commands printed for a --database-url they cannot name: its
    password is not printed (a server's banner goes to its log), so the user sets it."""
    if database_url is None or not _holds_password(database_url):
        return None
    return (
        f"note: the commands below work on the database given with --database-url once "
        f"{DATABASE_URL_ENV} holds that URL in your shell (not printed: it holds a password)"
    )
