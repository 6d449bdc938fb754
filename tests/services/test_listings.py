"""The catalog: every image of a visible repository is listed, and visibility (a repository's)
is asked once per repository, not once per image, and only of the repositories a page reaches.
In-process, on SQLite."""

from __future__ import annotations

from pathlib import Path

from berth.domain.references import RepositoryRef
from berth.services.listings import CATALOG_FIRST_BATCH
from tests.services.test_content_changes import Scene, run


def test_the_catalog_asks_once_per_repository_and_lists_each_image(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        await scene.repositories.create("acme", "hidden", actor="test")
        _, hidden = await scene.repositories.lookup("acme", "hidden")
        assert hidden is not None
        for image in ("", "team/tool", "team/other"):
            await scene.push_image("v1", image)
        asked: list[str] = []

        async def visible(project_id: int, repo: RepositoryRef) -> bool:
            asked.append(repo.name)
            return repo.name == "app"

        scene.repo = hidden
        await scene.push_image("v1")
        page = await scene.registry.catalog(None, None, None, visible)
        assert page.items == ["acme/app", "acme/app/team/other", "acme/app/team/tool"]
        assert sorted(asked) == ["app", "hidden"]

    run(tmp_path, scenario)


def test_a_page_of_the_catalog_asks_only_of_the_repositories_it_reaches(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        for i in range(CATALOG_FIRST_BATCH + 1):
            await scene.push_image("v1", f"i{i:03}")
        await scene.repositories.create("acme", "zed", actor="test")
        _, zed = await scene.repositories.lookup("acme", "zed")
        assert zed is not None
        scene.repo = zed
        await scene.push_image("v1")
        asked: list[str] = []

        async def visible(project_id: int, repo: RepositoryRef) -> bool:
            asked.append(repo.name)
            return True

        page = await scene.registry.catalog(None, 2, None, visible)
        assert page.items == ["acme/app/i000", "acme/app/i001"]
        assert page.next_last == "acme/app/i001"
        # acme/zed is past the rows a page of 2 reads: a page costs a page, not the install.
        assert asked == ["app"]

    run(tmp_path, scenario)
