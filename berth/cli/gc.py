"""`berth gc run|status|history`: garbage collection of a project, carried out in this process.

`run` works on the metadata database and blob storage directly (the settings of `serve`), like
every admin verb, with a progress bar on standard error; a server running meanwhile refuses
pushes to the project while the run holds its write restriction, and recovers the run should
this process die.
"""

from __future__ import annotations

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
    data_table,
    errors_console,
    listing,
    print_json,
    run_service,
    when,
)
from berth.domain.wording import counted

if TYPE_CHECKING:
    from rich.progress import Progress

    from berth.services.gc import Run
    from berth.state import Services

gc_app = typer.Typer(help="Garbage collection: free storage no image needs.", no_args_is_help=True)


COLUMNS = [
    ("id", "run"),
    ("started_at", "started"),
    ("state", "state"),
    ("dry_run", "dry"),
    ("delete_untagged", "untagged"),
    ("duration_seconds", "secs"),
    ("restricted_seconds", "refused (s)"),
    ("images_deleted", "images"),
    ("blobs_deleted", "blobs"),
    ("bytes_freed", "bytes freed"),
]


def _show(run: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"Garbage collection run {run['id']} in {run['project']}", show_header=False
    )
    table.add_column("item", style="bold")
    table.add_column("value")
    state = run["state"] + (f" ({run['phase']})" if run["state"] == "running" else "")
    table.add_row("State", state + (" — dry run, nothing changed" if run["dry_run"] else ""))
    table.add_row("Delete untagged", "yes" if run["delete_untagged"] else "no")
    table.add_row("Started", f"{when(run['started_at'])} by {run['actor'] or '?'}")
    table.add_row("Finished", when(run["finished_at"], "-"))
    table.add_row("Duration", f"{run['duration_seconds']:.3f} s")
    restricted = run["restricted_seconds"]
    table.add_row("Writes refused for", f"{restricted:.3f} s" if restricted is not None else "-")
    verb = "would be deleted" if run["dry_run"] else "deleted"
    table.add_row(f"Images {verb}", f"{run['images_deleted']:,}")
    table.add_row(
        f"Blobs {verb} from the project",
        f"{run['blobs_deleted']:,} ({run['bytes_freed']:,} bytes)",
    )
    table.add_row(
        f"Blobs {verb} from storage",
        f"{run['storage_blobs_deleted']:,} ({run['storage_bytes_freed']:,} bytes)",
    )
    table.add_row(f"Abandoned uploads {verb}", f"{run['uploads_deleted']:,}")
    for row in young_kept(run):
        table.add_row(*row)
    if run["progress_total"]:
        table.add_row("Files removed", f"{run['progress_done']:,} / {run['progress_total']:,}")
    if run["error"]:
        table.add_row("Error", f"[red]{run['error']}[/]")
    console.print(table)


@gc_app.command("run")
def gc_run(
    project: ProjectArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be deleted; change nothing.")
    ] = False,
    delete_untagged: Annotated[
        bool,
        typer.Option(
            "--delete-untagged", help="Also delete images with no tag that no image references."
        ),
    ] = False,
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Collect a project's garbage now, here, with a progress bar. A real run asks first
    (unless --yes); a dry run changes nothing and never asks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from berth.services.gc import FAILED, ROLLED_BACK

    if not dry_run:
        images = (
            f"the untagged images of {project} no image references, and then the blobs"
            if delete_untagged
            else f"the blobs of {project}"
        )
        confirm_deletion(
            f"delete {images} no image needs",
            yes,
            present=lambda s: s.repositories.project(project),
        )
    actor = cli_actor()

    async def work(services: Services, progress: Progress | None) -> Run:
        task = None
        if progress is not None:
            task = progress.add_task("deciding what goes (writes refused)", total=None)

        def advance(run: Run) -> None:
            if progress is not None and task is not None:
                progress.update(
                    task,
                    description="removing files",
                    completed=run.progress_done,
                    total=run.progress_total,
                )

        return await services.gc.run(
            project,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            actor=actor,
            client=CLI_CLIENT,
            progress=advance,
        )

    if json_output or not errors_console().is_terminal:
        # No progress bar where none is drawn: on a pipe or file it only adds an empty line
        # (after an error too).
        run = run_service(lambda s: work(s, None), uses_store=True).as_json()
    else:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=errors_console(),
            transient=True,
        ) as progress:
            run = run_service(lambda s: work(s, progress), uses_store=True).as_json()
    if json_output:
        print_json(run)
    else:
        _show(run)
    if run["state"] in (FAILED, ROLLED_BACK):
        raise typer.Exit(1)


@gc_app.command("status")
def gc_status(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """The project's running collection, or else its last one."""

    async def work(services: Services) -> dict[str, Any] | None:
        current = await services.gc.current(project)
        if current is not None:
            return current.as_json()
        last = await services.gc.history(project, limit=1)
        return last[0].as_json() if last else None

    run = run_service(work)
    if json_output:
        print_json(run)
    elif run is None:
        console.print(f"No garbage collection has run in {project} yet.")
    else:
        _show(run)


@gc_app.command("history")
def gc_history(
    project: ProjectArg,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many runs, newest first.")
    ] = 20,
    json_output: JsonFlag = False,
) -> None:
    """A project's garbage collection runs, newest first."""
    found, total = run_service(lambda s: s.gc.history_page(project, offset=0, limit=limit))
    runs = [run.as_json() for run in found]
    if json_output:
        print_json(listing(runs, total, per_page=limit))
        return
    rows = [{key: _figure(run[key]) for key, _ in COLUMNS} for run in runs]
    console.print(
        data_table(
            rows, [key for key, _ in COLUMNS], f"Garbage collection in {project}", dict(COLUMNS)
        )
    )


def _figure(value: Any) -> Any:
    """Counts with thousands separators and seconds to the millisecond; anything else as the
    table shows it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def young_kept(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows on what a run kept only for being younger than the grace period, and from when
    it goes: short ones, which an 80-column terminal shows a line each."""
    grace = run["grace_period_seconds"]
    rows = [("Grace period", f"{grace:g} s (gc_grace_period)" if grace is not None else "-")]
    images, blobs = run["young_images_kept"], run["young_blobs_kept"]
    kept = (
        f"{counted(images, 'image')} and {counted(blobs, 'blob')}" if images or blobs else "nothing"
    )
    rows.append(("Kept: younger than that", kept))
    if (images or blobs) and run["young_collectable_at"]:
        rows.append(("Kept: collectable from", when(run["young_collectable_at"])))
    return rows
