"""Backup and restore as docs/operations.md prints it: the commands run as written (with this
test's directories and databases in place of the examples'), while the registry serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.oci import digest_of, error_code, put_manifest, random_image
from tests.servers import BACKENDS, BERTH, ROOT, BerthServer, running_server, serve_refused
from tests.terminal import typed_at_terminal

GUIDE = ROOT / "docs" / "operations.md"
EXAMPLE_DATA_DIR = "/var/lib/berth"
EXAMPLE_BACKUP = "/backup/berth"
EXAMPLE_DATABASE = "postgresql://berth@db.example/berth"
# Run by the test's harness rather than as printed: the server it starts and stops.
SERVE = "berth serve"


def guide_blocks() -> list[list[str]]:
    """The shell blocks of the guide's "Backup and restore" section, as lists of commands: the
    backup (filesystem and SQLite), pg_dump, the restore, pg_restore."""
    section = GUIDE.read_text().split("## Backup and restore\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [block.strip().splitlines() for block in blocks]


def run_commands(commands: list[str], replacements: dict[str, str]) -> None:
    """`commands` in one shell, as pasted into one (a `umask` holds for the ones after it)."""
    script = "\n".join(commands)
    for example, actual in replacements.items():
        script = script.replace(example, actual)
    done = subprocess.run(
        ["bash", "-ec", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{script}: {done.stdout}{done.stderr}"


def libpq_url(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def blob_digests(manifest: bytes) -> list[str]:
    document = json.loads(manifest)
    return [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backup_taken_while_serving_restores_the_images_keys_and_store(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    backup, copy_keys_and_database, copy_blobs, restore = guide_setup(tmp_path, backend)
    with running_server(request, "backed-up", backend) as source:
        source.create_repository("shop", "web")
        key = source.access_key("shop")
        with httpx.Client(base_url=source.url, auth=key, timeout=60) as client:
            kept = random_image(client, "shop/web", layers=2)
            assert put_manifest(client, "shop/web", "v1", kept).status_code == 201
            replacements = {EXAMPLE_DATA_DIR: str(source.data_dir), EXAMPLE_BACKUP: str(backup)}
            if source.database_url:
                replacements[EXAMPLE_DATABASE] = libpq_url(source.database_url)
            run_commands(copy_keys_and_database, replacements)
            # Pushed between the snapshot and the copy of the blobs: its blobs are copied, but
            # no metadata of the restore names them.
            later = random_image(client, "shop/web", layers=2)
            assert put_manifest(client, "shop/web", "v2", later).status_code == 201
            run_commands(copy_blobs, replacements)
    # Readable by their owner alone: password hashes, keyed hashes of key secrets, the keys.
    copies = [backup / "keys" / "secret-hash.key", backup / "keys" / "token-signing.pem"]
    copies.append(backup / ("berth.db" if backend == "sqlite" else "berth.pgdump"))
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in copies} == {
        path.name: "0o600" for path in copies
    }
    assert backup.stat().st_mode & 0o077 == 0

    target = BerthServer(
        tmp_path / "restored",
        None if backend == "sqlite" else request.getfixturevalue("postgres").create_database(),
        extra_env={"BERTH_GC_GRACE_PERIOD": "0"},
    )
    replacements = {EXAMPLE_DATA_DIR: str(target.data_dir), EXAMPLE_BACKUP: str(backup)}
    if target.database_url:
        replacements[EXAMPLE_DATABASE] = libpq_url(target.database_url)
    serve = next(n for n, command in enumerate(restore) if command.startswith(SERVE))
    run_commands(restore[:serve], replacements)
    try:
        target.start()
        # The same access key signs in: the secret hash key came back with the keys.
        with httpx.Client(base_url=target.url, auth=key, timeout=60) as client:
            pulled = client.get("/v2/shop/web/manifests/v1")
            assert pulled.status_code == 200 and pulled.content == kept
            for digest in blob_digests(kept):
                blob = client.get(f"/v2/shop/web/blobs/{digest}")
                assert blob.status_code == 200 and digest_of(blob.content) == digest
            gone = client.get("/v2/shop/web/manifests/v2")
            assert gone.status_code == 404 and error_code(gone) == "MANIFEST_UNKNOWN"
        (check,) = restore[serve + 1 :]
        # Typed at a terminal as the guide shows it, which asks before removing anything.
        repaired = typed_at_terminal(
            [*BERTH, *check.split()[1:], "--json"], "y\n", env=target.env, cwd=ROOT
        )
        assert repaired.returncode == 0, repaired.stderr
        report = json.loads(repaired.stdout)
        assert report["missing"] == [] and report["damaged"] == []
        assert set(blob_digests(later)) <= set(report["orphans_removed"])
        assert not set(blob_digests(kept)) & set(report["orphans"])
        assert target.cli_json("storage", "check")["orphans"] == []
    finally:
        target.stop()


def guide_setup(tmp_path: Path, backend: str) -> tuple[Path, list[str], list[str], list[str]]:
    """(the backup directory, the commands copying the keys and the database, the command
    copying the blobs, the restore's commands) for `backend`, as the guide gives them."""
    files_backup, dump, restore, pg_restore = guide_blocks()
    *keys_and_database, copy_blobs = files_backup
    assert copy_blobs.startswith("cp -a ") and copy_blobs.endswith("/blobs " + EXAMPLE_BACKUP + "/")
    if backend != "sqlite":
        # PostgreSQL: pg_dump is the snapshot; the restore copies only the keys and blobs
        # into data_dir, after pg_restore.
        keys_and_database = [c for c in keys_and_database if not c.startswith("sqlite3 ")]
        keys_and_database += dump
        restore = [c.replace(f" {EXAMPLE_BACKUP}/berth.db", "") for c in restore]
        restore = [restore[0], *pg_restore, *restore[1:]]
    backup = tmp_path / "backup"
    backup.parent.mkdir(parents=True, exist_ok=True)
    return backup, keys_and_database, [copy_blobs], restore


def test_a_restore_without_the_key_files_is_refused_until_they_are_put_back(
    tmp_path: Path,
) -> None:
    """One node on SQLite whose data directory came back without keys/ (a restore or move
    that left the key files behind): `berth serve` refuses, naming the files, instead of
    serving with new keys every access key fails on, and so does an admin verb, which writes
    no key either (an access key it made with new keys would fail once the old ones are back);
    with other keys in their place, both refuse too; with the files back, it serves and an
    access key made before signs in."""
    server = BerthServer(tmp_path / "data")
    server.start()
    try:
        server.create_repository("shop", "web")
        key = server.access_key("shop")
    finally:
        server.stop()
    keys = server.data_dir / "keys"
    kept = keys.rename(tmp_path / "kept-keys")

    problem = " ".join(serve_refused(server.env).split())
    signing, secret = keys / "token-signing.pem", keys / "secret-hash.key"
    assert f"this node has no {signing} and no {secret}" in problem
    assert "restore both files from the backup of the data directory" in problem
    assert "DELETE FROM install_facts WHERE name = 'key_fingerprint';" in problem
    assert not keys.exists() or not any(keys.iterdir())  # refused before writing a key

    for verb in (["key", "create", "--user", "admin", "--project", "shop"], ["project", "list"]):
        refused = server.cli(*verb, check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        said = " ".join(refused.stderr.split())
        assert f"the key files {signing} and {secret} are missing" in said, said
        assert "Restore both files from the backup of the data directory" in said
        assert not keys.exists() or not any(keys.iterdir())

    other = BerthServer(tmp_path / "other")
    other.cli("init")
    shutil.copytree(other.data_dir / "keys", keys, dirs_exist_ok=True)
    assert "are not the ones this install's database was used with" in " ".join(
        serve_refused(server.env).split()
    )
    refused = server.cli("project", "list", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "are not the ones this install's database was used with" in " ".join(
        refused.stderr.split()
    )

    shutil.rmtree(keys)
    kept.rename(keys)
    assert [project["name"] for project in server.cli_items("project", "list")] == ["shop"]
    server.start()
    try:
        signed_in = httpx.get(
            f"{server.url}/auth/token",
            params={"service": server.address, "account": key[0], "client_id": "docker"},
            auth=key,
            timeout=60,
        )
        assert signed_in.status_code == 200 and signed_in.json()["token"]
    finally:
        server.stop()
