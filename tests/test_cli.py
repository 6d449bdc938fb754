"""The admin CLI, run as a user would run it (a subprocess, the same settings as the server)."""

from __future__ import annotations

from pathlib import Path

from tests.servers import BerthServer


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
