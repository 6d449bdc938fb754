"""What every `berth` verb module shares: running one service call, and printing JSON."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from berth.config import load_settings
from berth.domain.errors import RegistryError
from berth.metadata.migrate import upgrade
from berth.services.repositories import Conflict
from berth.state import Services

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def run_service(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run one service call against the configured database, migrated to the current schema.
    A refusal prints its message and exits 1 (3 when the thing exists already)."""
    settings = load_settings()
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
        errors.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(3 if isinstance(exc, Conflict) else 1) from None


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def cli_actor() -> str:
    """Who runs an admin verb, as the audit log and GC history name them."""
    return f"cli:{getpass.getuser()}"[:64]


# Where an admin verb comes from, in the audit log's "client" (an address for HTTP callers).
CLI_CLIENT = f"cli on {socket.gethostname()}"[:64]
