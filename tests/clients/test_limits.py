"""Repository limits as a client meets them: the image limit and fixed (non-overwritable) tags."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import select, update

from berth.metadata.tables import manifests, projects, repositories
from berth.state import Services
from tests.clients.commands import Skopeo
from tests.clients.layouts import OciLayout, TestImage, image_index, umoci_image
from tests.clients.registry import ImageRef, Registry
from tests.clients.tools import CommandFailed, require_binary
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Blob, digest_of, push_bytes
from tests.retention_seed import seed
from tests.servers import running_server

pytestmark = pytest.mark.clients


def distinct_manifests(client: httpx.Client, name: str, count: int) -> list[bytes]:
    """`count` different images sharing one config and layer (they differ by an annotation)."""
    config, layer = (
        Blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG),
        Blob(b"x", OCI_LAYER),
    )
    push_bytes(client, name, config.data)
    push_bytes(client, name, layer.data)
    return [
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
                "annotations": {"n": str(i)},
            }
        ).encode()
        for i in range(count)
    ]


def put_all(
    registry: Registry, name: str, bodies: list[bytes], workers: int = 8, tagged: bool = False
) -> None:
    """PUT every manifest by its digest or, `tagged`, each under a tag of its own (`t<n>`)."""

    def put(chunk: list[tuple[int, bytes]]) -> None:
        with registry.http() as client:
            for n, body in chunk:
                reference = f"t{n}" if tagged else digest_of(body)
                response = client.put(
                    f"/v2/{name}/manifests/{reference}",
                    content=body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                assert response.status_code == 201, response.text

    numbered = list(enumerate(bodies))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, [numbered[i::workers] for i in range(workers)]))


def seed_images(registry: Registry, ref: ImageRef, count: int) -> None:
    """`count` images stored in `ref`'s repository straight through the metadata database:
    pushing them one by one (what the limit is not about) took most of a minute and a half."""
    *_, repository, image = ref.name.split("/")

    async def fill(services: Services) -> None:
        async with services.db.read() as conn:
            repository_id = (
                await conn.execute(
                    select(repositories.c.id)
                    .join(projects, projects.c.id == repositories.c.project_id)
                    .where(projects.c.name == registry.project, repositories.c.name == repository)
                )
            ).scalar_one()
        await seed(services.db, repository_id, [(n, [], 0) for n in range(count)], image=image)

    registry.server._services(fill)


def test_the_push_past_ten_thousand_images_is_refused_and_nothing_kept(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    """At the real default (max_images_per_repository = 10,000)."""
    ref = registry.new_image("many")
    seed_images(registry, ref, 9_999)
    with registry.http() as client:
        [last] = distinct_manifests(client, ref.name, 1)
        # The 10,000th image is pushed: the limit is reached, not passed.
        put_all(registry, ref.name, [last], workers=1)

    with pytest.raises(CommandFailed, match="limit of 10,000 images"):
        skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    with registry.http() as client:
        kept = client.head(f"/v2/{ref.name}/manifests/{test_image.manifest_digest}")
        assert kept.status_code == 404
        assert client.head(f"/v2/{ref.name}/manifests/{ref.tag}").status_code == 404
        # Re-pushing an image that is already stored adds nothing, so it is still accepted.
        again = client.put(
            f"/v2/{ref.name}/manifests/again",
            content=last,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert again.status_code == 201, again.text


def test_a_lowered_limit_refuses_the_next_image(
    skopeo: Skopeo, test_image: TestImage, berth_with_limit: Registry
) -> None:
    ref = berth_with_limit.new_image("few")
    with berth_with_limit.http() as client:
        put_all(berth_with_limit, ref.name, distinct_manifests(client, ref.name, 2), workers=1)
    with pytest.raises(CommandFailed, match="limit of 2 images"):
        skopeo.at(berth_with_limit).copy(test_image.oci_ref, f"docker://{ref}")


@pytest.fixture(scope="module")
def berth_with_limit(request: pytest.FixtureRequest, registry: Registry) -> Iterator[Registry]:
    """A repository limit lowered through the setting needs its own server (path style)."""
    with running_server(
        request,
        "limited",
        host=registry.server.host,
        tls=registry.server.tls,
        extra_env={**registry.server.extra_env, "BERTH_MAX_IMAGES_PER_REPOSITORY": "2"},
    ) as server:
        project = "limited"
        server.create_project(project)
        yield replace(
            registry,
            server=server,
            project=project,
            credentials=server.access_key(project),
            host_style=False,
        )


@pytest.fixture(scope="module")
def two_platform_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An OCI layout whose tag `multi` is an index over a linux/amd64 and a linux/arm64 image
    (`skopeo copy --all` pushes both platform manifests by digest, then the index by tag)."""
    require_binary("umoci")
    layout_dir = tmp_path_factory.mktemp("limit-multi") / "layout"
    images = [
        umoci_image(layout_dir, arch, {"arch.txt": f"{arch} {uuid.uuid4()}\n".encode()}, arch)
        for arch in ("amd64", "arm64")
    ]
    image_index(OciLayout(layout_dir), "multi", images)
    return f"oci:{layout_dir}:multi"


