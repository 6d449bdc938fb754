"""The admin CLI, run as a user would run it (a subprocess, the same settings as the server)."""

from __future__ import annotations

import errno
import getpass
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import typer
from alembic import command as alembic
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from berth.cli.main import app
from berth.metadata.migrate import alembic_config, live_processes_at
from berth.metadata.revisions import current_revision
from tests.blackhole import Blackhole
from tests.in_process import Typed, in_process, invoked
from tests.oci import OCI_MANIFEST, manifest_path, put_manifest, random_image
from tests.ports import free_port
from tests.servers import (
    ADMIN_PASSWORD,
    BACKENDS,
    BERTH,
    ROOT,
    BerthServer,
    PostgresCluster,
    database_url_for,
    serve_refused,
    unresolvable_host,
    unstarted_environ,
    wait_for,
)
from tests.terminal import typed_at_terminal
from tests.tls import make_ca_and_cert


def test_project_and_repository_admin_verbs(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    initialised = verbs.cli("init").stdout
    # Nothing serves yet: the sign-in hint says when it applies, and with which command.
    # (With the data directory the environment gave: the command is pasted into a shell.)
    assert re.search(
        r"/console/ as 'admin' once `\S*berth --data-dir \S+ serve` runs;", initialised
    ), initialised
    assert "Created project demo" in verbs.cli("project", "create", "demo").stdout
    assert verbs.cli("project", "create", "demo", check=False).returncode == 3
    created = verbs.cli_json(
        "repo", "create", "demo/app", "--public", "--no-tag-overwrite", "--description", "web app"
    )
    assert created["visibility"] == "public"
    assert created["tag_overwrite"] is False
    assert created["description"] == "web app"
    assert created["images"] == 0
    # Audited by the service, as from the API: the CLI's create is in the log too.
    [entry] = verbs.cli_items("audit", "demo")
    assert (entry["action"], entry["target"]) == ("repository.create", "app")
    assert [p["name"] for p in verbs.cli_items("project", "list")] == ["demo"]
    listed = verbs.cli_items("repo", "list", "demo")
    assert [r["name"] for r in listed] == ["app"]
    table = verbs.cli("repo", "list", "demo").stdout
    assert "app" in table and "public" in table


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    missing = verbs.cli("repo", "create", "nope/app", check=False)
    assert missing.returncode == 1
    assert "project 'nope' does not exist" in missing.stderr
    verbs.cli("project", "create", "demo")
    bad = verbs.cli("repo", "create", "demo/Bad_Name", check=False)
    assert bad.returncode == 1 and "invalid repository name" in bad.stderr
    long = verbs.cli("repo", "create", "demo/app", "--description", "x" * 101, check=False)
    assert long.returncode == 2 and "at most 100" in long.stderr  # a value out of range
    lines = verbs.cli("repo", "create", "demo/app", "--description", "two\nlines", check=False)
    assert lines.returncode == 2, lines.stderr  # as the API refuses it
    assert "with no line breaks or control characters; this one has '\\n'" in lines.stderr
    assert verbs.cli("repo", "create", "demo", check=False).returncode == 2
    # Orphans belong to no project: --repair is for the whole install's check, said so.
    repair = verbs.cli("storage", "check", "demo", "--repair", "--yes", check=False)
    assert repair.returncode == 2 and repair.stdout == "", repair
    said = " ".join(repair.stderr.split())
    assert said.startswith("error: --repair removes stored blobs no metadata names"), said
    printed = said.rsplit("(", 1)[1].rstrip(")")
    assert shlex.split(printed)[-4:] == ["storage", "check", "--all", "--repair"]
    repaired = subprocess.run(
        [*shlex.split(printed), "--yes", "--json"],
        env=berth.env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["orphans_removed"] == []


def test_key_list_refuses_a_project_or_user_that_does_not_exist(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    verbs.cli("project", "create", "demo")
    verbs.cli("key", "create", "--user", "admin", "--project", "demo")
    # A mistyped name is said, as `repo list` and `member list` say it, not an empty table.
    for args, said in (
        (["--project", "dmeo"], "project 'dmeo' does not exist"),
        (["--user", "amdin"], "user 'amdin' does not exist"),
        (["--user", "admin", "--project", "nope"], "project 'nope' does not exist"),
    ):
        refused = verbs.cli("key", "list", *args, "--json", check=False)
        assert (refused.returncode, refused.stdout) == (1, ""), refused
        assert said in refused.stderr, refused.stderr
    [key] = verbs.cli_items("key", "list", "--user", "admin", "--project", "demo")
    assert (key["user"], key["project"]) == ("admin", "demo")


def test_users_members_keys_and_audit(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    verbs.cli("project", "create", "demo")
    created = verbs.cli(
        "user", "create", "alice", "--password-stdin", "--json", input="correct horse battery\n"
    )
    assert json.loads(created.stdout)["name"] == "alice"
    no_role = verbs.cli("key", "create", "--user", "alice", "--project", "demo", check=False)
    assert no_role.returncode == 1 and "no role in project" in no_role.stderr
    owner = verbs.cli("member", "add", "demo", "alice", "--role", "owner", check=False)
    assert owner.returncode == 2 and "project role must be one of" in owner.stderr
    verbs.cli("member", "add", "demo", "alice", "--role", "member")
    key = verbs.cli_json(
        "key", "create", "--user", "alice", "--project", "demo", "--expires", "2099-01-01"
    )
    assert key["access_key_id"].startswith("BK") and len(key["secret_access_key"]) >= 40
    listed = verbs.cli_items("key", "list", "--project", "demo")
    assert [k["access_key_id"] for k in listed] == [key["access_key_id"]]
    assert listed[0]["state"] == "active"
    # A date alone: the key works through that day (UTC), as in the console.
    assert listed[0]["expires_at"].startswith("2099-01-01T23:59:59")
    assert key["secret_access_key"] not in json.dumps(listed)
    # Printed, the expiry says the moment it means.
    timed = verbs.cli(
        "key", "create", "--user", "alice", "--project", "demo", "--expires", "2099-01-01T12:30"
    ).stdout
    assert "Expires:           2099-01-01 12:30:00 UTC\n" in timed, timed
    vague = verbs.cli(
        "key", "create", "--user", "alice", "--project", "demo", "--expires", "soon", check=False
    )
    assert vague.returncode == 2 and "is not YYYY-MM-DD" in vague.stderr, vague.stderr
    timed_id = re.search(r"Access key ID: +(\S+)", timed)
    assert timed_id is not None
    verbs.cli("key", "delete", timed_id.group(1), "--yes")
    verbs.cli("key", "disable", key["access_key_id"])
    assert verbs.cli_items("key", "list", "--user", "alice")[0]["state"] == "disabled"
    verbs.cli("key", "delete", key["access_key_id"], "--yes")
    assert verbs.cli_items("key", "list") == []
    entries = verbs.cli_items("audit", "demo")
    actions = [entry["action"] for entry in entries]
    assert actions == [
        "key.delete",
        "key.disable",
        "key.delete",
        "key.create",
        "key.create",
        "member.add",
    ]
    # Each audited as who ran it and from where, as every admin verb is.
    assert {entry["actor"] for entry in entries} == {f"cli:{getpass.getuser()}"}
    assert {entry["client"] for entry in entries} == {f"cli on {socket.gethostname()}"}


def test_the_last_admin_of_a_project_is_neither_demoted_nor_removed(tmp_path: Path) -> None:
    """`member add --role` and `member remove` keep a project that has admins with one, as the
    API does (exit 1, a refusal of the state things are in), until another member is admin."""
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    verbs.cli("project", "create", "demo")
    for name in ("alice", "bob"):
        verbs.cli("user", "create", name, "--service-account")
    verbs.cli("member", "add", "demo", "alice", "--role", "admin")
    told = (
        "user 'alice' is the last admin of project 'demo': a project keeps at least one admin; "
        "make another member admin first"
    )
    for refused in (
        verbs.cli("member", "add", "demo", "alice", "--role", "reader", check=False),
        verbs.cli("member", "remove", "demo", "alice", "--yes", check=False),
        # Refused before asking to confirm (no terminal here: it would say so instead).
        verbs.cli("member", "remove", "demo", "alice", check=False),
        verbs.cli("user", "delete", "alice", check=False),
    ):
        assert refused.returncode == 1 and told in " ".join(refused.stderr.split()), refused
    verbs.cli("member", "add", "demo", "bob", "--role", "admin")
    verbs.cli("member", "remove", "demo", "alice", "--yes")
    assert [(m["user"], m["role"]) for m in verbs.cli_items("member", "list", "demo")] == [
        ("bob", "admin")
    ]


def _verbs(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every verb and sub-verb of the CLI, as the words a user types."""
    found = [path]
    if hasattr(command, "commands"):  # a group of verbs
        for name, sub in command.commands.items():
            found += _verbs(sub, (*path, name))
    return found


def test_help_of_every_verb_and_sub_verb() -> None:
    runner = CliRunner()
    verbs = _verbs(typer.main.get_command(app))
    assert ("image", "list") in verbs and ("tag", "restore") in verbs
    for verb in verbs:
        result = runner.invoke(app, [*verb, "--help"], prog_name="berth", env={"COLUMNS": "80"})
        shown = " ".join(verb)
        assert result.exit_code == 0, f"berth {shown} --help: {result.output}{result.exception}"
        assert "Usage: berth" in result.output, shown
        assert "<bool>" not in result.output, f"berth {shown} --help shows <bool>"
        # As the README says: every verb but serve and init answers in JSON for scripts.
        leaf = not result.output.count("Commands")
        if leaf and verb and verb not in (("serve",), ("init",)):
            assert "--json" in result.output, f"berth {shown} takes no --json"
        # One placeholder style: {NAME} required, [NAME] optional, named in capitals.
        usage = result.output.split("Usage: ", 1)[1].split("\n\n", 1)[0]
        placeholders = usage.split("[OPTIONS]", 1)[-1]
        assert "[[" not in placeholders and not re.search(r"[{\[][a-z]", placeholders), usage
    image_list = runner.invoke(app, ["image", "list", "--help"]).output
    # Ranges a verb enforces are shown.
    assert "1<=x<=400" in runner.invoke(app, ["usage", "--help"], env={"COLUMNS": "200"}).output
    assert "--limit" in runner.invoke(app, ["retention", "history", "--help"]).output
    assert "PROJECT/REPO[/IMAGE]" in image_list
    assert "PROJECT/REPO" in runner.invoke(app, ["repo", "show", "--help"]).output


def test_help_as_typed_in_a_shell() -> None:
    shown = subprocess.run(
        [*BERTH, "tag", "restore", "--help"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "PROJECT/REPO[/IMAGE]" in shown.stdout and "TAG" in shown.stdout


def _berth_in(directory: Path, *args: str, **env: str) -> Typed:
    """`berth ARGS` typed in `directory` with no BERTH_* settings but `env`: in this process
    (a new interpreter takes seconds to import the CLI), with the same output."""
    return invoked(directory, list(args), {"COLUMNS": "300", **env})


def test_admin_verbs_never_create_a_data_directory(tmp_path: Path) -> None:
    typed = subprocess.run(
        [*BERTH, "project", "create", "oops"],
        env={k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert typed.returncode == 1 and "no Berth data directory at" in typed.stderr
    for verb in (["project", "create", "oops"], ["key", "list"], ["gc", "run", "oops"]):
        refused = _berth_in(tmp_path, *verb)
        assert refused.returncode == 1, refused.stdout
        assert f"no Berth data directory at {tmp_path / 'berth-data'}" in refused.stderr
        for way in ("--data-dir", "BERTH_DATA_DIR", "BERTH_CONFIG", "berth init"):
            assert way in refused.stderr, (way, refused.stderr)
        assert "Created" not in refused.stdout
    assert list(tmp_path.iterdir()) == []

    env = {"BERTH_ADMIN_PASSWORD": "admin-password"}
    created = _berth_in(tmp_path, "init", **env)
    assert created.returncode == 0, created.stderr
    data = tmp_path / "berth-data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "berth.db").stat().st_mode) == 0o600
    assert _berth_in(tmp_path, "init").returncode == 3  # there already: nothing touched

    verbose = _berth_in(tmp_path, "--verbose", "project", "create", "demo")
    assert verbose.returncode == 0, verbose.stderr
    assert f"Using SQLite {data / 'berth.db'}" in verbose.stderr
    status = json.loads(_berth_in(tmp_path, "status", "--json").stdout)
    assert status["database"] == f"SQLite {data / 'berth.db'}" and status["data_found"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = _berth_in(elsewhere, "project", "list")  # another directory: refused, not created
    assert moved.returncode == 1 and "no Berth data directory" in moved.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (elsewhere / "berth-data").exists()
    named = _berth_in(elsewhere, "--data-dir", str(data), "project", "list", "--json")
    assert [p["name"] for p in json.loads(named.stdout)["items"]] == ["demo"]
    by_env = _berth_in(elsewhere, "project", "list", "--json", BERTH_DATA_DIR=str(data))
    assert [p["name"] for p in json.loads(by_env.stdout)["items"]] == ["demo"]
    missing = _berth_in(tmp_path, "status")
    assert missing.returncode == 0 and str(data / "berth.db") in missing.stdout
    third = tmp_path / "third"
    assert _berth_in(elsewhere, "--data-dir", str(third), "init", **env).returncode == 0
    assert (third / "berth.db").is_file() and list(elsewhere.iterdir()) == []


def test_admin_verbs_refuse_an_empty_database(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    (tmp_path / "data").mkdir()
    env = {"BERTH_DATA_DIR": str(tmp_path / "data"), "BERTH_DATABASE_URL": url}
    refused = _berth_in(tmp_path, "project", "create", "oops", **env)
    assert refused.returncode == 1
    assert "holds no Berth data" in refused.stderr and "berth init" in refused.stderr
    assert "postgres@127.0.0.1" in refused.stderr
    assert _berth_in(tmp_path, "init", BERTH_ADMIN_PASSWORD="admin-password", **env).returncode == 0
    created = _berth_in(tmp_path, "project", "create", "demo", **env)
    assert created.returncode == 0, created.stderr


def test_an_empty_sqlite_file_is_no_data_until_init(tmp_path: Path) -> None:
    data = tmp_path / "berth-data"
    data.mkdir()
    (data / "berth.db").touch()
    refused = _berth_in(tmp_path, "project", "list")
    assert refused.returncode == 1 and "holds no Berth data" in refused.stderr
    assert _berth_in(tmp_path, "init", BERTH_ADMIN_PASSWORD="admin-password").returncode == 0
    created = _berth_in(tmp_path, "project", "create", "demo")
    assert created.returncode == 0, created.stderr


def _not_a_database(data: Path) -> dict[str, str]:
    (data / "berth.db").write_bytes(b"this file is not an SQLite database\n" * 100)
    return {}


def _unreachable_server(data: Path) -> dict[str, str]:
    return {"BERTH_DATABASE_URL": f"postgresql+asyncpg://berth@127.0.0.1:{free_port()}/berth"}


ADMIN_VERBS = (("user", "list"), ("gc", "history", "demo"), ("project", "list"))


def test_admin_verbs_on_a_database_server_not_reached_exit_1_saying_where(
    tmp_path: Path,
) -> None:
    """A database server that is not reached (nothing listens) is an outage, not a setting: a
    verb exits 1, saying the server's address and what to check, with no traceback."""
    (tmp_path / "berth-data").mkdir()
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://berth:pg-secret-9@127.0.0.1:{port}/berth"
    for verb in ADMIN_VERBS:
        refused = _berth_in(tmp_path, *verb, BERTH_DATABASE_URL=url)
        assert refused.returncode == 1, (verb, refused.stderr)
        said = " ".join(refused.stderr.split())
        assert said.startswith(f"error: cannot reach the database at 127.0.0.1:{port} ("), said
        assert f"Check that the database server 127.0.0.1:{port} is reachable" in said, said
        assert "Traceback" not in said and "pg-secret-9" not in said


def test_admin_verbs_on_a_database_host_that_does_not_resolve_exit_2(tmp_path: Path) -> None:
    """A host name that does not exist is a typo to put right (2), not an outage (1)."""
    (tmp_path / "berth-data").mkdir()
    host = unresolvable_host()
    url = f"postgresql+asyncpg://berth:pg-secret-9@{host}/berth"
    for verb in ADMIN_VERBS:
        refused = _berth_in(tmp_path, *verb, BERTH_DATABASE_URL=url)
        assert refused.returncode == 2, (verb, refused.stderr)
        said = " ".join(refused.stderr.split())
        assert said.startswith(
            f"error: cannot resolve database host {host} (Name or service not known): "
            f"postgresql+asyncpg://berth:***@{host}/berth "
        ), said
        assert "that database_url (BERTH_DATABASE_URL) names it" in said, said
        assert "Traceback" not in said and "pg-secret-9" not in said


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://berth:pg-secret-9@127.0.0.1:fivefourthreetwo/berth",
        "no database URL",
    ],
)
def test_admin_verbs_with_a_malformed_database_url_exit_2(tmp_path: Path, url: str) -> None:
    (tmp_path / "berth-data").mkdir()
    for verb in ADMIN_VERBS:
        refused = _berth_in(tmp_path, *verb, BERTH_DATABASE_URL=url)
        assert refused.returncode == 2, (verb, refused.stderr)
        said = " ".join(refused.stderr.split())
        assert said.startswith("error: BERTH_DATABASE_URL: "), said
        assert "is not a database URL" in said, said
        assert "Traceback" not in said and "pg-secret-9" not in said


def test_admin_verbs_refused_by_the_database_server_exit_2(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    """A server reached that refuses the role or has no such database: a setting (2)."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    (tmp_path / "berth-data").mkdir()
    url = make_url(postgres.create_database())
    wrong = {
        'role "no_such_role" does not exist': url.set(username="no_such_role"),
        'database "no_such_database" does not exist': url.set(database="no_such_database"),
    }
    for said_by_server, refused_url in wrong.items():
        for verb in ADMIN_VERBS:
            refused = _berth_in(
                tmp_path, *verb, BERTH_DATABASE_URL=refused_url.render_as_string(False)
            )
            assert refused.returncode == 2, (verb, refused.stderr)
            assert refused.stderr.startswith("error: cannot open the database "), refused.stderr
            assert said_by_server in " ".join(refused.stderr.split()), refused.stderr


def _a_table_damaged(data: Path) -> dict[str, str]:
    """Opens, and has a schema revision, but a table status reads lacks its columns."""
    with sqlite3.connect(data / "berth.db") as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('0021_serving_processes')")
        connection.execute("CREATE TABLE serving_processes (holder VARCHAR(200))")
    return {}


@pytest.mark.parametrize(
    ("database", "said", "noted"),
    [
        (_not_a_database, "cannot open the database SQLite", "(found, but cannot be read)"),
        (_unreachable_server, "cannot reach the database at 127.0.0.1:", "(unreachable: "),
        (_a_table_damaged, "cannot read the database SQLite", "(found, but cannot be read)"),
    ],
)
def test_status_says_data_it_cannot_read_is_found_not_missing(
    tmp_path: Path, database: Any, said: str, noted: str
) -> None:
    """A database that is there but cannot be opened or read may hold the data (an outage, a
    damaged file): status says it was found and cannot be read (a server: not reached), and
    exits 1."""
    data = tmp_path / "berth-data"
    data.mkdir()
    env = database(data)
    shown = _berth_in(tmp_path, "status", "--json", **env)
    assert shown.returncode == 1 and said in shown.stderr, shown.stderr
    status = json.loads(shown.stdout)
    assert (status["data_found"], status["data_readable"]) == (True, False), status
    assert status["data_problem"].startswith(said), status
    table = _berth_in(tmp_path, "status", **env)
    row = next(line for line in table.stdout.splitlines() if "Database" in line)
    assert table.returncode == 1 and noted in row, table.stdout


def test_status_says_a_database_server_is_unreachable_whatever_the_data_directory(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    """The Database row says a PostgreSQL server nothing answers for (a closed port) is
    unreachable, and why, whether or not the data directory is there (which says nothing of
    the server); one that answers but refuses the connection cannot be opened, and why."""
    port = free_port()  # nothing listens on it
    closed = f"postgresql://berth:secret@127.0.0.1:{port}/berth"
    refused = None if postgres is None else make_url(postgres.create_database())
    (tmp_path / "there").mkdir()
    cases = [("missing", closed, f"(unreachable: [Errno {errno.ECONNREFUSED}] ")]
    cases.append(("there", closed, f"(unreachable: [Errno {errno.ECONNREFUSED}] "))
    if refused is not None:
        wrong_role = refused.set(username="no_such_role").render_as_string(False)
        cases.append(("missing", wrong_role, '(cannot be opened: role "no_such_role" does not'))
    for data_dir, url, noted in cases:
        shown = _berth_in(tmp_path, "--data-dir", data_dir, "status", BERTH_DATABASE_URL=url)
        rows = {
            line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if "│" in line
        }
        assert shown.returncode == 1, (data_dir, url, shown.stderr)
        assert noted in rows["Database"], (data_dir, url, shown.stdout)
        assert "secret" not in shown.stdout
        found = "" if data_dir == "there" else " (not found)"
        assert f"{tmp_path / data_dir}{found} " in rows["Data directory"], shown.stdout
    assert not (tmp_path / "missing").exists()


def test_status_says_missing_data_is_not_found(tmp_path: Path) -> None:
    shown = _berth_in(tmp_path, "status", "--json")
    assert shown.returncode == 1 and "no Berth data directory" in shown.stderr
    status = json.loads(shown.stdout)
    assert (status["data_found"], status["data_readable"]) == (False, False), status
    assert status["data_problem"] == f"no Berth data directory at {tmp_path / 'berth-data'}"
    table = " ".join(_berth_in(tmp_path, "status").stdout.replace("│", " ").split())
    assert f"{tmp_path / 'berth-data' / 'berth.db'} (not found)" in table, table


def test_data_a_newer_berth_migrated_is_refused_by_serve_and_the_verbs(tmp_path: Path) -> None:
    env = {"BERTH_ADMIN_PASSWORD": "admin-password"}
    assert _berth_in(tmp_path, "init", **env).returncode == 0
    database = tmp_path / "berth-data" / "berth.db"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0999_next_release'")
    listed = _berth_in(tmp_path, "project", "list")
    assert listed.returncode == 1
    assert f"SQLite {database}: the database's schema is at revision 0999_next_release" in (
        listed.stderr
    )
    assert "newer version of Berth" in listed.stderr and "Upgrading" in listed.stderr
    # What to compare with the other version's: it prints the revision it migrates to.
    assert "`berth --version`" in listed.stderr
    status = json.loads(_berth_in(tmp_path, "status", "--json").stdout)
    assert (status["schema_revision"], status["schema_current"]) == ("0999_next_release", False)
    said = " ".join(_berth_in(tmp_path, "status").stdout.replace("│", " ").split())
    assert "revision 0999_next_release (newer than this Berth's" in said
    served = _berth_in(tmp_path, "serve", "--listen", f"127.0.0.1:{free_port()}")
    assert served.returncode == 2 and "newer version of Berth" in served.stderr


SCHEMA = ScriptDirectory.from_config(alembic_config("sqlite://"))
NEWEST = str(SCHEMA.get_current_head())


def test_version_names_the_release_and_the_schema_it_migrates_to() -> None:
    shown = subprocess.run([*BERTH, "--version"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"berth {version('berth')} (database schema {NEWEST})\n"
    # The README's examples of it and of the migration's message name the newest revision.
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert f"(`berth {version('berth')} (database schema {NEWEST})`)" in readme
    assert f"from revision 0005 to {NEWEST}`" in readme


@pytest.mark.parametrize("backend", BACKENDS)
def test_admin_verbs_refuse_an_older_schema_and_only_serve_migrates_it(
    tmp_path: Path, backend: str, postgres: PostgresCluster | None
) -> None:
    """A newly installed berth's verbs, run while the older version's server may still serve,
    leave the schema as it is: the older server could not serve on a newer one."""
    berth = BerthServer(tmp_path / "data", database_url_for(backend, postgres))
    berth.cli("init")
    berth.create_project("demo")
    url = berth.database_url or f"sqlite+aiosqlite:///{berth.data_dir / 'berth.db'}"
    database = berth.data_dir / "berth.db"
    shown = make_url(url).render_as_string() if berth.database_url else f"SQLite {database}"
    # Already current: starting says nothing of the schema.
    berth.start()
    berth.stop()
    assert "Migrated the schema" not in berth.log_tail()

    older = "0005"  # as an older Berth left it
    alembic.downgrade(alembic_config(url), older)
    for verb in (("key", "list", "--project", "demo"), ("project", "list")):
        refused = berth.cli(*verb, check=False)
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2 and "Traceback" not in said, refused.stderr
        assert f"schema is at revision {older}, older than this Berth's {NEWEST}" in said
        assert "stop every server that uses this database, back the database up" in said
        assert "berth serve" in said
    assert current_revision(url) == older
    status = berth.cli_json("status")
    assert (status["schema_revision"], status["schema_current"]) == (older, False)
    said = " ".join(berth.cli("status").stdout.replace("│", " ").split())  # the table's cells
    assert f"revision {older} (older than this Berth's {NEWEST}: its berth serve" in said

    berth.start()
    try:
        assert f"Migrated the schema of {shown} from revision {older} to {NEWEST}" in (
            berth.log_tail()
        )
        assert [p["name"] for p in berth.cli_items("project", "list")] == ["demo"]
    finally:
        berth.stop()
    assert current_revision(url) == NEWEST
    assert berth.cli_json("status")["schema_current"] is True


def test_a_lost_administrator_password_is_reset_on_the_server(server: BerthServer) -> None:
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as api:
        assert api.get("/projects", auth=("admin", ADMIN_PASSWORD)).status_code == 200
        reset = server.cli(
            "user", "set-password", "admin", "--password-stdin", input="lost-and-found\n"
        )
        assert reset.returncode == 0, reset.stderr
        assert "Set the password of admin" in reset.stdout
        # The running server takes the new password at once; the old one is refused.
        assert api.get("/projects", auth=("admin", "lost-and-found")).status_code == 200
        assert api.get("/projects", auth=("admin", ADMIN_PASSWORD)).status_code == 401
        server._services(
            lambda s: s.identity.users.set_password("admin", ADMIN_PASSWORD, actor="test")
        )


def test_deleting_users_and_projects(tmp_path: Path) -> None:
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")  # with the administrator `admin`
    berth.create_repository("demo", "app")
    berth.create_project("empty")
    berth.create_user("bob", "bob-password")
    berth.create_user("root", "root-password", is_admin=True)
    berth.add_member("demo", "bob", "member")
    key_id, _secret = berth.access_key("demo", "bob")

    assert verbs.cli("user", "delete", "bob", "--yes").stdout.strip() == "Deleted user bob"
    assert berth._services(lambda s: s.identity.keys.list_keys()) == []
    entries = verbs.cli_items("audit", "demo")
    audit = [(e["action"], e["target"]) for e in entries]
    assert audit[:2] == [("user.delete", "bob"), ("key.delete", key_id)]
    # Audited as who ran it, from where (as other admin verbs are): a user named `cli` is
    # nobody's self.
    assert entries[0]["actor"].startswith("cli:") and entries[0]["client"].startswith("cli on ")
    berth.create_user("cli", "cli-password")
    assert verbs.cli("user", "delete", "cli", "--yes").stdout.strip() == "Deleted user cli"
    assert verbs.cli("user", "delete", "root", "--yes").returncode == 0
    # Refused before asking to confirm too (no terminal here: it would say so instead).
    for last_admin in (
        verbs.cli("user", "delete", "admin", "--yes", check=False),
        verbs.cli("user", "delete", "admin", check=False),
    ):
        assert last_admin.returncode == 1 and "last server administrator" in last_admin.stderr

    # A project that holds repositories goes only once its name is typed again.
    delete_demo = [*BERTH, "project", "delete", "demo"]
    wrong = typed_at_terminal(delete_demo, "demo2\n", env=berth.env)
    assert wrong.returncode == 1 and "nothing was deleted" in wrong.stderr
    assert "holds 1 repository" in wrong.stderr
    typed = typed_at_terminal(delete_demo, "demo\n", env=berth.env)
    assert typed.returncode == 0, typed.stderr
    assert "Deleted project demo and its 1 repository" in typed.stdout
    assert verbs.cli_json("project", "delete", "empty", "--yes")["deleted"] is True
    assert berth._services(lambda s: s.repositories.list_projects()) == []


def test_deleting_verbs_ask_at_a_terminal_whatever_json_says_and_refuse_without_one(
    tmp_path: Path,
) -> None:
    """--json changes what a verb prints, not whether it asks: the question goes to standard
    error (standard output holds the JSON alone), and where nobody can answer (a script, a
    pipe) the verb refuses, naming --yes, and deletes nothing."""
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    berth.create_repository("demo", "app")
    berth.create_project("empty")
    berth.create_user("bob", "bob-password")
    for verb in (
        ["repo", "delete", "demo/app"],
        ["retention", "run", "demo"],
        ["user", "delete", "bob"],
        ["project", "delete", "empty"],
        ["project", "delete", "demo"],  # which holds a repository: its name is asked for
    ):
        refused = verbs.cli(*verb, "--json", input="y\n", check=False)
        assert refused.returncode == 2 and refused.stdout == "", (verb, refused)
        said = " ".join(refused.stderr.split())
        assert said.startswith("error: no terminal to ask on whether to delete"), said
        assert "give --yes" in said, said
    assert verbs.cli_items("retention", "history", "demo") == []  # no run
    assert [r["name"] for r in verbs.cli_items("repo", "list", "demo")] == ["app"]
    assert "bob" in {u["name"] for u in verbs.cli_items("user", "list")}
    assert {p["name"] for p in verbs.cli_items("project", "list")} == {"demo", "empty"}

    delete_app = [*BERTH, "repo", "delete", "demo/app", "--json"]
    declined = typed_at_terminal(delete_app, "n\n", env=berth.env)
    assert declined.returncode == 1 and declined.stdout == ""
    assert "Delete demo/app with all its images? [y/N]" in declined.stderr
    assert "nothing was deleted" in declined.stderr
    retention = typed_at_terminal(
        [*BERTH, "retention", "run", "demo", "--json"], "n\n", env=berth.env
    )
    assert retention.returncode == 1 and retention.stdout == ""
    assert "Delete the images of demo that no retention rule keeps?" in retention.stderr
    assert verbs.cli_items("retention", "history", "demo") == []
    deleted = typed_at_terminal(delete_app, "y\n", env=berth.env)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"repository": "demo/app", "deleted": True}
    assert verbs.cli_items("repo", "list", "demo") == []


def _on(server: BerthServer, *args: str) -> Typed:
    """`berth ARGS` on the server's data in this process, with no terminal (a new interpreter
    per call takes seconds); exits 0 unless `args` says otherwise by starting with "!"."""
    refusal = args[0] == "!"
    done = _berth_in(
        server.data_dir.parent,
        *args[refusal:],
        BERTH_DATA_DIR=str(server.data_dir),
        BERTH_WEBHOOK_ALLOW_PRIVATE="true",
    )
    assert refusal or done.returncode == 0, (args, done)
    return done


def _items(server: BerthServer, *args: str) -> list[Any]:
    items: list[Any] = json.loads(_on(server, *args, "--json").stdout)["items"]
    return items


def test_removing_and_collecting_verbs_ask_as_deleting_ones_do(tmp_path: Path) -> None:
    """Every verb that destroys something (a key, a webhook with its log, a role, a rule,
    garbage, orphaned blobs) asks as `repo delete` does: on standard error whatever --json
    says, refusing without a terminal (naming --yes); "n" leaves everything as it was, "y"
    and --yes go ahead. A dry run of garbage collection changes nothing and never asks."""
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    berth.create_repository("demo", "app")
    berth.create_user("bob", "bob-password")
    berth.create_user("eve", "eve-password")
    berth.add_member("demo", "bob", "member")
    berth.grant("demo", "app", "eve", "viewer")
    key_id, _secret = berth.access_key("demo", "bob")
    _on(berth, "webhook", "create", "demo", "http://127.0.0.1:9/hook")
    _on(berth, "immutability", "add", "demo", "v*")
    asking = {
        ("key", "delete", key_id): f"Delete access key {key_id}",
        ("webhook", "delete", "demo", "1"): "Delete webhook 1 of demo with its queue",
        ("member", "remove", "demo", "bob"): "Remove bob from demo",
        ("repo", "revoke", "demo/app", "eve"): "Remove eve's role on demo/app",
        ("immutability", "remove", "demo", "1"): "Remove immutable tag rule 1 of demo",
        ("gc", "run", "demo"): "Delete the blobs of demo no image needs",
        ("gc", "run", "demo", "--delete-untagged"): "Delete the untagged images of demo",
        ("storage", "check", "--repair"): "Remove the stored blobs no metadata names",
    }
    for verb in asking:
        refused = _on(berth, "!", *verb, "--json")
        assert refused.returncode == 2 and refused.stdout == "", (verb, refused)
        said = " ".join(refused.stderr.split())
        assert said.startswith("error: no terminal to ask on whether to "), said
        assert "give --yes" in said, said
    for verb, question in asking.items():
        declined = typed_at_terminal([*BERTH, *verb, "--json"], "n\n", env=berth.env)
        assert declined.returncode == 1 and declined.stdout == "", (verb, declined)
        assert f"{question}" in declined.stderr and "? [y/N]" in declined.stderr, declined
        assert "not confirmed: nothing was deleted" in declined.stderr
    assert [k["access_key_id"] for k in _items(berth, "key", "list")] == [key_id]
    assert [w["id"] for w in _items(berth, "webhook", "list", "demo")] == [1]
    assert "bob" in {m["user"] for m in _items(berth, "member", "list", "demo")}
    grants = berth._services(lambda s: s.identity.members.list_grants("demo", "app"))
    assert [g.user for g in grants] == ["eve"]
    assert [r["id"] for r in _items(berth, "immutability", "list", "demo")] == [1]
    assert _items(berth, "gc", "history", "demo") == []

    # A dry run asks nothing, even where nobody could answer.
    dry = json.loads(_on(berth, "gc", "run", "demo", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True
    # A project mistyped is refused before the question.
    mistyped = _on(berth, "!", "gc", "run", "dmeo")
    assert mistyped.returncode == 1 and "does not exist" in mistyped.stderr, mistyped

    removed = typed_at_terminal([*BERTH, "key", "delete", key_id, "--json"], "y\n", env=berth.env)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"access_key_id": key_id, "deleted": True}
    assert _items(berth, "key", "list") == []
    collected = typed_at_terminal([*BERTH, "gc", "run", "demo", "--json"], "yes\n", env=berth.env)
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["dry_run"] is False
    _on(berth, "member", "remove", "demo", "bob", "--yes")
    assert "bob" not in {m["user"] for m in _items(berth, "member", "list", "demo")}
    _on(berth, "repo", "revoke", "demo/app", "eve", "--yes")
    assert berth._services(lambda s: s.identity.members.list_grants("demo", "app")) == []


def test_deleting_verbs_refuse_what_is_not_there_before_asking(tmp_path: Path) -> None:
    """A delete, remove, revoke, cancel or collection of something that is not there (a name
    mistyped) is refused as the deletion would refuse it (exit 1), without a terminal as on
    one: never a question about it, nor --yes asked for. With --yes the refusal says only
    what is wrong (no empty line after it)."""
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    berth.create_repository("demo", "app")
    berth.create_user("bob", "bob-password")
    berth.create_user("eve", "eve-password")
    berth.add_member("demo", "bob", "member")
    berth.grant("demo", "app", "eve", "viewer")
    no_manifest = "sha256:" + "0" * 64
    absent = {
        ("repo", "delete", "demo/nope"): "repository demo/nope does not exist",
        ("image", "delete", "demo/app", no_manifest): f"manifest {no_manifest} is not in",
        ("user", "delete", "nobody"): "user 'nobody' does not exist",
        ("key", "delete", "BKNOPE"): "access key 'BKNOPE' does not exist",
        ("member", "remove", "demo", "eve"): "user 'eve' is not a member of project 'demo'",
        ("repo", "revoke", "demo/app", "bob"): "user 'bob' has no role on demo/app",
        ("webhook", "delete", "demo", "7"): "project 'demo' has no webhook 7",
        ("immutability", "remove", "demo", "3"): "project 'demo' has no immutable tag rule 3",
        ("upload", "cancel", "demo", "123"): "upload '123' is not in progress in project 'demo'",
        ("upload", "cancel", "demo", "--user", "nobody"): "user 'nobody' does not exist",
        ("upload", "cancel", "nope", "--all"): "project 'nope' does not exist",
        ("project", "delete", "nope"): "project 'nope' does not exist",
        ("gc", "run", "nope"): "project 'nope' does not exist",
        ("retention", "run", "nope"): "project 'nope' does not exist",
    }
    for verb, refusal in absent.items():
        refused = _on(berth, "!", *verb)
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 1 and said.startswith(f"error: {refusal}"), (verb, said)
        assert "terminal" not in said, (verb, said)
    asked = typed_at_terminal([*BERTH, "repo", "delete", "demo/nope"], "y\n", env=berth.env)
    assert asked.returncode == 1 and "[y/N]" not in asked.stderr, asked.stderr
    assert asked.stderr == "error: repository demo/nope does not exist\n"
    collected = _on(berth, "!", "gc", "run", "nope", "--yes")
    assert collected.returncode == 1
    assert collected.stderr == "error: project 'nope' does not exist\n", collected.stderr
    assert verbs.cli_items("repo", "list", "demo")[0]["name"] == "app"


def test_every_list_verb_prints_the_same_listing_with_json(tmp_path: Path) -> None:
    """One shape for scripts, the Management API's page: `items`, `page`, `per_page` (the
    --limit or --per-page, null where everything is listed) and `total` (beyond a limit too)."""
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    berth.create_repository("demo", "app")
    berth.create_repository("demo", "web")
    berth.create_user("bob", "bob-password")
    berth.add_member("demo", "bob", "member")
    berth.access_key("demo", "bob")
    _on(berth, "webhook", "create", "demo", "http://127.0.0.1:9/hook")
    _on(berth, "immutability", "add", "demo", "v*")
    _on(berth, "gc", "run", "demo", "--dry-run")
    _on(berth, "gc", "run", "demo", "--dry-run")
    _on(berth, "retention", "dry-run", "demo")
    everything = {
        ("project", "list"): 1,
        ("repo", "list", "demo"): 2,
        ("user", "list"): 2,
        ("member", "list", "demo"): 1,
        ("key", "list"): 1,
        ("webhook", "list", "demo"): 1,
        ("immutability", "list", "demo"): 1,
    }
    for verb, total in everything.items():
        listed = json.loads(_on(berth, *verb, "--json").stdout)
        assert listed == {"items": listed["items"], "page": 1, "per_page": None, "total": total}
        assert len(listed["items"]) == total, (verb, listed)
    limited = {
        ("audit", "demo", "--limit", "1"): 1,
        ("audit", "--limit", "1"): 1,
        ("gc", "history", "demo", "--limit", "1"): 1,
        ("image", "list", "demo/app", "--per-page", "5"): 5,
        ("image", "history", "demo/app", "--limit", "3"): 3,
        ("upload", "list", "demo", "--limit", "2"): 2,
        ("webhook", "deliveries", "demo", "1", "--limit", "4"): 4,
        ("retention", "history", "demo"): 50,
    }
    for verb, per_page in limited.items():
        listed = json.loads(_on(berth, *verb, "--json").stdout)
        assert set(listed) == {"items", "page", "per_page", "total"}, (verb, listed)
        assert (listed["page"], listed["per_page"]) == (1, per_page), (verb, listed)
        assert len(listed["items"]) <= per_page and listed["total"] >= len(listed["items"])
    # The total counts beyond the limit.
    audit = json.loads(_on(berth, "audit", "demo", "--limit", "1", "--json").stdout)
    assert len(audit["items"]) == 1 and audit["total"] > 1, audit
    runs = json.loads(_on(berth, "gc", "history", "demo", "--limit", "1", "--json").stdout)
    assert len(runs["items"]) == 1 and runs["total"] == 2, runs


def test_project_create_and_quota_changes_are_audited_and_the_quota_has_a_verb(
    tmp_path: Path,
) -> None:
    berth = BerthServer(tmp_path / "data")
    verbs = in_process(berth)
    verbs.cli("init")
    verbs.cli("project", "create", "demo")
    [created] = [e for e in verbs.cli_items("audit") if e["action"] == "project.create"]
    assert created["target"] == "demo" and created["actor"].startswith("cli:")
    assert created["client"].startswith("cli on ")
    assert "project.create" in verbs.cli("audit").stdout  # the log outside projects

    shown = " ".join(verbs.cli("project", "quota", "demo").stdout.split())
    assert shown == (
        "Project demo may hold at most 100 repositories (the server's default); it holds 0."
    )
    own = verbs.cli_json("project", "quota", "demo", "1")
    assert own == {
        "name": "demo",
        "repositories": 0,
        "repository_quota": 1,
        "quota_is_default": False,
    }
    verbs.cli("repo", "create", "demo/one")
    refused = verbs.cli("repo", "create", "demo/two", check=False)
    assert refused.returncode == 1 and "repository quota" in refused.stderr
    assert verbs.cli_json("project", "quota", "demo", "default")["quota_is_default"] is True
    changes = [e for e in verbs.cli_items("audit", "demo") if e["action"] == "project.quota"]
    assert [e["detail"] for e in changes] == [
        {"old": 1, "old_is_default": False, "new": 100, "new_is_default": True},
        {"old": 100, "old_is_default": True, "new": 1, "new_is_default": False},
    ]
    assert all(e["actor"].startswith("cli:") for e in changes)
    table = " ".join(verbs.cli("audit", "demo").stdout.split())
    assert "project.quota" in table  # its details in --json, above

    bad = verbs.cli("project", "quota", "demo", "many", check=False)
    assert bad.returncode == 2 and "MAXIMUM must be a whole number" in bad.stderr
    missing = verbs.cli("project", "quota", "nope", "5", check=False)
    assert missing.returncode == 1 and "project 'nope' does not exist" in missing.stderr


def test_messages_to_no_terminal_are_never_cut_mid_sentence(tmp_path: Path) -> None:
    """Output piped to a file or a script (no COLUMNS either) keeps each message on one line,
    where Rich wrapped it at 80 columns; tables still fit 80 columns."""
    berth = BerthServer(tmp_path / "data", extra_env={"BERTH_WEBHOOK_ALLOW_PRIVATE": "true"})
    env = {name: value for name, value in berth.env.items() if name != "COLUMNS"}

    def piped(*args: str) -> str:
        typed = subprocess.run(
            [*BERTH, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert typed.returncode == 0, typed.stderr
        return typed.stdout

    piped("init")
    piped("project", "create", "demo")
    quota = piped("project", "quota", "demo", "default")
    assert quota == (
        "Project demo may hold at most 100 repositories (the server's default); it holds 0.\n"
    )
    piped("webhook", "create", "demo", "http://127.0.0.1:9/a-long-path-for-a-wide-table")
    (queued,) = [line for line in piped("webhook", "test", "demo", "1").splitlines() if "(" in line]
    assert queued.endswith(
        "sends it within seconds, ahead of the endpoint's queue, once (it is not retried)."
    ), queued
    table = piped("webhook", "list", "demo").splitlines()
    assert max(map(len, table)) <= 80 and table[3].startswith("1  http://127.0.0.1:9/"), table


def test_tables_fit_80_columns_with_whole_ids_and_times_to_the_minute(tmp_path: Path) -> None:
    env = {"BERTH_ADMIN_PASSWORD": "admin-password"}
    assert _berth_in(tmp_path, "init", **env).returncode == 0
    _berth_in(tmp_path, "project", "create", "a-project-with-a-long-name")
    for _ in range(2):
        made = _berth_in(
            tmp_path, "key", "create", "--user", "admin", "--project", "a-project-with-a-long-name"
        )
        assert made.returncode == 0, made.stderr
    keys = json.loads(_berth_in(tmp_path, "key", "list", "--json").stdout)["items"]
    _berth_in(tmp_path, "key", "disable", keys[0]["access_key_id"])

    def typed(*args: str) -> str:
        shown = subprocess.run(
            [*BERTH, *args],
            env={**os.environ, "BERTH_DATA_DIR": str(tmp_path / "berth-data"), "COLUMNS": "80"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert max(map(len, shown.splitlines())) <= 80, shown
        assert "…" not in shown and "None" not in shown, shown
        return shown

    listed = typed("key", "list")
    for key in keys:
        assert key["access_key_id"] in listed, listed
    assert "never" in listed and "disabled" in listed
    audit = typed("audit", "a-project-with-a-long-name")
    times = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)? ?\S*", audit)
    assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d [A-Z+\-0-9]+", t) for t in times)
    assert keys[0]["access_key_id"] in audit

    # A long audit target (a repository role: REPOSITORY:USER) folds, every character kept,
    # beside every other column; the key ID stays whole.
    project = "a-project-with-a-long-name"
    repository = "nightly-builds-of-the-web-frontend-and-its-companion-services-in-all-the-regions"
    description = "2024-05-01T12:00 nightly build"  # text that starts like a time
    created = _berth_in(
        tmp_path, "repo", "create", f"{project}/{repository}", "--description", description
    )
    assert created.returncode == 0, created.stderr
    assert _berth_in(tmp_path, "user", "create", "bob", "--service-account").returncode == 0
    granted = _berth_in(
        tmp_path, "repo", "grant", f"{project}/{repository}", "bob", "--role", "viewer"
    )
    assert granted.returncode == 0, granted.stderr
    target = f"{repository}:bob"
    assert len(target) > 80
    audit = typed("audit", project)
    header = next(line for line in audit.splitlines() if "target" in line)
    assert header.split() == ["at", "actor", "action", "target", "client"], audit
    start, end = header.index("target"), header.index("client")
    column = "".join(line[start:end].strip() for line in audit.splitlines())
    assert target in column, audit
    assert keys[0]["access_key_id"] in audit

    # A description that starts like a time is shown as written.
    assert "nightly" in typed("repo", "list", project)  # folded at 80 columns
    assert description in typed("repo", "show", f"{project}/{repository}")

    # Garbage collection history: times and states whole, like every other table.
    assert _berth_in(tmp_path, "gc", "run", project, "--dry-run").returncode == 0
    history = typed("gc", "history", project)
    assert "succeeded" in history, history
    # The start time, to the minute with its zone (at 80 columns, the time under the date).
    assert re.search(r"\b\d{4}-\d\d-\d\d\b", history), history
    assert re.search(r"\b\d\d:\d\d [A-Z+\-0-9]+", history), history
    assert not re.search(r"\d\d:\d\d:\d\d", history), history


def _typed(directory: Path, words: list[str], input: str | None = None) -> Typed:
    """A command line run in `directory` as a shell runs it, with no BERTH_* settings."""
    done = subprocess.run(
        words,
        env={k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        input=input,
    )
    return Typed(done.returncode, done.stdout, done.stderr)


def test_init_and_the_refusal_print_commands_that_work_with_the_data_directory_given(
    tmp_path: Path,
) -> None:
    """Only --data-dir names the data: the refusal on data that is not there names the init
    command with that directory, which creates it there; init's sign-in hint names commands
    with it too, and the project one, pasted, makes a project in that data. The directory is
    named absolute, given relative: pasted in another directory, they work on the same data."""
    refused = _typed(tmp_path, [*BERTH, "--data-dir", "mine", "project", "list"])
    assert refused.returncode == 1
    said = " ".join(refused.stderr.split())
    printed_init = said.split("new data there")[0].rsplit("; `", 1)[1].split("`", 1)[0]
    mine = str(tmp_path / "mine")
    assert shlex.split(printed_init)[1:] == ["--data-dir", mine, "init"]
    initialised = _typed(tmp_path, shlex.split(printed_init))
    assert initialised.returncode == 0, initialised.stderr
    assert (tmp_path / "mine" / "berth.db").is_file() and not (tmp_path / "berth-data").exists()

    serve = initialised.stdout.split(" once `", 1)[1].split("`", 1)[0]
    assert shlex.split(serve)[1:] == ["--data-dir", mine, "serve"]
    (hint,) = [line for line in initialised.stdout.splitlines() if "project create" in line]
    create = hint.split("), then an access key", 1)[0].strip()
    words = ["demo" if word == "PROJECT" else word for word in shlex.split(create)]
    assert words[1:] == ["--data-dir", mine, "project", "create", "demo"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    created = _typed(elsewhere, words)
    assert created.returncode == 0, created.stderr
    listed = _typed(tmp_path, [*BERTH, "--data-dir", "mine", "project", "list", "--json"])
    assert [p["name"] for p in json.loads(listed.stdout)["items"]] == ["demo"]


def test_init_names_where_the_administrator_password_was_given(tmp_path: Path) -> None:
    """The password from admin_password in the config file is said to come from there, not
    from BERTH_ADMIN_PASSWORD (which was not set); from the environment, the variable."""
    from_file = tmp_path / "file"
    from_file.mkdir()
    (from_file / "berth.toml").write_text('admin_password = "from-the-file-1"\n')
    made = _berth_in(from_file, "init")
    assert made.returncode == 0, made.stderr
    config = from_file / "berth.toml"
    assert f"password: the one given in admin_password in {config}" in made.stdout, made.stdout
    assert "BERTH_ADMIN_PASSWORD" not in made.stdout

    from_env = tmp_path / "env"
    from_env.mkdir()
    made = _berth_in(from_env, "init", BERTH_ADMIN_PASSWORD="from-the-env-1")
    assert made.returncode == 0, made.stderr
    assert "password: the one given in admin_password (BERTH_ADMIN_PASSWORD)" in made.stdout


def _printed_create(stdout: str) -> str:
    """The `project create` command init's sign-in hint prints, for a project `demo`."""
    (hint,) = [line for line in stdout.splitlines() if "project create" in line]
    return hint.split("), then an access key", 1)[0].strip().replace("PROJECT", "demo")


def test_init_with_a_database_url_prints_commands_that_carry_it(tmp_path: Path) -> None:
    """The database given with --database-url is named in the commands init prints, so pasted
    into a shell without it they work on that database, not a new one in the data directory."""
    database = tmp_path / "elsewhere.db"
    url = f"sqlite+aiosqlite:///{database}"
    initialised = _typed(tmp_path, [*BERTH, "--data-dir", "mine", "init", "--database-url", url])
    assert initialised.returncode == 0, initialised.stderr
    create = _printed_create(initialised.stdout)
    assert shlex.split(create)[0] == f"BERTH_DATABASE_URL={url}"
    assert _typed(tmp_path, ["bash", "-c", create]).returncode == 0
    listed = _typed(tmp_path, [*BERTH, "--data-dir", "mine", "project", "list", "--json"])
    assert listed.returncode == 1 and "no Berth data" in listed.stderr  # not in mine/berth.db
    named = _typed(
        tmp_path,
        ["env", f"BERTH_DATABASE_URL={url}", *BERTH, "--data-dir", "mine", "project", "list"],
    )
    assert "demo" in named.stdout, named.stderr


def test_init_never_prints_a_database_password_and_says_how_to_name_the_database(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    """A --database-url with a password is not printed (a server's banner goes to its log):
    init says to set BERTH_DATABASE_URL, and with it set the printed commands work."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database().replace("postgres@", "postgres:pg-secret-9@")
    initialised = _typed(tmp_path, [*BERTH, "--data-dir", "d", "init", "--database-url", url])
    assert initialised.returncode == 0, initialised.stderr
    assert "pg-secret-9" not in initialised.stdout + initialised.stderr
    assert "once BERTH_DATABASE_URL holds that URL" in initialised.stdout
    create = _printed_create(initialised.stdout)
    assert shlex.split(create)[1:] == [
        "--data-dir",
        str(tmp_path / "d"),
        "project",
        "create",
        "demo",
    ]
    pasted = _typed(tmp_path, ["env", f"BERTH_DATABASE_URL={url}", "bash", "-c", create])
    assert pasted.returncode == 0, pasted.stderr


def test_init_serve_and_the_verbs_take_a_database_url_without_its_driver(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    """postgresql:// and postgres:// (as PostgreSQL's documentation, Heroku and RDS write
    them) are opened with Berth's driver, asyncpg, as sqlite:// is with aiosqlite: not refused
    for want of psycopg, or a traceback; the password is never said."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    given = postgres.create_database().replace("postgres@", "postgres:pg-secret-9@")
    url = given.replace("postgresql+asyncpg://", "postgresql://")
    initialised = _typed(tmp_path, [*BERTH, "--data-dir", "d", "init", "--database-url", url])
    assert initialised.returncode == 0, initialised.stderr
    masked = make_url(given).render_as_string(hide_password=True)
    assert f"Created Berth data in {tmp_path / 'd'} ({masked})" in initialised.stdout
    server = BerthServer(tmp_path / "d", url.replace("postgresql://", "postgres://"))
    server.start()
    try:
        assert httpx.get(f"{server.url}/v2/", timeout=10).status_code == 401
        env = {"BERTH_DATA_DIR": str(server.data_dir), "BERTH_DATABASE_URL": url}
        created = _berth_in(tmp_path, "project", "create", "demo", **env)
        assert created.returncode == 0, created.stderr
        said = initialised.stdout + initialised.stderr + created.stdout + created.stderr
        assert "pg-secret-9" not in said + (server.data_dir / "server.log").read_text()
    finally:
        server.stop()
    database = tmp_path / "plain.db"
    env = {"BERTH_DATA_DIR": str(tmp_path / "s"), "BERTH_DATABASE_URL": f"sqlite:///{database}"}
    assert _berth_in(tmp_path, "init", **env).returncode == 0
    assert _berth_in(tmp_path, "project", "create", "demo", **env).returncode == 0
    assert database.is_file()


@pytest.mark.parametrize(
    "url",
    ["mysql://berth:pg-secret-9@db.example/berth", "postgresql+psycopg2://berth:pg-secret-9@db/b"],
)
def test_a_database_url_of_another_driver_is_refused_at_once_naming_berths(
    tmp_path: Path, url: str
) -> None:
    """A URL naming a driver Berth does not ship is a setting to put right (2), said before
    any connection, with the forms Berth takes (not "No module named 'MySQLdb'")."""
    driver = url.split("://", 1)[0]
    masked = url.replace(":pg-secret-9@", ":***@")
    refusal = (
        f"error: BERTH_DATABASE_URL: {masked!r} names {driver}, which Berth does not open: "
        "Berth takes postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE (postgresql:// and "
        "postgres:// are read as that) or sqlite+aiosqlite:///PATH (or sqlite:///PATH)"
    )
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": url, "BERTH_STARTUP_WAIT": "600"})
    assert " ".join(serve_refused(env).split()) == refusal
    for verb in [("init",), *ADMIN_VERBS]:
        refused = _berth_in(tmp_path, *verb, BERTH_DATABASE_URL=url)
        assert refused.returncode == 2, (verb, refused.stderr)
        assert " ".join(refused.stderr.split()) == refusal, verb
    assert not (tmp_path / "data").exists() and not (tmp_path / "berth-data").exists()


# The role that signs in to the TLS-only PostgreSQL with a client certificate (`cert`).
CERT_USER = "berth_cert"


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[tuple[PostgresCluster, Path]]:
    """This module's PostgreSQL 15 that takes TLS connections only, its certificate signed by
    a throw-away CA: (the cluster, the CA's certificate; CERT_USER's client.crt and client.key
    beside it)."""
    if not PostgresCluster.available():
        pytest.skip("PostgreSQL not installed")
    cluster = PostgresCluster().start()
    try:
        yield cluster, cluster.require_tls(CERT_USER)
    finally:
        cluster.stop()


def _libpq_url(cluster: PostgresCluster, query: str, user: str = "postgres") -> str:
    """A new database's URL as PostgreSQL's documentation writes it, with a password (never to
    be said) and `query`; `user` owns the database."""
    url = cluster.create_database()
    if user != "postgres":
        cluster.sql(f"ALTER DATABASE {url.rsplit('/', 1)[1]} OWNER TO {user}")
    written = url.replace("postgresql+asyncpg://postgres@", f"postgresql://{user}:pg-secret-9@")
    return f"{written}?{query}"


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=require",
        "sslmode=require&sslrootcert={ca}",
        "sslmode=verify-ca&sslrootcert={ca}",
        "sslmode=verify-full&sslrootcert={ca}",
        "sslmode=prefer",
        "sslmode=allow",
        "ssl=require",  # asyncpg's own parameter, taken as before
    ],
)
def test_init_and_the_verbs_take_libpqs_tls_parameters(
    tmp_path: Path, tls_postgres: tuple[PostgresCluster, Path], query: str
) -> None:
    """A database_url with libpq's TLS parameters (as RDS and Heroku give it) creates the
    schema and serves the verbs, on a server that refuses connections without TLS: not
    "connect() got an unexpected keyword argument 'sslmode'"."""
    cluster, ca = tls_postgres
    url = _libpq_url(cluster, query.format(ca=ca))
    env = {"BERTH_DATA_DIR": str(tmp_path / "d"), "BERTH_DATABASE_URL": url}
    initialised = _berth_in(tmp_path, "init", **env)
    assert initialised.returncode == 0, initialised.stderr
    assert f"Created Berth data in {tmp_path / 'd'} (" in initialised.stdout
    created = _berth_in(tmp_path, "project", "create", "demo", **env)
    assert created.returncode == 0, created.stderr
    listed = _berth_in(tmp_path, "project", "list", **env)
    assert listed.returncode == 0 and "demo" in listed.stdout, listed.stderr
    said = "".join(typed.stdout + typed.stderr for typed in (initialised, created, listed))
    assert "pg-secret-9" not in said


