"""How the user runs this `berth`, for the commands it prints to paste: `berth` only when their
shell finds this very program by that name (after `make run` it is `.venv/bin/berth`)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from berth.config import CONFIG_FILE_ENV, config_file
from berth.database_urls import holds_password, without_password

DATABASE_URL_ENV = "BERTH_DATABASE_URL"
DATA_DIR_ENV = "BERTH_DATA_DIR"


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


def _in_environment(variable: str) -> bool:
    return any(name.upper() == variable for name in os.environ)  # as settings read them


def data_dir_to_name(given: Path | None, data_dir: Path) -> Path | None:
    """The data directory the commands `berth serve` and `berth init` print must name: the
    --data-dir `given`, else `data_dir` when BERTH_DATA_DIR said it: the server's environment
    (a systemd unit's) is not the shell's its commands are pasted into."""
    if given is not None:
        return given
    return data_dir if _in_environment(DATA_DIR_ENV) else None


def database_url_to_name(given: str | None, database_url: str | None) -> str | None:
    """The database URL those commands must name: the --database-url `given`, else
    `database_url` when BERTH_DATABASE_URL said it (for the same reason). One from the config
    file is read again by the pasted command (as BERTH_CONFIG is carried)."""
    if given is not None:
        return given
    return (database_url or None) if _in_environment(DATABASE_URL_ENV) else None


def pasteable_command(
    *words: str,
    data_dir: Path | None = None,
    config: Path | None = None,
    database_url: str | None = None,
) -> str:
    """A `berth` command to print for the user to paste: it runs as printed on the same data
    (with `data_dir`, the --data-dir this one was given, if any, named absolute: the command
    may be pasted in another directory; `config`, the settings file BERTH_CONFIG named, and
    `database_url`, the --database-url given: the rest of the environment and the config file
    that named the data still do when pasted). A database URL that holds a password is left
    out (see `unprinted_database`)."""
    named = [] if config is None else [f"{CONFIG_FILE_ENV}={shlex.quote(str(config))}"]
    if database_url is not None and not holds_password(database_url):
        named.append(f"{DATABASE_URL_ENV}={shlex.quote(database_url)}")
    given = [] if data_dir is None else ["--data-dir", str(data_dir.absolute())]
    return " ".join([*named, berth_command(), *map(shlex.quote, [*given, *words])])


def unprinted_database(database_url: str | None, given: bool) -> str | None:
    """What to say before commands printed for a database URL they cannot name (the
    --database-url `given`, else BERTH_DATABASE_URL's): its password is never printed (a
    server's banner goes to its log), so the user sets the variable in their shell. The URL
    is named with its password masked, to say which database that is."""
    if database_url is None or not holds_password(database_url):
        return None
    masked = without_password(database_url)
    source = "--database-url" if given else DATABASE_URL_ENV
    return (
        f"note: the commands below work on the database {source} names ({masked}) once "
        f"{DATABASE_URL_ENV} holds that URL in your shell (its password is not printed)"
    )
