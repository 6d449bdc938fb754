"""Real servers for tests: Berth itself (a `berth serve` subprocess) and a PostgreSQL cluster."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest

from berth.config import Settings
from berth.domain.errors import Conflict
from berth.server import SHARED_MEMORY, metrics_directory
from berth.state import Services
from tests.cli_forks import BERTH as BERTH
from tests.cli_forks import run_berth
from tests.oci import Blob, push_blobs
from tests.ports import free_port as free_port
from tests.tls import make_ca_and_cert, make_client_cert

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "admin-password-for-tests"


def in_own_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread of its own: code that calls asyncio.run() needs a thread with no
    running event loop, and the browser tests' Playwright keeps one in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(work).result()


def listed_items(listed: Any) -> list[Any]:
    """The `items` of what a list verb prints with --json, which has the listing's shape."""
    assert set(listed) == {"items", "page", "per_page", "total"}, listed
    items: list[Any] = listed["items"]
    return items


class CliReads:
    """`cli_json` and `cli_items` over a class's `cli` (a new `berth` process, or one run in
    the test process: tests/in_process.py)."""

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> Any:
        raise NotImplementedError

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def cli_items(self, *args: str) -> list[Any]:
        """The items a list verb prints with --json (its listing's `items`)."""
        return listed_items(self.cli_json(*args))


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def eventually(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 15) -> T:
    """Poll `read` until `done` holds of its value; return the last value either way."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


@dataclass
class BerthServer(CliReads):
    """A `berth serve` process on a free loopback port with its own data directory."""

    data_dir: Path
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    tls: tuple[Path, Path] | None = None
    serve_args: list[str] = field(default_factory=list)
    # One worker: tests start many servers at once on few cores; None leaves Berth's default.
    workers: int | None = 1
    keys: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # The server process's group (what it creates is that group's) and umask; None: the tests'.
    group: str | None = None
    umask: int | None = None
    # Where its output goes; None: server.log in the data directory (a test that fills the
    # data directory's disk keeps it elsewhere, to read what the server said meanwhile).
    log_file: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.log_file or self.data_dir / "server.log"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def address(self) -> str:
        """host:port as a client names the registry."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the test CA that signed this server's certificate (ca.crt beside it)."""
        assert self.tls is not None
        return ssl.create_default_context(cafile=str(self.tls[0].parent / "ca.crt"))

    @property
    def single_worker(self) -> bool:
        """Whether the server runs one worker process (the environment decides: `workers`,
        or BERTH_WORKERS in `extra_env`; unset, Berth starts one per core)."""
        return self.env.get("BERTH_WORKERS") == "1"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BERTH_DATA_DIR"] = str(self.data_dir)
        env["BERTH_LISTEN"] = self.address
        # The data directory's berth.toml when a test wrote one; else no file (a named one
        # that is missing is refused), whatever the working directory holds.
        config = self.data_dir / "berth.toml"
        env["BERTH_CONFIG"] = str(config) if config.exists() else os.devnull
        env["BERTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        if self.workers is not None:
            env["BERTH_WORKERS"] = str(self.workers)
        # Tests stop hundreds of servers: at once, not after the default drain (5 s) that
        # lets a balancer take a stopping node out (tests/test_shutdown_drain.py sets one).
        env["BERTH_SHUTDOWN_DRAIN"] = "0"
        if self.database_url:
            env["BERTH_DATABASE_URL"] = self.database_url
        if self.tls:
            env["BERTH_TLS_CERT"], env["BERTH_TLS_KEY"] = map(str, self.tls)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120) -> BerthServer:
        # Generous: at a load of 10 (CI beside other server modules) a start can pass 60 s.
        # A server that exits fails at once, not at the deadline.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The child gets its own copy of the descriptor: ours is closed once it has started.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*BERTH, "serve", *self.serve_args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,  # its own process group: a crash takes the workers too
                group=self.group,
                umask=-1 if self.umask is None else self.umask,
            )
        verify: Any = self.ssl_context() if self.tls else False

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"berth serve exited: {self.log_tail()}")
            return httpx.get(f"{self.url}/healthz", verify=verify, timeout=2).status_code == 200

        deadline = time.monotonic() + timeout
        while True:
            try:
                if up():
                    return self
            except RuntimeError:
                raise
            except Exception:
                pass
            if time.monotonic() > deadline:
                said = self.log_tail()
                self._kill_group()  # a server that never came up must not outlive the test
                raise TimeoutError(f"berth serve not ready: {said}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_group()
        # Its metric files are in memory (/dev/shm), not in the data directory the test
        # removes: a server stopped by SIGTERM removes them itself, one killed (`kill`, or
        # SIGKILL above after 20 s) cannot, and the hundreds a run starts would leave them.
        metrics = metrics_directory(self.data_dir, self.port)
        if metrics.is_relative_to(SHARED_MEMORY):
            shutil.rmtree(metrics, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL to the server and its workers at once, as a machine crash would."""
        self._kill_group()
        if self.process:
            self.process.wait()

    def _kill_group(self) -> None:
        if self.process:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        """The granian worker processes: the children of the server's main process."""
        assert self.process is not None
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a `berth` CLI verb against this server's data (`input` on its standard input)."""
        result = run_berth(list(args), self.env, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def _services(self, work: Callable[[Services], Awaitable[T]]) -> T:
        """Run one service call in-process against this server's data: the same code path as
        the admin CLI, without a 1.5 s interpreter start per call."""
        settings = Settings(data_dir=self.data_dir, database_url=self.database_url)

        async def run() -> T:
            services = Services.build(settings)
            try:
                return await work(services)
            finally:
                await services.close()

        return in_own_thread(lambda: asyncio.run(run()))

    def create_project(self, project: str, *, with_key: bool = False) -> None:
        """Create the project (if new); `with_key`: and the administrator's access key there
        (`access_key`), in the same in-process call (each call builds the services anew: a
        tenth of a second or more on PostgreSQL and S3, paid by every test that makes one)."""
        self._create(project, None, with_key, {})

    def create_repository(
        self, project: str, repository: str, *, with_key: bool = False, **options: Any
    ) -> None:
        """Create the project (if new) and a repository in it; `with_key` as create_project."""
        self._create(project, repository, with_key, options)

    def _create(
        self, project: str, repository: str | None, with_key: bool, options: Mapping[str, Any]
    ) -> None:
        wants_key = with_key and (project, "admin") not in self.keys

        async def create(services: Services) -> None:
            with contextlib.suppress(Conflict):
                await services.repositories.create_project(project, actor="test")
            if repository is not None:
                await services.repositories.create(project, repository, actor="test", **options)
            if wants_key:
                created = await services.identity.keys.create_key("admin", project, actor="test")
                self.keys[(project, "admin")] = (created.key_id, created.secret)

        self._services(create)

    def create_user(self, name: str, password: str | None = None, **options: Any) -> None:
        self._services(
            lambda s: s.identity.users.create_user(name, password, actor="test", **options)
        )

    def add_member(self, project: str, user: str, role: str) -> None:
        self._services(lambda s: s.identity.members.add_member(project, user, role, actor="test"))

    def grant(self, project: str, repository: str, user: str, role: str) -> None:
        """A role on one repository of the project (not a member of the project)."""
        self._services(
            lambda s: s.identity.members.grant(project, repository, user, role, actor="test")
        )

    def pushed(self, project: str, repository: str, *blobs: Blob) -> tuple[str, str]:
        """`blobs` pushed to PROJECT/REPOSITORY (made if new) on this started server with the
        project administrator's access key, which is returned."""
        self.create_repository(project, repository)
        key = self.access_key(project)
        with httpx.Client(base_url=self.url, auth=key, timeout=10) as client:
            push_blobs(client, f"{project}/{repository}", blobs)
        return key

    def access_key(self, project: str, user: str = "admin") -> tuple[str, str]:
        """(access key ID, secret) for `user` in `project`, made once and reused."""
        if (project, user) not in self.keys:
            created = self._services(
                lambda s: s.identity.keys.create_key(user, project, actor="test")
            )
            self.keys[(project, user)] = (created.key_id, created.secret)
        return self.keys[(project, user)]

    def request_head(
        self, method: str, target: str, auth: tuple[str, str], **headers: str | int
    ) -> bytes:
        """An HTTP/1.1 request's head with Basic credentials, for a test that writes the
        body itself on a raw socket (to send part of it, or stop reading)."""
        credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.address}",
            f"Authorization: Basic {credentials}",
            *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster on a free port, owned by the `postgres` user."""

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self) -> None:
        # Not under pytest's tmp dir: the postgres user cannot enter root's 0700 directories.
        self.base = Path(tempfile.mkdtemp(prefix="berth-pg-"))
        self.port = free_port()
        self.data = self.base / "pgdata"
        self.counter = 0

    @staticmethod
    def available() -> bool:
        return (PostgresCluster.BIN / "initdb").exists() and shutil.which("runuser") is not None

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True
        )

    def start(self) -> PostgresCluster:
        shutil.chown(self.base, "postgres")
        self._as_postgres(
            str(self.BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        self._as_postgres(
            str(self.BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.base / "pg.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300",
            "start",
        )
        return self

    def require_tls(self, client_user: str) -> Path:
        """Turn TLS on, with a server certificate for 127.0.0.1 signed by a throw-away CA
        (its ca.crt is returned; client.crt and client.key beside it are `client_user`'s),
        and refuse connections without it: one that succeeds used TLS. `client_user` signs
        in with its client certificate (PostgreSQL's `cert` authentication)."""
        tls = self.base / "tls"
        ca, crt, key = make_ca_and_cert(tls, ["127.0.0.1"])
        make_client_cert(tls, client_user)
        for path in (tls, crt, key):
            shutil.chown(path, "postgres")
        key.chmod(0o600)
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            "hostnossl all all 127.0.0.1/32 reject\n"
            f"hostssl all {client_user} 127.0.0.1/32 cert\n{hba.read_text()}"
        )
        self.sql(f"CREATE ROLE {client_user} LOGIN CREATEDB")
        settings = [("ssl_cert_file", crt), ("ssl_key_file", key), ("ssl_ca_file", ca)]
        for setting, value in [*settings, ("ssl", "on")]:
            self.sql(f"ALTER SYSTEM SET {setting} = '{value}'")
        self.sql("SELECT pg_reload_conf()")
        wait_for(self._takes_tls, 10, "PostgreSQL to take TLS connections")
        return ca

    def _takes_tls(self) -> bool:
        require = ["env", "PGSSLMODE=require", "psql", "-h", "127.0.0.1", "-p", str(self.port)]
        connected = subprocess.run(
            ["runuser", "-u", "postgres", "--", *require, "-c", "SELECT 1"], capture_output=True
        )
        return connected.returncode == 0

    def create_database(self, icu_locale: str | None = None) -> str:
        """A new database; with `icu_locale` (e.g. "en-US") its default collation is that
        locale's, as on an install whose cluster was made in it (this cluster's default is the
        environment's locale, C or C.UTF-8 here, which order text by code point)."""
        self.counter += 1
        name = f"berth_{os.getpid()}_{self.counter}"
        create = f"CREATE DATABASE {name}"
        if icu_locale is not None:
            create += f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'"
        self.sql(create)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run `statement` in `database` as the superuser `postgres`."""
        self._as_postgres(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-d", database, "-c", statement
        )

    def pg_ctl(self, action: str, mode: str = "immediate") -> None:
        """Stop, start or restart the cluster's server under whatever uses it (`mode`: how
        a stop ends its sessions; `fast` is pg_ctl's default)."""
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(self.BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "pg.log"),
            "-w", "-m", mode, "-o", options, action,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)


# ----------------------------------------------------------------------------- fixtures

BACKENDS = ["sqlite", "postgres"]
# Blobs in S3 (the session's SeaweedFS, tests/s3.py, under a prefix of the server's own) with
# PostgreSQL, as nodes sharing a bucket run: `backends=[*BACKENDS, S3_BACKEND]`.
S3_BACKEND = "postgres-s3"
# PostgreSQL in a database whose default collation is ICU en-US, as on an install whose cluster
# was made in that locale (text orders unlike code points): `backends=[*BACKENDS, ICU_BACKEND]`.
ICU_BACKEND = "postgres_icu"
Scope = Literal["function", "module", "package", "session"]


def database_url_for(backend: str, postgres: PostgresCluster | None) -> str | None:
    """The database URL of a fresh database on `backend` (None: SQLite in the data
    directory); skips the test when PostgreSQL is not installed."""
    if backend == "sqlite":
        return None
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    return postgres.create_database("en-US" if backend == ICU_BACKEND else None)


def unresolvable_host() -> str:
    """A host name the resolver says does not exist (a typo in a URL); the test is skipped
    where no resolver answers (it could not say so)."""
    host = "no-such-host.invalid"
    try:
        socket.getaddrinfo(host, 5432)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"no resolver answers here: {exc}")
    return host


def unstarted_environ(directory: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a `berth serve` run by hand (to see it refuse to start): this
    process's with `settings`, its data under `directory` and no configuration file,
    listening on a free loopback port."""
    return {
        **os.environ,
        **settings,
        "BERTH_DATA_DIR": str(directory / "data"),
        "BERTH_CONFIG": os.devnull,
        "BERTH_LISTEN": f"127.0.0.1:{free_port()}",
    }


def answers_reads_and_a_sign_in(server: BerthServer, project: str) -> httpx.Cookies:
    """Assert that the API's reads (the projects, PROJECT's summary) and a console sign-in as
    the administrator are answered (as they must be while a disk refuses writes); the signed-in
    session's cookies."""
    api = f"{server.url}/api/v1"
    admin = ("admin", ADMIN_PASSWORD)
    for path in ("projects", f"projects/{project}/summary"):
        read = httpx.get(f"{api}/{path}", auth=admin, timeout=30)
        assert read.status_code == 200, (path, read.text)
    signed_in = httpx.post(f"{api}/session", json={"user": "admin", "password": ADMIN_PASSWORD})
    assert signed_in.status_code == 201, signed_in.text
    return signed_in.cookies


# The SQL that clears the install's record of its blob store (as before Berth recorded it).
FORGET_STORAGE_RECORD = "DELETE FROM install_facts WHERE name = 'storage_location';"


def serve_refused(env: Mapping[str, str]) -> str:
    """`berth serve` in `env`, which must refuse to start as a setting's problem does (exit
    status 2, no traceback): what it said on standard error."""
    return serve_exits(env, 2)


def serve_exits(env: Mapping[str, str], status: int) -> str:
    """`berth serve` in `env`, which must exit with `status` before serving, with no
    traceback: what it said on standard error."""
    # Its own process group: a server that starts after all (the failure this guards against)
    # is stopped with its workers when the wait times out, not left serving.
    process = subprocess.Popen(
        [*BERTH, "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"berth serve did not refuse to start: {stdout}{stderr}") from None
    assert process.returncode == status, stdout + stderr
    assert "Traceback" not in stderr
    return stderr


@contextlib.contextmanager
def running_server(
    request: pytest.FixtureRequest,
    name: str,
    backend: str = "sqlite",
    *,
    start: Callable[[BerthServer], BerthServer] = BerthServer.start,
    **options: Any,
) -> Iterator[BerthServer]:
    """A started `berth serve` on `backend` (a database, or `S3_BACKEND`), in a fresh data
    directory named after `name`, stopped on leaving (also when it fails to start). `options`
    go to `BerthServer`; `start` replaces `BerthServer.start` (to wait for every worker, say)."""
    database, _, storage = backend.partition("-")
    postgres = request.getfixturevalue("postgres") if database.startswith("postgres") else None
    url = database_url_for(database, postgres)
    if storage == "s3":
        store = request.getfixturevalue("seaweedfs").settings_environ()
        options["extra_env"] = {**store, **options.get("extra_env", {})}
    data_dir = request.getfixturevalue("tmp_path_factory").mktemp(f"{name}-{backend}")
    server = BerthServer(data_dir, url, **options)
    try:
        yield start(server)
    finally:
        server.stop()


def server_fixture(
    name: str = "berth",
    *,
    backends: Sequence[str] = ("sqlite",),
    scope: Scope = "module",
    env: Mapping[str, str] | None = None,
    start: Callable[[BerthServer], BerthServer] = BerthServer.start,
    doc: str = "",
) -> Any:
    """A fixture of a running registry shared by `scope`, once per backend in `backends`
    (the test ids name the backend when there are several), with `env` as its extra
    environment: `my_server = server_fixture("mine", env={"BERTH_...": "1"})` in a test
    module or conftest. A server that needs other fixtures (certificates, projects made
    before the tests) is made with `running_server` in a fixture of its own."""

    @pytest.fixture(scope=scope, params=list(backends) if len(backends) > 1 else None)
    def fixture(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
        backend = request.param if len(backends) > 1 else backends[0]
        with running_server(
            request, name, backend, start=start, extra_env=dict(env or {})
        ) as server:
            yield server

    fixture.__doc__ = doc or f"A running registry ({', '.join(backends)}), one a {scope}."
    return fixture
