"""Where a deployment's data lives: the data directory and the metadata database.

Only `berth serve` and `berth init` create them; admin verbs refuse to work on data that is not
there (a verb run from the wrong directory must not start a new, empty registry). The data
directory is private to the server's user (0700), and so is an SQLite database (0600): it
holds password and key hashes. With `blob_redirect = "accel"` nginx's worker reads the blob
files, so the directory is 0750: its group (nginx's user, added to it) may pass through to
`blobs/` (0750 directories, 0640 files), and reads nothing else, every other file and
directory in it being owner-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sqlite3
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from berth.addresses import NO_SUCH_NAME
from berth.config import Settings, config_file
from berth.config_loading import SettingsError, setting_source
from berth.database_tls import SYSTEM_ROOTS
from berth.database_urls import without_password
from berth.invocation import berth_command, pasteable_command
from berth.metadata.database import (
    CONNECT_SECONDS,
    STATEMENT_SECONDS,
    open_engine,
)
from berth.metadata.presence import LIVE_SECONDS, ServingProcess
from berth.metadata.revisions import NewerSchema
from berth.write_checks import on_read_only_disk

if TYPE_CHECKING:
    from berth.metadata.migrate import Migrated


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database file, or None for a database server."""
    return sqlite_path(settings.resolved_database_url)