def test_serve_reaches_postgresql_over_verified_tls_with_a_client_certificate(
    tmp_path: Path, tls_postgres: tuple[PostgresCluster, Path]
) -> None:
    """sslmode=verify-full with sslrootcert, sslcert and sslkey: `berth serve` migrates the
    schema and serves pushes and pulls with its metadata on a server that signs it in by its
    client certificate; the verbs use the same URL."""
    cluster, ca = tls_postgres
    client_cert, client_key = ca.parent / "client.crt", ca.parent / "client.key"
    query = f"sslmode=verify-full&sslrootcert={ca}&sslcert={client_cert}&sslkey={client_key}"
    url = _libpq_url(cluster, query, user=CERT_USER)
    server = BerthServer(tmp_path / "d", url).start()
    try:
        server.create_repository("shop", "web")
        with httpx.Client(
            base_url=server.url, auth=server.access_key("shop"), timeout=60
        ) as client:
            manifest = random_image(client, "shop/web")
            assert put_manifest(client, "shop/web", "v1", manifest).status_code == 201
            pulled = client.get(manifest_path("shop/web", "v1"), headers={"Accept": OCI_MANIFEST})
            assert pulled.status_code == 200 and pulled.content == manifest
        env = {"BERTH_DATA_DIR": str(server.data_dir), "BERTH_DATABASE_URL": url}
        listed = _berth_in(tmp_path, "repo", "list", "shop", **env)
        assert listed.returncode == 0 and "web" in listed.stdout, listed.stderr
        assert "pg-secret-9" not in (server.data_dir / "server.log").read_text()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "case",
    [
        "another CA",
        "require with another CA",
        "another host name",
        "no TLS at the server",
        "asyncpg's ssl without a CA",
    ],
)
def test_tls_the_database_server_fails_is_refused_at_once_saying_what_to_put_right(
    tmp_path: Path,
    tls_postgres: tuple[PostgresCluster, Path],
    postgres: PostgresCluster | None,
    case: str,
) -> None:
    """A certificate the URL's CA did not sign (libpq's rule: require with sslrootcert checks
    it too), one that does not name the host, a server without TLS: settings to put right,
    which waiting does not change (exit 2 at once, not after startup_wait), said on one line
    by `berth serve`, `berth init` and the verbs, with the password hidden."""
    cluster, ca = tls_postgres
    other_ca, _cert, _key = make_ca_and_cert(tmp_path / "other", ["127.0.0.1"])
    untrusted = (
        # The server sends its CA with its certificate (ssl_ca_file): a chain to another root.
        "the server's certificate is not trusted (self-signed certificate in certificate chain): "
        f"the CA certificate in sslrootcert={other_ca} did not sign it; name the CA that did "
        "in sslrootcert"
    )
    if case == "no TLS at the server":
        if postgres is None:
            pytest.skip("PostgreSQL not installed")
        url = _libpq_url(postgres, "sslmode=require")  # the session's, without TLS
        why = (
            f"the server at 127.0.0.1:{postgres.port} does not accept TLS, which "
            "sslmode=require requires: turn ssl on in its postgresql.conf (with its "
            "certificate), or connect with sslmode=prefer"
        )
    elif case == "asyncpg's ssl without a CA":  # asyncpg's own, reading ~/.postgresql/root.crt
        url = _libpq_url(cluster, "ssl=verify-full")
        root_crt = Path.home() / ".postgresql" / "root.crt"
        if root_crt.exists():
            pytest.skip(f"{root_crt} exists here")
        why = (
            f'root certificate file "{root_crt}" does not exist or cannot be accessed HINT: '
            f'Provide the certificate file directly or make sure "{root_crt}" exists and is '
            "readable."
        )
    elif case == "another host name":
        url = _libpq_url(cluster, f"sslmode=verify-full&sslrootcert={ca}")
        url = url.replace("@127.0.0.1:", "@localhost:")
        why = (
            "the server's certificate does not name the host localhost that database_url "
            "connects to (Hostname mismatch, certificate is not valid for 'localhost'.), which "
            "sslmode=verify-full checks: connect by a name (or address) the certificate "
            "holds, or use sslmode=verify-ca"
        )
    else:
        mode = "require" if case.startswith("require") else "verify-full"
        url = _libpq_url(cluster, f"sslmode={mode}&sslrootcert={other_ca}")
        why = untrusted
    shown = url.replace("postgresql://", "postgresql+asyncpg://").replace("pg-secret-9", "***")
    refusal = f"cannot open the database {shown}: {why}"
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": url, "BERTH_STARTUP_WAIT": "600"})
    said = serve_refused(env)
    assert " ".join(said.split()) == f"error: BERTH_DATABASE_URL: {refusal}"
    initialised = _berth_in(
        tmp_path, "init", BERTH_DATA_DIR=env["BERTH_DATA_DIR"], BERTH_DATABASE_URL=url
    )
    assert initialised.returncode == 2, initialised.stderr
    assert " ".join(initialised.stderr.split()) == f"error: BERTH_DATABASE_URL: {refusal}"
    (tmp_path / "d").mkdir()
    verb = _berth_in(tmp_path, "project", "list", BERTH_DATA_DIR="d", BERTH_DATABASE_URL=url)
    assert verb.returncode == 2, verb.stderr
    first, *advice = verb.stderr.splitlines()
    assert first == f"error: {refusal}"
    # Its advice is about certificates, not the network: the server was reached.
    server = urlsplit(url)
    assert " ".join(" ".join(advice).split()) == (
        "Check the TLS of database_url (BERTH_DATABASE_URL) against the server "
        f"{server.hostname}:{server.port}: that sslrootcert names the CA that signed the server's "
        "certificate, that the certificate holds the host name database_url connects to "
        "(sslmode=verify-full checks it), and that the server has TLS on (ssl in its "
        "postgresql.conf)."
    )
    assert "pg-secret-9" not in said + initialised.stderr + verb.stderr


