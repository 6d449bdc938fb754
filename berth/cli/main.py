"""`berth`: serve the registry, and administer projects and repositories.

Admin verbs work on the metadata database directly (the same settings as `serve`).
Every verb takes --json for scripts. Exit codes: 0 ok, 1 error, 3 already exists.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from berth.config import Settings, load_settings
from berth.domain.errors import RegistryError
from berth.metadata.migrate import upgrade
from berth.services.repositories import Conflict
from berth.state import Services

app = typer.Typer(help="Berth: a multi-tenant OCI container registry.", no_args_is_help=True)
project_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
repo_app = typer.Typer(help="Repositories in a project.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(repo_app, name="repo")

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _run(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run one service call against the configured database, migrated to the current schema."""
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
    except Conflict as exc:
        errors.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(3) from None
    except RegistryError as exc:
        errors.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)


@app.command()
def serve(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port to listen on.")] = None,
    domain: Annotated[str | None, typer.Option(help="Registry domain.")] = None,
    region: Annotated[str | None, typer.Option(help="Region name.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Start the registry."""
    from berth.server import serve as run_server

    settings: Settings = load_settings(
        data_dir=data_dir,
        listen=listen,
        domain=domain,
        region=region,
        tls_cert=tls_cert,
        tls_key=tls_key,
        database_url=database_url,
        workers=workers,
    )
    run_server(settings)


@project_app.command("create")
def project_create(name: str, json_output: JsonFlag = False) -> None:
    """Create a project."""
    created = _run(lambda s: s.repositories.create_project(name))
    if json_output:
        _print_json(created)
    else:
        console.print(f"Created project [bold]{name}[/]")


@project_app.command("list")
def project_list(json_output: JsonFlag = False) -> None:
    """List projects."""
    found = _run(lambda s: s.repositories.list_projects())
    if json_output:
        _print_json(found)
    else:
        _table(found, ["name", "created_at"], "Projects")


def _split_repo(value: str) -> tuple[str, str]:
    project, _, repository = value.partition("/")
    if not project or not repository:
        raise typer.BadParameter(f"expected PROJECT/REPOSITORY, got {value!r}")
    return project, repository


@repo_app.command("create")
def repo_create(
    name: Annotated[str, typer.Argument(help="PROJECT/REPOSITORY")],
    public: Annotated[bool, typer.Option("--public", help="Anyone may pull.")] = False,
    no_tag_overwrite: Annotated[
        bool, typer.Option("--no-tag-overwrite", help="Refuse to move an existing tag.")
    ] = False,
    description: Annotated[str, typer.Option(help="Up to 100 characters.")] = "",
    scan: Annotated[str, typer.Option(help="Image scan: auto or manual.")] = "manual",
    json_output: JsonFlag = False,
) -> None:
    """Create a repository; images can be pushed into it afterwards."""
    project, repository = _split_repo(name)
    created = _run(
        lambda s: s.repositories.create(
            project,
            repository,
            public=public,
            tag_overwrite=not no_tag_overwrite,
            description=description,
            scan_mode=scan,
        )
    )
    if json_output:
        _print_json(created)
    else:
        console.print(
            f"Created repository [bold]{project}/{repository}[/] ({created['visibility']})"
        )


@repo_app.command("list")
def repo_list(project: str, json_output: JsonFlag = False) -> None:
    """List a project's repositories."""
    found = _run(lambda s: s.repositories.list(project))
    if json_output:
        _print_json(found)
    else:
        _table(
            found,
            [
                "name",
                "description",
                "images",
                "scan_mode",
                "tag_overwrite",
                "visibility",
                "updated_at",
            ],
            f"Repositories in {project}",
        )


if __name__ == "__main__":
    app()
