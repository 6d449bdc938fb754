"""What `berth serve` and `berth init` do with the server's keys before serving: each key file
is read once, by the key check, and the services the start-up builds use the keys it read;
start-ups at once on one data directory end with one pair of keys."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from berth.config import Settings
from berth.data_location import create_data, sqlite_file
from berth.services.start_up import check_keys

# One start-up (`initialise`, as `berth init` and `berth serve` run it) in a process of its
# own, which notes every file it opens (Python's audit events; a hook stays once added).
START_UP = """
import json, sys
from pathlib import Path
from berth.config import Settings
from berth.server import initialise

settings = Settings(data_dir=Path(sys.argv[1]))
keys = {str(settings.signing_key_file), str(settings.secret_key_file)}
opened = {path: 0 for path in keys}

def note(event, args):
    if event == "open" and str(args[0]) in keys:
        opened[str(args[0])] += 1

sys.addaudithook(note)
initialise(settings)
print(json.dumps(opened))
"""


def test_a_start_up_reads_each_key_file_once(tmp_path: Path) -> None:
    """The first start-up creates the keys, the next reads them: each reads each file once."""
    data_dir = tmp_path / "data"
    for start in ("creating the keys", "reading them"):
        started = subprocess.run(
            [sys.executable, "-c", START_UP, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,  # where no berth.toml is
            env={
                name: value for name, value in os.environ.items() if not name.startswith("BERTH_")
            },
        )
        assert started.returncode == 0, started.stderr
        opened = json.loads(started.stdout.splitlines()[-1])
        assert sorted(opened) == sorted(
            str(data_dir / "keys" / name) for name in ("token-signing.pem", "secret-hash.key")
        ), start
        assert set(opened.values()) == {1}, (start, opened)


def test_start_ups_at_once_on_one_data_directory_share_the_keys_they_record(
    tmp_path: Path,
) -> None:
    """One node on SQLite started twice at once (berth init beside berth serve): both use the
    keys written first, the ones the database records (the other start-up's are dropped).
    Several rounds, each on a new data directory: the two seldom write at the same moment."""
    for round_ in range(10):
        settings = Settings(data_dir=tmp_path / f"data{round_}")
        create_data(settings)
        with ThreadPoolExecutor(2) as pool:
            keyrings = list(pool.map(check_keys, [settings, settings]))
        database = sqlite_file(settings)
        assert database is not None
        with sqlite3.connect(database) as db:
            (recorded,) = db.execute(
                "SELECT value FROM install_facts WHERE name = 'key_fingerprint'"
            ).fetchone()
        assert [keyring.fingerprint for keyring in keyrings] == [recorded, recorded]