def sqlite_path(database_url: str) -> Path | None:
    """The SQLite database file `database_url` names, or None for a database server."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database).absolute()


def shown_database(settings: Settings) -> str:
    """The database as a person reads it: the file, or the URL as written (with Berth's
    driver) without its password."""
    path = sqlite_file(settings)
    if path is not None:
        return f"SQLite {path}"
    return without_password(settings.resolved_database_url)


async def _has_schema(settings: Settings) -> bool:
    url = settings.resolved_database_url
    # A server whose packets are dropped is said to be unreachable after the connect timeout
    # requests get, not asyncpg's own 60 s; one that stops answering after, after their
    # statement timeout, not never.
    connect_args = (
        {
            "timeout": settings.database_connect_timeout or CONNECT_SECONDS,
            "command_timeout": settings.database_statement_timeout or STATEMENT_SECONDS,
        }
        if url.startswith("postgresql")
        else {}
    )
    engine = open_engine(url, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: inspect(sync).has_table("alembic_version")
            )
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class StartUpProblem:
    """Why the server cannot start on what it needs (the database, the blob store).
    `passing`: it was not reached, or said it cannot serve yet (refused connections, a name
    not resolved, no answer, a server starting up), which may pass by itself: `berth serve`
    waits for it (`startup_wait`); anything else (refused credentials, no such database or
    bucket) is a setting to put right."""

    reason: str
    passing: bool = False


def unusable_database(settings: Settings) -> StartUpProblem | None:
    """Why the database server cannot be used, for an admin verb (`passing`: not reached,
    said as such), or None when it can (or is an SQLite file, which `create_data` makes)."""
    exc = _database_error(settings)
    if exc is None:
        return None
    return StartUpProblem(_verbs_reason(settings, exc), passing=_not_reached(exc))


def database_problem(settings: Settings) -> StartUpProblem | None:
    """Why the database server cannot be used, or None when it can (or is an SQLite file,
    which `create_data` makes)."""
    exc = _database_error(settings)
    if exc is None:
        return None
    unresolved = _unresolved_host(settings, exc)
    if unresolved is not None:
        return StartUpProblem(unresolved)
    return StartUpProblem(_cannot_open(settings, exc), passing=_not_reached(exc))


def _database_error(settings: Settings) -> Exception | None:
    """What opening the database server raised, or None when it opened (or is SQLite)."""
    if sqlite_file(settings) is not None:
        return None
    try:
        asyncio.run(_has_schema(settings))
    except Exception as exc:  # any driver's refusal: said, not shown as a traceback
        return exc
    return None


# Errors of a connection that never got to the server: refused, a host or network with no
# route, a Unix socket not there yet (PostgreSQL not started).
_NOT_REACHED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOENT}
# PostgreSQL's own "not now": 08 connection exceptions, 53300 too many connections, 57P01-03
# shutting down, crashed, starting up (asyncpg's SQLSTATEs).
_NOT_NOW = ("08", "53300", "57P01", "57P02", "57P03")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling (the driver's own)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


# A connection cut in the middle of the TLS handshake: an outage, not a certificate.
_HANDSHAKE_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _not_reached(exc: BaseException) -> bool:
    """Whether the database's error says it was not reached or cannot serve yet (see
    `StartUpProblem.passing`), looking through the exceptions the driver wrapped. TLS that
    fails (a certificate the URL's CA did not sign, or for another host, or expired; a server
    with ssl = off) is a setting, of the URL or the server, which waiting does not change: a
    node waiting `startup_wait` and exiting 75 would be restarted by systemd for ever. A
    connection cut in the middle of the handshake is an outage."""
    for seen in _causes(exc):
        if isinstance(seen, ssl.SSLError):
            return isinstance(seen, _HANDSHAKE_CUT)
        # asyncpg's refusal of its own settings (ssl=verify-full without ~/.postgresql/
        # root.crt), raised while handling a FileNotFoundError that is no missing socket.
        if _no_tls_at_server(seen) or _asyncpg_configuration_error(seen):
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno not in NO_SUCH_NAME
        if isinstance(seen, TimeoutError | ConnectionError):
            return True
        if isinstance(seen, OSError) and seen.errno in _NOT_REACHED:
            return True
        if str(getattr(seen, "sqlstate", "") or "").startswith(_NOT_NOW):
            return True
    return False


def _tls_failed(exc: BaseException) -> bool:
    """Whether TLS with the database server is what failed, as `_not_reached` tells it from an
    outage: the server's certificate, the URL's TLS parameters, a server without TLS; not a
    connection cut in the middle of the handshake."""
    for seen in _causes(exc):
        if isinstance(seen, ssl.SSLError):
            return not isinstance(seen, _HANDSHAKE_CUT)
        if _no_tls_at_server(seen):
            return True
        if _asyncpg_configuration_error(seen):  # of its TLS settings, or others
            return any(word in str(seen).lower() for word in ("tls", "ssl", "certificate"))
    return False


def _asyncpg_configuration_error(exc: BaseException) -> bool:
    """Whether `exc` is asyncpg's refusal of its own settings (ClientConfigurationError).
    Looked up only where asyncpg is loaded, which it is once it has raised anything: importing
    it here would cost every CLI start 20-40 ms (bench/findings.md), SQLite's included."""
    exceptions = sys.modules.get("asyncpg.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.ClientConfigurationError)


def _no_tls_at_server(exc: BaseException) -> bool:
    """Whether `exc` is asyncpg's "rejected SSL upgrade": the server answered that it does not
    do TLS (ssl = off), and the URL's sslmode requires it. Told apart only by its words."""
    return isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)


def _unresolved_host(settings: Settings, exc: BaseException) -> str | None:
    """What to say of a database host name the resolver says does not exist (a setting to
    put right, not an outage to wait out), or None when that is not what `exc` says."""
    for seen in _causes(exc):
        if isinstance(seen, socket.gaierror) and seen.errno in NO_SUCH_NAME:
            host = make_url(settings.resolved_database_url).host
            return (
                f"cannot resolve database host {host} ({seen.strerror}): {shown_database(settings)}"
            )
    return None


def _cannot_open(settings: Settings, exc: Exception) -> str:
    return f"cannot open the database {shown_database(settings)}: {_why(settings, exc)}"


