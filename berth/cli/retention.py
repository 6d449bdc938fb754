"""`berth retention`: a project's retention rules and schedule, dry runs, runs and history."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    ProjectArg,
    YesFlag,
    cli_actor,
    confirm_deletion,
    console,
    fail,
    pasteable,
    print_json,
    run_service,
    short_digest,
    show_rows,
    when,
)
from berth.domain.retention import COMBINATION_RULE, Keep, Rule
from berth.domain.wording import counted

if TYPE_CHECKING:
    from berth.services.retention_records import Policy, RunRecord

retention_app = typer.Typer(
    help="Retention: rules that keep images; the images no rule keeps are deleted.",
    no_args_is_help=True,
)

RULE_HELP = (
    "A rule, repeat for several: KEEP=VALUE[,repositories=PATTERN][,tags=PATTERN] where KEEP "
    "is last (a count, at least 1), pushed_within or pulled_within (days, more than 0), "
    "tagged (a tag pattern) or untagged_within (days: older untagged images are removed). "
    "repositories matches the repository or repository/image; tags limits the rule to "
    "images whose every tag matches. Patterns: '*' any characters, '?' one, '[abc]' one of, "
    "'[!abc]' none of. E.g. --rule last=10,repositories=ci --rule tagged='v*'"
)
IMAGE_COLUMNS = ["repository", "digest", "tags", "pushed_at", "last_pulled_at"]
# As `berth image list` shows it (12 hex digits, what `berth image delete` takes): never folded.
IMAGE_IDS = frozenset({"digest"})
RUN_COLUMNS = ["id", "started_at", "actor", "dry_run", "state", "images_deleted", "images_skipped"]
HISTORY_LIMIT = 50  # the newest runs `retention history` shows unless --limit says


def parse_rule(text: str) -> Rule:
    """`last=10,repositories=app/*,tags=ci-*` as a rule; exits 2 when it is not one."""
    fields: dict[str, Any] = {}
    keep: Keep | None = None
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not value:
            fail(f"--rule {text!r}: {part!r} is not NAME=VALUE", 2)
        if keep is None:
            try:
                keep = Keep(name)
            except ValueError:
                fail(
                    f"--rule {text!r}: it starts with what it keeps, one of "
                    + ", ".join(k.value for k in Keep),
                    2,
                )
            try:
                if keep is Keep.LAST:
                    fields["count"] = int(value)
                elif keep is Keep.TAGGED:
                    fields["pattern"] = value
                else:
                    fields["days"] = float(value)
            except ValueError:
                fail(f"--rule {text!r}: {value!r} is not a number", 2)
        elif name in ("repositories", "tags"):
            fields[name] = value
        else:
            fail(f"--rule {text!r}: {name!r} is not repositories or tags", 2)
    assert keep is not None
    return Rule(keep, **fields)


def _image_rows(run: RunRecord) -> list[dict[str, Any]]:
    from berth.services.records import plain

    return [
        {**plain(i), "digest": short_digest(i.digest), "tags": " ".join(i.tags) or "-"}
        for i in run.deleted
    ]


def _note(run: RunRecord) -> str:
    """The run's note, with the garbage collection command as this berth runs it."""
    from berth.services.retention_records import run_note

    gc_command = pasteable("gc", "run", run.project)
    return run_note(
        run.project,
        run.dry_run,
        run.images_deleted,
        run.images_skipped,
        gc_command,
        state=run.state,
    )


def _print_run(run: RunRecord) -> None:
    """A run as JSON, its note naming this berth's garbage collection command."""
    from berth.services.records import plain

    print_json({**plain(run), "note": _note(run)})


def _show_rules(rules: list[Rule]) -> None:
    if not rules:
        console.print("No rules: retention deletes nothing.")
    for number, rule in enumerate(rules, start=1):
        console.print(f"  {number}. {rule.describe()}")


@retention_app.command("show")
def retention_show(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """Show the project's retention rules and schedule."""
    from berth.services.records import plain

    policy = run_service(lambda s: s.retention.policy(project))
    if json_output:
        print_json(plain(policy))
        return
    console.print(f"Retention of {project}: {COMBINATION_RULE}")
    _show_rules(policy.rules)
    _show_schedule(policy)


def _show_schedule(policy: Policy) -> None:
    if policy.schedule:
        next_run = when(policy.next_run_at.isoformat() if policy.next_run_at else None, "-")
        console.print(f"Runs on schedule {policy.schedule} (UTC); next at {next_run}")
    else:
        run_command = pasteable("retention", "run", policy.project)
        sys.stdout.write(f"Runs only when started: {run_command}\n")


@retention_app.command("set")
def retention_set(
    project: ProjectArg,
    rule: Annotated[list[str] | None, typer.Option("--rule", help=RULE_HELP)] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="'daily HH:MM' or a five-field cron expression, in UTC; empty: no schedule."
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Replace the project's rules (none: retention deletes nothing) and schedule."""
    from berth.services.records import plain

    rules = [parse_rule(text) for text in rule or []]
    policy = run_service(
        lambda s: s.retention.set_policy(
            project, rules, schedule or None, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    if json_output:
        print_json(plain(policy))
        return
    console.print(f"Saved {counted(len(rules), 'retention rule')} for {project}.")
    _show_rules(policy.rules)
    _show_schedule(policy)
    sample = pasteable("retention", "dry-run", project)
    sys.stdout.write(f"See what a run would delete:\n  {sample}\n")


@retention_app.command("dry-run")
def retention_dry_run(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List what a run now would delete; delete nothing."""
    from rich.text import Text

    record = run_service(
        lambda s: s.retention.run(project, dry_run=True, actor=cli_actor(), client=CLI_CLIENT)
    )
    if json_output:
        _print_run(record)
        return
    show_rows(
        False, _image_rows(record), IMAGE_COLUMNS, f"Retention dry run of {project}", ids=IMAGE_IDS
    )
    console.print(Text(_note(record)), soft_wrap=True)  # its command in one piece
    if record.deleted:
        sys.stdout.write(f"Delete them:\n  {pasteable('retention', 'run', project)}\n")


@retention_app.command("run")
def retention_run(project: ProjectArg, yes: YesFlag = False, json_output: JsonFlag = False) -> None:
    """Apply the rules now: delete the images no rule keeps (images pushed or re-tagged
    during the run are kept)."""
    from rich.text import Text

    confirm_deletion(
        f"delete the images of {project} that no retention rule keeps",
        yes,
        present=lambda s: s.retention.policy(project),
    )
    record = run_service(
        lambda s: s.retention.run(project, dry_run=False, actor=cli_actor(), client=CLI_CLIENT)
    )
    if json_output:
        _print_run(record)
        return
    show_rows(
        False,
        _image_rows(record),
        IMAGE_COLUMNS,
        f"Deleted by retention in {project}",
        ids=IMAGE_IDS,
    )
    console.print(Text(_note(record)), soft_wrap=True)  # its command in one piece
    if record.error:
        fail(f"the run stopped: {record.error}")


@retention_app.command("history")
def retention_history(
    project: ProjectArg,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many runs, newest first.")
    ] = HISTORY_LIMIT,
    json_output: JsonFlag = False,
) -> None:
    """The project's retention runs, newest first."""
    from berth.services.records import plain

    runs, total = run_service(lambda s: s.retention.history(project, limit=limit))
    rows = [
        {**{k: v for k, v in plain(r).items() if k != "deleted"}, "note": _note(r)} for r in runs
    ]
    show_rows(
        json_output,
        rows,
        RUN_COLUMNS,
        f"Retention runs of {project}",
        total=total,
        per_page=limit,
    )
