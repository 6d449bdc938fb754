"""The SQL `berth serve` prints in its refusals (keys or a blob store that are not the ones
the database recorded), as a sqlite3 or psql command: pasted as printed into a shell, from a
directory of its own, it does what the refusal says, and the server then starts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.s3 import SeaweedFS
from tests.servers import BerthServer, PostgresCluster, serve_refused


def printed_commands(refusal: str, program: str) -> list[str]:
    """The commands running `program` that `refusal` prints, each on a line of its own."""
    return [line.strip() for line in refusal.splitlines() if line.strip().startswith(f"{program} ")]


def pasted(command: str, cwd: Path) -> None:
    """`command` run as a shell runs a pasted line, in a directory with nothing of Berth's."""
    cwd.mkdir(exist_ok=True)
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)


def other_keys(server: BerthServer, tmp_path: Path) -> None:
    """Put another install's key files in place of `server`'s (started once, its keys
    recorded)."""
    other = BerthServer(tmp_path / "other")
    other.cli("init")
    shutil.copytree(other.data_dir / "keys", server.data_dir / "keys", dirs_exist_ok=True)


def serves(server: BerthServer) -> None:
    server.start()
    try:
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_new_keys_on_purpose_on_sqlite_start_once_the_printed_sqlite3_command_ran(
    tmp_path: Path,
) -> None:
    server = BerthServer(tmp_path / "data")
    server.cli("init")
    other_keys(server, tmp_path)
    refusal = serve_refused(server.env)
    (command,) = printed_commands(refusal, "sqlite3")
    assert str(server.data_dir / "berth.db") in command, command
    assert "DELETE FROM install_facts WHERE name = 'key_fingerprint';" in command

    pasted(command, tmp_path / "shell")
    serves(server)


def test_new_keys_on_purpose_on_postgresql_start_once_the_printed_psql_command_ran(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    # As an operator writes it: no driver in the scheme, a password psql asks for (trust
    # authentication here takes none), never printed; parameters of asyncpg's and
    # SQLAlchemy's, which psql refuses, and one of libpq's, which it takes.
    url = postgres.create_database().replace("postgresql+asyncpg://postgres@", "postgres://")
    url = url.replace("postgres://", "postgres://postgres:db-secret-7@")
    url += "?command_timeout=30&prepared_statement_cache_size=50&target_session_attrs=read-write"
    server = BerthServer(tmp_path / "data", url)
    server.cli("init")
    other_keys(server, tmp_path)
    refusal = serve_refused(server.env)
    assert "db-secret-7" not in refusal
    (command,) = printed_commands(refusal, "psql")
    assert "DELETE FROM install_facts WHERE name = 'key_fingerprint';" in command

    pasted(command, tmp_path / "shell")
    assert "?target_session_attrs=read-write'" in command, command
    serves(server)


def test_a_blob_store_changed_on_purpose_starts_once_either_printed_command_ran(
    tmp_path: Path, seaweedfs: SeaweedFS
) -> None:
    """SQLite with blobs on the filesystem, then set to S3: the refusal prints the command
    that records the new store and the one that clears the record; each, pasted, lets it
    start."""
    server = BerthServer(tmp_path / "data")
    server.cli("init")  # records the filesystem
    on_s3 = BerthServer(server.data_dir, extra_env=seaweedfs.settings_environ())
    refusal = serve_refused(on_s3.env)
    forget, record = printed_commands(refusal, "sqlite3")
    assert "DELETE FROM install_facts WHERE name = 'storage_location';" in forget, forget
    assert "UPDATE install_facts SET value = 's3://" in record, record

    pasted(record, tmp_path / "shell")
    serves(on_s3)

    # Back to the filesystem: refused again (S3 is recorded), until the record is cleared.
    (forget, _) = printed_commands(serve_refused(server.env), "sqlite3")
    pasted(forget, tmp_path / "shell")
    serves(server)
