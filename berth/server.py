"""Prepare the data directory and database, then hand over to granian."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import math
import os
import resource
import shutil
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

from berth.access.keyring import Keyring
from berth.addresses import public_host, public_url
from berth.config import Settings
from berth.config_loading import SettingsError, setting_source
from berth.data_location import (
    StartUpProblem,
    create_data,
    database_problem,
    disk_full_said,
    shown_database,
)
from berth.invocation import (
    data_dir_to_name,
    database_url_to_name,
    named_config,
    pasteable_command,
    unprinted_database,
)
from berth.observability import metrics
from berth.services.install import record_served_at
from berth.services.start_up import (
    GAVE_UP_WAITING,
    GaveUpWaiting,
    check_keys,
    check_storage_location,
    in_database,
    on_sqlite,
)
from berth.state import Services, unusable_storage
from berth.storage.filesystem import (
    DIRECTORY_MODE,
    FILE_MODE,
    modes_unset,
    set_modes,
)


def _bootstrap_admin(
    settings: Settings,
    keyring: Keyring,
    url: str,
    *,
    serving: bool,
    data_dir: Path | None,
    database_url: str | None,
) -> bool:
    """On an empty data directory, create the administrator and say once how to log in (with
    commands that carry `data_dir` and `database_url`, the --data-dir and --database-url given,
    if any, else those the environment gave, and the file BERTH_CONFIG names). Whether it
    printed the note on the database those commands cannot name (`unprinted_database`)."""
    named_url = database_url_to_name(database_url, settings.database_url)
    command = partial(
        pasteable_command,
        data_dir=data_dir_to_name(data_dir, settings.data_dir),
        config=named_config(),
        database_url=named_url,
    )

    async def bootstrap() -> tuple[str, str | None] | None:
        services = Services.build(settings, keyring)
        try:
            return await services.identity.users.bootstrap_admin(settings.admin_password)
        finally:
            await services.close()

    created = asyncio.run(bootstrap())
    reset = command("user", "set-password", "admin")
    if created is None:
        if settings.admin_password:
            print(
                f"note: {_admin_password_source()} is used only when the data is "
                "created; the administrator exists, with its password unchanged. To change "
                f"it: {reset}",
                flush=True,
            )
        return False
    name, generated = created
    print(f"Created the administrator {name!r}.", flush=True)
    if generated:
        print(f"  password (shown only now): {generated}", flush=True)
    else:
        print(f"  password: the one given in {_admin_password_source()}", flush=True)
    serve = command("serve")
    when = "" if serving else f" once `{serve}` runs"
    create = command("project", "create", "PROJECT")
    note = unprinted_database(named_url, given=database_url is not None)
    if note:
        print(f"  {note}", flush=True)
    print(
        f"  Sign in to the console at {url}/console/ as {name!r}{when}; create a project there (or\n"
        f"  {create}), then an access key under Access keys, and\n"
        f"  docker login {public_host(settings)} --username KEY_ID --password SECRET",
        flush=True,
    )
    return note is not None


def _admin_password_source() -> str:
    """Where the administrator's password was given, as the user wrote it: the environment
    variable, or the setting in the config file."""
    source = setting_source("admin_password")
    return f"admin_password ({source})" if source.startswith("BERTH_") else source


def _allow_open_files(connections: int) -> None:
    """Raise the open-file limit so each worker can hold `connections` sockets besides its own
    files; the soft limit is often 1024. The limit is per process and the workers inherit it:
    one worker's connections, not all workers' together."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            print(
                f"warning: the open-file limit ({hard}) allows fewer than max_connections "
                f"({connections}) connections per worker; raise it (ulimit -n, LimitNOFILE)",
                flush=True,
            )


def _connection_limits(settings: Settings) -> list[str]:
    """granian's options for slow and numerous clients: the connections each worker holds
    (each keeps its slot while open), and how long a client may take to send its headers."""
    return [
        "--backlog",
        str(max(1024, min(settings.max_connections, 65535))),
        "--backpressure",
        str(settings.max_connections),
        "--http1-header-read-timeout",
        str(round(settings.header_read_timeout * 1000)),
    ]


