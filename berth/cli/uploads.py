"""`berth upload list|cancel`: a project's blob uploads in progress, who holds them, and
cancelling one when the project is at max_open_uploads (instead of waiting for upload_expiry)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

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
    done,
    fail,
    listing,
    pasteable,
    print_json,
    run_service,
)
from berth.domain.names import joined_name

if TYPE_CHECKING:
    from berth.services.uploads.open_uploads import OpenUpload
    from berth.state import Services

upload_app = typer.Typer(help="Blob uploads in progress in a project.", no_args_is_help=True)

# What fits 80 columns beside a whole upload ID; --json has every field (when each started,
# and from when it counts as abandoned).
COLUMNS = {
    "id": "upload",
    "repository": "repository",
    "started_by": "by",
    "bytes_received": "bytes",
    "updated_at": "last activity",
}


def _name(upload: OpenUpload) -> str:
    """The upload's repository, with the image path inside it when there is one."""
    return joined_name(upload.repository, upload.image)


def _bytes(upload: OpenUpload) -> str:
    """Bytes received, and those the store holds past them (a PATCH still being received)."""
    shown = f"{upload.bytes_received:,}"
    if upload.bytes_stored is not None and upload.bytes_stored > upload.bytes_received:
        shown += f" ({upload.bytes_stored:,} stored)"
    return shown


@upload_app.command("list")
def upload_list(
    project: ProjectArg,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="How many uploads, newest first.")
    ] = 100,
    json_output: JsonFlag = False,
) -> None:
    """A project's uploads in progress, newest first: they count against max_open_uploads.
    Bytes received are those acknowledged; "stored" adds those of a PATCH still arriving."""
    from berth.services.records import plain

    found, total = run_service(lambda s: s.uploads.open_in_project(project, limit=limit))
    if json_output:
        print_json(listing(plain(found), total, per_page=limit))
        return
    if not found:
        console.print(f"No uploads in progress in {project}.")
        return
    rows = [
        {
            **plain(upload),
            "repository": _name(upload),
            "bytes_received": _bytes(upload),
        }
        for upload in found
    ]
    title = f"Uploads in progress in {project}"
    if total > len(found):
        title += f" (newest {len(found)} of {total})"
    # The ID is what `berth upload cancel` takes: never broken across lines.
    console.print(data_table(rows, list(COLUMNS), title, COLUMNS, ids=frozenset({"id"})))
    idle = min(found, key=lambda upload: upload.updated_at)
    sys.stdout.write(
        "\nCancel the one idle longest (what it stored is deleted):\n"
        f"  {pasteable('upload', 'cancel', project, idle.id)}\n"
    )


@upload_app.command("cancel")
def upload_cancel(
    project: ProjectArg,
    upload_id: Annotated[
        str | None,
        typer.Argument(
            metavar="UPLOAD_ID",
            help="The upload's ID, as `berth upload list` shows (or --user, or --all).",
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Cancel every upload this user started.")
    ] = None,
    all_uploads: Annotated[
        bool, typer.Option("--all", help="Cancel every upload in progress in the project.")
    ] = False,
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Cancel an upload as its client's DELETE would: what it stored goes, and its client's
    next request to it is refused (BLOB_UPLOAD_UNKNOWN). Audited as upload.cancel. With
    --user NAME, every upload that user started in the project; with --all, every one."""
    from berth.domain.wording import counted
    from berth.services.records import plain

    if sum((upload_id is not None, user is not None, all_uploads)) != 1:
        fail("give one of UPLOAD_ID, --user NAME or --all", 2)
    if upload_id is None:
        whose = f"started by {user}" if user else "in progress"

        async def present(s: Services) -> None:
            await s.repositories.project(project)
            if user is not None:
                await s.identity.users.require_user(user)

        confirm_deletion(
            f"cancel every upload {whose} in {project}, deleting what they stored",
            yes,
            present=present,
        )
        count = run_service(
            lambda s: s.uploads.cancel_all_in_project(
                project, started_by=user, actor=cli_actor(), client=CLI_CLIENT
            ),
            uses_store=True,
        )
        said = f"Cancelled {counted(count, 'upload')} {whose} in {project}"
        done(json_output, {"cancelled": count}, said)
        return
    confirm_deletion(
        f"cancel upload {upload_id} in {project}, deleting what it stored",
        yes,
        present=lambda s: s.uploads.require_in_project(project, upload_id),
    )
    cancelled = run_service(
        lambda s: s.uploads.cancel_in_project(
            project, upload_id, actor=cli_actor(), client=CLI_CLIENT
        ),
        uses_store=True,
    )
    done(
        json_output,
        plain(cancelled),
        f"Cancelled upload {upload_id} to {project}/{_name(cancelled)} "
        f"({cancelled.bytes_received:,} bytes received, started by "
        f"{cancelled.started_by or 'the server'})",
    )
