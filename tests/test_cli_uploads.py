"""`berth upload list|cancel` against a running server's data: the uploads a client has in
progress through /v2, and a cancel its client then hears about (BLOB_UPLOAD_UNKNOWN). The
cancel command `berth upload list` prints runs as printed."""

from __future__ import annotations

import os
import shlex

import httpx

from tests.oci import digest_of, error_codes, location, patch_upload, put_upload, start_upload
from tests.pasting import data_dir_only
from tests.servers import ROOT, BerthServer, server_fixture
from tests.terminal import typed_at_terminal

uploads_server = server_fixture("cli-uploads")

CHUNK = os.urandom(1000)


def started(client: httpx.Client, name: str, chunk: bytes = CHUNK) -> tuple[str, str]:
    """(upload ID, its URL) of an upload begun on /v2: POST, then a PATCH when `chunk`."""
    url = location(start_upload(client, name))
    if chunk:
        sent = patch_upload(client, url, chunk)
        assert sent.status_code == 202, sent.text
        url = location(sent)
    return url.split("?")[0].rstrip("/").rpartition("/")[2], url


def scratch(server: BerthServer, upload_id: str) -> list[str]:
    """What the filesystem store holds for the upload."""
    found = (server.data_dir / "blobs" / "_uploads").glob(f"{upload_id}*")
    return [p.name for p in found if p.is_file() and p.suffix != ".lock"]


def column(lines: list[str], header: str, next_header: str) -> str:
    """A table column's text, its folded lines joined."""
    head = next(line for line in lines if header in line and next_header in line)
    start, end = head.index(header) + 1, head.index(next_header) + 1
    return "".join(line[start:end].strip() for line in lines)


def printed_command(stdout: str) -> str:
    lines = stdout.splitlines()
    return lines[lines.index("Cancel the one idle longest (what it stored is deleted):") + 1]


def assert_cancelled(client: httpx.Client, url: str) -> None:
    """The client's next chunk, and its closing PUT, are refused as for an upload it
    cancelled itself."""
    refused = patch_upload(client, url, CHUNK)
    assert refused.status_code == 404 and error_codes(refused) == ["BLOB_UPLOAD_UNKNOWN"]
    closing = put_upload(client, url, digest_of(CHUNK), CHUNK)
    assert closing.status_code == 404 and error_codes(closing) == ["BLOB_UPLOAD_UNKNOWN"]


def test_upload_list_and_cancel_verbs(uploads_server: BerthServer) -> None:
    berth = uploads_server
    berth.create_repository("cliup", "app")
    berth.create_user("pusher-with-a-rather-long-name", "a password of some length")
    berth.add_member("cliup", "pusher-with-a-rather-long-name", "member")
    auth = berth.access_key("cliup", "pusher-with-a-rather-long-name")
    with httpx.Client(base_url=berth.url, auth=auth, timeout=60) as client:
        idle, idle_url = started(client, "cliup/app")
        newer, newer_url = started(client, "cliup/app/tools/lint", 2 * CHUNK)

        shown = berth.cli("upload", "list", "cliup").stdout
        assert "Uploads in progress in cliup" in shown
        assert max(map(len, shown.splitlines())) <= 80, shown
        lines = shown.partition("\nCancel the one")[0].splitlines()  # the table's
        (row,) = [line for line in lines if idle in line]  # the ID whole, to copy
        assert " app " in row and "1,000" in row
        assert any(newer in line and "2,000" in line for line in lines)
        # Long names fold within their column.
        assert "app/tools/lint" in column(lines, " repository ", " by "), shown
        assert "pusher-with-a-rather-long-name" in column(lines, " by ", " bytes "), shown
        assert [u["id"] for u in berth.cli_items("upload", "list", "cliup")] == [newer, idle]
        (listed,) = berth.cli_items("upload", "list", "cliup", "--limit", "1")
        assert listed["id"] == newer and listed["started_by"] == "pusher-with-a-rather-long-name"
        assert listed["bytes_received"] == 2000 and listed["image"] == "tools/lint"
        assert "(newest 1 of 2)" in berth.cli("upload", "list", "cliup", "--limit", "1").stdout

        # The command it prints cancels the upload idle longest, run as printed.
        printed = printed_command(shown)
        assert printed.split()[1:] == ["upload", "cancel", "cliup", idle]
        # It asks first: without a terminal it refuses, answered "n" it cancels nothing.
        refused = berth.cli(*shlex.split(printed)[1:], input="y\n", check=False)
        assert refused.returncode == 2 and "give --yes" in refused.stderr, refused
        declined = typed_at_terminal(shlex.split(printed), "n\n", env=berth.env, cwd=ROOT)
        assert declined.returncode == 1, declined
        assert f"Cancel upload {idle} in cliup, deleting what it stored? [y/N]" in declined.stderr
        assert [u["id"] for u in berth.cli_items("upload", "list", "cliup")] == [newer, idle]
        assert scratch(berth, idle)
        # At a terminal, as a user pastes it, answered "y".
        pasted = typed_at_terminal(shlex.split(printed), "y\n", env=berth.env, cwd=ROOT)
        assert pasted.returncode == 0, pasted.stderr
        said = " ".join(pasted.stdout.split())  # as wrapped to the terminal's width
        assert f"Cancelled upload {idle} to cliup/app (1,000 bytes received, started by" in said
        assert_cancelled(client, idle_url)
        assert scratch(berth, idle) == []

        assert scratch(berth, newer)
        cancelled = berth.cli_json("upload", "cancel", "cliup", newer, "--yes")
        assert cancelled["id"] == newer and cancelled["repository"] == "app"
        assert_cancelled(client, newer_url)
        assert scratch(berth, newer) == []
        assert "No uploads in progress in cliup." in berth.cli("upload", "list", "cliup").stdout
        assert berth.cli_items("upload", "list", "cliup") == []

    again = berth.cli("upload", "cancel", "cliup", newer, "--yes", check=False)
    assert again.returncode == 1
    assert f"upload '{newer}' is not in progress in project 'cliup'" in again.stderr
    nowhere = berth.cli("upload", "list", "nosuchproject", check=False)
    assert nowhere.returncode == 1 and "project 'nosuchproject' does not exist" in nowhere.stderr
    audited = [e for e in berth.cli_items("audit", "cliup") if e["action"] == "upload.cancel"]
    assert [e["target"] for e in audited] == [f"app/tools/lint@{newer}", f"app@{idle}"]
    assert all(e["actor"].startswith("cli:") for e in audited)
    assert audited[0]["detail"] == {
        "started_by": "pusher-with-a-rather-long-name",
        "bytes_received": 2000,
    }


def test_the_printed_cancel_names_the_data_directory_it_was_given(
    uploads_server: BerthServer,
) -> None:
    """Run with --data-dir (nothing else pointing at the data), `berth upload list` prints a
    cancel command with that --data-dir: pasted in the same place, it works."""
    berth = uploads_server
    berth.create_repository("cliupdir", "app")
    only = data_dir_only(berth)
    with httpx.Client(base_url=berth.url, auth=berth.access_key("cliupdir"), timeout=60) as client:
        upload_id, url = started(client, "cliupdir/app")
        shown = only.berth("upload", "list", "cliupdir")
        printed = printed_command(shown.stdout)
        assert printed.split()[3:] == ["upload", "cancel", "cliupdir", upload_id]
        only.paste_at_terminal(printed, "y\n")
        assert_cancelled(client, url)
