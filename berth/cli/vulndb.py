"""`berth vulndb`: import OSV vulnerability records, and see what the database holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli.common import (
    JsonFlag,
    cli_actor,
    console,
    data_table,
    errors,
    pasteable,
    print_json,
    run_service,
    when,
)
from berth.domain.wording import counted

if TYPE_CHECKING:
    from berth.services.vulndb import ImportReport, VulnDbStatus

vulndb_app = typer.Typer(
    help="The vulnerability database scans match against: OSV records you import.",
    no_args_is_help=True,
)


def empty_message() -> str:
    return (
        "The vulnerability database is empty: import OSV records with "
        f"`{pasteable('vulndb', 'import', 'PATH')}`."
    )


@vulndb_app.command("import")
def import_records(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="An OSV JSON file (one record or a list of them; at most 16 MiB), a "
            "directory of such files, or a zip of them (OSV's all.zip: one record per file). "
            "Import more records than one file holds as a directory or a zip.",
        ),
    ],
    json_output: JsonFlag = False,
) -> None:
    """Import OSV records; a record already there is replaced only by a newer one. A
    malformed file is refused (exit 1) and nothing of it is imported; the others are."""
    from rich.text import Text

    from berth.services.records import plain
    from berth.services.vulndb import VulnDb

    report: ImportReport = run_service(
        lambda services: VulnDb(services.db).import_path(path, cli_actor())
    )
    if json_output:
        print_json(plain(report))
    else:
        console.print(
            Text(
                f"Imported {report.path}: {report.added} added, {report.replaced} replaced "
                f"by newer records, {report.unchanged} unchanged."
            ),
            soft_wrap=True,
        )
    for refused in report.refused:
        errors.print(
            Text.assemble(
                ("refused: ", "red"), f"{refused.file}: {refused.field}: {refused.problem}"
            ),
            soft_wrap=True,
        )
    if report.refused:
        raise typer.Exit(1)


@vulndb_app.command("status")
def status(json_output: JsonFlag = False) -> None:
    """The ecosystems and record counts in the database, and each source's newest record."""
    from rich.text import Text

    from berth.services.records import plain
    from berth.services.vulndb import VulnDb

    state: VulnDbStatus = run_service(lambda services: VulnDb(services.db).status())
    if json_output:
        print_json(plain(state))
        return
    if not state.records:
        console.print(Text(empty_message()), soft_wrap=True)
        return
    console.print(
        Text(
            f"{counted(state.records, 'record')}; last import {when(plain(state.last_import_at))}."
        ),
        soft_wrap=True,
    )
    console.print(
        data_table([plain(e) for e in state.ecosystems], ["ecosystem", "records"], "Ecosystems")
    )
    console.print(
        data_table(
            [
                {**plain(s), "newest_modified": when(plain(s.newest_modified))}
                for s in state.sources
            ],
            ["source", "records", "newest_modified"],
            "Sources",
            headers={"newest_modified": "newest record modified"},
        )
    )
