"""`berth`: serve the registry, and administer projects and repositories.

Admin verbs work on the metadata database directly (the same settings as `serve`).
Every verb takes --json for scripts. Exit codes: 0 ok, 1 error, 3 already exists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
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
user_app = typer.Typer(help="Users and service accounts.", no_args_is_help=True)
member_app = typer.Typer(help="Project members and their roles.", no_args_is_help=True)
key_app = typer.Typer(help="Access keys for docker login and other clients.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(repo_app, name="repo")
app.add_typer(user_app, name="user")
app.add_typer(member_app, name="member")
app.add_typer(key_app, name="key")

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
    except RegistryError as exc:
        errors.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(3 if isinstance(exc, Conflict) else 1) from None


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


@repo_app.command("grant")
def repo_grant(
    name: Annotated[str, typer.Argument(help="PROJECT/REPOSITORY")],
    user: str,
    role: Annotated[str, typer.Option(help="member (push, pull) or viewer (pull).")],
    json_output: JsonFlag = False,
) -> None:
    """Give a user outside the project a role on one repository."""
    project, repository = _split_repo(name)
    _run(lambda s: s.identity.grant(project, repository, user, role))
    _done(
        json_output,
        {"repository": name, "user": user, "role": role},
        f"{user} is now repository {role} of {name}",
    )


@repo_app.command("revoke")
def repo_revoke(
    name: Annotated[str, typer.Argument(help="PROJECT/REPOSITORY")],
    user: str,
    json_output: JsonFlag = False,
) -> None:
    """Remove a user's role on a repository."""
    project, repository = _split_repo(name)
    _run(lambda s: s.identity.revoke(project, repository, user))
    _done(json_output, {"repository": name, "user": user}, f"{user} has no role on {name} now")


def _done(json_output: bool, value: dict[str, Any], message: str) -> None:
    if json_output:
        _print_json(value)
    else:
        console.print(message)


@user_app.command("create")
def user_create(
    name: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    service_account: Annotated[
        bool, typer.Option("--service-account", help="A robot user for CI: keys, no password.")
    ] = False,
    admin: Annotated[bool, typer.Option("--admin", help="Administer every project.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Create a user (prompts for the password unless --password-stdin or --service-account)."""
    password: str | None = None
    if not service_account:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    created = _run(
        lambda s: s.identity.create_user(
            name, password, is_admin=admin, service_account=service_account
        )
    )
    _done(json_output, created, f"Created user [bold]{name}[/]")


@user_app.command("list")
def user_list(json_output: JsonFlag = False) -> None:
    """List users."""
    found = _run(lambda s: s.identity.list_users())
    if json_output:
        _print_json(found)
    else:
        _table(found, ["name", "admin", "service_account", "created_at"], "Users")


@member_app.command("add")
def member_add(
    project: str,
    user: str,
    role: Annotated[str, typer.Option(help="admin, member or reader.")],
    json_output: JsonFlag = False,
) -> None:
    """Add a user to a project, or change their role."""
    _run(lambda s: s.identity.add_member(project, user, role))
    _done(
        json_output,
        {"project": project, "user": user, "role": role},
        f"{user} is now {role} of {project}",
    )


@member_app.command("remove")
def member_remove(project: str, user: str, json_output: JsonFlag = False) -> None:
    """Remove a user from a project; their access keys there stop working."""
    _run(lambda s: s.identity.remove_member(project, user))
    _done(json_output, {"project": project, "user": user}, f"{user} left {project}")


@member_app.command("list")
def member_list(project: str, json_output: JsonFlag = False) -> None:
    """List a project's members."""
    found = _run(lambda s: s.identity.list_members(project))
    if json_output:
        _print_json(found)
    else:
        _table(found, ["user", "role", "since"], f"Members of {project}")


@key_app.command("create")
def key_create(
    user: Annotated[str, typer.Option(help="Whose key.")],
    project: Annotated[str, typer.Option(help="The project the key works in.")],
    expires: Annotated[
        dt.datetime | None, typer.Option(help="Expiry date (YYYY-MM-DD), UTC.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create an access key. The secret is shown now and never again."""
    expires_at = expires.replace(tzinfo=dt.UTC) if expires else None
    created = _run(lambda s: s.identity.create_key(user, project, expires_at=expires_at))
    if json_output:
        _print_json(created.as_dict())
        return
    console.print(f"Access key ID:     [bold]{created.key_id}[/]")
    console.print(f"Secret access key: [bold]{created.secret}[/]")
    console.print("[yellow]The secret is shown only now: store it safely.[/]")


@key_app.command("list")
def key_list(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    project: Annotated[str | None, typer.Option(help="Only keys for this project.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """List access keys (never their secrets)."""
    found = _run(lambda s: s.identity.list_keys(user=user, project=project))
    if json_output:
        _print_json(found)
    else:
        _table(
            found,
            [
                "access_key_id",
                "user",
                "project",
                "created_at",
                "last_used_at",
                "expires_at",
                "state",
            ],
            "Access keys",
        )


@key_app.command("disable")
def key_disable(key_id: str, json_output: JsonFlag = False) -> None:
    """Disable a key; it stops working at once and can be enabled again."""
    _run(lambda s: s.identity.set_key_disabled(key_id, True))
    _done(json_output, {"access_key_id": key_id, "state": "disabled"}, f"Disabled {key_id}")


@key_app.command("enable")
def key_enable(key_id: str, json_output: JsonFlag = False) -> None:
    """Enable a disabled key."""
    _run(lambda s: s.identity.set_key_disabled(key_id, False))
    _done(json_output, {"access_key_id": key_id, "state": "active"}, f"Enabled {key_id}")


@key_app.command("delete")
def key_delete(key_id: str, json_output: JsonFlag = False) -> None:
    """Delete a key for good."""
    _run(lambda s: s.identity.delete_key(key_id))
    _done(json_output, {"access_key_id": key_id, "deleted": True}, f"Deleted {key_id}")


@app.command()
def audit(
    project: str,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Show a project's audit log: logins, key and role changes."""
    found = _run(lambda s: s.identity.audit_entries(project, limit))
    if json_output:
        _print_json(found)
    else:
        _table(found, ["at", "actor", "action", "target", "client"], f"Audit log of {project}")


if __name__ == "__main__":
    app()