@pytest.mark.parametrize(
    ("query", "why"),
    [
        (
            "sslmode=requir",
            "has sslmode=requir, which is not one of libpq's: disable, allow, prefer, require, "
            "verify-ca, verify-full",
        ),
        (
            "sslmode=verify-full",
            "has sslmode=verify-full without sslrootcert: name the file of the CA certificate "
            "that signed the server's (sslrootcert=/PATH/ca.pem), or sslrootcert=system for "
            "the system's trusted CAs",
        ),
        (
            "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            "has sslrootcert=/nonexistent/ca.pem, which this user cannot read: No such file or "
            "directory",
        ),
        (
            "sslrootcert=/etc/ssl/ca.pem",
            "names sslrootcert with no sslmode (libpq's default, prefer), which may connect "
            "without TLS: certificates are used with sslmode=require, verify-ca or verify-full",
        ),
        (
            "sslmod=require",
            "has the parameter sslmod, which Berth does not take: it takes sslmode (disable, "
            "allow, prefer, require, verify-ca, verify-full), sslrootcert (a CA file, or "
            "system), sslcert and sslkey (a client certificate and its key)",
        ),
    ],
)
def test_tls_parameters_berth_cannot_take_are_refused_before_connecting(
    tmp_path: Path, query: str, why: str
) -> None:
    """A misspelt mode or parameter, a verification without the CA to verify with, a file that
    is not there: refused (2) when the settings are read, naming what Berth takes, the
    password hidden; no server is asked (db.example does not exist)."""
    url = f"postgresql://berth:pg-secret-9@db.example/berth?{query}"
    refusal = f"error: BERTH_DATABASE_URL: {url.replace('pg-secret-9', '***')!r} {why}"
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": url, "BERTH_STARTUP_WAIT": "600"})
    assert " ".join(serve_refused(env).split()) == refusal
    for verb in [("init",), ("project", "list")]:
        refused = _berth_in(tmp_path, *verb, BERTH_DATABASE_URL=url)
        assert refused.returncode == 2, (verb, refused.stderr)
        assert " ".join(refused.stderr.split()) == refusal, verb


