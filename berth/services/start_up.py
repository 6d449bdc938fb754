"""What a node checks at start before it may serve an install: that its keys and its blob
store are the install's, as the facts in the database (berth.services.install) record them;
each refusal says what to do. `berth serve` and `berth init` run them (berth.server), and an
admin verb the comparisons (berth.cli.common.run_service). A refusal is a SettingsError (a
setting to put right: exit status 2) or, for what may pass by itself, GaveUpWaiting (exit
status GAVE_UP_WAITING, which systemd restarts)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shlex
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from sqlalchemy.engine import URL, make_url

from berth.access.keyring import KeyFileUnusable, Keyring
from berth.config import Settings
from berth.config_loading import SettingsError, setting_source
from berth.data_location import shown_database, sqlite_file
from berth.metadata.database import Database
from berth.services.install import (
    LONGEST_FACT,
    forget_key_fingerprint,
    key_fingerprint,
    recorded_key_fingerprint,
    recorded_storage_location,
    some_recorded_blobs,
    storage_location,
)
from berth.storage.base import failures_said_by_caller
from berth.storage.drivers import blob_store
from berth.storage.filesystem import BLOBS_LOST

T = TypeVar("T")


# `berth serve`'s exit status when what it needs stayed out of reach for `startup_wait`:
# sysexits' EX_TEMPFAIL. Not 2 (a bad setting, which deploy/berth.service does not restart):
# systemd restarts it, as it should a node that started before its database or store.
GAVE_UP_WAITING = 75


class GaveUpWaiting(Exception):
    """What the server needs could not be reached within `startup_wait`, or was lost as soon
    as reached (exit status `GAVE_UP_WAITING`): a failure that may pass, unlike a
    SettingsError."""


def on_sqlite(settings: Settings) -> bool:
    return settings.resolved_database_url.startswith("sqlite")


def _several_nodes(settings: Settings) -> bool:
    """Whether this install may run several nodes (S3 with PostgreSQL), which share keys."""
    return settings.storage == "s3" and not on_sqlite(settings)


def _keyring(settings: Settings, keys: Callable[[], Keyring]) -> Keyring:
    """This node's keys, as `keys` reads or writes them; a key file it can neither read nor
    create is a setting that cannot work (a read-only /etc under systemd's ProtectSystem, a
    file copied in as root), said instead of a traceback."""
    try:
        return keys()
    except KeyFileUnusable as exc:
        user = pwd.getpwuid(os.geteuid()).pw_name
        if exc.creating:
            what, remedy = (
                "create",
                f"let the user {user} write {exc.path.parent} for the first start (under "
                "systemd, ReadWritePaths= in berth.service), or copy both key files from a "
                "node that has them",
            )
        else:
            what, remedy = "read", f"give the user {user} read access to it (owner, mode 0600)"
        raise SettingsError(
            f"{setting_source(exc.setting)}: cannot {what} the key file {str(exc.path)!r} "
            f"({exc.error}): {remedy}"
        ) from None


def check_keys(settings: Settings) -> Keyring:
    """Create this node's token signing and secret-hashing keys where missing, and record
    their fingerprint in the database on the first start; later, refuse to serve with keys
    that differ from the recorded ones, before writing any: access keys made on the recorded
    keys would not match here (on one node, key files a restore or move left behind), and on
    S3 with PostgreSQL (several nodes) tokens this node signed would be refused by the
    others. Keys made now are recorded before they are written, by an insert only one node
    wins: of two first nodes starting at once, the other is refused with nothing written.
    The keys, for the services the start-up builds."""
    shared = _several_nodes(settings)
    # One node (SQLite, or files) on its first start: keys are written first, so start-ups at
    # once on one data directory share the first written (and record it). Once recorded, and
    # with several nodes, a missing key is made in memory and written only once recorded.
    write_first = not shared and in_database(settings, key_fingerprint) is None
    keyring = _keyring(
        settings,
        lambda: Keyring(settings.signing_key_file, settings.secret_key_file, save=write_first),
    )
    fingerprint = in_database(
        settings, lambda db: recorded_key_fingerprint(db, keyring.fingerprint)
    )
    refuse_other_keys(settings, keyring, fingerprint)
    try:
        return _keyring(settings, keyring.saved)
    except SettingsError:
        if keyring.unsaved:  # recorded, never written: no node could ever have them
            in_database(settings, lambda db: forget_key_fingerprint(db, keyring.fingerprint))
        raise


def refuse_other_keys(settings: Settings, keyring: Keyring, recorded: str | None) -> None:
    """Refuse (SettingsError, saying what to do) keys that are not the `recorded` ones of
    this install (None: no node has recorded any yet)."""
    if recorded is not None and recorded != keyring.fingerprint:
        refusal = _not_the_installs_keys if _several_nodes(settings) else _not_this_installs_keys
        raise SettingsError(refusal(settings, recorded, keyring))


def existing_keys(settings: Settings) -> Keyring:
    """The server's keys for an admin verb: read, never made. A verb runs on data a start-up
    made, which wrote both files; one missing is a restore or move that left it behind (or a
    setting that points elsewhere), and a key made by the verb would be refused later, by
    `berth serve`'s check, along with every access key the verb made with it."""
    keyring = _keyring(
        settings, lambda: Keyring(settings.signing_key_file, settings.secret_key_file, save=False)
    )
    if keyring.unsaved:
        files = keyring.unsaved
        raise SettingsError(
            f"{'the key files' if len(files) > 1 else 'the key file'} "
            f"{' and '.join(str(path) for path in files)} "
            f"{'are' if len(files) > 1 else 'is'} missing, and this install's access keys and "
            "tokens were made with the keys they held: keys made now would not match them "
            "(only the first start, of berth serve or berth init, makes them). Restore both "
            "files from the backup of the data directory (its keys/ directory), copy them from "
            "a node that serves, or point token_signing_key and secret_hash_key at them"
        )
    return keyring


