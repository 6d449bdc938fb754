"""The catalog: what each caller's own roles reach, every image of it, in code-point order;
and a caller pays for what they may see, not for the install. In-process, on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, insert, select

from berth.access.policy import CatalogReach
from berth.domain.references import RepositoryRef
from berth.metadata.tables import manifests, memberships, repository_grants, users
from tests.services.test_content_changes import Scene, run


async def add_user(scene: Scene, name: str, *, admin: bool = False) -> int:
    async with scene.db.write() as conn:
        made = await conn.execute(
            insert(users).values(name=name, is_admin=admin).returning(users.c.id)
        )
        return int(made.scalar_one())


async def add_repository(
    scene: Scene, project: str, name: str, *, public: bool = False
) -> RepositoryRef:
    """A repository holding one image; it becomes `scene.repo`."""
    await scene.repositories.create(project, name, public=public, actor="test")
    _, repo = await scene.repositories.lookup(project, name)
    assert repo is not None
    scene.repo = repo
    await scene.push_image("v1")
    return repo


async def add_copies(scene: Scene, repo: RepositoryRef, images: list[str]) -> None:
    """Images in `repo`: copies of its manifest row, inserted directly (quicker than pushing
    each, as an install that has had many pushes)."""
    async with scene.db.write() as conn:
        found = await conn.execute(select(manifests).where(manifests.c.repository_id == repo.id))
        row = found.mappings().first()
        assert row is not None
        seed = {key: value for key, value in row.items() if key != "id"}
        await conn.execute(
            insert(manifests),
            [
                {**seed, "image": image, "digest": f"sha256:{i:064x}"}
                for i, image in enumerate(images)
            ],
        )


def test_the_catalog_lists_what_the_callers_own_roles_reach(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        app = scene.repo
        await scene.push_image("v1")
        await scene.push_image("v1", "team/tool")
        await scene.repositories.create_project("acme-b", actor="test")
        pub = await add_repository(scene, "acme", "pub", public=True)
        own = await add_repository(scene, "acme-b", "own")
        await add_repository(scene, "acme-b", "other")
        root = await add_user(scene, "root", admin=True)
        reader = await add_user(scene, "reader")  # of acme-b
        viewer = await add_user(scene, "viewer")  # of acme/app only: outside project acme
        async with scene.db.write() as conn:
            await conn.execute(
                insert(memberships).values(project_id=own.project_id, user_id=reader, role="reader")
            )
            await conn.execute(
                insert(repository_grants).values(
                    repository_id=app.id, user_id=viewer, role="viewer"
                )
            )

        async def listed(reach: CatalogReach, project: str | None = None) -> list[str]:
            return (await scene.registry.catalog(project, reach, 100, None)).items

        acme = ["acme/app", "acme/app/team/tool", "acme/pub"]
        acme_b = ["acme-b/other", "acme-b/own"]
        # A server administrator signed in without a key: both projects, in code-point order
        # of the names ('-' sorts before the '/' ending "acme").
        assert await listed(CatalogReach(root, True, None)) == [*acme_b, *acme]
        assert await listed(CatalogReach(root, True, app.project_id)) == acme
        assert await listed(CatalogReach(root, True, None), "acme") == [
            "app",
            "app/team/tool",
            "pub",
        ]
        # The reader of acme-b does not see acme's public repository, pullable as it is.
        assert await listed(CatalogReach(reader, False, None)) == acme_b
        assert await listed(CatalogReach(reader, False, own.project_id)) == acme_b
        assert await listed(CatalogReach(reader, False, app.project_id)) == []
        assert await listed(CatalogReach(reader, False, None), "acme") == []
        # A repository role reaches that repository, not the project's public others.
        assert await listed(CatalogReach(viewer, False, app.project_id)) == acme[:2]
        assert pub.public

    run(tmp_path, scenario)


def test_a_caller_who_sees_none_of_many_images_pays_one_indexed_statement(
    tmp_path: Path,
) -> None:
    async def scenario(scene: Scene) -> None:
        await scene.push_image("v1")
        await add_copies(scene, scene.repo, [f"i{i:04}" for i in range(3000)])
        await scene.repositories.create_project("beta", actor="test")
        own = await add_repository(scene, "beta", "own")
        bob = await add_user(scene, "bob")
        async with scene.db.write() as conn:
            await conn.execute(
                insert(memberships).values(project_id=own.project_id, user_id=bob, role="member")
            )
        statements: list[tuple[str, Any]] = []

        def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            statements.append((statement, parameters))

        reader = scene.db.reader.sync_engine
        event.listen(reader, "before_cursor_execute", record)
        try:
            page = await scene.registry.catalog(None, CatalogReach(bob, False, None), 1, None)
        finally:
            event.remove(reader, "before_cursor_execute", record)
        assert (page.items, page.next_last) == (["beta/own"], None)
        assert len(statements) == 1
        statement, parameters = statements[0]
        async with scene.db.read() as conn:
            plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            steps = [str(row[-1]) for row in plan]
        # acme/app's manifests are never walked: the statement reads the manifests of bob's
        # repositories by index, and scans no table of the install's size.
        reads_of_manifests = [step for step in steps if " manifests " in f"{step} "]
        assert reads_of_manifests, steps
        assert all(step.startswith("SEARCH") for step in reads_of_manifests), steps
        assert not any(step.startswith("SCAN manifests") for step in steps), steps

    run(tmp_path, scenario)


def test_a_page_announces_the_next_and_the_next_resumes_after_it(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        await scene.push_image("v1")
        await add_copies(scene, scene.repo, [f"i{i:03}" for i in range(5)])
        reach = CatalogReach(await add_user(scene, "root", admin=True), True, None)
        first = await scene.registry.catalog(None, reach, 2, None)
        assert (first.items, first.next_last) == (["acme/app", "acme/app/i000"], "acme/app/i000")
        rest = await scene.registry.catalog(None, reach, 4, first.next_last)
        assert (rest.items, rest.next_last) == ([f"acme/app/i00{i}" for i in range(1, 5)], None)

    run(tmp_path, scenario)
