"""The sqlite3 command a refusal to start on another blob store gives an operator to paste
records the store exactly as named, whatever its S3 prefix holds (quotes of SQL and of the
shell)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from berth.config import Settings
from berth.config_loading import SettingsError
from berth.data_location import create_data, sqlite_file
from berth.services.start_up import (
    configured_storage_location,
    refuse_other_storage,
    sql_command,
    storage_record_insert,
)

# Prefixes an S3 store takes as they are: a quote would end the SQL string the refusal prints.
PREFIXES = ["it's", "a'); DELETE FROM install_facts; --", "''", 'a"$(touch x)`!\\']


def _install(tmp_path: Path) -> Path:
    """The SQLite database of a new install under `tmp_path`."""
    install = Settings(data_dir=tmp_path / "data")
    create_data(install)
    database = sqlite_file(install)
    assert database is not None
    return database


def _on_s3(tmp_path: Path, prefix: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", storage="s3", s3_bucket="blobs", s3_prefix=prefix)


def _recorded(database: Path, command: str) -> str:
    """The recorded blob store once the sqlite3 `command` ran, pasted into a shell."""
    assert command.startswith("sqlite3 "), command
    pasted = subprocess.run(["bash", "-c", command], cwd=database.parent, capture_output=True)
    assert pasted.returncode == 0, pasted.stderr
    assert not (database.parent / "x").exists()  # nothing of the prefix ran in the shell
    with sqlite3.connect(database) as db:
        (value,) = db.execute(
            "SELECT value FROM install_facts WHERE name = 'storage_location'"
        ).fetchone()
        (facts,) = db.execute("SELECT count(*) FROM install_facts").fetchone()
    assert facts == 1  # nothing else was done to the table
    return str(value)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_insert_a_first_record_refusal_gives_records_a_prefix_holding_a_quote(
    tmp_path: Path, prefix: str
) -> None:
    node = _on_s3(tmp_path, prefix)
    here = configured_storage_location(node)
    assert prefix in here
    database = _install(tmp_path)
    assert _recorded(database, sql_command(node, storage_record_insert(here))) == here


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_update_an_other_store_refusal_gives_records_a_prefix_holding_a_quote(
    tmp_path: Path, prefix: str
) -> None:
    database = _install(tmp_path)
    recorded = configured_storage_location(_on_s3(tmp_path, "recorded"))
    command = sql_command(_on_s3(tmp_path, "recorded"), storage_record_insert(recorded))
    assert _recorded(database, command) == recorded
    node = _on_s3(tmp_path, prefix)
    with pytest.raises(SettingsError) as refused:
        refuse_other_storage(node, recorded)
    update = str(refused.value).rpartition("record the new store instead:\n  ")[2]
    assert "UPDATE install_facts SET value = " in update, update
    assert _recorded(database, update) == configured_storage_location(node)