def _verbs_reason(settings: Settings, exc: Exception) -> str:
    """What an admin verb says of a database it could not open: a host name that does not
    resolve, where the server it did not reach is (an outage, not a setting), else what
    refused it."""
    unresolved = _unresolved_host(settings, exc)
    if unresolved is not None:
        return unresolved
    if _not_reached(exc):
        return (
            f"cannot reach the database at {_server_address(settings)} ({_why(settings, exc)}): "
            f"{shown_database(settings)}"
        )
    return _cannot_open(settings, exc)


def _why(settings: Settings, exc: Exception) -> str:
    if isinstance(exc, TimeoutError):  # says nothing of itself
        seconds = settings.database_connect_timeout or CONNECT_SECONDS
        return f"no answer within {seconds:g} s (database_connect_timeout)"
    for seen in _causes(exc):
        if isinstance(seen, ssl.SSLError) or _no_tls_at_server(seen):
            return _tls_failure(settings, seen)
    # The driver's words (with PostgreSQL's DETAIL and HINT) on one line, without
    # SQLAlchemy's class name and link on lines of their own.
    said = (exc.orig.__cause__ or exc.orig) if isinstance(exc, DBAPIError) and exc.orig else exc
    return " ".join(str(said).split()) or type(said).__name__


def _tls_failure(settings: Settings, exc: BaseException) -> str:
    """What to put right when TLS with the database server failed, in the URL's terms."""
    query = make_url(settings.resolved_database_url).query
    if _no_tls_at_server(exc):
        given = (f"{name}={query[name]}" for name in ("sslmode", "ssl") if name in query)
        mode = next(given, "the sslmode")  # else from PGSSLMODE, which asyncpg reads
        return (
            f"the server at {_server_address(settings)} does not accept TLS, which {mode} "
            "requires: turn ssl on in its postgresql.conf (with its certificate), or connect "
            "with sslmode=prefer"
        )
    if not isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.reason if isinstance(exc, ssl.SSLError) else None
        return f"TLS with the server failed: {reason or exc}"
    if exc.verify_code in _NAME_MISMATCH:
        host = make_url(settings.resolved_database_url).host or "localhost"
        return (
            f"the server's certificate does not name the host {host} that database_url "
            f"connects to ({exc.verify_message}), which sslmode=verify-full checks: connect "
            "by a name (or address) the certificate holds, or use sslmode=verify-ca"
        )
    root_cert = query.get("sslrootcert")
    if root_cert == SYSTEM_ROOTS:
        signer = "none of the system's trusted CAs signed it"
    elif root_cert:
        signer = f"the CA certificate in sslrootcert={root_cert} did not sign it"
    else:
        signer = "no CA the driver trusts signed it"
    return (
        f"the server's certificate is not trusted ({exc.verify_message}): {signer}; name "
        "the CA that did in sslrootcert"
    )


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def _server_address(settings: Settings) -> str:
    url = make_url(settings.resolved_database_url)
    return f"{url.host or 'localhost'}:{url.port or 5432}"


@dataclass(frozen=True)
class MissingData:
    """Why there is no Berth data where the settings point. `unopened`: the database is
    there (the file, or a server named) but could not be opened, so it may well hold the
    data: an outage, for which pointing at other data or making new data is no advice.
    `refused`: a database server was reached and refused what the settings say (credentials,
    the database's name): a setting to put right, not an outage."""

    reason: str
    unopened: bool = False
    refused: bool = False
    full: bool = False  # the database's disk is full: the reason says what to do
    tls: bool = False  # TLS with the database server failed: a certificate, not the network
    why: str = ""  # unopened: the driver's words alone, where the database is named already

    def refusal(self, settings: Settings, data_dir: Path | None = None) -> str:
        """The refusal to act on it: the reason, then what to do (`data_dir`: the --data-dir
        the verb was given, if any)."""
        if self.full:
            return self.reason
        advice = (
            _what_to_check(settings, tls=self.tls)
            if self.unopened
            else where_to_point(settings, data_dir)
        )
        return f"{self.reason}\n{advice}"


