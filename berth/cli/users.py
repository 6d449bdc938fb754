"""`berth user`: users and service accounts."""

from __future__ import annotations

from typing import Annotated

import typer

from berth.cli import accounts
from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    UserArg,
    cli_actor,
    done,
    read_password,
    run_service,
    show_rows,
)

user_app = typer.Typer(help="Users and service accounts.", no_args_is_help=True)


@user_app.command("create")
def user_create(
    name: UserArg,
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
        password = read_password(password_stdin)
    created = run_service(
        lambda s: s.identity.users.create_user(
            name,
            password,
            is_admin=admin,
            service_account=service_account,
            actor=cli_actor(),
            client=CLI_CLIENT,
        )
    )
    done(json_output, created, f"Created user [bold]{name}[/]")


@user_app.command("list")
def user_list(json_output: JsonFlag = False) -> None:
    """List users."""
    found = run_service(lambda s: s.identity.users.list_users())
    show_rows(json_output, found, ["name", "admin", "service_account", "created_at"], "Users")


user_app.command("set-password")(accounts.user_set_password)
user_app.command("delete")(accounts.user_delete)
