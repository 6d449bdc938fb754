"""`berth storage check`: verify every stored blob against its digest, on the configured data."""

from __future__ import annotations

import typer
from rich.table import Table

from berth.cli.common import JsonFlag, console, print_json, run_service

storage_app = typer.Typer(help="Blob storage: integrity checks.", no_args_is_help=True)


@storage_app.command("check")
def storage_check(json_output: JsonFlag = False) -> None:
    """Hash every blob; set damaged ones aside (pushing them again repairs them), report missing
    ones, remove scratch files no upload names. Exits 1 when a blob is damaged or missing."""
    report = run_service(lambda s: s.storage_check.run())
    if json_output:
        print_json(report.as_dict())
    else:
        table = Table(title="Storage check", show_header=False)
        table.add_column("item", style="bold")
        table.add_column("value")
        table.add_row("Blobs checked", f"{report.blobs_checked:,} ({report.bytes_checked:,} bytes)")
        table.add_row("Damaged (set aside)", f"{len(report.damaged):,}")
        table.add_row("Missing", f"{len(report.missing):,}")
        table.add_row("Orphaned upload files removed", f"{report.orphan_uploads_removed:,}")
        console.print(table)
        for digest in report.damaged:
            console.print(f"damaged: {digest} (set aside; push it again to repair)")
        for digest in report.missing:
            console.print(f"missing: {digest} (push it again to repair)")
        if report.healthy:
            console.print("Every blob is whole.")
    if not report.healthy:
        raise typer.Exit(1)