def missing_data(settings: Settings, *, database_only: bool = False) -> MissingData | None:
    """Why there is no Berth data where the settings point, or None when there is
    (`database_only`: in the database, whether or not the data directory is there)."""
    data_dir = settings.data_dir.absolute()
    if not database_only and not data_dir.is_dir():
        return MissingData(f"no Berth data directory at {data_dir}")
    database = sqlite_file(settings)
    if database is not None and not database.is_file():
        return MissingData(f"no Berth database at {database}")
    try:
        if asyncio.run(_has_schema(settings)):
            return None
    except Exception as exc:  # any driver's refusal: said, not shown as a traceback
        if (full := no_space_for_database(settings, exc)) is not None:
            return MissingData(full, unopened=True, full=True)
        refused = database is None and not _not_reached(exc)
        reason, tls = _verbs_reason(settings, exc), _tls_failed(exc)
        return MissingData(reason, unopened=True, refused=refused, tls=tls, why=_why(settings, exc))
    return MissingData(f"the database {shown_database(settings)} holds no Berth data")


def _what_to_check(settings: Settings, *, tls: bool = False) -> str:
    """What to check when the database could not be opened: where it is, not other data; with
    `tls`, the certificates (the server was reached: its network is not the trouble)."""
    source = setting_source("database_url")
    database = sqlite_file(settings)
    if database is not None:
        return (
            f"Check that {database} is an SQLite database this user can read and write "
            f"(database_url: {source})."
        )
    if tls:
        return (
            f"Check the TLS of database_url ({source}) against the server "
            f"{_server_address(settings)}: that sslrootcert names the CA that signed the "
            "server's certificate, that the certificate holds the host name database_url "
            "connects to (sslmode=verify-full checks it), and that the server has TLS on "
            "(ssl in its postgresql.conf)."
        )
    return (
        f"Check that the database server {_server_address(settings)} is reachable from here and accepts "
        f"connections, and that database_url ({source}) names it."
    )


def where_to_point(settings: Settings, data_dir: Path | None = None) -> str:
    """How to point a verb at existing data, or make new data, for a refusal's second line
    (`data_dir`: the --data-dir the verb was given, if any)."""
    source = setting_source("data_dir", set() if data_dir is None else {"data_dir"})
    config, found = config_file(), config_file().exists()
    if source.endswith(", the default"):
        source = f"the default, berth-data in the working directory {Path.cwd()}"
    point = (
        f"(data_dir: {source}; config file: {config}{'' if found else ', not found'})\n"
        f"Point berth at the server's data with `{berth_command()} --data-dir DIR ...`, "
        "BERTH_DATA_DIR=DIR, or data_dir (and database_url) in the file named by BERTH_CONFIG"
    )
    if _data_may_be_elsewhere(settings):
        # `init` here would make data of its own: keys that are not the install's, or an
        # SQLite database beside the node's PostgreSQL one.
        return (
            f"{point}; on a node run by systemd, with its settings: BERTH_CONFIG and the "
            'variables of its EnvironmentFile (README: "Run several nodes").'
        )
    return (
        f"{point}; `{pasteable_command('init', data_dir=data_dir)}` "
        f"(or `{pasteable_command('serve', data_dir=data_dir)}`) creates new data there."
    )


def _data_may_be_elsewhere(settings: Settings) -> bool:
    """Whether the settings may be missing what names an existing install's data: they name a
    database server that holds Berth data or cannot be asked (a new data directory would
    have keys of its own), or the data directory holds files but no SQLite database (as a
    node whose metadata is in PostgreSQL leaves it)."""
    if sqlite_file(settings) is None:
        try:
            return asyncio.run(_has_schema(settings))
        except Exception:  # any driver's refusal: it cannot tell
            return True
    data_dir = settings.data_dir.absolute()
    return data_dir.is_dir() and any(data_dir.iterdir())


def data_dir_mode(settings: Settings) -> int:
    """0750 when nginx sends the blob files (its user in the directory's group), else 0700."""
    return 0o750 if settings.blob_redirect == "accel" else 0o700


