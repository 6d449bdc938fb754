"""`berth data copy`: move an embedded install (SQLite and blobs in its data directory) into
the database and blob store the settings name (PostgreSQL, S3): how a registry begun with
`make run` grows to several nodes (README, "Run several nodes")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli.common import BAD_SETTING, JsonFlag, console, errors, fail, print_json

if TYPE_CHECKING:
    from berth.config import Settings

data_app = typer.Typer(
    help="A registry's data as a whole: copy an embedded install elsewhere.",
    no_args_is_help=True,
)

KEY_FILES = ("token-signing.pem", "secret-hash.key")


@data_app.command("copy")
def data_copy(
    from_data_dir: Annotated[
        Path,
        typer.Option(
            "--from-data-dir",
            metavar="OLD_DIR",
            help="The data directory of the embedded install to copy (its berth.db, blobs/ "
            "and keys/); no server may be serving on it.",
        ),
    ],
    json_output: JsonFlag = False,
) -> None:
    """Copy an embedded install (OLD_DIR's SQLite database, blobs and keys) into the database
    and blob store the settings name: every user, key, project, image, tag history, audit
    entry, usage figure, webhook, policy and scan, ids kept. The destination database must be
    new: empty (its schema is created here) or as `berth init` left it. Blobs already in the
    destination store are skipped, so a copy run again after an interruption goes on; the
    rows go in one transaction. Uploads in progress are not copied."""
    import asyncio

    from berth.cli.common import settings_or_exit
    from berth.data_location import shown_database
    from berth.metadata.database import Database, read_once
    from berth.metadata.migrate import live_processes_at, upgrade
    from berth.metadata.revisions import current_revision, schema_head
    from berth.server import storage_location
    from berth.services.data_copy import (
        CopiedBlobs,
        beyond_init,
        copy_blobs,
        copy_rows,
        row_counts_sync,
    )
    from berth.storage.drivers import blob_store
    from berth.storage.filesystem import FilesystemBlobStore

    settings = settings_or_exit()
    old = from_data_dir.resolve()
    old_database = old / "berth.db"
    if not old_database.is_file():
        fail(f"--from-data-dir {from_data_dir}: no Berth database there ({old_database})", 2)
    source_url = f"sqlite+aiosqlite:///{old_database}"
    destination_url = settings.resolved_database_url
    destination = shown_database(settings)
    if destination_url == source_url:
        fail(
            f"the settings name {destination}, the database being copied: set database_url "
            "(and storage) to the new install's, or give another --data-dir",
            BAD_SETTING,
        )
    source_shown = f"the old install's database ({old_database})"

    head = schema_head()
    source_revision = current_revision(source_url)
    if source_revision != head:
        fail(
            f"{source_shown} is at schema revision {source_revision or '(none)'}, this "
            f"Berth's is {head}: the copy is made between databases at the same revision. "
            + (
                "Start this version's `berth serve` on the old data directory once (it "
                "migrates the schema), stop it, then copy"
                if source_revision is not None
                else "it is no Berth database"
            ),
            BAD_SETTING,
        )
    # The new install's data directory (its keys, and its database on SQLite), made as `berth
    # init` makes it.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        destination_revision = current_revision(destination_url)
    except Exception as exc:  # not reached, refused: said as the database's own words
        fail(f"cannot open {destination}: {str(exc).splitlines()[0]}")
    if destination_revision is None:
        if read_once(destination_url, row_counts_sync):
            fail(f"{destination} holds tables but no Berth schema revision: not a new database")
        upgrade(destination_url)
        errors.print(f"Created the schema of {destination} at revision {head}", soft_wrap=True)
    elif destination_revision != head:
        fail(
            f"{destination} is at schema revision {destination_revision}, {source_shown} at "
            f"{source_revision}: the copy is made between databases at the same revision "
            "(copy into a new, empty database)",
            BAD_SETTING,
        )

    serving = live_processes_at(source_url)
    if serving:
        listed = "; ".join(process.describe() for process in serving)
        fail(
            f"a server serves on {old}: {listed}. Stop it first: what it writes during the "
            "copy would be lost"
        )
    if live_processes_at(destination_url):
        fail(f"a server serves on {destination}: stop it, the copy needs a new database")
    held = beyond_init(read_once(destination_url, row_counts_sync))
    if held:
        fail(
            f"{destination} is not new: it holds {', '.join(held)}, more than `berth init` "
            "makes; the copy would replace it. Copy into a new, empty database",
            BAD_SETTING,
        )

    keys = _keys_for_destination(old, settings)
    location = storage_location(settings)
    uploads_left = _uploads_in_progress(source_url)

    async def copy() -> tuple[CopiedBlobs, int]:
        source_db = Database(source_url)
        destination_db = Database.for_settings(settings)
        source_store = FilesystemBlobStore(old / "blobs")
        destination_store = blob_store(settings)
        try:
            try:
                await destination_store.check()
            except OSError as exc:
                fail(f"the blob store cannot be used: {exc}", BAD_SETTING)
            blobs = await copy_blobs(source_db, source_store, destination_store)
            rows = await copy_rows(source_db, destination_db, storage_location=location)
            return blobs, rows.total
        finally:
            await destination_store.close()
            await source_store.close()
            await destination_db.dispose()
            await source_db.dispose()

    blobs, rows = asyncio.run(copy())
    report = {
        "from_data_dir": str(old),
        "database": destination,
        "storage_location": location,
        "schema_revision": head,
        "rows_copied": rows,
        "blobs_copied": blobs.copied,
        "blob_bytes_copied": blobs.copied_bytes,
        "blobs_present_already": blobs.present,
        "blobs_missing_in_source": blobs.missing,
        "blobs_damaged_in_source": blobs.damaged,
        "uploads_not_copied": uploads_left,
        "keys": keys,
    }
    if json_output:
        print_json(report)
    else:
        from berth.domain.wording import counted

        console.print(
            f"Copied {counted(rows, 'row')} into {destination}, and "
            f"{counted(blobs.copied, 'blob')} ({blobs.copied_bytes:,} bytes) into the blob "
            f"store {location} ({blobs.present:,} there already)."
        )
        for digest in blobs.missing:
            console.print(f"missing in the old install (not copied): {digest}")
        for digest in blobs.damaged:
            console.print(f"damaged in the old install (not copied): {digest}")
        if uploads_left:
            console.print(
                f"Not copied: {counted(uploads_left, 'upload')} in progress (their clients "
                "push again)."
            )
        console.print(
            f"Keys: {keys['signing_key_file']} and {keys['secret_key_file']} "
            f"({keys['action']}). Every node needs these two files (or token_signing_key "
            "and secret_hash_key pointing at copies): with others, every access key is refused."
        )


def _keys_for_destination(old: Path, settings: Settings) -> dict[str, str]:
    """Put the old install's key files where the settings read them (unless the same files
    are there already); refuse (2) other keys there, or the old install's missing."""
    import os

    sources = [old / "keys" / name for name in KEY_FILES]
    targets = [settings.signing_key_file, settings.secret_key_file]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        fail(
            f"the old install's key file{'s' if len(missing) > 1 else ''} "
            f"{' and '.join(missing)} cannot be found: its access keys and tokens were made "
            "with them. Restore them to OLD_DIR/keys/ first",
            BAD_SETTING,
        )
    differing = [
        str(target)
        for source, target in zip(sources, targets, strict=True)
        if target.exists() and target.read_bytes() != source.read_bytes()
    ]
    if differing:
        fail(
            f"{' and '.join(differing)} hold other keys than the old install's "
            f"({old / 'keys'}): every copied access key would be refused. Replace them with "
            "the old install's files (cp OLD_DIR/keys/* over them), or point "
            "token_signing_key and secret_hash_key at those",
            BAD_SETTING,
        )
    _refuse_keys_not_the_old_installs(old, sources)
    copied = False
    for source, target in zip(sources, targets, strict=True):
        if not target.exists():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as written:
                written.write(source.read_bytes())
            copied = True
    return {
        "signing_key_file": str(targets[0]),
        "secret_key_file": str(targets[1]),
        "action": "copied from the old install" if copied else "the old install's already",
    }


