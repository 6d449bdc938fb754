"""`berth user set-password`, `berth user delete` and `berth project delete`: on the database
directly, so a lost administrator password is recovered on the server."""

from __future__ import annotations

from typing import Annotated

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    ProjectArg,
    UserArg,
    YesFlag,
    ask_on_terminal,
    cli_actor,
    confirm_deletion,
    done,
    fail,
    read_password,
    run_service,
)
from berth.domain.wording import counted


def user_set_password(
    name: UserArg,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Set a user's password (a reset, or a lost administrator password).

    Their console sessions end. Prompts for the password unless --password-stdin. It acts on
    the database of the settings it is given: give it those `berth serve` has (`berth
    --data-dir DIR` or BERTH_DATA_DIR, BERTH_DATABASE_URL, the config file); `berth serve`
    prints this command with them when it starts."""
    password = read_password(password_stdin, "New password")
    run_service(
        lambda s: s.identity.users.set_password(
            name, password, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(
        json_output,
        {"name": name, "password_set": True},
        f"Set the password of [bold]{name}[/]; their console sessions ended",
    )


def user_delete(name: UserArg, yes: YesFlag = False, json_output: JsonFlag = False) -> None:
    """Delete a user: their access keys and console sessions stop working within a second."""
    confirm_deletion(
        f"delete user {name} with their access keys",
        yes,
        present=lambda s: s.identity.users.require_deletable(name, actor=cli_actor()),
    )
    run_service(lambda s: s.identity.users.delete_user(name, actor=cli_actor(), client=CLI_CLIENT))
    done(json_output, {"name": name, "deleted": True}, f"Deleted user [bold]{name}[/]")


def project_delete(name: ProjectArg, yes: YesFlag = False, json_output: JsonFlag = False) -> None:
    """Delete a project with its repositories, images, access keys and roles.

    One that holds repositories goes only once its name is typed again (or with --yes).

    Blobs no other project uses are removed by the next garbage collection."""
    held = len(run_service(lambda s: s.repositories.list(name)))
    confirm = name if yes else None
    if held and not yes:
        holds = counted(held, "repository", "repositories")
        typed = ask_on_terminal(
            f"delete project {name}, which holds {holds}",
            f"Project {name} holds {holds}. Type its name to delete it with all of them",
        )
        if typed != name:
            fail(f"{typed!r} is not {name!r}; nothing was deleted")
        confirm = typed
    elif not held:
        confirm_deletion(f"delete project {name}", yes)

    deleted = run_service(
        lambda s: s.repositories.delete_project(
            name, confirm=confirm, actor=cli_actor(), client=CLI_CLIENT
        ),
        uses_store=True,  # its uploads' files go
    )
    done(
        json_output,
        {"name": name, "deleted": True, "repositories": deleted},
        f"Deleted project [bold]{name}[/] and its {counted(deleted, 'repository', 'repositories')}",
    )
