"""The admin CLI, run as a user would run it (a subprocess, the same settings as the server)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from berth.config import Settings
from berth.metadata.migrate import upgrade
from tests.servers import ADMIN_PASSWORD, BERTH, BerthServer


def test_project_and_repository_admin_verbs(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    assert "Created project demo" in berth.cli("project", "create", "demo").stdout
    assert berth.cli("project", "create", "demo", check=False).returncode == 3
    created = berth.cli_json(
        "repo", "create", "demo/app", "--public", "--no-tag-overwrite", "--description", "web app"
    )
    assert created["visibility"] == "public"
    assert created["tag_overwrite"] is False
    assert created["description"] == "web app"
    assert created["images"] == 0
    assert [p["name"] for p in berth.cli_json("project", "list")] == ["demo"]
    listed = berth.cli_json("repo", "list", "demo")
    assert [r["name"] for r in listed] == ["app"]
    table = berth.cli("repo", "list", "demo").stdout
    assert "app" in table and "public" in table


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    missing = berth.cli("repo", "create", "nope/app", check=False)
    assert missing.returncode == 1
    assert "project 'nope' does not exist" in missing.stderr
    berth.cli("project", "create", "demo")
    bad = berth.cli("repo", "create", "demo/Bad_Name", check=False)
    assert bad.returncode == 1 and "invalid repository name" in bad.stderr
    long = berth.cli("repo", "create", "demo/app", "--description", "x" * 101, check=False)
    assert long.returncode == 1 and "at most 100" in long.stderr
    assert berth.cli("repo", "create", "demo", check=False).returncode == 2


def test_users_members_keys_and_audit(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    berth.cli("project", "create", "demo")
    created = subprocess.run(
        [*BERTH, "user", "create", "alice", "--password-stdin", "--json"],
        input="correct horse battery\n",
        env=berth.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(created.stdout)["name"] == "alice"
    no_role = berth.cli("key", "create", "--user", "alice", "--project", "demo", check=False)
    assert no_role.returncode == 1 and "no role in project" in no_role.stderr
    berth.cli("member", "add", "demo", "alice", "--role", "member")
    key = berth.cli_json(
        "key", "create", "--user", "alice", "--project", "demo", "--expires", "2099-01-01"
    )
    assert key["access_key_id"].startswith("BK") and len(key["secret_access_key"]) >= 40
    listed = berth.cli_json("key", "list", "--project", "demo")
    assert [k["access_key_id"] for k in listed] == [key["access_key_id"]]
    assert listed[0]["state"] == "active" and listed[0]["expires_at"].startswith("2099-01-01")
    assert key["secret_access_key"] not in json.dumps(listed)
    berth.cli("key", "disable", key["access_key_id"])
    assert berth.cli_json("key", "list", "--user", "alice")[0]["state"] == "disabled"
    berth.cli("key", "delete", key["access_key_id"])
    assert berth.cli_json("key", "list") == []
    actions = [entry["action"] for entry in berth.cli_json("audit", "demo")]
    assert actions == ["key.delete", "key.disable", "key.create", "member.add"]


def _run(berth: BerthServer, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BERTH, *args], input=stdin, env=berth.env, capture_output=True, text=True, timeout=120
    )


def test_a_lost_administrator_password_is_reset_on_the_server(server: BerthServer) -> None:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        assert api.get("/projects", auth=("admin", ADMIN_PASSWORD)).status_code == 200
        reset = _run(
            server, "user", "set-password", "admin", "--password-stdin", stdin="lost-and-found\n"
        )
        assert reset.returncode == 0, reset.stderr
        assert "Set the password of admin" in reset.stdout
        # The running server takes the new password at once; the old one is refused.
        assert api.get("/projects", auth=("admin", "lost-and-found")).status_code == 200
        assert api.get("/projects", auth=("admin", ADMIN_PASSWORD)).status_code == 401
        server._services(lambda s: s.identity.set_password("admin", ADMIN_PASSWORD))


def test_deleting_users_and_projects(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    berth.data_dir.mkdir()
    upgrade(Settings(data_dir=berth.data_dir).resolved_database_url)
    berth.create_repository("demo", "app")
    berth.create_project("empty")
    berth.create_user("bob", "bob-password")
    berth.create_user("root", "root-password", is_admin=True)
    berth.add_member("demo", "bob", "member")
    key_id, _secret = berth.access_key("demo", "bob")

    assert berth.cli("user", "delete", "bob", "--yes").stdout.strip() == "Deleted user bob"
    assert berth._services(lambda s: s.identity.list_keys()) == []
    audit = [(e["action"], e["target"]) for e in berth.cli_json("audit", "demo")]
    assert audit[:2] == [("user.delete", "bob"), ("key.delete", key_id)]
    last_admin = berth.cli("user", "delete", "root", "--yes", check=False)
    assert last_admin.returncode == 1 and "last server administrator" in last_admin.stderr

    # A project that holds repositories goes only once its name is typed again.
    wrong = _run(berth, "project", "delete", "demo", stdin="demo2\n")
    assert wrong.returncode == 1 and "nothing was deleted" in wrong.stderr
    assert "holds 1 repository" in wrong.stdout
    typed = _run(berth, "project", "delete", "demo", stdin="demo\n")
    assert typed.returncode == 0, typed.stderr
    assert "Deleted project demo and its 1 repository" in typed.stdout
    assert berth.cli_json("project", "delete", "empty", "--yes")["deleted"] is True
    assert berth._services(lambda s: s.repositories.list_projects()) == []
