"""The CLI verbs over repositories, images, history and tag restore, against a running server's
data (content pushed with the raw /v2 API)."""

from __future__ import annotations

import json
import shlex
import subprocess

import httpx

from tests.api.conftest import push_image
from tests.in_process import in_process
from tests.oci import linux_index, manifest_path, push_manifest
from tests.servers import ADMIN_PASSWORD, BERTH, ROOT, BerthServer
from tests.terminal import typed_at_terminal

SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def test_repo_show_update_delete(sqlite_server: BerthServer) -> None:
    berth = sqlite_server
    berth.create_repository("clidemo", "app")
    shown = in_process(berth).cli_json("repo", "show", "clidemo/app")
    assert shown["name"] == "app" and shown["visibility"] == "private" and shown["images"] == 0
    assert "tag overwrite" in in_process(berth).cli("repo", "show", "clidemo/app").stdout

    updated = in_process(berth).cli_json(
        "repo",
        "update",
        "clidemo/app",
        "--public",
        "--no-tag-overwrite",
        "--description",
        "the app",
        "--scan",
        "auto",
    )
    assert updated["visibility"] == "public" and updated["tag_overwrite"] is False
    assert updated["description"] == "the app" and updated["scan_mode"] == "auto"
    again = in_process(berth).cli_json("repo", "update", "clidemo/app", "--private")
    assert again["visibility"] == "private" and again["description"] == "the app"
    bad = in_process(berth).cli("repo", "update", "clidemo/app", "--scan", "never", check=False)
    assert bad.returncode == 2 and "scan mode" in bad.stderr  # a value not among the choices
    missing = in_process(berth).cli("repo", "show", "clidemo/nope", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    declined = typed_at_terminal([*BERTH, "repo", "delete", "clidemo/app"], "n\n", env=berth.env)
    assert declined.returncode == 1 and in_process(berth).cli_json("repo", "show", "clidemo/app")
    assert in_process(berth).cli_json("repo", "delete", "clidemo/app", "--yes")["deleted"] is True
    assert in_process(berth).cli_items("repo", "list", "clidemo") == []


def test_image_list_history_and_tag_restore(sqlite_server: BerthServer) -> None:
    berth = sqlite_server
    berth.create_repository("clidemo2", "app")
    name = "clidemo2/app"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clidemo2"), timeout=60) as client:
        first = push_image(client, name, "v1")
        nested = push_image(client, f"{name}/team/tool", "stable")
        assert client.delete(manifest_path(name, "v1")).status_code == 202

        listed = in_process(berth).cli_json("image", "list", name)
        assert listed["total"] == 2
        assert {(i["image"], i["digest"]) for i in listed["items"]} == {
            ("", first.digest),
            ("team/tool", nested.digest),
        }
        only = in_process(berth).cli_json("image", "list", f"{name}/team/tool")
        assert [i["tags"] for i in only["items"]] == [["stable"]]
        table = in_process(berth).cli("image", "list", name).stdout
        assert "team/tool" in table and "stable" in table
        missing = in_process(berth).cli("image", "list", "clidemo2/nope", check=False)
        assert missing.returncode == 1
        assert "repository clidemo2/nope does not exist" in missing.stderr

        history = in_process(berth).cli_items("image", "history", name, "--tag", "v1")
        assert [e["action"] for e in history] == ["untag", "tag"] and history[0]["restorable"]
        assert "untag" in in_process(berth).cli("image", "history", name).stdout

        restored = in_process(berth).cli_json("tag", "restore", name, "v1")
        assert restored["digest"] == first.digest
        pulled = client.get(
            manifest_path(name, "v1"),
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert pulled.status_code == 200 and pulled.content == first.data
        assert (
            in_process(berth)
            .cli_items("image", "history", name, "--tag", "v1")[0]["actor"]
            .startswith("cli:")
        )
        again = in_process(berth).cli("tag", "restore", name, "v1", check=False)
        assert again.returncode == 3 and "only a removed tag" in again.stderr


def test_image_delete_says_what_went_with_the_image(sqlite_server: BerthServer) -> None:
    """`berth image delete` deletes as the API does: an index with its platform manifests and
    the referrers of both, one image, and says how many went; it asks first."""
    berth = sqlite_server
    berth.create_repository("clidemo4", "app")
    name = "clidemo4/app"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clidemo4"), timeout=60) as client:
        amd64 = push_image(client, name, None, architecture="amd64")
        arm64 = push_image(client, name, None, architecture="arm64")
        index = linux_index((amd64, "amd64"), (arm64, "arm64"))
        push_manifest(client, name, "v1", index)
        signature = push_image(client, name, None, subject=index, artifact_type=SIGNATURE)
        sbom = push_image(client, name, None, subject=arm64, artifact_type=SIGNATURE)
        other = push_image(client, name, "other")
        other_signature_tag = other.digest.replace(":", "-") + ".sig"  # as cosign tags it
        other_signature = push_image(
            client, name, other_signature_tag, subject=other, artifact_type=SIGNATURE
        )

        declined = typed_at_terminal(
            [*BERTH, "image", "delete", name, index.digest], "n\n", env=berth.env
        )
        assert declined.returncode == 1 and "its referrers" in declined.stderr
        assert in_process(berth).cli_json("image", "list", name)["total"] == 2
        said = in_process(berth).cli("image", "delete", name, index.digest, "--yes").stdout
        assert " ".join(said.split()) == (
            f"Deleted {name}@{index.digest} with 2 platform manifests and 2 referrers"
        )
        # No signature of nothing is left to list as an image of its own.
        listed = in_process(berth).cli_json("image", "list", name)
        assert [i["digest"] for i in listed["items"]] == [other.digest]
        for gone in (index, amd64, arm64, signature, sbom):
            assert client.get(manifest_path(name, gone.digest)).status_code == 404

        deleted = in_process(berth).cli_json(
            "image", "delete", name, other.digest, "--yes", "--json"
        )
        assert deleted == {
            "repository": name,
            "image": "",
            "digest": other.digest,
            "tags": ["other"],
            "platform_manifests": [],
            "referrers": [{"digest": other_signature.digest, "tags": [other_signature_tag]}],
        }
        again = in_process(berth).cli("image", "delete", name, other.digest, "--yes", check=False)
        assert again.returncode == 1 and "not" in again.stderr


def test_image_delete_says_what_goes_and_what_stays_before_asking(
    sqlite_server: BerthServer,
) -> None:
    """Asked on a terminal, `berth image delete` first says what the API's
    GET .../deletion says (the console's dialog): how many platform manifests and referrers
    go, and each manifest it reaches that stays, with why. --yes and no terminal ask nothing."""
    berth = sqlite_server
    berth.create_repository("clidemo6", "app")
    name = "clidemo6/app"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clidemo6"), timeout=60) as client:
        amd64 = push_image(client, name, None, architecture="amd64")
        arm64 = push_image(client, name, "arm64-only", architecture="arm64")
        shared = push_image(client, name, None, architecture="s390x")
        index = linux_index((amd64, "amd64"), (arm64, "arm64"), (shared, "s390x"))
        push_manifest(client, name, "v1", index)
        signature = push_image(client, name, None, subject=index, artifact_type=SIGNATURE)
        sbom = push_image(client, name, None, subject=amd64, artifact_type=SIGNATURE)
        # Another index lists the shared platform manifest and the first index's signature.
        other = linux_index((shared, "s390x"), (signature, "ppc64le"))
        push_manifest(client, name, "other", other)

        deleting = [*BERTH, "image", "delete", name, index.digest]
        declined = typed_at_terminal(deleting, "n\n", env=berth.env)
        assert declined.returncode == 1
        told = declined.stderr.splitlines()
        assert told[:4] == [
            f"Deleting {name}@{index.digest} takes with it:",
            "  1 platform manifest it lists",
            "  1 referrer (signatures, SBOMs): its own and their referrers, and those of the "
            "platform manifests going",
            "3 manifests it reaches stay:",
        ]
        assert set(told[4:7]) == {
            f"  platform manifest {arm64.digest}: it has a tag of its own (arm64-only)",
            f"  platform manifest {shared.digest}: another index lists it ({other.digest})",
            f"  referrer {signature.digest}: another index lists it ({other.digest})",
        }
        assert told[7:] == [
            "Its tags can be restored (berth tag restore) until garbage collection removes "
            "the image's data.",
            f"Delete {name}@{index.digest} with its tags, its platform manifests and its "
            "referrers? [y/N]: error: not confirmed: nothing was deleted",
        ]
        for stored in (index, amd64, arm64, shared, signature, sbom):
            assert client.get(manifest_path(name, stored.digest)).status_code == 200

        # No terminal, no --yes: refused before anything is read, as before.
        unasked = in_process(berth).cli(
            "image", "delete", name, index.digest, check=False, input="y\n"
        )
        assert unasked.returncode == 2 and unasked.stderr.startswith(
            "error: no terminal to ask on whether to delete"
        )
        confirmed = typed_at_terminal(deleting, "y\n", env=berth.env)
        assert confirmed.returncode == 0, confirmed.stderr
        assert "3 manifests it reaches stay:" in confirmed.stderr
        assert " ".join(confirmed.stdout.split()) == (
            f"Deleted {name}@{index.digest} with 1 platform manifest and 1 referrer"
        )
        for gone in (index, amd64, sbom):
            assert client.get(manifest_path(name, gone.digest)).status_code == 404
        for kept in (arm64, shared, signature, other):
            assert client.get(manifest_path(name, kept.digest)).status_code == 200

        # With --yes nothing is asked, or said before the delete.
        said = in_process(berth).cli("image", "delete", name, other.digest, "--yes")
        assert said.stderr == "" and said.stdout.startswith(f"Deleted {name}@{other.digest}")
        # Refused as the delete would be, before asking: the index is gone.
        missing = typed_at_terminal(deleting, "y\n", env=berth.env)
        assert missing.returncode == 1 and "not" in missing.stderr and "[y/N]" not in missing.stderr


def test_image_list_shows_the_tags_of_an_index_entries(sqlite_server: BerthServer) -> None:
    """`docker manifest create` tags each platform, then the index: one image, every tag."""
    berth = sqlite_server
    berth.create_repository("clidemo3", "verify")
    name = "clidemo3/verify"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clidemo3"), timeout=60) as client:
        amd64 = push_image(client, name, "amd64", architecture="amd64")
        arm64 = push_image(client, name, "arm64", architecture="arm64")
        index = linux_index((amd64, "amd64"), (arm64, "arm64"))
        push_manifest(client, name, "latest", index)

    [item] = in_process(berth).cli_items("image", "list", name)
    assert item["tags"] == ["latest"] and item["child_tags"] == ["amd64", "arm64"]
    table = in_process(berth).cli("image", "list", name).stdout
    # The tags column, as the table wraps it over several lines.
    cells = [line.split("│")[3].strip() for line in table.splitlines() if line.startswith("│")]
    assert " ".join(filter(None, cells)) == "latest; entries: amd64, arm64"


def test_printed_commands_name_where_the_server_serves_and_run_as_printed(
    sqlite_server: BerthServer,
) -> None:
    """A server started with a `listen` of its own environment (`BERTH_LISTEN=... make run`)
    and the CLI run without it: `berth key create` prints the docker login and kubectl
    commands with the address the server serves on (the last `berth serve` recorded it), and
    `berth status` says where that is. The follow-up command `berth webhook create` prints
    runs as printed, from where the CLI ran."""
    berth = sqlite_server
    berth.create_project("printed")
    env = {name: value for name, value in berth.env.items() if name != "BERTH_LISTEN"}
    env["BERTH_WEBHOOK_ALLOW_PRIVATE"] = "true"  # for the endpoint on loopback below

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BERTH, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
        )

    created = run("key", "create", "--user", "admin", "--project", "printed")
    assert created.returncode == 0, created.stderr
    assert f"docker login {berth.address} --username BK" in created.stdout
    assert f"--docker-server={berth.address} " in created.stdout
    answered = httpx.get(f"{berth.url}/api/v1/projects/printed", auth=("admin", ADMIN_PASSWORD))
    assert answered.json()["registry_address"] == berth.address  # what the API says too
    status = run("status", "--json")
    assert json.loads(status.stdout)["served_at"] == berth.address

    made = run("webhook", "create", "printed", "http://127.0.0.1:9/hook")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    printed = lines[lines.index("Send it a test event:") + 1].strip()
    assert printed.split()[1:3] == ["webhook", "test"]
    tested = subprocess.run(
        shlex.split(printed), env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert tested.returncode == 0, tested.stderr


def test_image_tables_show_12_digits_of_each_digest_in_80_columns(
    sqlite_server: BerthServer,
) -> None:
    """The digest `berth image delete` and `scan` take is whole in the tables, however narrow
    the other columns make them: in 80 columns (a pipe's width) Rich cut it to 10 and `…`."""
    berth = sqlite_server
    berth.create_repository("clinarrow", "app")
    name = "clinarrow/app"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clinarrow"), timeout=60) as client:
        pushed = [
            push_image(client, name, "latest"),
            push_image(client, f"{name}/hello", "v1"),
            push_image(client, f"{name}/hello", "v2"),
        ]
    listed = in_process(berth).cli("image", "list", name).stdout
    history = in_process(berth).cli("image", "history", name).stdout
    for image in pushed:
        shown = image.digest.removeprefix("sha256:")[:12]
        assert shown in listed, listed
        assert shown in history, history
    assert max(map(len, listed.splitlines())) <= 80, listed
    assert "…" not in listed + history, history  # no column cut short either


def test_image_verbs_take_the_digest_as_the_listing_shows_it(sqlite_server: BerthServer) -> None:
    """`berth image list` shows 12 hex digits of each digest: `image delete` and `scan` take
    those, alone or after `sha256:`, when they start exactly one manifest's digest."""
    berth = sqlite_server
    berth.create_repository("clishort", "app")
    name = "clishort/app"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clishort"), timeout=60) as client:
        first = push_image(client, name, "v1")
        second = push_image(client, name, "v2", architecture="arm64")
    shown = first.digest.removeprefix("sha256:")[:12]
    assert shown in in_process(berth).cli("image", "list", name).stdout

    queued = in_process(berth).cli_json("scan", f"{name}@{shown}")
    assert queued["digest"] == first.digest
    nested = in_process(berth).cli("image", "delete", f"{name}/other", shown, "--yes", check=False)
    assert nested.returncode == 1
    assert f"no manifest of image 'other' of repository {name} has a digest starting" in (
        " ".join(nested.stderr.split())
    )
    short = in_process(berth).cli("image", "delete", name, shown[:11], "--yes", check=False)
    assert short.returncode == 2 and "first 12 or more hex digits" in short.stderr

    said = in_process(berth).cli("image", "delete", name, shown, "--yes").stdout
    assert " ".join(said.split()).startswith(f"Deleted {name}@{first.digest} with")
    prefixed = "sha256:" + second.digest.removeprefix("sha256:")[:16]
    deleted = in_process(berth).cli_json("image", "delete", name, prefixed, "--yes", "--json")
    assert deleted["digest"] == second.digest and deleted["tags"] == ["v2"]
    assert in_process(berth).cli_json("image", "list", name)["total"] == 0
    again = in_process(berth).cli("image", "delete", name, shown, "--yes", check=False)
    assert again.returncode == 1
    assert f"has a digest starting {shown}" in " ".join(again.stderr.split())
    # The history of a deleted image's digest, named as the history table shows it.
    events = in_process(berth).cli_items("image", "history", name, "--digest", shown)
    assert [e["action"] for e in events] == ["delete", "untag", "tag", "push"]
    assert {e["old_digest"] or e["new_digest"] for e in events} == {first.digest}
    vague = in_process(berth).cli("image", "history", name, "--digest", "sha256:0123", check=False)
    assert vague.returncode == 2 and "first 12 or more hex digits" in vague.stderr


def test_control_characters_a_pusher_wrote_are_printed_written_out(
    sqlite_server: BerthServer,
) -> None:
    """An image config's platform is the pusher's to write: escape sequences in it (here: set
    the clipboard, clear the screen) reach the operator's terminal as text, not as commands."""
    berth = sqlite_server
    berth.create_repository("clidemo5", "app")
    name = "clidemo5/app"
    sneaky = "amd64\x1b]52;c;ZWNobyBwd25lZA==\x1b\\\x1b[2J\x9b1A"
    with httpx.Client(base_url=berth.url, auth=berth.access_key("clidemo5"), timeout=60) as client:
        push_image(client, name, "v1", architecture=json.dumps(sneaky)[1:-1])  # JSON escapes

    [item] = in_process(berth).cli_items("image", "list", name)
    assert item["platforms"] == [f"linux/{sneaky}"]  # --json: as pushed, JSON-escaped
    table = in_process(berth).cli("image", "list", name).stdout
    assert "\x1b" not in table and "\x9b" not in table
    # The platforms column (cut to its width), the escape written out.
    cells = [line.split("│")[5].strip() for line in table.splitlines() if line.startswith("│")]
    assert "".join(cells).startswith("linux/amd64\\x1b")
