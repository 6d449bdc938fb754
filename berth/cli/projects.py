"""`berth project` and `berth member`: projects (tenants) and the roles of their members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli import accounts
from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    ProjectArg,
    UserArg,
    YesFlag,
    cli_actor,
    confirm_deletion,
    console,
    done,
    fail,
    print_json,
    run_service,
    show_rows,
)
from berth.domain.wording import counted

if TYPE_CHECKING:
    from berth.services.repository_listings import ProjectDetails
    from berth.services.scanning.policy import PullPolicySettings
    from berth.state import Services

project_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
member_app = typer.Typer(help="Project members and their roles.", no_args_is_help=True)


@project_app.command("create")
def project_create(name: ProjectArg, json_output: JsonFlag = False) -> None:
    """Create a project."""
    run_service(lambda s: s.repositories.create_project(name, actor=cli_actor(), client=CLI_CLIENT))
    if json_output:
        print_json({"name": name})
    else:
        console.print(f"Created project [bold]{name}[/]")


@project_app.command("list")
def project_list(json_output: JsonFlag = False) -> None:
    """List projects."""
    from berth.services.records import plain

    found = plain(run_service(lambda s: s.repositories.list_projects()))
    show_rows(json_output, found, ["name", "created_at"], "Projects")


@project_app.command("pull-policy")
def project_pull_policy(
    project: ProjectArg,
    severity: Annotated[
        str | None,
        typer.Argument(
            metavar="SEVERITY|off",
            help="Refuse pulls of images whose scan found vulnerabilities of this severity or "
            "above: critical, high, medium, low, or unknown (any finding); off lets every "
            "image through. Without it: show the policy.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Show or set the project's pull policy (off by default). Images not scanned yet, being
    scanned, or whose scan failed are let through."""
    from berth.services.records import plain
    from berth.services.scanning.policy import POLICY_SEVERITIES, threshold_words

    if severity is not None and severity != "off" and severity not in POLICY_SEVERITIES:
        fail(f"SEVERITY must be one of {', '.join(POLICY_SEVERITIES)}, or off", 2)

    async def work(s: Services) -> PullPolicySettings:
        if severity is None:
            return await s.pull_policy.settings(project)
        wanted = None if severity == "off" else severity
        return await s.pull_policy.set(project, wanted, cli_actor(), client=CLI_CLIENT)

    policy = run_service(work)
    if json_output:
        print_json(plain(policy))
    elif policy.refuse_severity is None:
        console.print(f"Project {project}: pulls are not checked against scans (policy off).")
    else:
        console.print(
            f"Project {project}: pulls of images with vulnerability findings "
            f"{threshold_words(policy.refuse_severity)} are refused."
        )


# A negative MAXIMUM reaches the range check as a number, not Click's "No such option: -5".
@project_app.command("quota", context_settings={"ignore_unknown_options": True})
def project_quota(
    project: ProjectArg,
    maximum: Annotated[
        str | None,
        typer.Argument(
            metavar="MAXIMUM|default",
            help="The most repositories the project may hold (0 to 1,000,000); default returns it "
            "to the server's repository_quota. Without it: show the quota.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Show or set the project's repository quota. Lowering it below what the project holds
    deletes nothing: new repositories are refused until it holds fewer."""
    wanted: int | None = None
    if maximum is not None and maximum != "default":
        try:
            wanted = int(maximum)
        except ValueError:
            fail(f"MAXIMUM must be a whole number of repositories, or default; not {maximum!r}", 2)

    async def work(s: Services) -> ProjectDetails:
        if maximum is not None:
            await s.repositories.set_quota(project, wanted, actor=cli_actor(), client=CLI_CLIENT)
        return await s.repositories.project(project)

    details = run_service(work)
    if json_output:
        print_json(
            {
                "name": details.name,
                "repositories": details.repositories,
                "repository_quota": details.repository_quota,
                "quota_is_default": details.quota_is_default,
            }
        )
        return
    whose = "the server's default" if details.quota_is_default else "its own quota"
    console.print(
        f"Project {project} may hold at most "
        f"{counted(details.repository_quota, 'repository', 'repositories')} ({whose}); it "
        f"holds {details.repositories}."
    )


@member_app.command("add")
def member_add(
    project: ProjectArg,
    user: UserArg,
    role: Annotated[str, typer.Option(help="admin, member or reader.")],
    json_output: JsonFlag = False,
) -> None:
    """Add a user to a project, or change their role."""
    run_service(
        lambda s: s.identity.members.add_member(
            project, user, role, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(
        json_output,
        {"project": project, "user": user, "role": role},
        f"{user} is now {role} of {project}",
    )


@member_app.command("remove")
def member_remove(
    project: ProjectArg, user: UserArg, yes: YesFlag = False, json_output: JsonFlag = False
) -> None:
    """Remove a user from a project; their access keys there stop working."""
    confirm_deletion(
        f"remove {user} from {project} (their access keys there stop working)",
        yes,
        present=lambda s: s.identity.members.require_removable(project, user),
    )
    run_service(
        lambda s: s.identity.members.remove_member(
            project, user, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(json_output, {"project": project, "user": user}, f"{user} left {project}")


@member_app.command("list")
def member_list(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List a project's members."""
    from berth.services.records import plain

    found = run_service(lambda s: s.identity.members.list_members(project))
    show_rows(json_output, plain(found), ["user", "role", "since"], f"Members of {project}")


project_app.command("delete")(accounts.project_delete)
