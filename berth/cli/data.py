"""`berth data copy`: move an embedded install (SQLite and blobs in its data directory) into
the database and blob store the settings name (PostgreSQL, S3): how a registry begun with
`make run` grows to several nodes (README, "Run several nodes")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli.common import BAD_SETTING, JsonFlag, console, errors, fail, print_json

if TYPE_CHECKING:
    from berth.services.data_copy import CopiedBlobs, CopiedRows

data_app = typer.Typer(
    help="A registry's data as a whole: copy an embedded install elsewhere.",
    no_args_is_help=True,
)


@data_app.command("copy")
def data_copy(
    from_data_dir: Annotated[
        Path,
        typer.Option(
            "--from-data-dir",
            metavar="OLD_DIR",
            help="The data directory of the embedded install to copy (its berth.db, blobs/ "
            "and keys/), only read (it may be read-only); no server may be serving on it.",
        ),
    ],
    allow_missing_blobs: Annotated[
        bool,
        typer.Option(
            "--allow-missing-blobs",
            help="Copy the rows even when blobs the old database names are missing from "
            "OLD_DIR/blobs or damaged there (listed): the images that use them fail to pull, "
            "as in the old install. Without it such a copy stops before the rows (exit 1).",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Copy an embedded install (OLD_DIR's SQLite database, blobs and keys) into the database
    and blob store the settings name: every user, key, project, image, tag history, audit
    entry, usage figure, webhook, policy and scan, ids kept. The destination database must be
    new: empty (its schema is created here) or as `berth init` left it. Blobs already in the
    destination store are skipped, so a copy run again after an interruption goes on; a blob
    missing or damaged in OLD_DIR stops the copy before the rows (see
    --allow-missing-blobs); the rows go in one transaction. Uploads in progress are not
    copied."""
    import asyncio

    from berth.cli.common import settings_or_exit
    from berth.config import data_dir_key_files
    from berth.data_location import data_dir_mode, shown_database
    from berth.domain.wording import counted
    from berth.metadata.database import Database
    from berth.metadata.revisions import schema_head
    from berth.services.data_copy import (
        CopyRefused,
        CopyTarget,
        check_destination_store,
        copy_install,
        plan_copy,
        prepare_copy,
    )
    from berth.services.start_up import configured_storage_location
    from berth.state import unresolved_endpoint
    from berth.storage.base import failures_said_by_caller
    from berth.storage.drivers import blob_store

    settings = settings_or_exit()
    old = from_data_dir.resolve()
    target = CopyTarget(
        database_url=settings.resolved_database_url,
        shown=shown_database(settings),
        storage_location=configured_storage_location(settings),
        signing_key_file=settings.signing_key_file,
        secret_key_file=settings.secret_key_file,
        data_dir=settings.data_dir,
        data_dir_mode=data_dir_mode(settings),
        old_key_files=data_dir_key_files(old),
    )
    try:
        plan = plan_copy(old, target)
    except CopyRefused as exc:
        fail(str(exc), exc.status)
    if (unresolved := unresolved_endpoint(settings)) is not None:
        fail(unresolved.reason, BAD_SETTING)  # a typo in s3_endpoint, said at once

    try:
        with failures_said_by_caller():  # said once, in the refusal
            asyncio.run(check_destination_store(lambda: blob_store(settings)))
    except CopyRefused as exc:
        fail(str(exc), exc.status)
    keys = prepare_copy(plan, target)
    if plan.new_schema:
        errors.print(
            f"Created the schema of {target.shown} at revision {schema_head()}", soft_wrap=True
        )

    async def copy() -> tuple[CopiedBlobs, CopiedRows]:
        destination_db = Database.for_settings(settings)
        destination_store = blob_store(settings)
        try:
            return await copy_install(
                plan,
                target,
                destination_db,
                destination_store,
                allow_missing_blobs=allow_missing_blobs,
            )
        finally:
            await destination_store.close()
            await destination_db.dispose()

    try:
        with failures_said_by_caller():
            blobs, rows = asyncio.run(copy())
    except CopyRefused as exc:
        fail(str(exc), exc.status)
    report = {
        "from_data_dir": str(old),
        "database": target.shown,
        "storage_location": target.storage_location,
        "schema_revision": schema_head(),
        "rows_copied": rows.total,
        "blobs_copied": blobs.copied,
        "blob_bytes_copied": blobs.copied_bytes,
        "blobs_present_already": blobs.present,
        "blobs_missing_in_source": blobs.missing,
        "blobs_damaged_in_source": blobs.damaged,
        "uploads_not_copied": plan.uploads_left,
        "keys": keys,
    }
    if json_output:
        print_json(report)
        return
    console.print(
        f"Copied {counted(rows.total, 'row')} into {target.shown}, and "
        f"{counted(blobs.copied, 'blob')} ({blobs.copied_bytes:,} bytes) into the blob "
        f"store {target.storage_location} ({blobs.present:,} there already)."
    )
    for line in blobs.not_copied():
        console.print(line)
    if plan.uploads_left:
        console.print(
            f"Not copied: {counted(plan.uploads_left, 'upload')} in progress (their clients "
            "push again)."
        )
    console.print(
        f"Keys: {keys['signing_key_file']} and {keys['secret_key_file']} "
        f"({keys['action']}). Every node needs these two files (or token_signing_key "
        "and secret_hash_key pointing at copies): with others, every access key is refused."
    )