def create_data_dir(data_dir: Path, mode: int, database: Path | None) -> None:
    """The data directory (`mode`) and the SQLite `database` file (0600; None: a database
    server's) where missing, and given those modes where they are: no schema yet."""
    data_dir.mkdir(mode=mode, parents=True, exist_ok=True)
    # Whatever the umask, and one an older Berth made (or a user made beforehand) too; back
    # to 0700 when accel is turned off.
    with contextlib.suppress(PermissionError):  # not ours: left as it is
        data_dir.chmod(mode)
    if database is not None:
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            # One made by an older Berth was 0644 (its WAL files too, while they last).
            for path in (database, *database.parent.glob(f"{database.name}-*")):
                with contextlib.suppress(PermissionError, FileNotFoundError):  # not ours
                    path.chmod(0o600)


def create_data(settings: Settings) -> Migrated | None:
    """Create the data directory and database where missing; bring the schema up to date,
    saying from which revision to which (None when it was current)."""
    database = sqlite_file(settings)
    create_data_dir(settings.data_dir.absolute(), data_dir_mode(settings), database)
    # Alembic, a third of an admin verb's start, only where a migration may run.
    from berth.metadata.migrate import MissingPrivilege, ServersServing, upgrade

    try:
        return upgrade(settings.resolved_database_url, waiting=_say_waiting)
    except (NewerSchema, ServersServing) as exc:
        raise SettingsError(f"{shown_database(settings)}: {exc}") from None
    except MissingPrivilege as exc:
        raise SettingsError(cannot_migrate(settings, str(exc))) from None
    except (DBAPIError, OSError) as exc:
        if database is not None or not _not_reached(exc):
            raise
        # PostgreSQL runs every migration in one transaction (migrations/env.py), which the
        # server rolls back when the connection is lost: nothing half-made is left behind.
        raise DatabaseLost(
            f"lost the database {shown_database(settings)} while bringing its schema up to "
            f"date: {_why(settings, exc)}; the schema is left as it was (the migration is one "
            "transaction, rolled back), and the next start migrates it"
        ) from None


class DatabaseLost(Exception):
    """The database server stopped answering while start-up used it: an outage that may pass
    (`berth serve` exits 75, which systemd restarts), not a setting to put right."""


class DiskFull(Exception):
    """No room on the disk that holds the SQLite database: an outage that ends once space is
    freed there (`berth serve` exits 75, which systemd restarts), not a setting to put right."""


class DiskReadOnly(DiskFull):
    """The data directory's disk turned read-only (remounted so after an I/O error, or a
    read-only mount): an outage an operator ends (fsck, a remount), as a full disk is."""


@contextmanager
def disk_full_said(settings: Settings) -> Iterator[None]:
    """Raise DiskFull, saying so, for SQLite failing for want of room on its disk inside (a
    `disk I/O error` from a write-ahead log that cannot be made, or `database or disk is
    full`, which `Database.write` answers as StorageFull), and DiskReadOnly for a write
    refused by a data directory on a read-only disk, instead of a traceback."""
    try:
        yield
    except Exception as exc:
        said = no_space_for_database(settings, exc)
        if said is not None:
            raise DiskFull(said) from None
        said = read_only_data(settings, exc)
        if said is not None:
            raise DiskReadOnly(said) from None
        raise


def read_only_data(settings: Settings, exc: BaseException) -> str | None:
    """What to say when `exc` is a write refused because the data directory (or the SQLite
    database in it) is on a read-only disk, or None when it is not."""
    if not any(
        isinstance(seen, sqlite3.Error) or (isinstance(seen, OSError) and seen.errno == errno.EROFS)
        for seen in _causes(exc)
    ):
        return None
    database = sqlite_file(settings)
    data_dir = settings.data_dir.absolute()
    where = next(
        (path for path in (database, data_dir) if path is not None and on_read_only_disk(path)),
        None,
    )
    if where is None:
        return None
    return (
        f"the disk holding {where} is read-only (mounted so, or remounted so after an I/O "
        "error): Berth cannot write its data there. Check the disk (its kernel log, fsck) and "
        "mount it read-write again"
    )


