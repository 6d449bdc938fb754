"""`berth serve` started before its database or object store (a cold boot where the node comes
up first): it waits up to `startup_wait` for what it cannot reach yet, and serves once it can;
past the wait it exits 75, which deploy/berth.service restarts, unlike the 2 of a bad setting
(wrong credentials stay that, at once)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from alembic import command

from berth.metadata.migrate import alembic_config
from berth.metadata.revisions import schema_head
from tests.s3 import BUCKET, SeaweedFS
from tests.servers import (
    BERTH,
    BerthServer,
    PostgresCluster,
    free_port,
    serve_exits,
    serve_refused,
    unresolvable_host,
    unstarted_environ,
    wait_for,
)

GAVE_UP_WAITING = 75  # EX_TEMPFAIL: restarted by systemd, unlike 2


def test_a_node_started_before_its_database_waits_for_it_and_serves(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = own_postgres.create_database()
    own_postgres.pg_ctl("stop")
    server = BerthServer(tmp_path / "node", url, extra_env={"BERTH_STARTUP_WAIT": "120"})
    log = server.data_dir / "server.log"

    def start_the_database_once_waited_for() -> None:
        wait_for(lambda: "Waiting up to" in log.read_text(), 120, "the wait")
        time.sleep(2)  # a few tries refused
        own_postgres.pg_ctl("start")

    starter = threading.Thread(target=start_the_database_once_waited_for)
    starter.start()
    try:
        server.start(timeout=240)
        starter.join()
        said = log.read_text()
        # Said once, with what it waits for, however many tries it took.
        assert said.count("Waiting up to") == 1, said
        assert re.search(
            r"Waiting up to 1[12]\d s more \(startup_wait = 120 s from the start\) for the "
            r"database, which cannot be reached yet",
            said,
        ), said
        assert "Connect call failed" in said and "Reached the database" in said, said
        assert httpx.get(f"{server.url}/v2/", timeout=10).status_code == 401
    finally:
        starter.join()
        server.stop()


def test_a_database_unreachable_past_the_wait_is_restarted_a_refusing_one_is_not(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    port = free_port()  # nothing listens there
    env = unstarted_environ(
        tmp_path,
        {
            "BERTH_DATABASE_URL": f"postgresql+asyncpg://berth@127.0.0.1:{port}/berth",
            "BERTH_STARTUP_WAIT": "2",
        },
    )
    said = " ".join(serve_exits(env, GAVE_UP_WAITING).split())
    assert said.startswith(
        f"error: BERTH_DATABASE_URL: cannot open the database "
        f"postgresql+asyncpg://berth@127.0.0.1:{port}/berth:"
    ), said
    assert "(waited 2 s for it, startup_wait); exiting with status 75" in said, said

    # The server reached, with no such database: a setting to put right, refused at once
    # (serve_refused gives up after 120 s, long before such a wait would end).
    url = postgres.create_database().rsplit("/", 1)[0] + "/no_such_database"
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": url, "BERTH_STARTUP_WAIT": "600"})
    said = serve_refused(env)
    assert 'database "no_such_database" does not exist' in said, said


def test_a_database_host_that_does_not_resolve_is_a_setting_said_at_once(tmp_path: Path) -> None:
    """A typo in database_url's host is not an outage to wait out (startup_wait, then a
    restart by systemd, again and again): serve and init refuse it at once, exit 2 (the admin
    verbs too: tests/test_cli.py)."""
    host = unresolvable_host()
    url = f"postgresql+asyncpg://u:secret@{host}/berth"
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": url, "BERTH_STARTUP_WAIT": "600"})
    refusal = (
        f"error: BERTH_DATABASE_URL: cannot resolve database host {host} (Name or service not "
        f"known): postgresql+asyncpg://u:***@{host}/berth\n"
    )
    assert serve_refused(env) == refusal  # at once: serve_refused gives up after 120 s
    initialised = subprocess.run([*BERTH, "init"], env=env, capture_output=True, text=True)
    assert (initialised.returncode, initialised.stderr) == (2, refusal)
    assert not (tmp_path / "data").exists()


def test_an_object_store_host_that_does_not_resolve_is_a_setting_said_at_once(
    tmp_path: Path,
) -> None:
    """A typo in s3_endpoint's host, as in database_url's: serve refuses it at once, exit 2,
    instead of waiting startup_wait and exiting 75 (restarted by systemd, again and again)."""
    host = unresolvable_host()
    endpoint = f"http://{host}:8333"
    env = unstarted_environ(
        tmp_path,
        {
            "BERTH_STORAGE": "s3",
            "BERTH_S3_BUCKET": BUCKET,
            "BERTH_S3_ENDPOINT": endpoint,
            "BERTH_S3_ACCESS_KEY_ID": "key",
            "BERTH_S3_SECRET_ACCESS_KEY": "s3-secret-9",
            "BERTH_SINGLE_NODE": "true",
            "BERTH_STARTUP_WAIT": "600",
        },
    )
    assert serve_refused(env) == (  # at once: serve_refused gives up after 120 s
        f"error: BERTH_S3_ENDPOINT: cannot resolve S3 endpoint host {host} (Name or service not "
        f"known): bucket {BUCKET!r} at {endpoint}\n"
    )
    assert not (tmp_path / "data").exists()  # nothing made before the store is reached
    # An admin verb that needs the store says the same at once (it took the S3 client's
    # retries, about 10 s, to say it could not connect).
    subprocess.run([*BERTH, "init"], env=env, check=True, capture_output=True)
    started = time.monotonic()
    checked = subprocess.run(
        [*BERTH, "storage", "check", "--all"], env=env, capture_output=True, text=True
    )
    assert (checked.returncode, checked.stderr) == (
        2,
        f"error: BERTH_S3_ENDPOINT: cannot resolve S3 endpoint host {host} (Name or service not "
        f"known): bucket {BUCKET!r} at {endpoint}\n",
    )
    assert time.monotonic() - started < 8


def test_a_database_lost_during_the_migration_keeps_its_schema_and_the_next_start_migrates(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = own_postgres.create_database()
    database = url.rsplit("/", 1)[1]
    previous = "0022_webhook_redeliveries"  # the revision before head, which alters a table
    command.upgrade(alembic_config(url), previous)

    psql = ["psql", "-h", "127.0.0.1", "-p", str(own_postgres.port), "-U", "postgres", "-d"]

    def query(statement: str) -> str:
        said = subprocess.run(
            [*psql, database, "-Atc", statement], check=True, capture_output=True, text=True
        )
        return said.stdout.strip()

    # The migration's ALTER TABLE waits behind this lock: the moment to stop the server.
    holder = subprocess.Popen(
        [*psql, database, "-1", "-c", "LOCK TABLE retention_runs", "-c", "SELECT pg_sleep(600)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": url})
    serving = subprocess.Popen(
        [*BERTH, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: (
                query(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'ALTER TABLE retention_runs%'"
                )
                == "1"
            ),
            120,
            "the migration waiting for its table",
        )
        own_postgres.pg_ctl("stop", mode="fast")
        _, stderr = serving.communicate(timeout=60)
    finally:
        holder.kill()
        serving.kill()
        holder.wait()
        serving.wait()
    assert serving.returncode == GAVE_UP_WAITING, stderr
    said = " ".join(stderr.split())
    assert said.startswith(
        f"error: lost the database {url} while bringing its schema up to date: "
    ), said
    assert "terminating connection due to administrator command; the schema is left as it " in (
        said
    )
    assert said.endswith("and the next start migrates it; exiting with status 75"), said
    assert "Traceback" not in stderr

    own_postgres.pg_ctl("start")
    assert query("SELECT version_num FROM alembic_version") == previous  # rolled back whole
    server = BerthServer(tmp_path / "again", url)
    server.start()
    try:
        assert query("SELECT version_num FROM alembic_version") == schema_head()
        assert (
            f"from revision {previous} to {schema_head()}"
            in (server.data_dir / "server.log").read_text()
        )
    finally:
        server.stop()


@pytest.mark.clients
def test_an_object_store_unreachable_past_the_wait_is_restarted_a_refusing_one_is_not(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    store = seaweedfs.settings_environ()
    unreachable = f"http://127.0.0.1:{free_port()}"
    env = unstarted_environ(
        tmp_path,
        {
            **store,
            "BERTH_S3_ENDPOINT": unreachable,
            "BERTH_S3_ATTEMPTS": "1",
            "BERTH_STARTUP_WAIT": "2",
        },
    )
    said = " ".join(serve_exits(env, GAVE_UP_WAITING).split())
    assert f"error: cannot use the bucket {BUCKET!r} at {unreachable}" in said, said
    assert "Could not connect to the endpoint URL" in said, said
    assert "(waited 2 s for it, startup_wait); exiting with status 75" in said, said
    assert not (tmp_path / "data").exists()  # nothing made before the store is reached

    # The store reached, refusing the secret: exit 2 at once, not after the wait (which
    # would outlast serve_refused's 120 s).
    env = unstarted_environ(
        tmp_path,
        {**store, "BERTH_S3_SECRET_ACCESS_KEY": "not-the-secret", "BERTH_STARTUP_WAIT": "600"},
    )
    said = serve_refused(env)
    assert "refused the credentials" in said, said


def test_a_store_verb_on_another_store_than_the_install_records_is_refused(
    tmp_path: Path,
) -> None:
    """`berth storage check` (like `gc run`) set to another store than the one the database
    recorded would report every blob missing: refused before the store is touched, and the
    same verb on the recorded store runs."""
    env = unstarted_environ(tmp_path, {})
    subprocess.run([*BERTH, "init"], env=env, check=True, capture_output=True)
    elsewhere = {
        **env,
        "BERTH_STORAGE": "s3",
        "BERTH_S3_BUCKET": "other",
        "BERTH_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # never reached
        "BERTH_S3_ACCESS_KEY_ID": "x",
        "BERTH_S3_SECRET_ACCESS_KEY": "y",
        "BERTH_SINGLE_NODE": "true",
    }
    refused = subprocess.run(
        [*BERTH, "storage", "check", "--all"], env=elsewhere, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert 's3_bucket = "other"' in refused.stderr
    assert 'recorded as where its blobs are: storage = "filesystem"' in refused.stderr
    assert "DELETE FROM install_facts WHERE name = 'storage_location';" in refused.stderr
    assert "Traceback" not in refused.stderr
    checked = subprocess.run(
        [*BERTH, "storage", "check", "--all"], env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
