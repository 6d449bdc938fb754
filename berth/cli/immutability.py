"""`berth immutability`: a project's immutable tag rules. A tag matching a rule cannot be moved
to another image or removed, by any client or surface, and retention never deletes its image;
a repository's tag overwrite switch, off, does the same for every tag of that repository."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    ProjectArg,
    YesFlag,
    cli_actor,
    confirm_deletion,
    console,
    done,
    print_json,
    run_service,
    show_rows,
)
from berth.domain.references import MAX_ID

immutability_app = typer.Typer(
    help="Immutable tag rules: tags that cannot be moved or deleted.", no_args_is_help=True
)

COLUMNS = ["id", "tag_pattern", "repositories", "created_by", "created_at"]


def _row(rule: dict[str, Any]) -> dict[str, Any]:
    return {**rule, "repositories": rule["repository_pattern"] or "all"}


@immutability_app.command("list")
def immutability_list(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List a project's immutable tag rules (a refusal names the first that matches)."""
    from berth.services.records import plain

    found = run_service(lambda s: s.tag_rules.list_rules(project))
    show_rows(
        json_output, [_row(plain(r)) for r in found], COLUMNS, f"Immutable tag rules of {project}"
    )


@immutability_app.command("add")
def immutability_add(
    project: ProjectArg,
    tag_pattern: Annotated[
        str,
        typer.Argument(
            metavar="TAG_PATTERN",
            help="A glob matched against the whole tag: * any characters, ? one, [abc] one of "
            "(quote it for the shell: 'v*').",
        ),
    ],
    repository: Annotated[
        str | None,
        typer.Option(
            "--repository",
            "-r",
            metavar="PATTERN",
            help="Only repositories matching this glob (the repository name, or "
            "repository/image); without it, every repository of the project.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Add a rule: from now on matching tags cannot be moved or deleted."""
    from berth.services.records import plain

    created = run_service(
        lambda s: s.tag_rules.create(
            project, tag_pattern, repository, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    if json_output:
        print_json(plain(created))
        return
    scope = (
        f"repositories matching {repository!r}" if repository else f"every repository of {project}"
    )
    console.print(
        f"Rule [bold]{created.id}[/]: tags matching {tag_pattern!r} in {scope} are immutable"
    )


@immutability_app.command("remove")
def immutability_remove(
    project: ProjectArg,
    rule_id: Annotated[
        int,
        typer.Argument(min=1, max=MAX_ID, metavar="RULE_ID", help="The rule's id (see list)."),
    ],
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Remove a rule: its tags may move and go again (unless another rule holds them)."""
    confirm_deletion(
        f"remove immutable tag rule {rule_id} of {project} (its tags may then move and go)",
        yes,
        present=lambda s: s.tag_rules.require_rule(project, rule_id),
    )
    run_service(
        lambda s: s.tag_rules.delete(project, rule_id, actor=cli_actor(), client=CLI_CLIENT)
    )
    done(json_output, {"removed": rule_id}, f"Removed immutable tag rule {rule_id}")
