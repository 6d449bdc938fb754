"""`berth data copy`: an embedded install (SQLite, blobs in its data directory) moved to
PostgreSQL and S3 as README "From the embedded default" says, then served there by a node."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect

from berth.metadata.database import read_once
from berth.metadata.revisions import schema_head
from tests.clients.layouts import TestImage, umoci_image
from tests.clients.tools import output, require_binary, run
from tests.oci import OCI_LAYER, Blob, blob_path, digest_of, manifest_path, push_bytes, to_json
from tests.oci import put_manifest as put
from tests.s3 import BUCKET, READER_KEY_ID, SeaweedFS, stored_keys
from tests.servers import BerthServer, PostgresCluster

pytestmark = [pytest.mark.clients, pytest.mark.xdist_group("data_copy")]

OLD_REVISION = "0023_retention_run_kept"


@dataclass
class Embedded:
    """The stopped embedded install, and what it held."""

    server: BerthServer
    key: tuple[str, str]
    manifests: dict[str, bytes]  # tag: manifest
    blobs: dict[str, bytes]  # digest: bytes
    history: str  # `berth image history --json`, as the old install printed it
    audit: str  # `berth audit shop --json`
    server_audit: str  # `berth audit --json`
    pushed: TestImage  # pushed by skopeo as shop/cli:v1
    pushed_manifest: bytes  # its manifest, as skopeo read it back from the old install

    @property
    def blob_count(self) -> int:
        """Every blob the old install holds: shop/web's and the skopeo image's."""
        pushed = json.loads(self.pushed_manifest)
        return len(self.blobs) + 1 + len(pushed["layers"])


def _image(client: httpx.Client, name: str, layer_bytes: list[int]) -> tuple[bytes, list[bytes]]:
    config = to_json({"architecture": "amd64", "os": "linux", "rand": os.urandom(8).hex()})
    push_bytes(client, name, config)
    layers = [Blob(os.urandom(size), OCI_LAYER) for size in layer_bytes]
    for layer in layers:
        push_bytes(client, name, layer.data)
    manifest = to_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest_of(x.data), "size": len(x.data)}
                for x in layers
            ],
        }
    )
    return manifest, [config, *(layer.data for layer in layers)]


def skopeo(*words: str) -> str:
    """Run skopeo (plain HTTP, path style); its output, or the test fails with it."""
    result = run([require_binary("skopeo"), *words], check=False)
    assert result.returncode == 0, output(result)
    return result.stdout


def raw_manifest(server: BerthServer, key: tuple[str, str], name: str) -> bytes:
    """The manifest `name` as skopeo reads it from `server` with `key`."""
    creds = f"--creds={key[0]}:{key[1]}"
    found = skopeo(
        "inspect", "--raw", "--tls-verify=false", creds, f"docker://{server.address}/{name}"
    )
    return found.encode()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    image = umoci_image(
        tmp_path_factory.mktemp("image") / "layout",
        "v1",
        {"hello.txt": f"moved along {os.urandom(8).hex()}\n".encode()},
    )
    server = BerthServer(tmp_path_factory.mktemp("embedded") / "data")
    server.start()
    try:
        server.create_repository("shop", "web")
        server.create_user("bob", "bob-password-1234")
        server.add_member("shop", "bob", "member")
        key = server.access_key("shop", "bob")
        manifests: dict[str, bytes] = {}
        blobs: dict[str, bytes] = {}
        with httpx.Client(base_url=server.url, auth=key, timeout=60) as client:
            # One layer over 8 MiB: written to the store in more than one piece.
            for tag, sizes in (("v1", [1024, 9 * 1024 * 1024]), ("v2", [2048])):
                manifest, contents = _image(client, "shop/web", sizes)
                assert put(client, "shop/web", tag, manifest).status_code == 201
                manifests[tag] = manifest
                blobs.update({digest_of(data): data for data in contents})
            # The tag moved: its history holds both.
            assert put(client, "shop/web", "latest", manifests["v1"]).status_code == 201
            assert put(client, "shop/web", "latest", manifests["v2"]).status_code == 201
            manifests["latest"] = manifests["v2"]
            # An upload in progress: not copied.
            assert client.post("/v2/shop/web/blobs/uploads/").status_code == 202
        server.create_repository("shop", "cli")
        creds = f"--dest-creds={key[0]}:{key[1]}"
        target = f"docker://{server.address}/shop/cli:v1"
        skopeo("copy", "--dest-tls-verify=false", creds, image.oci_ref, target)
        pushed_manifest = raw_manifest(server, key, "shop/cli:v1")
    finally:
        server.stop()
    yield Embedded(
        server,
        key,
        manifests,
        blobs,
        history=server.cli("image", "history", "shop/web", "--json").stdout,
        audit=server.cli("audit", "shop", "--json").stdout,
        server_audit=server.cli("audit", "--json").stdout,
        pushed=image,
        pushed_manifest=pushed_manifest,
    )


def _destination(
    tmp_path: Path, postgres: PostgresCluster | None, seaweedfs: SeaweedFS
) -> BerthServer:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    return BerthServer(
        tmp_path / "node1",
        postgres.create_database(),
        extra_env={**seaweedfs.settings_environ(), "BERTH_SINGLE_NODE": "false"},
    )


def _tables(database_url: str) -> list[str]:
    """The tables in the database at `database_url`."""
    return read_once(database_url, lambda connection: inspect(connection).get_table_names())


def _stored(data_dir: Path, digest: str) -> Path:
    """Where an install on the filesystem in `data_dir` keeps blob `digest`."""
    algorithm, _, hexdigest = digest.partition(":")
    return data_dir / "blobs" / algorithm / hexdigest[:2] / hexdigest


def _rows(data_dir: Path, table: str) -> int:
    with sqlite3.connect(data_dir / "berth.db") as database:
        return int(database.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_an_embedded_install_copied_to_postgresql_and_s3_serves_its_keys_images_and_history(
    embedded: Embedded, postgres: PostgresCluster | None, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    node = _destination(tmp_path, postgres, seaweedfs)
    old = str(embedded.server.data_dir)
    copied = node.cli("data", "copy", "--from-data-dir", old, "--json")
    report = json.loads(copied.stdout)
    assert report["blobs_copied"] == embedded.blob_count
    assert report["blobs_present_already"] == 0
    assert report["uploads_not_copied"] == 1
    assert report["storage_location"].startswith("s3://")
    assert report["keys"]["action"] == "copied from the old install"
    for name in ("token-signing.pem", "secret-hash.key"):
        copy = node.data_dir / "keys" / name
        assert copy.read_bytes() == (embedded.server.data_dir / "keys" / name).read_bytes()
        assert oct(copy.stat().st_mode & 0o777) == "0o600"

    # Tag history and audit as the old install printed them: ids, times and JSON intact.
    assert node.cli("image", "history", "shop/web", "--json").stdout == embedded.history
    assert node.cli("audit", "shop", "--json").stdout == embedded.audit
    assert node.cli("audit", "--json").stdout == embedded.server_audit

    # Run again (an interruption after the blobs): refused, the database is no longer new.
    again = node.cli("data", "copy", "--from-data-dir", old, check=False)
    assert again.returncode == 2
    assert "is not new" in again.stderr and "projects (1 row)" in again.stderr

    node.start()
    try:
        with httpx.Client(base_url=node.url, auth=embedded.key, timeout=60) as client:
            assert client.get("/v2/").status_code == 200  # the old access key logs in
            for tag, manifest in embedded.manifests.items():
                pulled = client.get(
                    manifest_path("shop/web", tag),
                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                )
                assert pulled.status_code == 200 and pulled.content == manifest
            for digest, data in embedded.blobs.items():
                pulled = client.get(blob_path("shop/web", digest), follow_redirects=True)
                assert pulled.status_code == 200 and pulled.content == data
        # skopeo reads the image it pushed to the old install, and pulls it whole.
        assert raw_manifest(node, embedded.key, "shop/cli:v1") == embedded.pushed_manifest
        layout = tmp_path / "pulled"
        source = f"docker://{node.address}/shop/cli:v1"
        creds = f"--src-creds={embedded.key[0]}:{embedded.key[1]}"
        skopeo("copy", "--src-tls-verify=false", creds, source, f"oci:{layout}:v1")
        assert (layout / "index.json").is_file()
        with httpx.Client(base_url=node.url, auth=embedded.key, timeout=60) as client:
            # New rows after the copied ones (PostgreSQL's sequences were moved past them).
            manifest, _ = _image(client, "shop/web", [512])
            assert put(client, "shop/web", "v3", manifest).status_code == 201
        node.create_repository("tools", "cli")
        events = json.loads(node.cli("image", "history", "shop/web", "--json").stdout)
        assert [e["tag"] for e in events["items"][:1]] == ["v3"]
        check = node.cli("storage", "check", "--all", check=False)
        assert check.returncode == 0 and "Every blob is whole." in check.stdout, check.stdout
    finally:
        node.stop()


def test_a_copy_run_again_after_an_interruption_skips_the_blobs_it_copied(
    embedded: Embedded, postgres: PostgresCluster | None, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    node = _destination(tmp_path, postgres, seaweedfs)
    first = json.loads(
        node.cli("data", "copy", "--from-data-dir", str(embedded.server.data_dir), "--json").stdout
    )
    assert first["blobs_copied"] == embedded.blob_count
    # As if the rows had not been copied: a new database, on the same store, which `berth
    # init` made (its administrator is replaced).
    node.database_url = postgres.create_database() if postgres else None
    node.cli("init")
    second = json.loads(
        node.cli("data", "copy", "--from-data-dir", str(embedded.server.data_dir), "--json").stdout
    )
    assert second["blobs_copied"] == 0
    assert second["blobs_present_already"] == embedded.blob_count
    assert second["keys"]["action"] == "the old install's already"
    # The users as the old install had them: `berth init`'s administrator gave way to its.
    listed = ("user", "list", "--json")
    assert node.cli(*listed).stdout == embedded.server.cli(*listed).stdout


def test_the_copy_is_refused_while_a_server_serves_on_the_old_install(
    embedded: Embedded, postgres: PostgresCluster | None, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    node = _destination(tmp_path, postgres, seaweedfs)
    embedded.server.start()
    try:
        refused = node.cli(
            "data", "copy", "--from-data-dir", str(embedded.server.data_dir), check=False
        )
    finally:
        embedded.server.stop()
    assert refused.returncode == 1
    assert f"a server serves on {embedded.server.data_dir}" in refused.stderr
    assert "Stop it first" in refused.stderr
    # Refused before anything was written: no schema in the new database, no data directory.
    assert node.database_url is not None and _tables(node.database_url) == []
    assert not node.data_dir.exists()


def test_the_copy_is_refused_from_another_schema_revision_or_with_other_keys(
    embedded: Embedded, postgres: PostgresCluster | None, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    node = _destination(tmp_path, postgres, seaweedfs)
    older = tmp_path / "older"
    shutil.copytree(embedded.server.data_dir, older)
    with sqlite3.connect(older / "berth.db") as database:
        database.execute("UPDATE alembic_version SET version_num = ?", (OLD_REVISION,))
    refused = node.cli("data", "copy", "--from-data-dir", str(older), check=False)
    assert refused.returncode == 2
    assert (
        f"is at schema revision {OLD_REVISION}, this Berth's is {schema_head()}" in refused.stderr
    )
    assert "berth serve` on the old data directory once" in refused.stderr

    (node.data_dir / "keys").mkdir(parents=True)
    (node.data_dir / "keys" / "secret-hash.key").write_bytes(os.urandom(32))
    refused = node.cli(
        "data", "copy", "--from-data-dir", str(embedded.server.data_dir), check=False
    )
    assert refused.returncode == 2
    assert "hold other keys than the old install's" in refused.stderr
    # The refusal's commands, pasted as printed, put the old install's key there.
    replace = refused.stderr.split("Replace them with the old install's files (", 1)[1].split(
        ")", 1
    )[0]
    subprocess.run(replace, shell=True, check=True)
    placed = node.data_dir / "keys" / "secret-hash.key"
    assert (
        placed.read_bytes() == (embedded.server.data_dir / "keys" / "secret-hash.key").read_bytes()
    )

    # The old install's database recorded other keys than its keys/ directory holds.
    (older / "keys" / "secret-hash.key").write_bytes(os.urandom(32))
    with sqlite3.connect(older / "berth.db") as database:
        database.execute("UPDATE alembic_version SET version_num = ?", (schema_head(),))
    shutil.rmtree(node.data_dir / "keys")
    refused = node.cli("data", "copy", "--from-data-dir", str(older), check=False)
    assert refused.returncode == 2
    assert "are not the ones the old install's database recorded" in refused.stderr


def test_the_copy_is_refused_without_an_old_install_and_creates_nothing(tmp_path: Path) -> None:
    # The destination on SQLite and the filesystem: what is refused is the same on any.
    node = BerthServer(tmp_path / "node")
    nowhere = tmp_path / "nowhere"
    refused = node.cli("data", "copy", "--from-data-dir", str(nowhere), check=False)
    assert refused.returncode == 2
    assert f"the old data directory {nowhere} does not exist" in refused.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = node.cli("data", "copy", "--from-data-dir", str(empty), check=False)
    assert refused.returncode == 2
    assert f"no Berth database in the old data directory ({empty / 'berth.db'}" in refused.stderr
    assert not node.data_dir.exists()
    assert list(empty.iterdir()) == []


def test_blobs_missing_or_damaged_in_the_old_install_stop_the_copy_before_the_rows(
    embedded: Embedded, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(embedded.server.data_dir, old)
    v1, v2 = (json.loads(embedded.manifests[tag]) for tag in ("v1", "v2"))
    missing, damaged = v2["layers"][0]["digest"], v1["config"]["digest"]
    _stored(old, missing).unlink()
    whole = _stored(old, damaged).read_bytes()
    _stored(old, damaged).write_bytes(bytes([whole[0] ^ 1]) + whole[1:])
    # Destinations on SQLite and the filesystem: S3 would add nothing here.
    node = BerthServer(tmp_path / "node")

    refused = node.cli("data", "copy", "--from-data-dir", str(old), "--json", check=False)
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == ""  # with --json too, the error on standard error alone
    said = refused.stderr
    assert f"missing in the old install (not copied): {missing} (used by shop/web)" in said
    assert f"damaged in the old install (not copied): {damaged} (used by shop/web)" in said
    assert "no row was copied" in said
    assert f"Restore them into {old / 'blobs'}" in said and "--allow-missing-blobs" in said
    # The other blobs are in the store; the database is as new (its schema, no row).
    stored = [path for path in (node.data_dir / "blobs" / "sha256").rglob("*") if path.is_file()]
    assert len(stored) == embedded.blob_count - 2
    assert _rows(node.data_dir, "projects") == 0 and _rows(node.data_dir, "users") == 0

    # Allowed: copied without them, and listed.
    allowed = BerthServer(tmp_path / "allowed")
    copied = allowed.cli("data", "copy", "--from-data-dir", str(old), "--allow-missing-blobs")
    assert f"missing in the old install (not copied): {missing} (used by shop/web)" in copied.stdout
    assert f"damaged in the old install (not copied): {damaged} (used by shop/web)" in copied.stdout
    assert _rows(allowed.data_dir, "projects") == 1

    # Restored, the copy run again copies them and skips the blobs copied before.
    _stored(old, missing).write_bytes(embedded.blobs[missing])
    _stored(old, damaged).write_bytes(whole)
    again = json.loads(node.cli("data", "copy", "--from-data-dir", str(old), "--json").stdout)
    assert again["blobs_copied"] == 2
    assert again["blobs_present_already"] == embedded.blob_count - 2
    assert again["blobs_missing_in_source"] == again["blobs_damaged_in_source"] == []
    assert _rows(node.data_dir, "projects") == 1


def test_a_blob_store_that_cannot_be_used_is_refused_before_anything_is_written(
    embedded: Embedded, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    old = str(embedded.server.data_dir)
    wrong_secret = {**seaweedfs.settings_environ(), "BERTH_S3_SECRET_ACCESS_KEY": "not-it"}
    node = BerthServer(tmp_path / "s3", extra_env=wrong_secret)
    refused = node.cli("data", "copy", "--from-data-dir", old, check=False)
    assert refused.returncode == 2
    assert "the blob store cannot be used" in refused.stderr
    assert refused.stderr.count("refused the credentials") == 1, refused.stderr  # said once
    assert not (node.data_dir / "berth.db").exists()

    # A bucket policy that refuses the listing of the bucket: said as such, not as the secret.
    bucket = f"berth-unlistable-{uuid.uuid4().hex[:12]}"
    seaweedfs.create_bucket(bucket)
    seaweedfs.deny(bucket, ["s3:ListBucket"], f"arn:aws:s3:::{bucket}")
    unlistable = {**seaweedfs.settings_environ(), "BERTH_S3_BUCKET": bucket}
    node = BerthServer(tmp_path / "s3-unlistable", extra_env=unlistable)
    refused = node.cli("data", "copy", "--from-data-dir", old, check=False)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2, said
    assert "the blob store cannot be used" in said and "refused the credentials" not in said
    assert said.count("but the bucket policy or their permissions refuse them s3:ListBucket") == 1
    assert not (node.data_dir / "berth.db").exists()

    # A blob directory that cannot be made (a file in its place).
    node = BerthServer(tmp_path / "filesystem")
    node.data_dir.mkdir()
    (node.data_dir / "blobs").write_bytes(b"")
    refused = node.cli("data", "copy", "--from-data-dir", old, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "the blob store cannot be used: [Errno 20] Not a directory" in refused.stderr
    assert not (node.data_dir / "berth.db").exists()

    # A blob directory whose upload area takes no file (a file in its place): refused before
    # the first blob, not at it.
    node = BerthServer(tmp_path / "uploads")
    (node.data_dir / "blobs").mkdir(parents=True)
    (node.data_dir / "blobs" / "_uploads").write_bytes(b"")
    refused = node.cli("data", "copy", "--from-data-dir", old, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "the blob store cannot be used: [Errno 20] Not a directory" in refused.stderr
    assert "_uploads" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(os.listdir(node.data_dir)) == ["blobs"]


def test_s3_credentials_that_may_not_write_are_refused_before_anything_is_written(
    embedded: Embedded, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """Credentials that may read the bucket but not write to it pass the bucket's check: the
    copy is refused at the store's check (exit status 2, one line naming the bucket and the
    write refused), not at its first blob; with credentials that may write, it is made."""
    old = str(embedded.server.data_dir)
    settings = seaweedfs.settings_environ()
    node = BerthServer(
        tmp_path / "node", extra_env=settings | {"BERTH_S3_ACCESS_KEY_ID": READER_KEY_ID}
    )
    refused = node.cli("data", "copy", "--from-data-dir", old, check=False)
    assert refused.returncode == 2, refused.stderr
    said = refused.stderr.splitlines()
    assert len(said) == 1 and "Traceback" not in refused.stderr, said  # said once
    assert said[0].startswith(
        f"error: the blob store cannot be used: the bucket {BUCKET!r} at {seaweedfs.endpoint} "
        f"refused PutObject of '{settings['BERTH_S3_PREFIX']}/_write-check-"
    ), said
    assert "(AccessDenied)" in said[0] and "s3_access_key_id" in said[0], said
    assert not node.data_dir.exists()  # no database, no key file
    assert stored_keys(settings, "blobs") == stored_keys(settings, "uploads") == []

    node.extra_env["BERTH_S3_ACCESS_KEY_ID"] = seaweedfs.access_key_id
    copied = json.loads(node.cli("data", "copy", "--from-data-dir", old, "--json").stdout)
    assert copied["blobs_copied"] == embedded.blob_count
    assert _rows(node.data_dir, "projects") == 1


def test_a_copy_into_s3_without_the_blobs_missing_in_the_old_install_when_allowed(
    embedded: Embedded, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(embedded.server.data_dir, old)
    missing = json.loads(embedded.manifests["v2"])["layers"][0]["digest"]
    _stored(old, missing).unlink()
    settings = seaweedfs.settings_environ()
    node = BerthServer(tmp_path / "node", extra_env=settings)

    copied = node.cli("data", "copy", "--from-data-dir", str(old), "--allow-missing-blobs")
    assert f"missing in the old install (not copied): {missing} (used by shop/web)" in copied.stdout
    assert _rows(node.data_dir, "projects") == 1
    stored = stored_keys(settings, "blobs")
    assert len(stored) == embedded.blob_count - 1, stored
    assert not any(key.endswith(missing.removeprefix("sha256:")) for key in stored)
    assert stored_keys(settings, "uploads") == []  # each blob's upload removed once committed

    # The new nodes' storage check reports it, as README says.
    check = node.cli("storage", "check", "--all", check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"missing: {missing} (push it again to repair)" in check.stdout, check.stdout


def test_a_blob_store_failing_in_the_middle_of_the_copy_stops_it_before_the_rows(
    embedded: Embedded, tmp_path: Path
) -> None:
    """A store that fails once the copy is under way (here the directory of the last blob,
    in the copy's order, is a file) stops it with the store's words, exit status 1, no
    traceback and no row copied; run again once that is put right, it copies the rest."""
    old = str(embedded.server.data_dir)
    node = BerthServer(tmp_path / "node")
    last = max(embedded.blobs).removeprefix("sha256:")
    in_the_way = node.data_dir / "blobs" / "sha256" / last[:2]
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_bytes(b"")

    stopped = node.cli("data", "copy", "--from-data-dir", old, check=False)
    assert stopped.returncode == 1, stopped.stderr
    assert "error: the copy stopped: [Errno 20] Not a directory" in stopped.stderr
    assert "run it again" in stopped.stderr and "Traceback" not in stopped.stderr
    assert node.cli("project", "list", "--json").stdout.count('"name"') == 0

    in_the_way.unlink()
    copied = json.loads(node.cli("data", "copy", "--from-data-dir", old, "--json").stdout)
    assert copied["blobs_present_already"] > 0
    assert copied["blobs_copied"] + copied["blobs_present_already"] == embedded.blob_count


def _listing(directory: Path) -> dict[str, str]:
    """`directory` and everything under it, by relative name, with its mode."""
    return {
        str(path.relative_to(directory)): oct(path.lstat().st_mode)
        for path in [directory, *sorted(directory.rglob("*"))]
    }


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    """This process's umask (and the CLI's it runs) `mask` meanwhile."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def test_the_copy_makes_its_data_directory_private_and_leaves_the_old_one_as_it_was(
    embedded: Embedded, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(embedded.server.data_dir, old)
    # An install that never had an upload since this Berth made the directory is without it.
    shutil.rmtree(old / "blobs" / "_uploads")
    before = _listing(old)
    node = BerthServer(tmp_path / "node")  # SQLite and the filesystem, made by the copy
    with _umask(0o022):  # what would leave them readable by others
        node.cli("data", "copy", "--from-data-dir", str(old))
    assert _listing(old) == before

    # As `berth init` makes them: the copied password hashes and keys are the owner's alone.
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((node.data_dir / "berth.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((node.data_dir / "keys").stat().st_mode) == 0o700
    readable = [str(path) for path in node.data_dir.rglob("*") if path.lstat().st_mode & 0o007]
    assert readable == []
    assert _rows(node.data_dir, "projects") == 1


@contextlib.contextmanager
def _immutable(directory: Path, *, within: bool = True) -> Iterator[None]:
    """`directory` (and, `within`, everything in it) immutable meanwhile (chattr +i): not
    even root may create, remove or change anything there, as a read-only directory stops
    any other user. Skipped where the file system or the machine (a container without
    CAP_LINUX_IMMUTABLE) does not allow it."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr not installed")
    recursive = ["-R"] if within else []
    made = subprocess.run(
        [chattr, *recursive, "+i", str(directory)], capture_output=True, text=True, check=False
    )
    try:
        if made.returncode != 0:
            pytest.skip(f"chattr +i refused here: {made.stderr.strip()}")
        yield
    finally:
        subprocess.run([chattr, *recursive, "-i", str(directory)], capture_output=True, check=False)


def test_a_read_only_old_data_directory_is_copied(embedded: Embedded, tmp_path: Path) -> None:
    """Read-only as root cannot make it (chmod does not stop root): immutable."""
    old = tmp_path / "old"
    shutil.copytree(embedded.server.data_dir, old)
    node = BerthServer(tmp_path / "node")
    # Changes in a WAL file SQLite cannot read without writing beside it: refused, said why.
    (old / "berth.db-wal").write_bytes(b"")
    with _immutable(old):
        refused = node.cli("data", "copy", "--from-data-dir", str(old), check=False)
    assert refused.returncode == 2, refused.stderr
    assert f"the old data directory {old} cannot be written to, and holds berth.db-wal" in (
        refused.stderr
    )
    assert "cp -a" in refused.stderr
    assert not node.data_dir.exists()

    (old / "berth.db-wal").unlink()
    before = _listing(old)
    with _immutable(old):
        copied = node.cli("data", "copy", "--from-data-dir", str(old), "--json", check=False)
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout)["blobs_copied"] == embedded.blob_count
    assert _rows(node.data_dir, "projects") == 1
    assert _listing(old) == before


def test_a_blob_directory_that_takes_no_writes_is_refused_before_anything_is_written(
    embedded: Embedded, tmp_path: Path
) -> None:
    node = BerthServer(tmp_path / "node")
    blobs = node.data_dir / "blobs"
    (blobs / "_uploads").mkdir(parents=True)
    # The blob directory read-only, its upload area not: a commit, which links the upload's
    # file into the blob directory, could not be made.
    with _immutable(blobs, within=False):
        refused = node.cli(
            "data", "copy", "--from-data-dir", str(embedded.server.data_dir), check=False
        )
    assert refused.returncode == 2, refused.stderr
    assert "the blob store cannot be used: [Errno 1] Operation not permitted" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(os.listdir(node.data_dir)) == ["blobs"]
    assert os.listdir(blobs) == ["_uploads"] and os.listdir(blobs / "_uploads") == []
