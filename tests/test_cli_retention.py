"""`berth retention`: set, show, dry-run, run and history against a server's data."""

from __future__ import annotations

from sqlalchemy import select

from berth.metadata.tables import repositories
from berth.state import Services
from tests.retention_seed import seed
from tests.servers import BerthServer


def test_retention_verbs(sqlite_server: BerthServer) -> None:
    sqlite_server.create_repository("cliret", "ci")

    async def fill(services: Services) -> list[str]:
        async with services.db.read() as conn:
            repo = (
                await conn.execute(select(repositories.c.id).where(repositories.c.name == "ci"))
            ).scalar_one()
        return await seed(services.db, repo, [(i, [f"b{i}"], 10 - i) for i in range(5)])

    digests = sqlite_server._services(fill)
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
    assert "next garbage collection (berth gc run cliret," in ran
    history = sqlite_server.cli_json("retention", "history", "cliret")
    assert [(r["dry_run"], r["images_deleted"]) for r in history] == [
        (False, 3),
        (True, 3),
        (True, 3),
    ]
    assert sqlite_server.cli_json("retention", "dry-run", "cliret")["deleted"] == []
