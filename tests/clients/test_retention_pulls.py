"""Retention's "keep images pulled within D days" after real pulls: skopeo pulls one of two
images, and only the other is planned for deletion."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.api.conftest import push_image
from tests.clients.commands import Skopeo
from tests.clients.layouts import OciLayout, TestImage
from tests.clients.registry import Registry

pytestmark = pytest.mark.clients


def test_keep_pulled_within_keeps_what_skopeo_pulled(
    skopeo: Skopeo, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref = registry.new_image("pulled")
    skopeo.copy(test_image.oci_ref, f"docker://{ref}")
    repository = ref.name.removeprefix(f"{registry.project}/").split("/")[0]
    with registry.http() as client:
        other = push_image(client, ref.name, "never-pulled")
    pulled = OciLayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{ref}", f"oci:{pulled.path}:{ref.tag}")
    assert pulled.resolve(ref.tag)["digest"] == test_image.manifest_digest

    base = f"/api/v1/projects/{registry.project}/retention"
    rules = [{"keep": "pulled_within", "days": 1, "repositories": f"{repository}/*"}]
    with registry.http() as api:
        assert api.put(base, json={"rules": rules}).status_code == 200
        deadline = time.monotonic() + 15  # pull times are written every few seconds
        while True:
            planned = api.post(f"{base}/dry-run").json()["images"]
            if len(planned) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [(i["digest"], i["tags"]) for i in planned] == [(other.digest, ["never-pulled"])]
        ran = api.post(f"{base}/runs").json()
        assert [i["digest"] for i in ran["images"]] == [other.digest]
    tags = skopeo.remote("list-tags", f"docker://{ref.repository}").stdout
    assert "never-pulled" not in tags and ref.tag in tags