def no_space_for_database(settings: Settings, exc: BaseException) -> str | None:
    """What to say when `exc` is SQLite refused for want of room on the disk that holds the
    database, or None when it is not: an I/O error (its -shm file cannot be sized), a full
    database or one it cannot open, where that disk has less than FULL_BELOW bytes (or no
    inode) left. SQLite's own error does not tell a full disk from a failing one (or a full
    temporary directory): the disk's free space does."""
    database = sqlite_file(settings)
    if database is None:
        return None
    codes = (
        seen.sqlite_errorcode & 0xFF
        for seen in _causes(exc)
        if isinstance(seen, sqlite3.Error) and hasattr(seen, "sqlite_errorcode")
    )
    if not any(code in _FOR_WANT_OF_SPACE for code in codes):
        return None
    try:
        disk = os.statvfs(database.parent)
    except OSError:
        return None
    # What this user may use: root may also use the blocks ext4 keeps back for it.
    blocks = disk.f_bfree if os.geteuid() == 0 else disk.f_bavail
    free = blocks * disk.f_frsize
    no_inode = disk.f_files > 0 and disk.f_favail == 0
    if free >= FULL_BELOW and not no_inode:
        return None
    left = "no inode" if no_inode and free >= FULL_BELOW else f"{free} bytes"
    return (
        f"no space left on the disk holding the database {database} ({left} free): SQLite "
        f"cannot open it or write to it without room for its write-ahead log "
        f"({database.name}-wal and {database.name}-shm beside it). Free space on that disk, or "
        "move the data directory to a larger one"
    )


# SQLite's primary result codes that may mean no room on the disk: SQLITE_IOERR (its -shm
# file could not be given its size), SQLITE_FULL, SQLITE_CANTOPEN (no inode for the -wal).
_FOR_WANT_OF_SPACE = (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN)
# Less than this left on the database's disk after SQLite failed: the disk is full. A
# failed write leaves its write-ahead log grown by what it took, so a disk it filled has
# less than a page or two left.
FULL_BELOW = 1024 * 1024


def _say_waiting(processes: list[ServingProcess]) -> None:
    listed = "; ".join(process.describe() for process in processes)
    print(
        f"Waiting up to {LIVE_SECONDS:.0f} s for the server processes of the older version to "
        f"stop before migrating the schema: {listed}",
        flush=True,
    )


def cannot_migrate(settings: Settings, problem: str) -> str:
    """The refusal of a database user that may not bring Berth's tables up to this Berth's
    schema (`problem`: PostgreSQL's words), saying what lets it."""
    url = make_url(settings.resolved_database_url)
    user, database = url.username or "(the user the driver defaults to)", url.database or "berth"
    with contextlib.suppress(Exception):  # cannot tell: the advice for a new database
        if asyncio.run(_has_schema(settings)):
            # Made by an older Berth, as another user: only their owner may change them.
            return (
                f"the user {user} may not bring Berth's tables in the database {database} "
                f"({shown_database(settings)}) up to this Berth's schema: {problem}. Only the user that owns them may: give "
                "berth the database_url of that user, which the nodes use"
            )
    return (
        f"the user {user} may not create Berth's tables in "
        f"the database {database} ({shown_database(settings)}): {problem}. Since PostgreSQL "
        "15 only the database's owner may create tables in schema public: the role "
        f"{user} must own the database (CREATE DATABASE {database} OWNER {user}, or "
        f"ALTER DATABASE {database} OWNER TO {user}) or have CREATE on schema public "
        f"(GRANT CREATE ON SCHEMA public TO {user}, in that database)"
    )
