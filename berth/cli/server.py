"""`berth serve`, `berth init` and `berth status`: start a registry, create its data, and say
which data the other verbs use."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli.common import (
    BAD_SETTING,
    JsonFlag,
    Options,
    console,
    fail,
    print_json,
    settings_or_exit,
)
from berth.domain.errors import RegistryError

if TYPE_CHECKING:
    from berth.config import Settings
    from berth.data_location import MissingData
    from berth.metadata.presence import ServingProcess
    from berth.services.install import ServedAt

DATABASE_URL_HELP = (
    "Database URL: postgresql://USER:PASSWORD@HOST:5432/DATABASE (asyncpg's; "
    "postgresql+asyncpg:// and postgres:// too; TLS with libpq's ?sslmode=, sslrootcert=, "
    "sslcert=, sslkey=) or sqlite:///PATH."
)


def serve(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port to listen on.")] = None,
    domain: Annotated[str | None, typer.Option(help="Registry domain.")] = None,
    region: Annotated[str | None, typer.Option(help="Region name.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    database_url: Annotated[str | None, typer.Option(help=DATABASE_URL_HELP)] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (0: one per usable core, the default).")
    ] = None,
) -> None:
    """Start the registry (creating its data directory and database on first start)."""
    flags = {
        "data_dir": data_dir,
        "listen": listen,
        "domain": domain,
        "region": region,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "database_url": database_url,
        "workers": workers,
    }
    settings = settings_or_exit(**flags)
    # Imported once the settings are good: a bad one is named without loading the server.
    from sqlalchemy.exc import DBAPIError

    from berth.config_loading import SettingsError
    from berth.data_location import DatabaseLost, DiskFull
    from berth.server import serve as run_server
    from berth.services.start_up import GAVE_UP_WAITING, GaveUpWaiting
    from berth.table_privileges import lacks_privilege, no_privilege

    given = {name for name, value in flags.items() if value is not None}
    if Options.data_dir is not None:
        given.add("data_dir")
    try:
        run_server(settings, given)
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)
    except DBAPIError as exc:
        if not lacks_privilege(exc):
            raise
        fail(no_privilege(settings, exc), BAD_SETTING)
    except GaveUpWaiting as exc:
        fail(str(exc), GAVE_UP_WAITING)
    except DatabaseLost as exc:  # an outage, as one waited for: restarted by systemd
        fail(f"{exc}; exiting with status {GAVE_UP_WAITING}", GAVE_UP_WAITING)
    except DiskFull as exc:
        # Not 2 (a bad setting, which deploy/berth.service does not restart): nothing in the
        # settings is wrong, and the node should start by itself once space is freed (logs
        # rotated, files removed, the disk grown), as after an outage: 75, restarted.
        fail(
            f"{exc}; exiting with status {GAVE_UP_WAITING}, which a service manager may "
            "restart (systemd does, with deploy/berth.service)",
            GAVE_UP_WAITING,
        )


def init(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    database_url: Annotated[str | None, typer.Option(help=DATABASE_URL_HELP)] = None,
) -> None:
    """Create the data directory, the database and the administrator, without serving."""
    settings = settings_or_exit(data_dir=data_dir, database_url=database_url)
    from rich.text import Text

    from berth.config_loading import SettingsError, setting_source
    from berth.data_location import (
        DatabaseLost,
        DiskFull,
        MissingData,
        missing_data,
        shown_database,
        unusable_database,
    )
    from berth.server import initialise

    if (problem := unusable_database(settings)) is not None:
        if problem.passing:  # not reached: an outage (1), not a setting (2)
            fail(MissingData(problem.reason, unopened=True).refusal(settings))
        given = {"database_url"} if database_url is not None else set()
        fail(f"{setting_source('database_url', given)}: {problem.reason}", BAD_SETTING)
    missing = missing_data(settings)
    if missing is None:
        fail(f"Berth data exists already: {shown_database(settings)}", 3)
    if missing.unopened:  # there, but not opened (a full disk, a damaged file): not made anew
        fail(missing.refusal(settings))
    try:
        initialise(
            settings,
            data_dir=data_dir if data_dir is not None else Options.data_dir,
            database_url=database_url,
        )
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)
    except (DatabaseLost, DiskFull) as exc:
        fail(str(exc))
    console.print(
        Text(f"Created Berth data in {settings.data_dir.absolute()} ({shown_database(settings)})")
    )


def status(json_output: JsonFlag = False) -> None:
    """Say which settings file, data directory and database the verbs use, and whether a server
    answers on the configured address."""
    settings = settings_or_exit()
    from rich.table import Table
    from rich.text import Text
    from sqlalchemy.exc import SQLAlchemyError

    from berth.addresses import listen_address
    from berth.config import config_file
    from berth.data_location import missing_data, shown_database, sqlite_file
    from berth.services.records import plain

    missing = missing_data(settings)
    # A database server is asked whatever the data directory: one that is missing says
    # nothing of whether the server is reached.
    data_dir_found = settings.data_dir.absolute().is_dir()
    in_database, on_server = missing, sqlite_file(settings) is None
    if not data_dir_found and on_server:
        in_database = missing_data(settings, database_only=True)
    listening, ours = _who_answers(settings)
    config, database = config_file(), shown_database(settings)
    data_dir = str(settings.data_dir.absolute())
    where: ServedAt | None = None
    served_url: str | None = None
    revision: str | None = None
    standing: str | None = None
    serving: list[ServingProcess] = []
    unread: str | None = None  # why the database could not be read
    if missing is None:
        try:
            where, served_url, revision, serving = _database_facts(settings)
            standing = _standing(revision)
        except (RegistryError, SQLAlchemyError, OSError) as exc:
            unread = f"cannot read the database {database}: {_why_unread(settings, exc)}"
    served = None if where is None else where.host
    # Served elsewhere than this shell's `listen` says: whether a server answers there.
    elsewhere = _answers_at_served(settings, served)
    # Served at a balancer's address (public_url) or a name of the server's own: whether its
    # health check answers there, as clients would reach it.
    health = (
        _health_at(_served_url(settings, served, served_url))
        if elsewhere is None and served is not None and served != listen_address(settings)
        else None
    )
    # A database that is there but could not be opened or read may well hold the data (an
    # outage, a file damaged or replaced): found but unreadable, not missing.
    found = missing is None or missing.unopened
    readable = missing is None and unread is None
    if json_output:
        print_json(
            {
                "config_file": str(config),
                "config_file_found": config.is_file(),
                "data_dir": data_dir,
                "database": database,
                "data_found": found,
                "data_readable": readable,
                "data_problem": unread if missing is None else missing.reason,
                "listen": settings.listen,
                "server_listening": listening,
                "server_serves_this_data": ours,
                "served_at": served,
                # null when `served_at` is where `listen` is (or is no address to try).
                "served_at_listening": None if elsewhere is None else elsewhere[0],
                "served_at_serves_this_data": None if elsewhere is None else elsewhere[1],
                # null when not asked: `served_at` is `listen`'s address, or an address
                # asked as above, or one without a URL recorded.
                "served_at_health": None if health is None else health.as_dict(),
                "schema_revision": revision,
                "schema_current": None if standing is None else standing == "current",
                "serving_processes": [plain(process) for process in serving],
            }
        )
    else:
        table = Table(title="Berth", show_header=False)
        table.add_column("item", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("Config file", Text(f"{config}{'' if config.exists() else ' (not found)'}"))
        table.add_row("Data directory", Text(data_dir + ("" if data_dir_found else " (not found)")))
        table.add_row("Database", Text(database + _database_note(in_database, unread, on_server)))
        if revision is not None:
            table.add_row("Schema", Text(f"revision {revision} ({standing})"))
        answers = {
            True: " (a server answers, with this data's keys)",
            False: " (a server answers, but not this data's: its tokens are signed with other keys)",
            None: " (something answers; whether it serves this data is unknown)",
        }[ours]
        if not listening:
            answers = " (nothing listening)"
        if elsewhere is not None:
            # Another shell's server (`make run`'s BERTH_LISTEN, `--listen`): not a lead.
            answers = f" (this shell's setting; {answers.strip(' ()')})"
        table.add_row("Listen", Text(settings.listen + answers))
        if served is not None:
            there = ""
            if elsewhere is not None:
                there = (
                    "; "
                    + {
                        (False, None): "nothing listening there now",
                        (True, True): "a server answers there, with this data's keys",
                        (True, False): "a server answers there, but not with this data's keys",
                        (True, None): "something answers there",
                    }[elsewhere]
                )
            if health is not None:
                there = f"; {health.said()}"
            # The address `berth key create` prints: a running server's, the newest.
            whose = (
                "where the newest running berth serve is reached"
                if where is not None and where.serving
                else "where the last berth serve started"
            )
            table.add_row("Served at", Text(f"{served} ({whose}{there})"))
        if readable:
            table.add_row("Serving", Text(_serving_processes(serving)))
        console.print(table)
    if missing is not None:
        fail(missing.refusal(settings, Options.data_dir))
    if unread is not None:
        fail(unread)


def _database_note(missing: MissingData | None, unread: str | None, on_server: bool) -> str:
    """What the Database row adds: why a database server could not be opened (not reached, or
    refused), briefly; a database found that cannot be read; nothing where the data is."""
    if missing is None:
        return "" if unread is None else " (found, but cannot be read)"
    if missing.unopened and on_server:
        return f" ({'cannot be opened' if missing.refused else 'unreachable'}: {missing.why})"
    return " (found, but cannot be read)" if missing.unopened else " (not found)"


def _serving_processes(processes: list[ServingProcess]) -> str:
    """The server processes serving on this data, a line each (any node's)."""
    from berth.metadata.presence import LIVE_SECONDS

    if not processes:
        return f"no server process (none has said it serves in the last {LIVE_SECONDS:.0f} s)"
    return "\n".join(process.describe() for process in processes)


def _database_facts(
    settings: Settings,
) -> tuple[ServedAt | None, str | None, str | None, list[ServingProcess]]:
    """Where clients reach this data's servers, as `berth key create` prints it (None: no
    server recorded it), the URL the last `berth serve` to start recorded (None: a server from
    before that was recorded), the revision the schema is at, and the processes serving on
    it. Read with the bounds a server's requests get (database_connect_timeout,
    database_statement_timeout, database_lock_timeout): a database that stops answering does
    not hold status up."""
    from sqlalchemy.exc import DBAPIError

    from berth.metadata.database import Database
    from berth.metadata.presence import live_processes_sync
    from berth.metadata.revisions import revision_sync
    from berth.services.install import served_url, where_served

    async def read() -> tuple[ServedAt | None, str | None, str | None, list[ServingProcess]]:
        db = Database.for_settings(settings)
        try:
            try:
                served, url = await where_served(db), await served_url(db)
            except DBAPIError:  # a schema older than the tables (a server not yet upgraded)
                served = url = None
            async with db.read() as conn:
                revision = await conn.run_sync(revision_sync)
                serving = await conn.run_sync(live_processes_sync)
            return served, url, revision, serving
        finally:
            await db.dispose()

    return asyncio.run(read())


def _why_unread(settings: Settings, exc: Exception) -> str:
    from sqlalchemy.exc import DBAPIError

    from berth.metadata.database import LOCK_NOT_AVAILABLE, LOCK_WAIT_SECONDS

    if isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        seconds = settings.database_lock_timeout or LOCK_WAIT_SECONDS
        return f"what it reads stayed locked longer than {seconds:g} s (database_lock_timeout)"
    if isinstance(exc, DBAPIError):
        from berth.table_privileges import lacks_privilege, no_privilege

        if lacks_privilege(exc):
            return no_privilege(settings, exc)
    if isinstance(exc, RegistryError):
        return exc.message
    return str(exc).splitlines()[0] or type(exc).__name__


def _standing(revision: str | None) -> str:
    """How the schema's revision stands to this Berth's."""
    from berth.metadata.revisions import (
        NewerSchema,
        OlderSchema,
        require_revision_current,
        schema_head,
    )

    try:
        require_revision_current(revision)
        return "current"
    except NewerSchema:
        return f"newer than this Berth's {schema_head()}: a newer Berth migrated it"
    except OlderSchema as older:
        return f"older than this Berth's {older.head}: its berth serve migrates it"


def _answers_at_served(settings: Settings, served: str | None) -> tuple[bool, bool | None] | None:
    """`_who_answers` at the address the last `berth serve` recorded, when that is not where
    this shell's `listen` points and is an IP address or localhost (a name of the server's own
    may not resolve from here, or not to it); None otherwise."""
    import ipaddress

    from berth.addresses import public_host

    if served is None or served == public_host(settings):
        return None
    host, colon, port = served.rpartition(":")
    host = host.strip("[]")
    if not colon or not port.isdigit():
        return None
    try:
        if host != "localhost":
            ipaddress.ip_address(host)
    except ValueError:
        return None
    return _who_answers(settings, (host, int(port)))


def _who_answers(
    settings: Settings, address: tuple[str, int] | None = None
) -> tuple[bool, bool | None]:
    """(whether something listens at `address`, by default `listen`, whether it is a Berth
    server of this data: its tokens' `kid` is this data's signing key's; None when no token
    came back to compare, or this data has no key yet)."""
    import httpx  # here: only `berth status` asks a server anything
    import jwt

    from berth.access.keyring import existing_key_id

    host, port = address or settings.host_and_port
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False, None
    ours = existing_key_id(settings.signing_key_file)
    scheme = "https" if settings.tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    try:
        # Anonymous: a token for no scope, which any Berth server signs. Only its header is
        # read, so the certificate need not be trusted.
        answer = httpx.get(f"{scheme}://{shown}:{port}/auth/token", timeout=3, verify=False)
        kid = jwt.get_unverified_header(answer.json()["token"]).get("kid")
    except (httpx.HTTPError, ValueError, KeyError, TypeError, jwt.PyJWTError):
        return True, None
    if ours is None:
        return True, None
    return True, kid == ours


def _served_url(settings: Settings, served: str, recorded: str | None) -> str | None:
    """The URL the last server recorded, if it is at `served`; from a server that recorded
    only its host (an older Berth's, which leaves the URL of the one before), this shell's
    URL when it names that host (else None: the scheme is unknown)."""
    from urllib.parse import urlsplit

    from berth.addresses import public_host, public_url

    if recorded is not None and urlsplit(recorded).netloc == served:
        return recorded
    return public_url(settings) if public_host(settings) == served else None


@dataclass(frozen=True)
class Health:
    """What `{url}/healthz` answered: `problem` None when it answered 200."""

    url: str
    problem: str | None

    def said(self) -> str:
        if self.problem is None:
            return f"answering at {self.url}"
        return f"not answering at {self.url}: {self.problem}"

    def as_dict(self) -> dict[str, object]:
        return {"url": self.url, "answering": self.problem is None, "problem": self.problem}


# How long status waits for a served address's health check: a balancer that drops packets
# (or a name no resolver answers) must not hold status up.
HEALTH_WAIT_SECONDS = 2.0


def _health_at(url: str | None) -> Health | None:
    """Ask `{url}/healthz` (None: no URL, nothing asked), within HEALTH_WAIT_SECONDS in all:
    in a thread of its own, as a name's resolution has no timeout of its own."""
    if url is None:
        return None
    import threading

    import httpx  # here: only `berth status` asks a server anything

    health = f"{url.rstrip('/')}/healthz"
    answer: list[str | None] = []

    def ask() -> None:
        try:
            got = httpx.get(health, timeout=HEALTH_WAIT_SECONDS)
        except httpx.TimeoutException:
            answer.append(f"no answer within {HEALTH_WAIT_SECONDS:g} s")
        except httpx.HTTPError as exc:
            answer.append(_why_no_answer(exc))
        else:
            answer.append(None if got.status_code == 200 else f"HTTP {got.status_code}")

    asker = threading.Thread(target=ask, daemon=True)  # not waited for at exit
    asker.start()
    asker.join(HEALTH_WAIT_SECONDS + 0.2)
    if not answer:
        return Health(health, f"no answer within {HEALTH_WAIT_SECONDS:g} s")
    return Health(health, answer[0])


def _why_no_answer(exc: Exception) -> str:
    """An HTTP client's failure as its innermost reason (connection refused, the name not
    found, the certificate not trusted), on one line."""
    reason: BaseException = exc
    while (inner := reason.__cause__ or reason.__context__) is not None:
        reason = inner
    return str(reason).splitlines()[0] if str(reason) else type(reason).__name__
