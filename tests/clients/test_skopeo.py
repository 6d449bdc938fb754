"""skopeo: copy an OCI layout into the registry and back, list tags, inspect, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clients.commands import Skopeo
from tests.clients.layouts import OciLayout, TestImage, layer_files, sha256
from tests.clients.registry import ImageRef, Registry
from tests.clients.tools import CommandFailed

pytestmark = pytest.mark.clients


def push(skopeo: Skopeo, image: TestImage, ref: ImageRef) -> None:
    skopeo.copy(image.oci_ref, f"docker://{ref}")


def test_skopeo_copy_round_trip_keeps_manifest_and_layers(
    skopeo: Skopeo, any_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    skopeo = skopeo.at(any_registry)
    ref = any_registry.new_image("skopeo")
    digest_file = tmp_path / "digest"

    skopeo.copy(test_image.oci_ref, f"docker://{ref}", "--digestfile", digest_file)
    assert digest_file.read_text() == test_image.manifest_digest

    pulled = OciLayout(tmp_path / "pulled")
    skopeo.copy(f"docker://{ref}", f"oci:{pulled.path}:{ref.tag}")
    assert pulled.resolve(ref.tag)["digest"] == test_image.manifest_digest
    assert pulled.manifest(ref.tag) == test_image.manifest
    for digest in [test_image.config_digest, *test_image.layer_digests]:
        assert sha256(pulled.blob(digest)) == digest
    assert layer_files(pulled.blob(test_image.layer_digests[0])) == test_image.files


def test_skopeo_list_tags_shows_every_pushed_tag(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    ref = registry.new_image("tags")
    tags = ["v1", "v1.1", "latest"]
    for tag in tags:
        push(skopeo, test_image, ref.with_tag(tag))

    listed = json.loads(skopeo.remote("list-tags", f"docker://{ref.repository}").stdout)

    assert listed["Repository"] == ref.repository
    assert sorted(listed["Tags"]) == sorted(tags)


def test_skopeo_list_tags_of_a_name_never_pushed_fails_as_unknown(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    """A mistyped image name inside an existing repository is unknown (404 NAME_UNKNOWN), as
    in Distribution: skopeo fails (it prints only the status) instead of listing no tags."""
    ref = registry.new_image("multi")
    push(skopeo, test_image, ref)
    typo = ref.repository.rsplit("/", 1)[0] + "/typo"

    with pytest.raises(CommandFailed, match=r"fetching tags list: .*404 \(Not Found\)"):
        skopeo.remote("list-tags", f"docker://{typo}")


def test_skopeo_inspect_reports_digest_platform_and_raw_manifest(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    ref = registry.new_image("inspect")
    push(skopeo, test_image, ref)

    inspected = json.loads(skopeo.remote("inspect", f"docker://{ref}").stdout)
    raw = skopeo.remote("inspect", "--raw", f"docker://{ref}").stdout
    config = json.loads(skopeo.remote("inspect", "--config", "--raw", f"docker://{ref}").stdout)

    assert inspected["Digest"] == test_image.manifest_digest
    assert inspected["Name"] == ref.repository
    assert ref.tag in inspected["RepoTags"]
    assert inspected["Architecture"] == test_image.platform["architecture"]
    assert inspected["Os"] == test_image.platform["os"]
    assert inspected["Layers"] == test_image.layer_digests
    assert sha256(raw.encode()) == test_image.manifest_digest
    assert config == test_image.config


def test_skopeo_delete_removes_the_manifest(
    skopeo: Skopeo, registry: Registry, test_image: TestImage
) -> None:
    ref = registry.new_image("delete")
    push(skopeo, test_image, ref)

    skopeo.remote("delete", f"docker://{ref}")

    with pytest.raises(CommandFailed, match="manifest unknown"):
        skopeo.remote("inspect", "--raw", f"docker://{ref}")
    with registry.http() as http:
        by_digest = http.get(f"/v2/{ref.name}/manifests/{test_image.manifest_digest}")
    assert by_digest.status_code == 404