def _what_this_node_has(keyring: Keyring) -> str:
    """What a node refused for its keys has instead of the recorded ones."""
    if keyring.unsaved:
        return "this node has no " + " and no ".join(str(path) for path in keyring.unsaved)
    return f"these are {keyring.fingerprint[:16]}…"


def _not_the_installs_keys(settings: Settings, recorded: str, keyring: Keyring) -> str:
    """The refusal of a node of several whose keys are not the `recorded` ones."""
    return (
        f"this node's keys ({settings.signing_key_file} and {settings.secret_key_file}) are "
        "not the ones the other nodes of this install use (the database recorded keys with "
        f"the fingerprint {recorded[:16]}…, {_what_this_node_has(keyring)}). Give "
        "every node the same two files: copy them from a node that serves (by default "
        "DATA_DIR/keys/token-signing.pem and DATA_DIR/keys/secret-hash.key) over this "
        "node's, or point token_signing_key and secret_hash_key at the same files on every "
        "node. If the keys of every node were replaced on purpose (access keys made before "
        f"then stop working), clear the record in the database:\n  "
        f"{sql_command(settings, _FORGET_KEYS)}"
    )


def _not_this_installs_keys(settings: Settings, recorded: str, keyring: Keyring) -> str:
    """The refusal of a single node whose keys are not the `recorded` ones: its database
    came without its key files (a restore or move that left them behind)."""
    return (
        f"the keys {settings.signing_key_file} and {settings.secret_key_file} are not the "
        "ones this install's database was used with (it recorded keys with the fingerprint "
        f"{recorded[:16]}…, {_what_this_node_has(keyring)}): every access key made before "
        "would be refused. A restore or move that left the key files behind does this: "
        "restore both files from the backup of the data directory (its keys/ directory), or "
        "copy them from the old machine, to the paths above (or point token_signing_key and "
        "secret_hash_key at them). To start over with new keys on purpose (every access key "
        "stops working), clear the record in the database:\n  "
        f"{sql_command(settings, _FORGET_KEYS)}"
    )


