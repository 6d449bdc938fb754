"""A disk that turns read-only under a running registry: the blob store's (an operator's
`mount -o remount,ro`, a read-only export), or the whole data directory's (ext4 remounting
itself read-only after an I/O error, errors=remount-ro); and blob directories that refuse the
server's writes (an owner or mode changed under it). Writes are refused in a line, reads
served, and the node takes writes again once the disk is writable, without a restart."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MIB, new_repo, pushed_image
from tests.oci import OCI_MANIFEST, digest_of, error_code, push_bytes, put_manifest
from tests.servers import ADMIN_PASSWORD, BERTH, BerthServer, answers_reads_and_a_sign_in

ACCEPT = {"Accept": OCI_MANIFEST}
READ_ONLY_STORE = (
    "the registry's storage is read-only: the upload was discarded and nothing was stored; "
    "push again once it is writable"
)
READ_ONLY_STORE_UPLOAD_KEPT = (
    "the registry's storage is read-only: nothing was stored and the upload is kept; send "
    "the request again once it is writable"
)
READ_ONLY_DATABASE = "the database's disk is read-only; nothing was stored"
REFUSED_STORE = (
    "the registry's storage refuses its writes (permission denied): the upload was discarded "
    "and nothing was stored; push again once the operator has made it writable"
)


def remount(directory: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)


def test_a_read_only_blob_disk_refuses_pushes_in_a_line_and_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    """Uploads begun before the disk turned read-only are refused but kept (on a blob
    directory several nodes share, another node's request may be writing one): their clients
    go on with them once it is writable."""
    blobs = tmp_path / "data" / "blobs"
    blobs.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(blobs)]).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    log = tmp_path / "server.log"
    server = BerthServer(tmp_path / "data", log_file=log)
    try:
        repo, layer, digest, body = pushed_image(server.start())
        begun = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        other = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        patched = repo.client.patch(other, content=b"some bytes")
        remount(blobs, "ro")

        data = os.urandom(2 * MIB)
        refusals = {
            READ_ONLY_STORE: [
                repo.client.post(repo.url("blobs/uploads/"), params={"digest": digest_of(data)},
                                 content=data),  # monolithic
                repo.client.post(repo.url("blobs/uploads/")),  # a chunked push's start
            ],
            READ_ONLY_STORE_UPLOAD_KEPT: [  # uploads begun before it turned
                repo.client.patch(begun, content=data),
                repo.client.put(patched.headers["Location"],
                                params={"digest": digest_of(b"some bytes")}),
            ],
        }  # fmt: skip
        for message, refused_alike in refusals.items():
            for refused in refused_alike:
                assert refused.status_code == 507, refused.text
                assert error_code(refused) == "STORAGE_READ_ONLY"
                assert refused.json()["errors"][0]["message"] == message
        assert repo.client.head(repo.url(f"blobs/{digest_of(data)}")).status_code == 404
        assert repo.client.get(begun).status_code == 204  # kept, with nothing of the refused
        assert repo.client.get(begun).headers["Range"] == "0-0"

        pulled = repo.client.get(repo.url(f"blobs/{digest}"))
        assert (pulled.status_code, pulled.content == layer) == (200, True)
        assert repo.client.get(repo.url("manifests/v1"), headers=ACCEPT).content == body
        # Of blobs stored already: the database only.
        assert put_manifest(repo.client, repo.name, "v2", body).status_code == 201
        # Garbage collection would delete the rows, then stop at the first file: refused first
        # (a dry run, which deletes nothing, runs).
        collect = f"{server.url}/api/v1/projects/{repo.project}/gc"
        admin = ("admin", ADMIN_PASSWORD)
        refused = httpx.post(collect, json={"delete_untagged": True}, auth=admin, timeout=30)
        assert refused.status_code == 507, refused.text
        assert refused.json()["code"] == "STORAGE_READ_ONLY", refused.text
        dry = httpx.post(collect, json={"dry_run": True}, auth=admin, timeout=30)
        assert dry.status_code == 202, dry.text

        remount(blobs, "rw")
        assert push_bytes(repo.client, repo.name, data) == digest_of(data)
        assert repo.client.get(repo.url(f"blobs/{digest_of(data)}")).content == data
        # The refused requests again, on the uploads they were refused on.
        again = repo.client.patch(begun, content=b"sent again")
        assert again.status_code == 202, again.text
        for going_on, sent in ((again, b"sent again"), (patched, b"some bytes")):
            done = repo.client.put(going_on.headers["Location"], params={"digest": digest_of(sent)})
            assert done.status_code == 201, done.text
            assert repo.client.get(repo.url(f"blobs/{digest_of(sent)}")).content == sent
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(blobs)], check=False)
    said = log.read_text()
    assert "Traceback" not in said, said
    noted = [line for line in said.splitlines() if "blob store's disk is read-only" in line]
    assert len(noted) == 1 and "[WARNING]" in noted[0], noted
    assert any("the blob store takes writes again" in line for line in said.splitlines())


def immutable(directory: Path, on: bool) -> None:
    """Mark `directory` immutable (chattr +i) or not: no entry is made or removed in it, by
    root too, as a directory the server's user may not write refuses it (the tests run as
    root, whom modes do not stop)."""
    flag = "+i" if on else "-i"
    made = subprocess.run(["chattr", flag, str(directory)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr {flag}: {made.stderr.strip()}")


def test_blob_directories_refusing_the_servers_writes_refuse_pushes_in_a_line(
    tmp_path: Path,
) -> None:
    """An operator's chown, chmod or chattr under a running node: a push is refused in the OCI
    format (it was a plain-text 500 and a traceback), pulls are served, and pushes work again
    once the directories take writes, without a restart."""
    log = tmp_path / "server.log"
    server = BerthServer(tmp_path / "data", log_file=log)
    blobs = server.data_dir / "blobs"
    refusing = [blobs / "_uploads", blobs / "sha256"]
    try:
        repo, layer, digest, body = pushed_image(server.start())
        begun = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        # New bytes whose digest needs a directory not made yet under sha256/.
        while (blobs / "sha256" / digest_of(data := os.urandom(MIB))[7:9]).exists():
            pass
        patched = repo.client.patch(begun, content=data)
        assert patched.status_code == 202, patched.text
        for directory in refusing:
            immutable(directory, True)

        refused = [
            repo.client.post(repo.url("blobs/uploads/"), params={"digest": digest_of(data)},
                             content=data),  # monolithic
            repo.client.post(repo.url("blobs/uploads/")),  # a chunked push's start
            repo.client.put(patched.headers["Location"], params={"digest": digest_of(data)}),
        ]  # fmt: skip
        for response in refused:
            assert response.status_code == 507, response.text
            assert error_code(response) == "STORAGE_PERMISSION_DENIED", response.text
            assert response.json()["errors"][0]["message"] == REFUSED_STORE
        assert repo.client.head(repo.url(f"blobs/{digest_of(data)}")).status_code == 404
        pulled = repo.client.get(repo.url(f"blobs/{digest}"))
        assert (pulled.status_code, pulled.content == layer) == (200, True)
        assert repo.client.get(repo.url("manifests/v1"), headers=ACCEPT).content == body

        for directory in refusing:
            immutable(directory, False)
        assert push_bytes(repo.client, repo.name, data) == digest_of(data)
        assert repo.client.get(repo.url(f"blobs/{digest_of(data)}")).content == data
    finally:
        for directory in refusing:
            subprocess.run(["chattr", "-i", str(directory)], check=False)
        server.stop()
    said = log.read_text()
    assert "Traceback" not in said, said
    noted = [line for line in said.splitlines() if "refuses the server's writes" in line]
    assert len(noted) == 1 and "[WARNING]" in noted[0], noted
    assert any("the blob store takes writes again" in line for line in said.splitlines())


@contextlib.contextmanager
def ext4_disk(directory: Path) -> Iterator[str]:
    """`directory` an ext4 of its own on a loop device, mounted errors=remount-ro: it turns
    read-only on an error, as a failing disk's does (skipped without root or mkfs.ext4).
    Yields the sysfs file that raises such an error."""
    image = directory.with_name(f"{directory.name}.img")
    with image.open("wb") as sparse:
        sparse.truncate(64 * MIB)
    attached = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        for command in (
            ["mkfs.ext4", "-q", device],
            ["mount", "-o", "errors=remount-ro", device, str(directory)],
        ):
            made = subprocess.run(command, capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"{command[0]}: {made.stderr.strip()}")
        trigger = Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error")
        try:
            if not trigger.exists():
                pytest.skip("this kernel's ext4 has no trigger_fs_error to raise an error with")
            yield str(trigger)
        finally:
            subprocess.run(["umount", "-l", str(directory)], check=False)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
        image.unlink()


def test_a_data_disk_turned_read_only_serves_reads_and_refuses_writes_in_a_line(
    tmp_path: Path,
) -> None:
    """ext4 remounts the data directory read-only after an error, SQLite's database in it:
    pulls, tokens, the API's reads and a console sign-in (a session carried by its cookie, as
    on a full disk) are answered; pushes and the API's writes are refused with 507
    STORAGE_READ_ONLY; the log says so in a warning line, not a traceback per request; a
    restart on it is refused in one line with status 75, which systemd restarts."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = tmp_path / "server.log"
    with ext4_disk(data_dir) as trigger_error:
        server = BerthServer(data_dir, log_file=log)
        try:
            repo, layer, digest, _body = pushed_image(server.start())
            unused = new_repo(server)  # its key's first use records it: not now
            Path(trigger_error).write_text("test")

            for _ in range(2):  # counted and timed in memory, not written
                pulled = repo.client.get(repo.url(f"blobs/{digest}"))
                assert (pulled.status_code, pulled.content == layer) == (200, True)
                assert repo.client.get(repo.url("manifests/v1"), headers=ACCEPT).is_success
            for pulling in (repo, unused):
                token = httpx.get(
                    f"{server.url}/auth/token",
                    params={"scope": f"repository:{pulling.name}:pull"},
                    auth=pulling.client.auth,
                )
                assert token.status_code == 200 and token.json()["token"], token.text
            api = f"{server.url}/api/v1"
            admin = {"auth": ("admin", ADMIN_PASSWORD), "timeout": 30}
            cookies = answers_reads_and_a_sign_in(server, repo.project)
            seen = httpx.get(f"{api}/projects", cookies=cookies)
            assert seen.status_code == 200, seen.text

            created = httpx.post(f"{api}/projects", json={"name": "refused"}, **admin)  # type: ignore[arg-type]
            assert created.status_code == 507, created.text
            problem = created.json()
            assert (problem["code"], problem["detail"]) == ("STORAGE_READ_ONLY", READ_ONLY_DATABASE)
            data = os.urandom(MIB)
            for refused in (
                repo.client.post(repo.url("blobs/uploads/"), params={"digest": digest_of(data)},
                                 content=data),
                repo.client.delete(repo.url("manifests/v1")),
            ):  # fmt: skip
                assert refused.status_code == 507, refused.text
                assert refused.json()["errors"][0] == {
                    "code": "STORAGE_READ_ONLY",
                    "message": READ_ONLY_DATABASE,
                }
            assert repo.client.get(repo.url("tags/list")).json()["tags"] == ["v1"]
        finally:
            server.stop()
        said = log.read_text()
        assert "Traceback" not in said, said
        noted = [line for line in said.splitlines() if "database's disk is read-only (" in line]
        assert len(noted) == 1 and "[WARNING]" in noted[0], noted

        serving = subprocess.run(
            [*BERTH, "serve"], env=server.env, capture_output=True, text=True, timeout=120
        )
        assert serving.returncode == 75, (serving.stdout, serving.stderr)
        refusal = serving.stderr.strip()
        assert refusal.startswith(f"error: the disk holding {data_dir / 'berth.db'} is read-only")
        assert "\n" not in refusal and "Traceback" not in serving.stdout, serving
