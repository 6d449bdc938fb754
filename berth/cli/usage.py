"""`berth audit` and `berth usage`: a project's audit log, and its storage and traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from berth.cli.common import (
    JsonFlag,
    ProjectArg,
    console,
    listing,
    print_json,
    run_service,
    show_rows,
    when,
)
from berth.domain.usage import STORAGE_SAMPLE_RETENTION_DAYS
from berth.domain.wording import counted

if TYPE_CHECKING:
    from berth.state import Services


def audit(
    project: Annotated[
        str | None,
        typer.Argument(
            metavar="PROJECT",
            help="The project whose log to show; without it: the log outside projects.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="How many entries, newest first.")
    ] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Show a project's audit log (logins, key, role and settings changes), or without PROJECT
    the server's: users created and deleted, passwords set, projects created and deleted."""
    if project is None:
        found, total = run_service(lambda s: s.identity.audit.server_entries(limit))
        title = "Audit log outside projects"
    else:
        in_project = project

        async def entries(s: Services) -> tuple[list[dict[str, Any]], int]:
            log = s.identity.audit
            return await log.entries(in_project, limit), await log.count(in_project)

        found, total = run_service(entries)
        title = f"Audit log of {project}"
    if json_output:
        print_json(listing(found, total, per_page=limit))
    else:
        # The details are in --json: a table with them no longer fits 80 columns whole.
        show_rows(False, found, ["at", "actor", "action", "target", "client"], title)


def _size(value: int) -> str:
    """Bytes in decimal units (GB = 10^9, as traffic is charged)."""
    if value < 1000:
        return f"{value:,} B"
    amount = value / 1000
    for unit in ("kB", "MB", "GB"):
        if amount < 1000:
            return f"{amount:,.2f} {unit}"
        amount /= 1000
    return f"{amount:,.2f} TB"


def _change(month: dict[str, Any]) -> str:
    percent = month["change_percent"]
    shown = f"{percent:+.1f}%" if percent is not None else "n/a"
    delta = month["change_bytes"]
    return f"{shown} ({'+' if delta >= 0 else '-'}{_size(abs(delta))})"


def usage(
    project: ProjectArg,
    days: Annotated[
        int,
        typer.Option(
            min=1,
            max=STORAGE_SAMPLE_RETENTION_DAYS,
            help=(
                "Days of storage and traffic series to show (traffic: at most the days it is"
                " kept, traffic_retention_days)."
            ),
        ),
    ] = 14,
    collect: Annotated[
        bool, typer.Option("--collect", help="Collect storage usage now, first.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Show a project's management summary, storage usage and outbound traffic."""
    from rich.table import Table

    from berth.services.records import plain

    async def gather(s: Services) -> dict[str, Any]:
        if collect:
            await s.usage.collect(project)
        storage = await s.usage.storage(project, days)
        # One reading of the last sample for both: the server's scheduled collection may
        # record a newer one between the two calls.
        summary = (await s.usage.summary(project)).model_copy(update={"storage": storage.last})
        return {
            "summary": summary,
            "storage": storage,
            "traffic": await s.usage.traffic(
                project, days=min(days, s.usage.traffic_retention_days)
            ),
        }

    found = plain(run_service(gather))
    if json_output:
        print_json(found)
        return
    summary, storage, traffic = found["summary"], found["storage"], found["traffic"]
    repos, images, stored = summary["repositories"], summary["images"], summary["storage"]
    this_month = traffic["this_month"]
    table = Table(title=f"Project {project}", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("Repositories", f"{repos['stored']} / {repos['maximum']}")
    table.add_row(
        "Images", f"{images['stored']:,} (at most {images['limit_per_repository']:,} a repository)"
    )
    collected = when(stored["collected_at"], "not collected yet (measured now)")
    table.add_row("Storage used", f"{_size(stored['bytes'])} in {counted(stored['blobs'], 'blob')}")
    table.add_row("Storage collected", collected)
    table.add_row(
        f"Outbound traffic {this_month['month']}",
        f"{_size(this_month['bytes'])}, {_change(this_month)} over the previous month",
    )
    table.add_row(
        "Estimated charge", f"{this_month['estimated_charge']:,.2f} {this_month['currency']}"
    )
    table.add_row("Last garbage collection", when(summary["last_gc_at"]))
    console.print(table)

    # One storage row a day (the day's last sample): the schedule takes 48 a day by default.
    by_day: dict[str, dict[str, Any]] = {}
    for sample in storage["samples"]:
        by_day[sample["collected_at"][:10]] = sample
    series = Table(title=f"Storage, last {counted(days, 'day')} (last sample of each day)")
    for column in ("day", "collected at", "storage", "blobs", "images"):
        series.add_column(column)
    for day, sample in by_day.items():
        series.add_row(
            day,
            sample["collected_at"][11:19],
            _size(sample["bytes"]),
            f"{sample['blobs']:,}",
            f"{sample['images']:,}",
        )
    console.print(series)

    daily = Table(title=f"Outbound traffic, last {counted(len(traffic['daily']), 'day')} (UTC)")
    for column in ("day", "bytes", "requests"):
        daily.add_column(column)
    for day in traffic["daily"]:
        daily.add_row(day["day"], _size(day["bytes"]), f"{day['requests']:,}")
    console.print(daily)
    monthly = Table(title="Outbound traffic by month")
    for column in ("month", "bytes", "requests", "change", "estimated charge"):
        monthly.add_column(column)
    for month in traffic["months"]:
        monthly.add_row(
            month["month"],
            _size(month["bytes"]),
            f"{month['requests']:,}",
            _change(month),
            f"{month['estimated_charge']:,.2f} {month['currency']}",
        )
    console.print(monthly)
