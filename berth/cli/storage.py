"""`berth storage check`: compare the metadata with the blob store (every blob hashed, stored
blobs no metadata names listed), on the configured data."""

from __future__ import annotations

from typing import Annotated

import typer

from berth.cli.common import (
    JsonFlag,
    YesFlag,
    confirm_deletion,
    console,
    fail,
    pasteable,
    print_json,
    run_service,
)

storage_app = typer.Typer(help="Blob storage: integrity checks.", no_args_is_help=True)


@storage_app.command("check")
def storage_check(
    project: Annotated[
        str | None,
        typer.Argument(
            metavar="PROJECT", help="Check only the blobs of this project's repositories."
        ),
    ] = None,
    all_projects: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Check the whole install (the default without PROJECT): also lists the store "
            "for blobs no metadata names.",
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove stored blobs no metadata names once older than gc_grace_period "
            "(asks first, unless --yes). Of the whole install only (--all), not of a PROJECT.",
        ),
    ] = False,
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Hash every blob (of PROJECT, or of every project); set damaged ones aside (pushing them
    again repairs them), report missing ones. Of the whole install, also report stored blobs
    no metadata names (orphans; removed with --repair, which asks first), and remove scratch
    files no upload names. Exits 1 when a blob is damaged or missing (orphans only waste space)."""
    from rich.table import Table

    if project is not None and all_projects:
        fail("give a PROJECT or --all, not both", 2)
    if project is not None and repair:
        # Orphans are stored blobs no metadata names: content-addressed, they belong to no
        # project, so only the whole install's check finds (and removes) them.
        fail(
            "--repair removes stored blobs no metadata names, which belong to no project: it "
            f"repairs the whole install's check only ({pasteable('storage', 'check', '--all', '--repair')})",
            2,
        )
    if repair:
        confirm_deletion(
            "remove the stored blobs no metadata names, once older than gc_grace_period",
            yes,
        )
    report = run_service(lambda s: s.storage_check.run(project, repair=repair), uses_store=True)
    kept = [digest for digest in report.orphans if digest not in report.orphans_removed]
    if json_output:
        print_json({**report.as_dict(), "orphans_kept": kept})
    else:
        title = f"Storage check of {project}" if project else "Storage check"
        table = Table(title=title, show_header=False)
        table.add_column("item", style="bold")
        table.add_column("value")
        table.add_row("Blobs checked", f"{report.blobs_checked:,} ({report.bytes_checked:,} bytes)")
        table.add_row("Damaged (set aside)", f"{len(report.damaged):,}")
        table.add_row("Missing", f"{len(report.missing):,}")
        if project is None:
            table.add_row("Orphaned (no metadata)", f"{len(report.orphans):,}")
            table.add_row("Orphaned blobs removed", f"{len(report.orphans_removed):,}")
            table.add_row("Orphaned upload files removed", f"{report.orphan_uploads_removed:,}")
        console.print(table)
        for digest in report.damaged:
            console.print(f"damaged: {digest} (set aside; push it again to repair)")
        for digest in report.missing:
            console.print(f"missing: {digest} (push it again to repair)")
        for digest in report.orphans_removed:
            console.print(f"orphan removed: {digest}")
        for digest in kept:
            why = "younger than gc_grace_period" if repair else "--repair removes it"
            console.print(f"orphan: {digest} (stored, no metadata names it; {why})")
        if report.healthy:
            console.print("Every blob is whole.")
    if not report.healthy:
        raise typer.Exit(1)