_FORGET_KEYS = "DELETE FROM install_facts WHERE name = 'key_fingerprint';"


def configured_storage_location(settings: Settings) -> str:
    """Where these settings store blobs, as recorded for the install: the backend, and on S3
    the bucket and prefix, not the endpoint (each node may reach the same store at an
    address of its own); on the filesystem nothing more (each node's path to a shared mount
    may differ)."""
    if settings.storage != "s3":
        return "filesystem"
    prefix = settings.s3_prefix.strip("/")  # as the store makes its keys
    location = f"s3://{settings.s3_bucket}/{prefix}/" if prefix else f"s3://{settings.s3_bucket}/"
    if len(location) > LONGEST_FACT:  # the column's width: the start, and a hash of it all
        digest = hashlib.sha256(location.encode()).hexdigest()
        location = f"{location[: LONGEST_FACT - len(digest) - 9]}… sha256:{digest}"
    return location


def check_storage_location(settings: Settings) -> None:
    """Record where the install's blobs are stored on the first start that finds nothing
    recorded (the first, or the first after the upgrade that began recording it); later,
    refuse to serve on another store (SettingsError): a node on a bucket, prefix or backend
    of its own would keep its pushes from the other nodes and answer 404 for theirs, and a
    single node would lose sight of every blob pushed before. On the filesystem, refuse at
    every start a blob directory that holds none of the blobs the database has."""
    here = configured_storage_location(settings)
    with failures_said_by_caller():  # a store failing as its blobs are looked for: refused
        recorded = in_database(settings, partial(_recorded_or_adopted, settings, here))
    refuse_other_storage(settings, recorded)


async def _recorded_or_adopted(settings: Settings, here: str, db: Database) -> str:
    recorded = await storage_location(db)
    # On the filesystem the record cannot tell one node's blob directory from another's
    # (each node's path to a shared mount may differ): the blobs it holds tell, every start.
    if recorded is None or (recorded == here and settings.storage == "filesystem"):
        await _refuse_store_without_the_blobs(settings, here, db, recorded=recorded)
    if recorded is not None:
        return recorded
    return await recorded_storage_location(db, here)


# Blobs of the database looked for in a store about to be recorded as the install's (and in
# a node's blob directory at every start): one found is enough (a few may be missing from
# the right store).
_BLOBS_LOOKED_FOR = 10


async def _refuse_store_without_the_blobs(
    settings: Settings, here: str, db: Database, *, recorded: str | None
) -> None:
    """Refuse (SettingsError) a store that holds none of the blobs the database has: a node
    set to a wrong bucket or prefix, first to start after the upgrade that began recording
    the store, would be recorded as right and the nodes set right refused; a node on the
    filesystem with another data directory than the install's (or a shared mount not
    mounted) would answer 404 for every blob, and keep what is pushed to it to itself."""
    on_filesystem = settings.storage == "filesystem"
    digests = await some_recorded_blobs(db, _BLOBS_LOOKED_FOR)
    if not digests:
        return  # a new install, or one with no blob yet: any store is as good
    try:
        if await _holds_any(settings, digests):
            return
    except OSError as exc:  # the store failed since it was found usable (`check`)
        raise _unreadable_store(settings, here, exc) from None
    if on_filesystem:
        lost = settings.blob_dir / BLOBS_LOST
        if lost.exists():  # the operator said so: the install's directory, its blobs lost
            # Said at each such start: the file, left behind once the blobs are back, would
            # let a node on a wrong directory start unseen.
            print(
                f"Starting on {settings.blob_dir}, which holds none of the {len(digests)} "
                f"blobs of the database looked for ({digests[0]} among them), as {lost} "
                "says: the install's blobs are lost. Remove that file once they are restored.",
                flush=True,
            )
            return
        raise SettingsError(_blob_directory_without_the_blobs(settings, digests, recorded))
    raise SettingsError(
        f"this node's blob store, {_as_settings(here)}, holds none of the blobs this "
        f"install's database ({shown_database(settings)}) says are stored ({len(digests)} "
        f"looked for, {digests[0]} among them), and no node has recorded yet which store is "
        "the install's (a database from before Berth recorded it): set storage, s3_bucket "
        "and s3_prefix to the store the install's nodes used until now, or every blob pushed "
        "before would be missing here (404), and this store, once recorded, would be the one "
        "the nodes set right are told to use. If those blobs are gone on purpose and this "
        "store is to be the install's, record it in the database, then start the node again:"
        f"\n  {sql_command(settings, storage_record_insert(here))}"
    )


