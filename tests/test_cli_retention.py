"""`berth retention`: set, show, dry-run, run and history against a server's data."""

from __future__ import annotations

import json
import re

from sqlalchemy import select

from berth.metadata.tables import repositories
from berth.state import Services
from tests.pasting import data_dir_only, line_after
from tests.retention_seed import seed
from tests.servers import BerthServer


def seeded(server: BerthServer, project: str, repository: str, tag: str, count: int) -> list[str]:
    """A new repository holding `count` images tagged `tag`0, `tag`1, ..., pushed 10, 9, ...
    days ago: their digests."""
    server.create_repository(project, repository)

    async def fill(services: Services) -> list[str]:
        async with services.db.read() as conn:
            repo = (
                await conn.execute(
                    select(repositories.c.id).where(repositories.c.name == repository)
                )
            ).scalar_one()
        return await seed(services.db, repo, [(i, [f"{tag}{i}"], 10 - i) for i in range(count)])

    return server._services(fill)


def test_retention_verbs(sqlite_server: BerthServer) -> None:
    digests = seeded(sqlite_server, "cliret", "ci", "b", 5)
    refused = sqlite_server.cli("retention", "set", "cliret", "--rule", "sometimes=3", check=False)
    assert refused.returncode == 2 and "it starts with what it keeps" in refused.stderr
    saved = sqlite_server.cli(
        "retention",
        "set",
        "cliret",
        "--rule",
        "last=2,repositories=ci",
        "--schedule",
        "daily 04:00",
    ).stdout
    assert "keep the 2 most recently pushed images (in ci)" in saved
    assert "berth retention dry-run cliret" in saved  # the command it prints works:
    dry = sqlite_server.cli_json("retention", "dry-run", "cliret")
    assert [i["digest"] for i in dry["deleted"]] == digests[:3]
    shown = sqlite_server.cli("retention", "show", "cliret").stdout
    assert "an image is kept when any rule keeps it" in shown and "daily 04:00" in shown
    printed = " ".join(sqlite_server.cli("retention", "dry-run", "cliret").stdout.split())
    assert "berth retention run cliret" in printed and "nothing was deleted" in printed
    ran = " ".join(sqlite_server.cli("retention", "run", "cliret", "--yes").stdout.split())
    assert re.search(r"next garbage collection \((\.venv/bin/)?berth gc run cliret,", ran)
    history = sqlite_server.cli_json("retention", "history", "cliret")
    assert [(r["dry_run"], r["images_deleted"]) for r in history] == [
        (False, 3),
        (True, 3),
        (True, 3),
    ]
    assert sqlite_server.cli_json("retention", "dry-run", "cliret")["deleted"] == []


def test_the_commands_it_prints_work_as_printed_with_the_data_directory_it_was_given(
    sqlite_server: BerthServer,
) -> None:
    """Run with --data-dir (nothing else pointing at the data), each command retention
    prints names that directory, on a line of its own: pasted as printed, the dry run lists
    what the rules drop, the run deletes it, and the garbage collection its note names runs."""
    digests = seeded(sqlite_server, "clipaste", "pasted", "p", 3)
    only = data_dir_only(sqlite_server)
    saved = only.berth("retention", "set", "clipaste", "--rule", "last=1").stdout
    dry = only.paste(line_after(saved, "See what a run would delete:")).stdout
    assert "nothing was deleted" in dry
    printed_run = line_after(dry, "Delete them:")
    shown = only.berth("retention", "show", "clipaste").stdout
    assert f"Runs only when started: {printed_run}\n" in shown
    ran = only.paste(printed_run, input="y\n").stdout
    assert "Deleted 2 images." in ran
    assert only.berth("image", "list", "clipaste/pasted", "--json").stdout.count("sha256:") == 1
    assert digests[2] in only.berth("image", "list", "clipaste/pasted", "--json").stdout
    note = next(line for line in ran.splitlines() if "next garbage collection" in line)
    printed_gc = note.split("(", 1)[1].split(", or the console", 1)[0]
    only.paste(printed_gc)
    (collected,) = json.loads(only.berth("gc", "history", "clipaste", "--json").stdout)
    assert collected["state"] == "succeeded", collected
