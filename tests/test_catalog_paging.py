"""Paging /v2/_catalog (and a tag list) with n= and last=: the same code-point order on SQLite, on PostgreSQL and
on PostgreSQL whose default collation is ICU en-US (which orders `_`, `-`, `.` and case
otherwise); every name once; repositories the caller's roles do not reach (another project's
public one among them) skipped without a short page being taken for the last; a page of
CATALOG_PAGE names, with a Link header, when the client gives no n."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import insert, select

from berth.metadata.tables import manifests
from berth.registry.routes import CATALOG_PAGE
from berth.state import Services
from tests.oci import (
    OCI_MANIFEST,
    Blob,
    image_config,
    image_manifest,
    push_blob,
    push_manifest,
    tag_list,
)
from tests.servers import BACKENDS, ICU_BACKEND, BerthServer, server_fixture

server = server_fixture(
    "catalog",
    backends=[*BACKENDS, ICU_BACKEND],
    doc="A registry on SQLite, on PostgreSQL and on PostgreSQL with an ICU en-US collation, "
    "holding only this module's names.",
)

# Names where code-point order and a locale's differ: en-US puts `_` before `-` and `.`, and
# `x_y` before `x0`; `-` (0x2d) and `.` sort before the `/` that ends a project or repository.
REPOSITORIES = ["x", "x-y", "x--y", "x.y", "x-y.z", "x_y", "x__y", "x0", "xy", "h"]
IMAGES_OF_X = ["a", "a-b", "a.b", "a_b", "a__b", "a/b", "ab", "a0"]
# A private repository the narrow caller cannot see, with more images than the catalog reads
# in a first batch (and its second), between names the caller sees.
HIDDEN_IMAGES = [f"i{i:03}" for i in range(260)]
NARROW_SEES = ["h", "x-y", "xy"]
PUBLIC_UNLISTED = "x_y"


@dataclass
class Install:
    http: httpx.Client
    keys: dict[str, tuple[str, str]]  # user -> access key of project ab
    everything: list[str]  # every name, as a caller who sees all should page it
    narrow: list[str]  # the names the narrow caller may pull


def push(client: httpx.Client, name: str, images: list[str]) -> None:
    """One image in `name` and in each of its `images`, sharing a config blob."""
    config = image_config(extra={"repository": name})
    push_blob(client, name, config)
    manifest: Blob = image_manifest(config.descriptor(), [])
    for image in ["", *images]:
        push_manifest(client, f"{name}/{image}" if image else name, "v1", manifest)


@pytest.fixture(scope="module")
def install(server: BerthServer) -> Iterator[Install]:
    async def populate(s: Services) -> dict[str, tuple[str, str]]:
        for project in ("ab", "ab-c"):
            await s.repositories.create_project(project, actor="test")
        for repository in [*REPOSITORIES, "hidden"]:
            # ab/x_y is public, but narrow has no role in it (nor in ab): not listed to narrow.
            public = repository == PUBLIC_UNLISTED
            await s.repositories.create("ab", repository, public=public, actor="test")
        # Public, in another project: the keys of ab may pull it, but it is not listed to them.
        await s.repositories.create("ab-c", "x", public=True, actor="test")
        for user in ("wide", "narrow"):
            await s.identity.users.create_user(user, None, service_account=True, actor="test")
        await s.identity.members.add_member("ab", "wide", "reader", actor="test")
        for repository in NARROW_SEES:
            await s.identity.members.grant("ab", repository, "narrow", "viewer", actor="test")
        keys = {}
        for user in ("wide", "narrow"):
            created = await s.identity.keys.create_key(user, "ab", actor="test")
            keys[user] = (created.key_id, created.secret)
        return keys

    keys = server._services(populate)
    names: list[str] = []
    for project, repositories in (("ab", [*REPOSITORIES, "hidden"]), ("ab-c", ["x"])):
        with httpx.Client(
            base_url=server.url, timeout=60, auth=server.access_key(project)
        ) as admin:
            for repository in repositories:
                images = {"x": IMAGES_OF_X, "hidden": HIDDEN_IMAGES}.get(repository, [])
                push(admin, f"{project}/{repository}", images)
                names += [f"{project}/{repository}"]
                names += [f"{project}/{repository}/{image}" for image in images]
    listed = [name for name in names if name.startswith("ab/")]  # the keys' project
    narrow = [name for name in listed if name.split("/")[1] in NARROW_SEES]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/v2/ab-c/x/manifests/v1").status_code == 200  # public: pullable
        yield Install(http, keys, sorted(listed), sorted(narrow))


def page(
    install: Install, user: str, host: str | None = None, **params: str | int
) -> tuple[list[str], str | None]:
    """One page of the catalog as `user` sees it (on a project's `host`, if given): its names
    and its Link header's next URL."""
    headers = {"Host": host} if host else {}
    response = install.http.get(
        "/v2/_catalog", params=params, auth=install.keys[user], headers=headers
    )
    assert response.status_code == 200, response.text
    link = response.headers.get("link")
    if link is None:
        return response.json()["repositories"], None
    match = re.fullmatch(r'<(/v2/_catalog\?[^>]+)>; rel="next"', link)
    assert match is not None, link
    return response.json()["repositories"], match.group(1)


def walk(install: Install, user: str, n: int, host: str | None = None) -> list[list[str]]:
    """Every page of n names as `user` sees them, following the Link headers."""
    pages = []
    items, next_url = page(install, user, host, n=n)
    pages.append(items)
    while next_url is not None:
        assert len(pages) < 1000, "the Link headers do not end"
        response = install.http.get(
            next_url, auth=install.keys[user], headers={"Host": host} if host else {}
        )
        assert response.status_code == 200, response.text
        pages.append(response.json()["repositories"])
        link = response.headers.get("link")
        next_url = None if link is None else link[1 : link.index(">")]
    return pages


def test_names_page_in_code_point_order_on_every_database(install: Install) -> None:
    everything = install.everything
    # The order a client sees is Python's (code points), whatever the database's collation.
    assert everything.index("ab/x-y") < everything.index("ab/x.y") < everything.index("ab/x/a")
    assert everything.index("ab/x0") < everything.index("ab/x_y") < everything.index("ab/xy")
    unpaged, link = page(install, "wide")
    assert (unpaged, link) == (everything, None)
    for n in (1, 3, 7, 100):
        pages = walk(install, "wide", n)
        assert [name for p in pages for name in p] == everything, f"n={n}"
        assert all(len(p) == n for p in pages[:-1]), f"n={n}: a short page before the last"
        assert 0 < len(pages[-1]) <= n


def test_hidden_repositories_are_skipped_and_more_pages_still_announced(
    install: Install,
) -> None:
    narrow = install.narrow
    # ab/h, then 261 names of ab/hidden the caller cannot see, then ab/x-y...
    h = narrow.index("ab/h")
    assert narrow[h + 1] == "ab/x-y"
    for n in (1, 2, len(narrow) - 1, len(narrow)):
        pages = walk(install, "narrow", n)
        assert [name for p in pages for name in p] == narrow, f"n={n}"
        assert all(len(p) == n for p in pages[:-1]), f"n={n}: a short page before the last"
    first, next_url = page(install, "narrow", n=1, last="ab/")
    assert first == ["ab/h"]
    assert next_url is not None  # more exist, past the hidden names: not the end


def test_a_project_host_pages_its_names_without_the_project(
    install: Install, server: BerthServer
) -> None:
    host = f"ab.local.localhost:{server.port}"
    names = [name.removeprefix("ab/") for name in install.everything if name.startswith("ab/")]
    assert names == sorted(names)
    for n in (4, 50):
        pages = walk(install, "wide", n, host)
        assert [name for p in pages for name in p] == names, f"n={n}"
        assert all(len(p) == n for p in pages[:-1]), f"n={n}: a short page before the last"
    assert page(install, "narrow", host, n=2, last="x") == (["x-y", "xy"], None)


@pytest.mark.parametrize(
    "last",
    [
        "ab/X",  # upper case: before every lower-case name in code points (after in en-US)
        "ab/x-",  # not stored: between ab/x/... and ab/x-y
        "ab/x_",  # between ab/x0 and ab/x_y
        "ab/x-y.",  # between ab/x-y and ab/x-y.z
        "ab/hidden/i1",  # inside what the narrow caller cannot see
        "AB",  # before everything
        "ab/x\x00y",  # holds a NUL, which no name does
        "zz",  # after everything
    ],
)
def test_a_last_that_is_not_a_stored_name_resumes_after_it(install: Install, last: str) -> None:
    for user, names in (("wide", install.everything), ("narrow", install.narrow)):
        after = [name for name in names if name > last]
        items, next_url = page(install, user, n=3, last=last)
        assert items == after[:3], (user, last)
        assert (next_url is not None) == (len(after) > 3), (user, last)
        unpaged, _ = page(install, user, last=last)
        assert unpaged == after, (user, last)


# Tags where code-point order and en-US's differ: upper case first, `-` and `.` before digits,
# `_` after upper case and before lower case.
TAGS = ["v1", "V1", "v1-rc", "v1.0", "v1_0", "v10", "_x", "a", "A", "B", "b", "Z9", "latest"]


def test_tags_page_in_code_point_order_on_every_database(
    install: Install, server: BerthServer
) -> None:
    name = "ab/x/ab"  # one of this module's images, holding only the tag v1 so far
    with httpx.Client(base_url=server.url, timeout=60, auth=server.access_key("ab")) as admin:
        manifest = admin.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200
        for tag in TAGS:
            pushed = admin.put(
                f"/v2/{name}/manifests/{tag}",
                content=manifest.content,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert pushed.status_code == 201, pushed.text
        ordered = sorted(TAGS)
        assert ordered.index("V1") < ordered.index("_x") < ordered.index("a")
        assert tag_list(admin, name) == ordered
        for n in (1, 4):
            seen: list[str] = []
            last: str | None = None
            while True:
                params: dict[str, str | int] = {"n": n} if last is None else {"n": n, "last": last}
                response = admin.get(f"/v2/{name}/tags/list", params=params)
                assert response.status_code == 200
                seen += response.json()["tags"] or []
                if "link" not in response.headers:
                    break
                last = seen[-1]
            assert seen == ordered, f"n={n}"
        for last in ("V", "v1-", "_", "a0", "Z"):
            assert tag_list(admin, name, last=last) == [t for t in ordered if t > last], last


default_page_server = server_fixture(
    "catalog-default-page", doc="A registry whose one repository holds CATALOG_PAGE + 1 names."
)


def test_without_n_a_page_of_catalog_page_names_links_to_the_next(
    default_page_server: BerthServer,
) -> None:
    server = default_page_server
    server._services(lambda s: s.repositories.create_project("big", actor="test"))
    server._services(lambda s: s.repositories.create("big", "app", actor="test"))
    auth = server.access_key("big")
    with httpx.Client(base_url=server.url, timeout=60, auth=auth) as admin:
        push(admin, "big/app", [])

    async def copies(s: Services) -> None:
        # Images inserted directly: copies of the pushed manifest under other image names.
        async with s.db.write() as conn:
            seed = (await conn.execute(select(manifests))).mappings().one()
            row = {key: value for key, value in seed.items() if key != "id"}
            await conn.execute(
                insert(manifests),
                [
                    {**row, "image": f"i{i:04}", "digest": f"sha256:{i:064x}"}
                    for i in range(CATALOG_PAGE)
                ],
            )

    server._services(copies)
    names = ["big/app", *(f"big/app/i{i:04}" for i in range(CATALOG_PAGE))]
    with httpx.Client(base_url=server.url, timeout=60, auth=auth) as http:
        first = http.get("/v2/_catalog")
        assert first.status_code == 200
        assert first.json()["repositories"] == names[:CATALOG_PAGE]
        last = names[CATALOG_PAGE - 1].replace("/", "%2F")
        next_url = f"/v2/_catalog?n={CATALOG_PAGE}&last={last}"
        assert first.headers["link"] == f'<{next_url}>; rel="next"'
        rest = http.get(next_url)
        assert rest.status_code == 200
        assert rest.json()["repositories"] == names[CATALOG_PAGE:]
        assert "link" not in rest.headers