def _blob_directory_without_the_blobs(
    settings: Settings, digests: list[str], recorded: str | None
) -> str:
    """The refusal of a node whose blob directory holds none of the blobs `digests` of the
    database (`recorded`: the store the database records, None if none yet)."""
    elsewhere = (
        ""
        if recorded is not None
        else ", or storage, s3_bucket and s3_prefix to the install's store if its blobs are on S3"
    )
    return (
        f"this node's blob directory, {settings.blob_dir}, holds none of the blobs this "
        f"install's database ({shown_database(settings)}) says are stored ({len(digests)} "
        f"looked for, {digests[0]} among them): every blob pushed before would be missing "
        "here (404), and what is pushed here would be missing on any other node. Set data_dir "
        f"to the install's data directory{elsewhere}; several nodes on the filesystem share "
        "its blobs directory (a shared mount, which must be mounted before Berth starts; each "
        "node may mount it at a path of its own). If the install's blobs are lost, restore "
        'them from its backup (docs/operations.md, "Backup and restore"); if they are lost for '
        "good and this directory is to be the install's (clients push them again), create the "
        f"file {settings.blob_dir / BLOBS_LOST}, then start the node again."
    )


async def _holds_any(settings: Settings, digests: list[str]) -> bool:
    """Whether the configured blob store holds any of the blobs `digests`."""
    store = blob_store(settings)
    try:
        for digest in digests:
            if await store.stat(digest) is not None:
                return True
        return False
    finally:
        await store.close()


def _unreadable_store(settings: Settings, here: str, exc: OSError) -> Exception:
    """The refusal of a store that failed while its blobs were looked for, as of one found
    unusable before (`check`): what may pass by itself (the store not reached, or answering
    that it cannot serve now) exits as when the wait for it ends (GaveUpWaiting, restarted
    by systemd), anything else (a directory that cannot be read, refused credentials) is a
    setting to put right (SettingsError)."""
    reason = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    said = (
        f"this node's blob store, {_as_settings(here)}, cannot be read to look for the blobs "
        f"this install's database ({shown_database(settings)}) says are stored: {reason}"
    )
    if getattr(exc, "passing", False):
        return GaveUpWaiting(
            f"{said}; exiting with status {GAVE_UP_WAITING}, which a service manager may "
            "restart (systemd does, with deploy/berth.service)"
        )
    return SettingsError(said)


# libpq's connection parameters (PostgreSQL's documentation, "Parameter Key Words"), the
# query parameters psql takes in a URI: any other (asyncpg's command_timeout, SQLAlchemy's
# prepared_statement_cache_size) makes it refuse the URI. Not `password`: psql asks for it.
_LIBPQ_PARAMETERS = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "passfile", "require_auth",
        "channel_binding", "connect_timeout", "client_encoding", "options", "application_name",
        "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
        "requiressl", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword",
        "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname", "gsslib",
        "gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
    }
)  # fmt: skip