def initialise(
    settings: Settings,
    *,
    serving: bool = False,
    data_dir: Path | None = None,
    database_url: str | None = None,
) -> bool:
    """Create the data directory, database and keys (where missing) and, on an empty
    database, the administrator: what `berth init` does, and `berth serve` before serving.
    `data_dir` and `database_url`: the --data-dir and --database-url given, which the
    commands printed carry. Whether it printed the note on the database the commands cannot
    name (`unprinted_database`). DiskFull when the database's disk has no room left."""
    with disk_full_said(settings):
        return _initialise(settings, serving=serving, data_dir=data_dir, database_url=database_url)


def _initialise(
    settings: Settings, *, serving: bool, data_dir: Path | None, database_url: str | None
) -> bool:
    migrated = create_data(settings)
    if migrated is not None:
        # Said once, by the node that moved the schema: the step an operator looks for when
        # an upgrade goes wrong (README, "Upgrading").
        database = shown_database(settings)
        if migrated.before is None:
            print(f"Created the schema of {database} at revision {migrated.after}", flush=True)
        else:
            print(
                f"Migrated the schema of {database} from revision {migrated.before} to "
                f"{migrated.after}",
                flush=True,
            )
    check_storage_location(settings)
    keyring = check_keys(settings)
    return _bootstrap_admin(
        settings,
        keyring,
        public_url(settings),
        serving=serving,
        data_dir=data_dir,
        database_url=database_url,
    )