def images_held(registry: Registry, ref: ImageRef) -> int:
    repository = ref.name.split("/")[1]
    with registry.http() as client:
        shown = client.get(f"/api/v1/projects/{registry.project}/repositories/{repository}")
        shown.raise_for_status()
    return int(shown.json()["images"])


def test_a_multi_platform_image_that_fits_under_the_limit_is_accepted(
    skopeo: Skopeo, two_platform_image: str, berth_with_limit: Registry
) -> None:
    """An index and its platform manifests are one image: with one image of the two allowed,
    the platform manifests pushed ahead of their index do not count as two more."""
    ref = berth_with_limit.new_image("multi")
    with berth_with_limit.http() as client:
        put_all(berth_with_limit, ref.name, distinct_manifests(client, ref.name, 1), 1, True)

    skopeo.at(berth_with_limit).copy(two_platform_image, f"docker://{ref}", "--all")

    assert images_held(berth_with_limit, ref) == 2


def test_a_multi_platform_image_past_the_limit_is_refused_and_nothing_kept(
    skopeo: Skopeo, two_platform_image: str, berth_with_limit: Registry
) -> None:
    ref = berth_with_limit.new_image("multifull")
    with berth_with_limit.http() as client:
        put_all(berth_with_limit, ref.name, distinct_manifests(client, ref.name, 2), 1, True)

    with pytest.raises(CommandFailed, match="limit of 2 images"):
        skopeo.at(berth_with_limit).copy(two_platform_image, f"docker://{ref}", "--all")

    assert images_held(berth_with_limit, ref) == 2


def test_untagged_images_older_than_an_hour_leave_no_room_for_platform_manifests(
    skopeo: Skopeo, two_platform_image: str, berth_with_limit: Registry
) -> None:
    """Untagged images pushed by digest within the hour may be the platform manifests of an
    index still to come; older ones are images like any other."""
    ref = berth_with_limit.new_image("multiold")
    with berth_with_limit.http() as client:
        put_all(berth_with_limit, ref.name, distinct_manifests(client, ref.name, 2), workers=1)
    *_, repository, image = ref.name.split("/")

    async def age(services: Services) -> None:
        async with services.db.write() as conn:
            held = select(repositories.c.id).where(repositories.c.name == repository)
            await conn.execute(
                update(manifests)
                .where(manifests.c.repository_id.in_(held), manifests.c.image == image)
                .values(pushed_at=services.db.clock(-3601))
            )

    berth_with_limit.server._services(age)

    with pytest.raises(CommandFailed, match="limit of 2 images"):
        skopeo.at(berth_with_limit).copy(two_platform_image, f"docker://{ref}", "--all")
    assert images_held(berth_with_limit, ref) == 2


def test_a_fixed_tag_refuses_another_image_and_accepts_the_same_one(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    repository = "fixed" + uuid.uuid4().hex[:6]
    registry.server.create_repository(registry.project, repository, tag_overwrite=False)
    ref = ImageRef(registry.address, registry.name(repository, "app"), "1.0")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")  # the same digest again: fine
    with registry.http() as client:
        other = distinct_manifests(client, ref.name, 1)[0]
        moved = client.put(
            f"/v2/{ref.name}/manifests/{ref.tag}",
            content=other,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert moved.status_code == 403
        assert "tag overwrite is disabled" in moved.text
    # A client moving the tag the other way round sees the same refusal.
    other_ref = ref.with_tag("2.0")
    with registry.http() as client:
        client.put(
            f"/v2/{ref.name}/manifests/{other_ref.tag}",
            content=other,
            headers={"Content-Type": OCI_MANIFEST},
        ).raise_for_status()
    with pytest.raises(CommandFailed, match="tag overwrite is disabled"):
        skopeo.copy(test_image.oci_ref, f"docker://{other_ref}")


def test_a_signature_is_not_an_image_under_the_limit(berth_with_limit: Registry) -> None:
    """The limit counts images as every page does: a signature is listed under its subject."""
    ref = berth_with_limit.new_image("signed")
    with berth_with_limit.http() as client:
        first, second, third = distinct_manifests(client, ref.name, 3)
        put_all(berth_with_limit, ref.name, [first, second], workers=1, tagged=True)
        config = Blob(b"{}", "application/vnd.oci.empty.v1+json")
        push_bytes(client, ref.name, config.data)
        subject = {"mediaType": OCI_MANIFEST, "digest": digest_of(first), "size": len(first)}
        signature = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                "config": config.descriptor(),
                "layers": [config.descriptor()],
                "subject": subject,
            }
        ).encode()
        signed = client.put(
            f"/v2/{ref.name}/manifests/{digest_of(signature)}",
            content=signature,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert signed.status_code == 201, signed.text
        refused = client.put(
            f"/v2/{ref.name}/manifests/{digest_of(third)}",
            content=third,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert refused.status_code == 403 and "limit of 2 images" in refused.text
        repository = ref.name.split("/")[1]
        shown = client.get(
            f"/api/v1/projects/{berth_with_limit.project}/repositories/{repository}"
        ).json()
        assert shown["images"] == 2
