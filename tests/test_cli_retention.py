"""`berth retention`: set, show, dry-run, run and history against a server's data."""

from __future__ import annotations

import json
import re

from sqlalchemy import select

from berth.metadata.tables import repositories
from berth.state import Services
from tests.in_process import in_process
from tests.pasting import data_dir_only, line_after
from tests.retention_seed import seed
from tests.servers import BerthServer


def seeded(server: BerthServer, project: str, repository: str, tag: str, count: int) -> list[str]:
    """A new repository holding `count` images tagged `tag`0, `tag`1, ..., pushed 10, 9, ...
    days ago: their digests."""
    return seeded_with(server, project, repository, [[f"{tag}{i}"] for i in range(count)])


def seeded_with(
    server: BerthServer, project: str, repository: str, tagged: list[list[str]]
) -> list[str]:
    """A new repository holding an image for each list of tags, pushed 10, 9, ... days ago:
    their digests."""
    server.create_repository(project, repository)

    async def fill(services: Services) -> list[str]:
        async with services.db.read() as conn:
            repo = (
                await conn.execute(
                    select(repositories.c.id).where(repositories.c.name == repository)
                )
            ).scalar_one()
        return await seed(services.db, repo, [(i, tags, 10 - i) for i, tags in enumerate(tagged)])

    return server._services(fill)


def test_retention_verbs(sqlite_server: BerthServer) -> None:
    digests = seeded(sqlite_server, "cliret", "ci", "b", 5)
    refused = in_process(sqlite_server).cli(
        "retention", "set", "cliret", "--rule", "sometimes=3", check=False
    )
    assert refused.returncode == 2 and "it starts with what it keeps" in refused.stderr
    saved = (
        in_process(sqlite_server)
        .cli(
            "retention",
            "set",
            "cliret",
            "--rule",
            "last=2,repositories=ci",
            "--schedule",
            "daily 04:00",
        )
        .stdout
    )
    assert "keep the 2 most recently pushed images (in ci)" in saved
    assert "Runs on schedule daily 04:00 (UTC); next at" in saved  # what it saved, said
    # As every time the CLI prints: to the minute, its zone named (not `04:00:00+00:00`).
    assert re.search(r"; next at \d{4}-\d\d-\d\d \d\d:\d\d [A-Z]", saved), saved
    assert "berth retention dry-run cliret" in saved  # the command it prints works:
    dry = in_process(sqlite_server).cli_json("retention", "dry-run", "cliret")
    assert [i["digest"] for i in dry["deleted"]] == digests[:3]
    shown = in_process(sqlite_server).cli("retention", "show", "cliret").stdout
    assert "an image is kept when any rule keeps it" in shown and "daily 04:00" in shown
    raw = in_process(sqlite_server).cli("retention", "dry-run", "cliret").stdout
    printed = " ".join(raw.split())
    assert "berth retention run cliret" in printed and "nothing was deleted" in printed
    # At 80 columns each digest is on one line as `berth image list` shows it (12 hex digits),
    # which `berth image delete` takes.
    assert max(map(len, raw.splitlines())) <= 80, raw
    for digest in digests[:3]:
        assert any(digest[7:19] in line.split() for line in raw.splitlines()), raw
    ran = " ".join(
        in_process(sqlite_server).cli("retention", "run", "cliret", "--yes").stdout.split()
    )
    assert re.search(r"next garbage collection \((\.venv/bin/)?berth gc run cliret\)\.", ran)
    history = in_process(sqlite_server).cli_items("retention", "history", "cliret")
    assert [(r["dry_run"], r["images_deleted"]) for r in history] == [
        (False, 3),
        (True, 3),
        (True, 3),
    ]
    # Each run's kept counts, as its own answer gave them (the CLI's names for them).
    assert [(r["kept"], r["untouched"]) for r in history] == [(dry["kept"], dry["untouched"])] * 3
    assert dry["kept"] is not None and dry["untouched"] is not None
    # --limit, as gc history takes it: the newest runs, the total counting every run.
    newest = in_process(sqlite_server).cli_json("retention", "history", "cliret", "--limit", "1")
    assert [r["id"] for r in newest["items"]] == [history[0]["id"]]
    assert (newest["per_page"], newest["total"]) == (1, 3)
    assert in_process(sqlite_server).cli_json("retention", "dry-run", "cliret")["deleted"] == []


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
    ran = only.paste_at_terminal(printed_run, "y\n").stdout
    assert "Deleted 2 images." in ran
    assert only.berth("image", "list", "clipaste/pasted", "--json").stdout.count("sha256:") == 1
    assert digests[2] in only.berth("image", "list", "clipaste/pasted", "--json").stdout
    note = next(line for line in ran.splitlines() if "next garbage collection" in line)
    printed_gc = note.split("(", 1)[1].rsplit(").", 1)[0]
    only.paste_at_terminal(printed_gc, "y\n")
    (collected,) = json.loads(only.berth("gc", "history", "clipaste", "--json").stdout)["items"]
    assert collected["state"] == "succeeded", collected


def test_a_rule_for_ci_tags_leaves_a_promoted_release(sqlite_server: BerthServer) -> None:
    """An image tagged ci-1 and rel-1 (a CI build promoted by adding a tag) is outside a rule
    for `ci-*`: the dry run and the run delete only ci-2."""
    digests = seeded_with(sqlite_server, "cliprom", "mix", [["ci-1", "rel-1"], ["ci-2"], ["ci-3"]])
    saved = (
        in_process(sqlite_server)
        .cli("retention", "set", "cliprom", "--rule", "last=1,repositories=mix,tags=ci-*")
        .stdout
    )
    said = " ".join(saved.split())
    assert (
        "keep the 1 most recently pushed image (in mix, images whose tags all match ci-*)" in said
    )
    assert "Runs only when started:" in said
    dry = in_process(sqlite_server).cli_json("retention", "dry-run", "cliprom")
    assert [(i["digest"], i["tags"]) for i in dry["deleted"]] == [(digests[1], ["ci-2"])]
    ran = in_process(sqlite_server).cli_json("retention", "run", "cliprom", "--yes")
    assert ran["deleted"] == dry["deleted"]
    # Its note names this CLI's garbage collection, not the API's request.
    assert re.search(r"next garbage collection \((\.venv/bin/)?berth gc run cliprom\)", ran["note"])
    listed = in_process(sqlite_server).cli("image", "list", "cliprom/mix", "--json").stdout
    assert digests[0] in listed and digests[2] in listed and digests[1] not in listed


def test_a_rule_that_keeps_nothing_and_a_run_of_no_project_are_refused(
    sqlite_server: BerthServer,
) -> None:
    sqlite_server.create_project("clizero")
    refused = in_process(sqlite_server).cli(
        "retention", "set", "clizero", "--rule", "last=0", check=False
    )
    assert refused.returncode == 2
    assert "last=0 would keep no image" in " ".join(refused.stderr.split())
    assert in_process(sqlite_server).cli_json("retention", "show", "clizero")["rules"] == []
    # A project that is not there is said before any question (nothing is asked).
    missing = in_process(sqlite_server).cli("retention", "run", "nosuch", check=False, input="y\n")
    assert missing.returncode == 1 and "nosuch" in missing.stderr
    assert "Delete the images" not in missing.stdout
