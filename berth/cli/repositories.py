"""`berth repo`: create, show, change and delete repositories, and give outsiders a role on one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    ProjectArg,
    UserArg,
    YesFlag,
    cell,
    cli_actor,
    confirm_deletion,
    console,
    done,
    print_json,
    run_service,
    show_rows,
    split_repo,
)

if TYPE_CHECKING:
    from berth.state import Services

repo_app = typer.Typer(help="Repositories in a project.", no_args_is_help=True)


REPOSITORY_COLUMNS = [
    "name",
    "description",
    "images",
    "scan_mode",
    "tag_overwrite",
    "visibility",
    "updated_at",
]


@repo_app.command("create")
def repo_create(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    public: Annotated[bool, typer.Option("--public", help="Anyone may pull.")] = False,
    no_tag_overwrite: Annotated[
        bool, typer.Option("--no-tag-overwrite", help="Refuse to move an existing tag.")
    ] = False,
    description: Annotated[str, typer.Option(help="Up to 100 characters.")] = "",
    scan: Annotated[str, typer.Option(help="Image scan: auto or manual.")] = "manual",
    json_output: JsonFlag = False,
) -> None:
    """Create a repository; images can be pushed into it afterwards."""
    from berth.services.records import plain

    project, repository = split_repo(name)
    created = plain(
        run_service(
            lambda s: s.repositories.create(
                project,
                repository,
                public=public,
                tag_overwrite=not no_tag_overwrite,
                description=description,
                scan_mode=scan,
                actor=cli_actor(),
                client=CLI_CLIENT,
            )
        )
    )
    if json_output:
        print_json(created)
    else:
        console.print(
            f"Created repository [bold]{project}/{repository}[/] ({created['visibility']})"
        )


@repo_app.command("list")
def repo_list(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List a project's repositories."""
    from berth.services.records import plain

    found = plain(run_service(lambda s: s.repositories.list(project)))
    show_rows(json_output, found, REPOSITORY_COLUMNS, f"Repositories in {project}")


@repo_app.command("grant")
def repo_grant(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    user: UserArg,
    role: Annotated[str, typer.Option(help="member (push, pull) or viewer (pull).")],
    json_output: JsonFlag = False,
) -> None:
    """Give a user outside the project a role on one repository."""
    project, repository = split_repo(name)
    run_service(
        lambda s: s.identity.members.grant(
            project, repository, user, role, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(
        json_output,
        {"repository": name, "user": user, "role": role},
        f"{user} is now repository {role} of {name}",
    )


@repo_app.command("revoke")
def repo_revoke(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    user: UserArg,
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Remove a user's role on a repository."""
    project, repository = split_repo(name)
    confirm_deletion(
        f"remove {user}'s role on {name}",
        yes,
        present=lambda s: s.identity.members.require_grant(project, repository, user),
    )
    run_service(
        lambda s: s.identity.members.revoke(
            project, repository, user, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(json_output, {"repository": name, "user": user}, f"{user} has no role on {name} now")


def _show_repository(found: dict[str, Any], title: str) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value", overflow="fold")  # a long name whole, on two lines
    for column in ["project", *REPOSITORY_COLUMNS, "created_at"]:
        table.add_row(column.replace("_", " "), Text(cell(found[column], column)))
    console.print(table)


@repo_app.command("show")
def repo_show(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")], json_output: JsonFlag = False
) -> None:
    """Show a repository's settings and image count."""
    from berth.services.records import plain

    project, repository = split_repo(name)
    found = plain(run_service(lambda s: s.repositories.show(project, repository)))
    if json_output:
        print_json(found)
    else:
        _show_repository(found, f"Repository {name}")


@repo_app.command("update")
def repo_update(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    public: Annotated[
        bool | None, typer.Option("--public/--private", help="Visibility.", show_default=False)
    ] = None,
    tag_overwrite: Annotated[
        bool | None,
        typer.Option(
            "--tag-overwrite/--no-tag-overwrite", help="Allow moving tags.", show_default=False
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Up to 100 characters.")] = None,
    scan: Annotated[str | None, typer.Option(help="Image scan: auto or manual.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Change a repository's settings (the name is fixed once created)."""
    from berth.services.records import plain

    project, repository = split_repo(name)
    updated = plain(
        run_service(
            lambda s: s.repositories.update(
                project,
                repository,
                public=public,
                tag_overwrite=tag_overwrite,
                description=description,
                scan_mode=scan,
                actor=cli_actor(),
                client=CLI_CLIENT,
            )
        )
    )
    if json_output:
        print_json(updated)
    else:
        _show_repository(updated, f"Updated repository {name}")


@repo_app.command("delete")
def repo_delete(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete a repository with its images and tags (their data goes at the next GC)."""
    project, repository = split_repo(name)
    confirm_deletion(
        f"delete {name} with all its images",
        yes,
        present=lambda s: s.repositories.require(project, repository),
    )

    async def work(s: Services) -> None:
        await s.repositories.delete(project, repository, actor=cli_actor(), client=CLI_CLIENT)

    run_service(work)
    done(json_output, {"repository": name, "deleted": True}, f"Deleted repository {name}")
