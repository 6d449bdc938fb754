"""`immutable_rules(db, project_id)`, what retention asks before deleting: a project's rules in
the order they were made, read with a database or inside a caller's transaction."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from berth.domain.tag_rules import ImmutableTagRule, full_name, protecting_rule
from berth.metadata.database import Database
from berth.metadata.tables import projects
from berth.services.repositories import Repositories
from berth.services.tag_rules import TagRules, immutable_rules
from tests.services.conftest import run_on_database


def test_the_rules_of_a_project_in_order(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        repositories, rules = Repositories(db), TagRules(db)
        for project in ("acme", "other"):
            await repositories.create_project(project, actor="test")
        await rules.create("acme", "v*", "app", actor="alice")
        await rules.create("acme", "release-*", actor="alice")
        await rules.create("other", "*", actor="bob")
        async with db.read() as conn:
            acme = (
                await conn.execute(select(projects.c.id).where(projects.c.name == "acme"))
            ).one()
        expected = [ImmutableTagRule(1, "v*", "app"), ImmutableTagRule(2, "release-*", None)]
        assert await immutable_rules(db, acme.id) == expected
        async with db.write() as conn:
            assert await immutable_rules(conn, acme.id) == expected
        found = await immutable_rules(db, acme.id)
        assert protecting_rule(found, full_name("app", "web"), "v2") == expected[0]
        assert protecting_rule(found, full_name("api", ""), "v2") is None
        await rules.delete("acme", 1, actor="alice")
        assert await immutable_rules(db, acme.id) == expected[1:]

    run_on_database(tmp_path, scenario)
