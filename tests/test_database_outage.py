"""PostgreSQL stopped under a running server (as `pg_ctl stop` does), then started again: every
surface answers what a client can act on (503 with Retry-After, in its own error format, with
the request ID), never a bare 500; /metrics keeps serving what needs no database and says the
database could not be read; all is as before once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from berth.metadata.database import RETRY_AFTER_SECONDS, UNREACHABLE_LOG_SECONDS
from berth.services.gc.recovery import RECOVERY_SECONDS
from tests.blackhole import Blackhole
from tests.gc.conftest import GcProject, new_project
from tests.metrics import parse, scrape, value
from tests.oci import blob_path, digest_of, manifest_path, uploads_path
from tests.servers import (
    ADMIN_PASSWORD,
    BERTH,
    BerthServer,
    PostgresCluster,
    eventually,
    serve_exits,
    unstarted_environ,
)


def assert_registry_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    if response.request.method == "HEAD":
        return  # no body
    body = response.json()
    assert [error["code"] for error in body["errors"]] == ["UNAVAILABLE"]
    assert "database" in body["errors"][0]["message"]
    assert body["request_id"] == response.headers["x-request-id"]


def assert_api_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    problem = response.json()
    assert (problem["status"], problem["code"]) == (503, "UNAVAILABLE")
    assert problem["request_id"] == response.headers["x-request-id"]


def metrics_text(server: BerthServer) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def test_a_stopped_database_is_a_503_on_every_surface(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    server = BerthServer(tmp_path / "berth", own_postgres.create_database()).start()
    project: GcProject | None = None
    try:
        project = new_project(server)
        pushed = project.push_blob(b"layer bytes of the outage test")
        signed_in = httpx.post(
            f"{server.url}/api/v1/session", json={"user": "admin", "password": ADMIN_PASSWORD}
        )
        assert signed_in.status_code == 201, signed_in.text
        console = httpx.Client(base_url=f"{server.url}/api/v1", cookies=signed_in.cookies)

        own_postgres.pg_ctl("stop", mode="fast")

        registry = project.registry
        # The credentials checked a moment ago are kept for a second (berth/access): /v2/
        # may answer from them until they lapse, and then must say the database is away.
        deadline = time.monotonic() + 10
        answer = registry.get("/v2/")
        while answer.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = registry.get("/v2/")
        assert_registry_unavailable(answer)
        name = project.name()
        # Pulls, answered by the fast path in front of the router.
        never_pulled = digest_of(b"a blob nobody pushed")
        assert_registry_unavailable(registry.get(blob_path(name, never_pulled)))
        assert_registry_unavailable(registry.head(blob_path(name, pushed)))
        assert_registry_unavailable(registry.get(manifest_path(name, "never-pushed")))
        # A push (its body drained, then refused) and a token.
        assert_registry_unavailable(
            registry.post(uploads_path(name), params={"digest": pushed}, content=b"x" * 1000)
        )
        token = registry.get(
            "/auth/token",
            params={"service": server.address, "scope": f"repository:{name}:pull"},
        )
        assert_registry_unavailable(token)

        assert_api_unavailable(project.api.get("/projects"))
        assert_api_unavailable(console.get("/projects"))  # the session's cookie is looked up

        scraped = metrics_text(server)
        samples = parse(scraped)
        assert value(samples, "berth_database_up") == 0
        assert "berth_uploads_in_progress" not in scraped
        assert "berth_storage_bytes" not in scraped
        requests = {labels for name, labels in samples if name == "berth_http_requests_total"}
        assert ("status", "503") in {label for labels in requests for label in labels}

        # The background jobs' failures too are one warning line each, with the reason:
        # GC's look for interrupted runs (every RECOVERY_SECONDS) is one of them.
        log_path = server.data_dir / "server.log"
        deadline = time.monotonic() + RECOVERY_SECONDS + 10
        while "gc: could not look for interrupted runs" not in log_path.read_text():
            assert time.monotonic() < deadline, "GC's recovery never ran during the outage"
            time.sleep(0.5)
        log = log_path.read_text()
        assert "Application callable raised an exception" not in log
        assert "Traceback" not in log
        # Each line names its node last (a log shipper reads lines): the driver's reason
        # the database's warning gives stays on that line.
        warnings = [line for line in log.splitlines() if "the database cannot be reached" in line]
        assert warnings
        assert all(" node=" in line for line in warnings), warnings
        assert "(Background on this error" not in log
        recovery = [line for line in log.splitlines() if "gc: could not look for" in line]
        assert all(
            "[WARNING]" in line and "the database is unreachable" in line for line in recovery
        ), recovery

        own_postgres.pg_ctl("start")
        deadline = time.monotonic() + 30
        while registry.get("/v2/").status_code != 200:
            assert time.monotonic() < deadline, "still refused after the database came back"
            time.sleep(0.2)
        assert registry.head(blob_path(name, pushed)).status_code == 200
        assert project.api.get("/projects").status_code == 200
        assert console.get("/projects").status_code == 200
        samples = parse(metrics_text(server))
        assert value(samples, "berth_database_up") == 1
        assert ("berth_uploads_in_progress", frozenset()) in samples
        console.close()
    finally:
        if project is not None:
            project.close()
        server.stop()


def test_readyz_logs_an_outage_when_it_starts_every_few_seconds_and_when_it_ends(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    """A balancer probes every node every second or two: the reason is logged when the node
    turns unready, again every UNREACHABLE_LOG_SECONDS, and once when it is ready again, not
    once a probe."""
    server = BerthServer(tmp_path / "berth", own_postgres.create_database()).start()
    try:
        readyz = f"{server.url}/readyz"
        own_postgres.pg_ctl("stop")
        deadline = time.monotonic() + 30
        while httpx.get(readyz, timeout=30).status_code != 503:
            assert time.monotonic() < deadline, "still ready with the database stopped"
            time.sleep(0.2)
        log = server.data_dir / "server.log"

        def said_unready() -> int:
            return log.read_text().count("readiness: not ready")

        # Probed until the reason is said again (UNREACHABLE_LOG_SECONDS on), and a few
        # times more: each of those probes must not say it once more.
        deadline = time.monotonic() + UNREACHABLE_LOG_SECONDS + 30
        probes, after_the_repeat = 1, 0
        while after_the_repeat < 5:
            assert time.monotonic() < deadline, "the reason was not said again"
            assert httpx.get(readyz, timeout=30).status_code == 503
            probes += 1
            if said_unready() >= 2:
                after_the_repeat += 1
            time.sleep(0.2)
        own_postgres.pg_ctl("start")
        deadline = time.monotonic() + 30
        while httpx.get(readyz, timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "not ready after the database came back"
            time.sleep(0.2)

        lines = log.read_text().splitlines()
        unready = [line for line in lines if "readiness: not ready" in line]
        assert probes > 20
        assert len(unready) == 2, unready
        first, again = unready
        assert "[WARNING]" in first
        assert "readiness: not ready: the database is unreachable" in first
        assert re.search(r"readiness: not ready \(for 1\d s\): the database is unr", again)
        ready = [line for line in lines if "readiness: ready again" in line]
        assert len(ready) == 1, ready
        assert re.search(r"\[INFO\] berth.readiness: readiness: ready again, after 1\d s", ready[0])
    finally:
        server.stop()


# The connect timeout the tests below give Berth, and what a request may take beyond it on a
# loaded machine (without the bound: asyncpg's 60 s, or minutes of the kernel's retransmissions).
CONNECT_TIMEOUT = 1.0
SLACK = 4.0


@contextlib.contextmanager
def serving_through_a_blackhole(
    postgres: PostgresCluster | None, tmp_path: Path, connect_timeout: float
) -> Iterator[tuple[Blackhole, BerthServer]]:
    """A server on PostgreSQL reached through a relay the test can make drop everything,
    with `database_connect_timeout` at `connect_timeout`; stopped afterwards."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    with Blackhole("127.0.0.1", postgres.port) as hole:
        server = BerthServer(
            tmp_path / "berth",
            url.replace(f":{postgres.port}/", f":{hole.port}/"),
            extra_env={"BERTH_DATABASE_CONNECT_TIMEOUT": str(connect_timeout)},
        ).start()
        try:
            yield hole, server
        finally:
            server.stop()


