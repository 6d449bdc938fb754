"""What every `berth` verb module shares: running one service call, and printing JSON."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from berth.config import Settings, SettingsError, load_settings
from berth.data_location import missing_data, shown_database, where_to_point
from berth.domain.errors import RegistryError
from berth.metadata.migrate import upgrade
from berth.services.repositories import Conflict
from berth.state import Services

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ProjectArg = Annotated[str, typer.Argument(metavar="PROJECT")]
UserArg = Annotated[str, typer.Argument(metavar="USER")]
TagArg = Annotated[str, typer.Argument(metavar="TAG")]
KeyIdArg = Annotated[str, typer.Argument(metavar="KEY_ID", help="The access key ID.")]


# Exit codes: 1 a refusal, 2 a bad setting or flag (as for a mistyped flag), 3 exists already.
BAD_SETTING = 2


class Options:
    """What the options before the verb say (`berth --data-dir DIR --verbose VERB ...`)."""

    data_dir: Path | None = None
    verbose: bool = False


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: MESSAGE` on standard error (as text: brackets are not markup) and exit."""
    errors.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    """The settings (with the options before the verb), or exit naming the bad value."""
    overrides.setdefault("data_dir", Options.data_dir)
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)


def existing_settings() -> Settings:
    """The settings of data that exists: an admin verb never creates a data directory or a
    database (run from the wrong directory, it would start a new, empty registry)."""
    settings = settings_or_exit()
    flags = {"data_dir"} if Options.data_dir is not None else set()
    missing = missing_data(settings)
    if missing is not None:
        fail(f"{missing}\n{where_to_point(flags)}")
    if Options.verbose:
        errors.print(
            Text(f"Using {shown_database(settings)}, data directory {settings.data_dir.absolute()}")
        )
    return settings


def run_service(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run one service call against the configured database, migrated to the current schema.
    A refusal prints its message and exits 1 (3 when the thing exists already)."""
    settings = existing_settings()
    upgrade(settings.resolved_database_url)

    async def main() -> T:
        services = Services.build(settings)
        try:
            return await work(services)
        finally:
            await services.close()

    try:
        return asyncio.run(main())
    except RegistryError as exc:
        fail(exc.message, 3 if isinstance(exc, Conflict) else 1)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def cli_actor() -> str:
    """Who runs an admin verb, as the audit log and GC history name them."""
    return f"cli:{getpass.getuser()}"[:64]


# Where an admin verb comes from, in the audit log's "client" (an address for HTTP callers).
CLI_CLIENT = f"cli on {socket.gethostname()}"[:64]