def _check_tls(settings: Settings, flags: Collection[str]) -> None:
    cert, key = settings.tls_cert, settings.tls_key
    if (cert is None) != (key is None):
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise SettingsError(
            f"{setting_source(given, flags)} is set but {missing} is not: HTTPS takes both the "
            "certificate and its private key (--tls-cert and --tls-key)"
        )
    if cert is None or key is None:
        return
    for name, path, marker, what in (
        ("tls_cert", cert, b"-----BEGIN CERTIFICATE-----", "PEM certificate"),
        ("tls_key", key, b"PRIVATE KEY-----", "PEM private key"),
    ):
        try:
            content = path.read_bytes()
        except OSError as exc:
            problem = (exc.strerror or str(exc)).lower()
            raise SettingsError(
                f"{setting_source(name, flags)}: {str(path)!r}: {problem}"
            ) from None
        if marker not in content:
            raise SettingsError(f"{setting_source(name, flags)}: {str(path)!r} holds no {what}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_password() -> bytes:
        raise SettingsError(
            f"{setting_source('tls_key', flags)}: {str(key)!r} is encrypted; give an "
            "unencrypted key"
        )

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        problem = {
            "KEY_VALUES_MISMATCH": "the private key does not belong to the certificate",
        }.get(exc.reason or "", f"they cannot be loaded ({exc.reason or exc})")
        raise SettingsError(
            f"{setting_source('tls_cert', flags)} {str(cert)!r} with "
            f"{setting_source('tls_key', flags)} {str(key)!r}: {problem}"
        ) from None


def _check_address(address: tuple[str, int], setting: str, flags: Collection[str]) -> None:
    """Refuse an address (of the `setting`) another process listens on: granian binds with
    SO_REUSEPORT, so a second server would start and quietly take half the connections."""
    host, port = address
    shown = _shown(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()  # SO_REUSEADDR, no REUSEPORT
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(
                f"address {shown} is already in use; choose a free one for {setting} "
                f"(now {setting_source(setting, flags)}): in berth.toml, which the berth command "
                f"reads as well, or as BERTH_{setting.upper()}=HOST:PORT"
            ) from None
        problem = {
            errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            errno.EADDRNOTAVAIL: "no such address on this machine",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise SettingsError(
            f"{setting_source(setting, flags)}: cannot serve on {shown}: {problem}"
        ) from None


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def claim_ports(settings: Settings, flags: Collection[str] = ()) -> list[socket.socket]:
    """Claim the ports of `listen` and `metrics_listen` for this server, before checking that
    they are free: two `berth serve` started at once would both find a port free (granian binds
    it a second or more later, with SO_REUSEPORT) and then both serve on it. The claim is a
    Unix socket bound to the name "berth-serve-port-PORT" in Linux's abstract namespace: that
    name is unique per network namespace (the scope of the port itself, whichever the user, data
    directory or private /tmp), and the kernel drops it when the process exits, however it
    ends. The sockets are inherited through the exec into granian and held as long as it runs;
    keep the returned list alive until then. One `berth serve` per port: it claims the port for
    every address, and is refused on a port another one claimed on any address."""
    if not sys.platform.startswith("linux"):
        return []  # no abstract namespace: the check of the address alone
    addresses = [("listen", settings.host_and_port)]
    if settings.metrics_host_and_port is not None:
        addresses.append(("metrics_listen", settings.metrics_host_and_port))
    claimed: dict[int, socket.socket] = {}
    try:
        for setting, (host, port) in addresses:
            if port in claimed:
                continue  # the same address twice: check() says so
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                claim.bind(f"\0berth-serve-port-{port}")
            except OSError as exc:
                claim.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise SettingsError(
                    f"address {_shown(host, port)} is already in use: another `berth serve` "
                    f"on this machine is starting or serving on port {port} "
                    f"({setting_source(setting, flags)}); stop it or choose another port"
                ) from None
            claim.set_inheritable(True)  # through the exec into granian
            claimed[port] = claim
    except BaseException:
        for claim in claimed.values():
            claim.close()
        raise
    return list(claimed.values())


def check(settings: Settings, flags: Collection[str] = ()) -> None:
    """Everything that would stop the server, found before anything is created or served.
    `flags` names the settings given as flags, to say where a bad value came from."""
    _check_tls(settings, flags)
    _check_address(settings.host_and_port, "listen", flags)
    metrics_address = settings.metrics_host_and_port
    if metrics_address is not None:
        if metrics_address == settings.host_and_port:
            raise SettingsError(
                f"{setting_source('metrics_listen', flags)} is the address the registry serves "
                "on; give the metrics a port of their own (or leave metrics_listen unset: "
                "/metrics is on the main address too)"
            )
        _check_address(metrics_address, "metrics_listen", flags)
    deadline = time.monotonic() + settings.startup_wait
    _wait_for(
        settings,
        "the database",
        lambda: database_problem(settings),
        deadline,
        setting=setting_source("database_url", flags),
    )
    if settings.storage == "s3" and on_sqlite(settings) and not settings.single_node:
        raise SettingsError(
            'storage = "s3" with the SQLite database in data_dir serves one node only, and '
            "a second node on the same bucket would have metadata of its own: set "
            "single_node = true (BERTH_SINGLE_NODE=true) if this node is the only one, or "
            "set database_url to a PostgreSQL database that every node shares (README: "
            '"Run several nodes")'
        )
    _wait_for(settings, "the blob store", lambda: unusable_storage(settings), deadline)


def _wait_for(
    settings: Settings,
    what: str,
    problem: Callable[[], StartUpProblem | None],
    deadline: float,
    setting: str = "",
) -> None:
    """Return once `problem` finds none; wait while it says what may pass (a server not
    reached, or starting), until `deadline`, saying once what is awaited; refuse
    (SettingsError) anything else. `setting`: where the problem's setting came from, said
    first."""
    said = False
    while True:
        found = problem()
        if found is None:
            if said:
                print(f"Reached {what}", flush=True)
            return
        reason = f"{setting}: {found.reason}" if setting else found.reason
        if not found.passing:
            raise SettingsError(reason)
        left = deadline - time.monotonic()
        if left <= 0:
            raise GaveUpWaiting(
                f"{reason} (waited {settings.startup_wait:g} s for it, startup_wait); exiting "
                f"with status {GAVE_UP_WAITING}, which a service manager may restart (systemd "
                "does, with deploy/berth.service)"
            )
        if not said:
            # The time left, rounded up, and the setting: the first try took some of it, and
            # the blob store is waited for within the same startup_wait as the database.
            print(
                f"Waiting up to {math.ceil(left)} s more (startup_wait = "
                f"{settings.startup_wait:g} s from the start) for {what}, which cannot be "
                f"reached yet: {reason}",
                flush=True,
            )
            said = True
        time.sleep(min(_RETRY_SECONDS, left))


# Between tries of what `berth serve` waits for: each try costs a connection attempt.
_RETRY_SECONDS = 1.0


def _record_served_at(settings: Settings) -> None:
    """Note where this server is reached, for the commands the CLI prints (`berth key
    create`) when it runs with other settings than the server (BERTH_LISTEN given only to
    `make run`)."""
    in_database(
        settings,
        lambda db: record_served_at(
            db, public_host(settings), settings.project_host_suffix, public_url(settings)
        ),
    )


def _open_blobs_to_nginx(settings: Settings) -> None:
    """What an older Berth made under a strict umask, made as this one makes it for nginx's
    worker (its user in the data directory's group): the blob tree 0750 and 0640, walked once
    (it may hold millions of files), and the `keys/` directory 0700 again."""
    keys = settings.data_dir / "keys"
    with contextlib.suppress(FileNotFoundError, PermissionError):  # none, or not ours
        opened = stat.S_IMODE(keys.stat().st_mode)
        if opened & 0o077:
            keys.chmod(0o700)
            print(f"Made {keys} owner-only (0700; it was {opened:04o})", flush=True)
    blobs = settings.blob_dir
    if not modes_unset(blobs):
        return
    print(
        f"Checking that nginx's group may read every blob in {blobs} (once; a large store "
        "takes a while)",
        flush=True,
    )
    done = set_modes(blobs)
    left = (
        f"; {done.not_ours} of another user's left as they were: nginx may be refused them"
        if done.not_ours
        else ""
    )
    print(
        f"Gave {done.directories} directories mode {DIRECTORY_MODE:04o} and {done.files} files "
        f"mode {FILE_MODE:04o} in {blobs}, in {done.seconds:.1f} s{left}",
        flush=True,
    )


def _prepare_metrics(settings: Settings) -> None:
    """The workers' metric files go in a directory emptied now: the counters of a previous
    run of the server are not this one's (Prometheus sees a restart)."""
    directory = metrics_directory(settings.data_dir, settings.host_and_port[1])
    shutil.rmtree(directory, ignore_errors=True)
    # Where versions before kept them (on the data disk): nothing reads them any more.
    shutil.rmtree(settings.data_dir.resolve() / "metrics", ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ[metrics.MULTIPROC_ENV] = str(directory)


SHARED_MEMORY = Path("/dev/shm")


def metrics_directory(data_dir: Path, port: int) -> Path:
    """Where the workers of the server on `port` keep their metric values: memory-mapped
    files, so in memory, not on the data directory's disk. A worker writing to a mapped page
    that a full disk cannot back is killed (SIGBUS), and so is each worker started after it: a
    full data disk would take pulls down with pushes. systemd's RuntimeDirectory=
    (deploy/berth.service) when given, else a directory of this user's for this data directory
    and port in /dev/shm, else (no such memory filesystem) the data directory.

    The port is in the /dev/shm name because two `berth serve` may use one data directory
    (on other ports: nothing refuses it), and one port has one `berth serve` (`claim_ports`):
    so the directory is one server's alone, which empties it when it starts and removes it when
    it stops (berth.supervisor) without touching another's counters."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "metrics"
    data_dir = data_dir.resolve()
    if not SHARED_MEMORY.is_dir() or not os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return data_dir / "metrics"
    key = hashlib.sha256(f"{data_dir}\0{port}".encode()).hexdigest()[:16]
    directory = SHARED_MEMORY / f"berth-metrics-{os.geteuid()}-{key}"
    try:
        seen = directory.lstat()
    except FileNotFoundError:
        return directory
    if stat.S_ISDIR(seen.st_mode) and seen.st_uid == os.geteuid():
        return directory
    # Someone else's name in a directory every user writes to: not ours to empty or use.
    return data_dir / "metrics"


def granian_arguments(settings: Settings) -> list[str]:
    """The command line `berth serve` hands over to: granian serving Berth's app with
    `settings`."""
    host, port = settings.host_and_port
    workers = settings.worker_processes
    arguments = [
        sys.executable,
        "-m",
        # granian's command line, run by berth.supervisor: with several workers Berth's modules
        # loaded before the fork, shared by the workers (30-40 MB less for two, by PSS); the
        # metric files removed once granian has stopped.
        "berth.supervisor",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        settings.log_level,
        "--no-access-log",  # an access log would carry query strings; nothing secret is logged
        "--respawn-failed-workers",
        *_connection_limits(settings),
        # uvloop (a dependency), named: granian's "auto" takes rloop instead whenever it is
        # importable, and asyncpg cannot run on rloop (every PostgreSQL query fails).
        "--loop",
        "uvloop",
        # granian's runtime options (runtime threads and mode, task implementation, HTTP/1
        # buffer size, backpressure below max_connections) stay at their defaults: measured
        # against them, none sent blob files faster (pathsend reads 128 KiB pieces whatever
        # the options; each cost more CPU per pull; Berth reads larger pieces itself, see
        # registry/responses.py), none took the CPU per manifest or 4 KiB blob request below
        # the spread of the defaults against themselves on a loaded machine (`--task-impl
        # rust` came closest: 4 KiB blob GETs at 0.86-0.87) (bench/findings.md). More than
        # one blocking thread is refused for ASGI.
    ]
    if settings.tls:
        arguments += [
            "--ssl-certificate",
            str(settings.tls_cert),
            "--ssl-keyfile",
            str(settings.tls_key),
            "--ssl-protocol-min",
            "tls1.2",
        ]
    return [*arguments, "berth.app:create_app"]


def serve(settings: Settings, flags: Collection[str] = ()) -> None:
    # Before check(): no window between it and granian's bind. Open until the exec, and held
    # by granian after it.
    _claims = claim_ports(settings, flags)
    check(settings, flags)
    given_dir = settings.data_dir if "data_dir" in flags else None  # for printed commands
    given_url = settings.database_url if "database_url" in flags else None
    settings.data_dir = settings.data_dir.resolve()
    noted = initialise(settings, serving=True, data_dir=given_dir, database_url=given_url)
    if settings.blob_redirect == "accel":
        _open_blobs_to_nginx(settings)
    with disk_full_said(settings):
        _record_served_at(settings)
    base = public_url(settings)
    print(f"Berth registry on {base}  (data in {settings.data_dir})")
    named_url = database_url_to_name(given_url, settings.database_url)
    reset = pasteable_command(
        "user",
        "set-password",
        "admin",
        data_dir=data_dir_to_name(given_dir, settings.data_dir),
        config=named_config(),
        database_url=named_url,
    )
    if not noted and (note := unprinted_database(named_url, given=given_url is not None)):
        print(note)  # unless the administrator's creation said it just above
    print(f"Web console: {base}/console/  (sign in as admin with its password; lost it? {reset})")
    print(f"Management API and its documentation: {base}/api/v1/docs")
    _allow_open_files(settings.max_connections)
    # Worker processes build their own Settings; hand them exactly what was resolved here.
    os.environ.update(settings.to_environ())
    _prepare_metrics(settings)
    workers = settings.worker_processes
    how_many = "" if settings.workers else " (one per usable core; set workers to change it)"
    print(f"Starting {workers} worker process{'es' if workers != 1 else ''}{how_many}")
    sys.stdout.flush()
    # Replace this process with granian's supervisor: it carries granian (and with several
    # workers the app's modules, which the workers it forks share), not the CLI, Alembic and
    # the rest.
    os.execv(sys.executable, granian_arguments(settings))