def _refuse_keys_not_the_old_installs(old: Path, sources: list[Path]) -> None:
    """Refuse (2) key files in OLD_DIR/keys other than those the old database recorded (a
    server of the old install read them from elsewhere: token_signing_key, secret_hash_key)."""
    from sqlalchemy import Connection, select

    from berth.access.keyring import Keyring
    from berth.metadata.database import read_once
    from berth.metadata.tables import install_facts
    from berth.services.install import KEY_FINGERPRINT

    def recorded(connection: Connection) -> str | None:
        return connection.execute(
            select(install_facts.c.value).where(install_facts.c.name == KEY_FINGERPRINT)
        ).scalar()

    fingerprint = read_once(f"sqlite+aiosqlite:///{old / 'berth.db'}", recorded)
    if fingerprint is not None and Keyring(*sources, save=False).fingerprint != fingerprint:
        fail(
            f"the key files in {old / 'keys'} are not the ones the old install's database "
            f"recorded (fingerprint {fingerprint[:16]}…): its server read them from elsewhere "
            "(token_signing_key, secret_hash_key). Put those two files in "
            f"{old / 'keys'} (named {' and '.join(KEY_FILES)}), then copy",
            BAD_SETTING,
        )


def _uploads_in_progress(source_url: str) -> int:
    from sqlalchemy import Connection, func, select

    from berth.metadata.database import read_once
    from berth.metadata.tables import uploads

    def count(connection: Connection) -> int:
        return int(connection.execute(select(func.count()).select_from(uploads)).scalar_one())

    return read_once(source_url, count)