# How many requests `pooled_project` sends at once: at most as many connections pooled.
POOLED = 8


@contextlib.contextmanager
def pooled_project(server: BerthServer) -> Iterator[tuple[GcProject, str]]:
    """A project with a pushed blob, HEADed by several requests at once so that the worker's
    pool holds several connections (at most POOLED); the project and its pushed blob's
    digest."""
    project = new_project(server)
    try:
        pushed = project.push_blob(b"layer bytes of a database outage test")
        registry, name = project.registry, project.name()
        with ThreadPoolExecutor(POOLED) as pool:
            heads = list(pool.map(lambda _: registry.head(blob_path(name, pushed)), range(POOLED)))
        assert {head.status_code for head in heads} == {200}
        yield project, pushed
    finally:
        project.close()


def test_a_database_host_that_drops_packets_is_a_503_within_the_connect_timeout(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """PostgreSQL behind a firewall that starts dropping its packets: the connections the
    server holds get no answer, nor do new ones. Every request is answered 503 within
    `database_connect_timeout`, first on the pooled connections (their ping goes unanswered)
    and then on new ones (never answered)."""
    with (
        serving_through_a_blackhole(postgres, tmp_path, CONNECT_TIMEOUT) as (hole, server),
        pooled_project(server) as (project, pushed),
    ):
        name, registry, api = project.name(), project.registry, project.api
        hole.drop()

        # As in the test above, /v2/ may answer from credentials checked a moment ago.
        deadline = time.monotonic() + 10
        while registry.get("/v2/").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        requests: list[Callable[[], httpx.Response]] = [
            lambda: registry.get("/v2/"),
            lambda: registry.head(blob_path(name, pushed)),
            lambda: registry.get(manifest_path(name, "latest")),
            lambda: api.get("/projects"),
        ]
        # More requests than the pool holds connections (each unanswered one is dropped):
        # both kinds of silence are met, the last few on new connections. Each waits out
        # the timeout, so no more than that.
        for attempt in range(POOLED + len(requests)):
            request = requests[attempt % len(requests)]
            started = time.monotonic()
            answer = request()
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
            assert took < CONNECT_TIMEOUT + SLACK, (attempt, answer.request.url, took)
        log = (server.data_dir / "server.log").read_text()
        assert "Application callable raised an exception" not in log
        assert "the database cannot be reached: TimeoutError" in log


def test_serve_refuses_a_database_host_that_drops_packets_within_the_connect_timeout(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """`berth serve` checks the database before serving: a server that never answers is
    found unreachable after `database_connect_timeout`, and (with no `startup_wait`) said
    so at once, with the status systemd restarts."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    with Blackhole("127.0.0.1", postgres.port) as hole:
        hole.drop()
        env = unstarted_environ(
            tmp_path,
            {
                "BERTH_DATABASE_URL": url.replace(f":{postgres.port}/", f":{hole.port}/"),
                "BERTH_DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
                "BERTH_STARTUP_WAIT": "0",
            },
        )
        started = time.monotonic()
        said = serve_exits(env, 75)
        took = time.monotonic() - started
    assert "cannot open the database" in said
    assert f"no answer within {CONNECT_TIMEOUT:g} s (database_connect_timeout)" in said
    assert took < 20, took  # a start-up's imports, then the bound (unbounded: 60 s a try)


# Longer than CONNECT_TIMEOUT: a stop that waits for it more than once is told from one that
# waits once, beside the slack a loaded machine needs.
STOP_CONNECT_TIMEOUT = 3.0


def test_a_server_stopped_while_the_database_drops_packets_exits_promptly(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """SIGTERM to a server whose database host has started dropping packets: it stops within
    about `database_connect_timeout`. What it writes on the way out (its presence row, its
    jobs' leases, counters) gives up once the database is found unreachable, and its pooled
    connections are dropped rather than closed politely (a polite close waits for the
    server's answer, for up to the statement timeout, one connection after another)."""
    with (
        serving_through_a_blackhole(postgres, tmp_path, STOP_CONNECT_TIMEOUT) as (hole, server),
        pooled_project(server),
    ):
        hole.drop()
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server had not stopped 30 s after SIGTERM: {server.log_tail()}")
        took = time.monotonic() - started
        # Not once per step of the way out (about four times the timeout).
        assert took < STOP_CONNECT_TIMEOUT + SLACK, (took, server.log_tail())


def status_in(server: BerthServer, settings: dict[str, str]) -> tuple[float, int, str]:
    """`berth status` on the (stopped) server's data with `settings`: how long it took, its
    exit status and what it said on standard error. Unbounded, it would wait for minutes."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [*BERTH, "status"],
            env={**server.env, **settings},
            capture_output=True,
            text=True,
            timeout=40,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("berth status did not answer within 40 s")
    return time.monotonic() - started, result.returncode, result.stderr


def test_status_on_a_database_host_that_drops_packets_answers_within_the_connect_timeout(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    server = BerthServer(tmp_path / "berth", postgres.create_database()).start()
    server.stop()
    assert server.database_url is not None
    with Blackhole("127.0.0.1", postgres.port) as hole:
        hole.drop()
        took, code, said = status_in(
            server,
            {
                "BERTH_DATABASE_URL": server.database_url.replace(
                    f":{postgres.port}/", f":{hole.port}/"
                ),
                "BERTH_DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            },
        )
    assert code == 1, said
    assert f"error: cannot reach the database at 127.0.0.1:{hole.port}" in said
    assert f"no answer within {CONNECT_TIMEOUT:g} s (database_connect_timeout)" in said
    # The data may be in that database: what to check is the way to it, not where else data
    # is or how to make new data.
    advice = " ".join(said.split())
    assert (
        f"Check that the database server 127.0.0.1:{hole.port} is reachable from here" in advice
    ), said
    assert "Point berth at" not in advice and "creates new data" not in advice, said
    assert "Traceback" not in said
    assert took < CONNECT_TIMEOUT + 2 * SLACK, took  # a CLI start, then the bound


@contextlib.contextmanager
def table_locked(database_url: str, table: str) -> Iterator[None]:
    """`table` locked by another session while in the block, as a migration at work keeps
    what it changes locked until it commits."""
    held, done = threading.Event(), threading.Event()

    async def hold() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                held.set()
                while not done.is_set():
                    await asyncio.sleep(0.05)
        finally:
            await engine.dispose()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert held.wait(30), "the lock was not taken"
        yield
    finally:
        done.set()
        holder.join()


def test_status_gives_up_on_a_locked_table_within_the_lock_timeout(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """The database answers, but what status reads stays locked: it reads with the bounds a
    server's requests get (here database_lock_timeout), and says why it stopped."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    server = BerthServer(tmp_path / "berth", postgres.create_database()).start()
    server.stop()
    assert server.database_url is not None
    with table_locked(server.database_url, "serving_processes"):
        took, code, said = status_in(
            server,
            {"BERTH_DATABASE_LOCK_TIMEOUT": "1", "BERTH_DATABASE_STATEMENT_TIMEOUT": "2"},
        )
    assert code == 1, said
    assert "error: cannot read the database" in said
    assert "stayed locked longer than 1 s (database_lock_timeout)" in said
    assert "Traceback" not in said
    assert took < 1 + 2 * SLACK, took


def test_connections_in_use_stay_true_through_a_database_restart_under_load(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    """PostgreSQL restarted (`pg_ctl restart -m fast`, stopped a while) under requests that
    each query it: the pooled connections fail their ping and new ones are refused. The
    gauge of connections checked out is never negative, and once the requests are over it is
    back to 0 (what is in use: nothing)."""
    server = BerthServer(tmp_path / "berth", own_postgres.create_database(), workers=2).start()
    try:
        with pooled_project(server) as (project, pushed):
            registry, name = project.registry, project.name()
            going = threading.Event()
            going.set()

            def load() -> None:
                while going.is_set():
                    registry.head(blob_path(name, pushed))
                    project.api.get("/projects")

            in_use: list[float] = []
            with ThreadPoolExecutor(8) as pool:
                loads = [pool.submit(load) for _ in range(8)]
                time.sleep(1)
                own_postgres.pg_ctl("stop", mode="fast")
                time.sleep(2)
                in_use.append(
                    value(scrape(server), "berth_db_pool_connections_in_use", pool="shared")
                )
                own_postgres.pg_ctl("start")
                time.sleep(2)
                going.clear()
                for done in loads:
                    done.result()
            assert registry.head(blob_path(name, pushed)).status_code == 200
            # The background jobs may hold a connection for a moment: polled, not read once.
            in_use.append(
                eventually(
                    lambda: value(
                        scrape(server), "berth_db_pool_connections_in_use", pool="shared"
                    ),
                    lambda count: count == 0,
                )
            )
            assert min(in_use) >= 0, in_use
            assert in_use[-1] == 0, in_use
    finally:
        server.stop()