def test_init_on_a_database_server_that_does_not_answer_is_refused_plainly(
    tmp_path: Path,
) -> None:
    """Not reached: an outage (1), not a setting (2), said with the server's address."""
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://berth:pg-secret-9@127.0.0.1:{port}/berth"
    refused = _typed(tmp_path, [*BERTH, "--data-dir", "d", "init", "--database-url", url])
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: cannot reach the database at 127.0.0.1:{port} (")
    assert "Traceback" not in refused.stderr and "pg-secret-9" not in refused.stderr
    assert not (tmp_path / "d").exists()


def _served_banner(
    tmp_path: Path, options: list[str], env: dict[str, str], flags: tuple[str, ...] = ()
) -> list[str]:
    """What `berth OPTIONS serve FLAGS` prints up to its password command's line (then it is
    stopped), run in `tmp_path` with no BERTH_* settings but `env`."""
    argv = [*BERTH, *options, "serve", "--listen", f"127.0.0.1:{free_port()}", *flags]
    printed = _banner_until_password_command(argv, env, tmp_path)
    assert "lost it? " in printed[-1], printed
    return printed


def _banner_until_password_command(argv: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """The lines `argv` (a `berth serve`) prints up to its password command's, run in `cwd`
    with no BERTH_* settings but `env`; the server is then stopped and its pipe closed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    printed: list[str] = []
    with subprocess.Popen(
        argv,
        env={**clean, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as server:
        try:
            assert server.stdout is not None
            for line in server.stdout:
                printed.append(line)
                if "lost it? " in line:
                    break
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    return printed


def _password_command(banner: list[str]) -> str:
    return banner[-1].split("lost it? ", 1)[1].rstrip().removesuffix(")")


def test_serve_names_a_mixed_case_domain_and_region_in_lower_case(tmp_path: Path) -> None:
    """domain and region are host names, which ignore case (as routing and the Host check
    do): written in mixed case, the banner and the commands it prints name them in lower
    case."""
    env = {
        "BERTH_DOMAIN": "Example.COM",
        "BERTH_REGION": "Kr-Central-2",
        "BERTH_ADMIN_PASSWORD": "admin-password-1",
    }
    said = "".join(_served_banner(tmp_path, [], env))
    assert "Berth registry on http://kr-central-2.example.com:" in said, said
    assert "docker login kr-central-2.example.com:" in said, said
    assert "Example" not in said and "Kr-Central" not in said, said


@pytest.mark.parametrize(
    "database",
    [
        "in the data directory",
        "given by --database-url",
        "given by BERTH_DATABASE_URL",
        "in the data directory BERTH_DATA_DIR names",
    ],
)
def test_serve_prints_the_password_command_with_the_data_directory_given(
    tmp_path: Path, database: str
) -> None:
    """`berth --data-dir DIR serve`'s banner names the command that sets the administrator's
    password with that directory (and the --database-url given): pasted as printed, it sets it
    there. So with those its environment gave it (a systemd unit's, not the shell's the
    command is pasted into)."""
    options = ["--data-dir", "served"]
    env: dict[str, str] = {}
    flags: tuple[str, ...] = ()
    url = f"sqlite+aiosqlite:///{tmp_path / 'elsewhere.db'}"
    if database == "given by --database-url":
        flags = ("--database-url", url)
    elif database == "given by BERTH_DATABASE_URL":
        env["BERTH_DATABASE_URL"] = url
    elif database == "in the data directory BERTH_DATA_DIR names":
        options = []
        env["BERTH_DATA_DIR"] = "served"  # relative to where the server started
    printed = _password_command(_served_banner(tmp_path, options, env, flags))
    words = shlex.split(printed)
    if database in ("given by --database-url", "given by BERTH_DATABASE_URL"):
        assert words.pop(0) == f"BERTH_DATABASE_URL={url}"
    served = str(tmp_path / "served")  # absolute, given relative: pasted elsewhere it works
    assert words[1:] == ["--data-dir", served, "user", "set-password", "admin"]
    pasted = ["bash", "-c", f"{printed} --password-stdin"]
    shell = tmp_path / "shell"  # elsewhere, as a shell would be
    shell.mkdir()
    reset = _typed(shell, pasted, "a-new-pw-1\n")
    assert reset.returncode == 0, reset.stderr
    assert not (tmp_path / "berth-data").exists() and not (shell / "berth-data").exists()


def test_serve_on_a_database_url_with_a_password_from_the_environment_never_prints_it(
    tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    """The banner names the database BERTH_DATABASE_URL gave without its password and says to
    set the variable: with it set in the shell, the printed command works as printed."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database().replace("postgres@", "postgres:pg-secret-9@")
    banner = _served_banner(tmp_path, ["--data-dir", "d"], {"BERTH_DATABASE_URL": url})
    said = "".join(banner)
    assert "pg-secret-9" not in said
    masked = make_url(url).render_as_string(hide_password=True)
    assert f"note: the commands below work on the database BERTH_DATABASE_URL names ({masked})" in (
        " ".join(said.split())
    )
    assert "once BERTH_DATABASE_URL holds that URL in your shell" in " ".join(said.split())
    assert said.count("note: the commands below") == 1, said  # the first start's banner too
    printed = _password_command(banner)
    reset_words = ["--data-dir", str(tmp_path / "d"), "user", "set-password", "admin"]
    assert shlex.split(printed)[1:] == reset_words
    unset = _typed(tmp_path, ["bash", "-c", f"{printed} --password-stdin"], "a-new-pw-1\n")
    assert unset.returncode == 1  # not this database: as the note says, the variable is needed
    pasted = ["env", f"BERTH_DATABASE_URL={url}", "bash", "-c", f"{printed} --password-stdin"]
    reset = _typed(tmp_path, pasted, "a-new-pw-1\n")
    assert reset.returncode == 0, reset.stderr


def test_serve_configured_by_berth_config_prints_commands_that_carry_it(tmp_path: Path) -> None:
    """A node's unit names its settings file in BERTH_CONFIG, which the operator's shell does
    not have: the commands `berth serve` prints carry it, and pasted into a shell without it
    (elsewhere), they work on the node's data."""
    config = tmp_path / "etc" / "node.toml"
    config.parent.mkdir()
    config.write_text(f'data_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:{free_port()}"\n')
    (tmp_path / "service").mkdir()
    (tmp_path / "shell").mkdir()
    printed = _banner_until_password_command(
        [*BERTH, "serve"], {"BERTH_CONFIG": str(config)}, tmp_path / "service"
    )
    (hint,) = [line for line in printed if "project create PROJECT" in line]
    create = hint.split("), then an access key", 1)[0].strip().replace("PROJECT", "demo")
    reset = printed[-1].split("lost it? ", 1)[1].rstrip().removesuffix(")")
    for command in (create, reset):
        assert command.startswith(f"BERTH_CONFIG={config} "), command

    def pasted(command: str, input: str | None = None) -> Typed:
        return _typed(tmp_path / "shell", ["bash", "-c", command], input)

    assert pasted(create).returncode == 0
    assert pasted(f"{reset} --password-stdin", "a-new-password-1\n").returncode == 0
    listed = _typed(tmp_path, [*BERTH, "--data-dir", "state", "project", "list", "--json"])
    assert [p["name"] for p in json.loads(listed.stdout)["items"]] == ["demo"]
    assert not (tmp_path / "shell" / "berth-data").exists()


def test_the_refusal_suggests_no_new_data_where_the_data_may_be_elsewhere(
    tmp_path: Path,
) -> None:
    """A PostgreSQL node's data directory holds files but no SQLite database, and settings that
    name a database server may lack the install's data directory: there the refusal points at
    the node's settings instead of `berth init`, which would make an SQLite database (or keys)
    of its own."""
    node_data = tmp_path / "var-lib-berth"
    (node_data / "metrics").mkdir(parents=True)
    cases = {
        "node's data directory": [*BERTH, "--data-dir", str(node_data), "project", "list"],
        "database server named": [
            "env",
            "BERTH_DATABASE_URL=postgresql+asyncpg://berth@127.0.0.1:1/berth",
            *BERTH,
            "project",
            "list",
        ],
    }
    for case, words in cases.items():
        refused = _typed(tmp_path, words)
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 1, (case, said)
        assert "creates new data" not in said and "init`" not in said, (case, said)
        assert "BERTH_CONFIG and the variables of its EnvironmentFile" in said, (case, said)
    assert sorted(p.name for p in node_data.iterdir()) == ["metrics"]
    assert not (tmp_path / "berth-data").exists()


def test_status_tells_this_datas_server_from_another_on_its_address(
    server: BerthServer, tmp_path: Path
) -> None:
    """`berth status` says whether the server answering at `listen` serves this data (its
    tokens are signed with this data's key), not only that something answers there."""
    own = json.loads(server.cli("status", "--json").stdout)
    assert own["server_listening"] and own["server_serves_this_data"] is True
    assert "with this data's keys" in " ".join(server.cli("status").stdout.split())

    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_LISTEN"] = server.address  # another data directory, the same address
    other = tmp_path / "other"
    assert subprocess.run([*BERTH, "--data-dir", str(other), "init"], env=env).returncode == 0
    shown = subprocess.run(
        [*BERTH, "--data-dir", str(other), "status"], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "a server answers, but not this data's" in " ".join(shown.stdout.split())
    env["BERTH_LISTEN"] = f"127.0.0.1:{free_port()}"
    quiet = subprocess.run(
        [*BERTH, "--data-dir", str(other), "status", "--json"], env=env, capture_output=True
    )
    assert json.loads(quiet.stdout)["server_listening"] is False


def test_status_from_a_shell_with_another_listen_says_where_the_server_answers(
    server: BerthServer,
) -> None:
    """A server started with its own listen (`make run`'s BERTH_LISTEN, `--listen`), status
    typed in a shell without it: the Listen row is that shell's setting, and the address the
    server recorded is where a server of this data answers."""
    env = {**server.env, "BERTH_LISTEN": f"127.0.0.1:{free_port()}"}
    said = subprocess.run([*BERTH, "status"], env=env, capture_output=True, text=True)
    assert said.returncode == 0, said.stderr
    cells = " ".join(said.stdout.replace("│", " ").split())
    assert f"Listen {env['BERTH_LISTEN']} (this shell's setting; nothing listening)" in cells
    assert (
        f"Served at {server.address} (where the newest running berth serve is reached; a "
        "server answers there, with this data's keys)"
    ) in cells
    shown = json.loads(
        subprocess.run([*BERTH, "status", "--json"], env=env, capture_output=True).stdout
    )
    assert shown["server_listening"] is False and shown["served_at"] == server.address
    assert shown["served_at_listening"] is True
    assert shown["served_at_serves_this_data"] is True
    # Where this shell's listen is the server's, the row says nothing more.
    own = " ".join(server.cli("status").stdout.replace("│", " ").split())
    assert f"Served at {server.address} (where the newest running berth serve is reached)" in own
    assert server.cli_json("status")["served_at_listening"] is None

    server.stop()
    gone = subprocess.run([*BERTH, "status"], env=env, capture_output=True, text=True)
    assert "nothing listening there now" in " ".join(gone.stdout.replace("│", " ").split())


def test_status_says_whether_the_balancer_it_is_served_at_answers(tmp_path: Path) -> None:
    """A server behind a balancer (public_url, here a relay to it): status asks the balancer's
    /healthz and says it answers; once it drops everything, status says so within about 2 s;
    with nothing listening there, why (connection refused)."""
    server = BerthServer(tmp_path / "data")
    with Blackhole("127.0.0.1", server.port) as balancer:
        public = f"http://localhost:{balancer.port}"
        server.extra_env["BERTH_PUBLIC_URL"] = public
        server.start()
        try:

            def served_at() -> tuple[str, dict[str, Any], float]:
                started = time.monotonic()
                said = server.cli("status").stdout.replace("│", " ")
                took = time.monotonic() - started
                return " ".join(said.split()), server.cli_json("status"), took

            said, shown, answered_in = served_at()
            assert (
                f"Served at localhost:{balancer.port} (where the newest running berth serve is "
                f"reached; answering at {public}/healthz)"
            ) in said, said
            assert shown["served_at_health"] == {
                "url": f"{public}/healthz",
                "answering": True,
                "problem": None,
            }

            balancer.drop()
            said, shown, took = served_at()
            assert f"not answering at {public}/healthz: no answer within 2 s" in said, said
            assert shown["served_at_health"]["answering"] is False
            # the 2 s wait on top of what status takes when the balancer answers (measured, as a
            # loaded machine may take seconds to start the CLI), not a 30 s connect timeout
            assert took < answered_in + 2 + 8, (took, answered_in)
        finally:
            server.stop()
    said, shown, _ = served_at()
    assert f"not answering at {public}/healthz: " in said, said
    assert "refused" in shown["served_at_health"]["problem"].lower(), shown


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_never_asks_the_url_of_the_server_started_before(
    tmp_path: Path, backend: str, postgres: PostgresCluster | None
) -> None:
    """A URL too long to record (over 255 characters, install_facts.value's width, which
    PostgreSQL enforces) is not recorded: status asks this shell's URL for that host, not the
    one the server started before recorded (here the same host over http, the server now says
    https)."""
    host = ".".join(["x" * 60, "x" * 60, "x" * 60, "x" * 57, "invalid"])  # 248 characters
    server = BerthServer(tmp_path / "data", database_url_for(backend, postgres))
    server.extra_env["BERTH_PUBLIC_URL"] = f"http://{host}"  # 255 characters: recorded
    server.start()
    server.stop()
    server.extra_env["BERTH_PUBLIC_URL"] = f"https://{host}"  # 256: not recorded
    server.start()
    try:
        shown = server.cli_json("status")
    finally:
        server.stop()
    assert shown["served_at"] == host
    assert shown["served_at_health"]["url"] == f"https://{host}/healthz", shown


def test_key_create_prints_where_a_server_still_serves(tmp_path: Path) -> None:
    """Two `berth serve` on one data directory at two ports (`make run`, then `berth serve
    --listen` with another port), the CLI run without either's listen: `berth key create`
    prints the address of the one that started last while both serve, of the one still
    serving once it stops, and with none serving the last one's, saying nothing serves."""
    first = BerthServer(tmp_path / "data")
    second = BerthServer(tmp_path / "data", log_file=tmp_path / "second.log")
    env = {name: value for name, value in first.env.items() if name != "BERTH_LISTEN"}
    url = f"sqlite+aiosqlite:///{first.data_dir / 'berth.db'}"

    def login_printed(project: str) -> tuple[str, str]:
        created = subprocess.run(
            [*BERTH, "key", "create", "--user", "admin", "--project", project],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        login = re.search(r"docker login (\S+) --username", created.stdout)
        assert login and f"--docker-server={login.group(1)} " in created.stdout, created.stdout
        return login.group(1), " ".join(created.stderr.split())

    def served_at_shown() -> tuple[str, str]:
        """status's Served at address (--json) and what its row says of it."""
        status = [*BERTH, "status"]
        shown = subprocess.run([*status, "--json"], env=env, capture_output=True, timeout=120)
        said = subprocess.run(status, env=env, capture_output=True, text=True, timeout=120)
        cells = " ".join(said.stdout.replace("│", " ").split())
        row = re.search(r"Served at \S+ \(([^;)]*)", cells)
        assert row, said.stdout
        return json.loads(shown.stdout)["served_at"], row.group(1)

    first.start()
    try:
        for project in ("both", "first", "none"):  # a key each (max_access_keys = 2)
            first.create_project(project)
        second.start()
        try:
            wait_for(lambda: len(live_processes_at(url)) == 2, 30, "both servers' presence")
            assert login_printed("both") == (second.address, "")
        finally:
            second.stop()
        assert login_printed("first") == (first.address, "")
        assert httpx.get(f"{first.url}/v2/").status_code == 401  # it answers there
        # status's Served at row names the same address
        assert served_at_shown() == (
            first.address,
            "where the newest running berth serve is reached",
        )
    finally:
        first.stop()
    # None serves: where the last to start was reached, said to be so.
    address, said = login_printed("none")
    assert address == second.address
    assert "no server serves this data now" in said and second.address in said, said
    assert served_at_shown() == (second.address, "where the last berth serve started")


def test_a_password_asked_for_without_a_terminal_is_refused_with_what_to_do(
    server: BerthServer,
) -> None:
    """Run from a script or a pipe without --password-stdin, the verb cannot ask without
    echo: it says to use --password-stdin (not Python's warning and an abort)."""
    refused = server.cli("user", "set-password", "admin", check=False, input="")
    assert refused.returncode == 2
    assert "--password-stdin" in refused.stderr and "Warning" not in refused.stderr
    assert "Traceback" not in refused.stderr