def sql_command(settings: Settings, statement: str) -> str:
    """A shell command that runs the SQL `statement` on the configured database, for an
    operator to paste: sqlite3 on the SQLite file, else psql on the database's URL as libpq
    reads it (asyncpg's `ssl=` as `sslmode=`, only libpq's parameters), without its password,
    which psql asks for (or finds in ~/.pgpass or PGPASSWORD): a refusal goes to the
    server's log."""
    path = sqlite_file(settings)
    if path is not None:
        return f"sqlite3 {shlex.quote(str(path))} {_shell_string(statement)}"
    given = make_url(settings.resolved_database_url)
    query = {name: value for name, value in given.query.items() if name in _LIBPQ_PARAMETERS}
    if "ssl" in given.query:
        query.setdefault("sslmode", given.query["ssl"])
    # URL.create: URL.set takes password=None for "unchanged".
    url = URL.create(
        "postgresql", given.username, None, given.host, given.port, given.database, query
    )
    shown = url.render_as_string(hide_password=False)
    return f"psql {shlex.quote(shown)} -c {_shell_string(statement)}"


def _shell_string(text: str) -> str:
    """`text` as one shell word: in double quotes when nothing in it is special there (SQL
    reads best with its own single quotes as they are), else as shlex quotes it."""
    if not any(special in text for special in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def storage_record_insert(location: str) -> str:
    """The SQL that records `location` as the install's blob store, for an operator to run."""
    return (
        "INSERT INTO install_facts (name, value, recorded_at) VALUES "
        f"('storage_location', {_sql_string(location)}, CURRENT_TIMESTAMP);"
    )


def _storage_record_update(location: str) -> str:
    """The SQL that records `location` instead of the recorded store, for an operator to run."""
    return (
        f"UPDATE install_facts SET value = {_sql_string(location)} WHERE name = 'storage_location';"
    )


def _sql_string(value: str) -> str:
    """`value` as an SQL string literal: an S3 prefix may hold a quote, which would end it."""
    quote = "'"
    return quote + value.replace(quote, quote * 2) + quote


def refuse_other_storage(settings: Settings, recorded: str | None) -> None:
    """Refuse (SettingsError, saying what to do) settings whose blob store is not the
    `recorded` one of this install (None: none recorded yet)."""
    here = configured_storage_location(settings)
    if recorded is None or recorded == here:
        return
    harm = (
        "a node on another store keeps the blobs pushed to it from the other nodes, and "
        "answers 404 for theirs"
        if _several_nodes(settings)
        else "every blob pushed before would be missing here (404)"
    )
    raise SettingsError(
        f"this node's blob store, {_as_settings(here)}, is not the one this install's "
        f"database ({shown_database(settings)}) recorded as where its blobs are: "
        f"{_as_settings(recorded)}; {harm}. Set storage, s3_bucket and s3_prefix as "
        "recorded (s3_endpoint may differ from node to node). If the blobs were moved to the "
        "new store on purpose and every node is set to use it, clear the record in the "
        "database, and the next node to start records its own:\n  "
        f"{sql_command(settings, _FORGET_STORAGE)}\nIf none of them is to be kept, record the "
        f"new store instead:\n  {sql_command(settings, _storage_record_update(here))}"
    )


_FORGET_STORAGE = "DELETE FROM install_facts WHERE name = 'storage_location';"


def _as_settings(location: str) -> str:
    """A recorded storage location as the settings that name it."""
    if not location.startswith("s3://"):
        return f'storage = "{location}"'
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return f's3_bucket = "{bucket}" with s3_prefix = "{prefix.rstrip("/")}" (storage = "s3")'


def in_database(settings: Settings, call: Callable[[Database], Awaitable[T]]) -> T:
    """`call` on the configured database, opened for it alone."""

    async def run() -> T:
        db = Database.for_settings(settings)
        try:
            return await call(db)
        finally:
            await db.dispose()

    return asyncio.run(run())
