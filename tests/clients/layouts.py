"""Test images as OCI image layouts on disk, made without any network: umoci, plus a little JSON.

umoci builds real single-platform images; an image index over several of them is written here by
hand, since umoci has no command for one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.clients.registry import OCI_INDEX, OCI_MANIFEST
from tests.clients.tools import run

REF_NAME = "org.opencontainers.image.ref.name"
# The architecture umoci gives a new image, and the one clients print ("unpacking linux/amd64").
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class OciLayout:
    """An OCI image layout directory: `oci-layout`, `index.json` and `blobs/sha256/`."""

    path: Path

    def blob(self, digest: str) -> bytes:
        algorithm, encoded = digest.split(":", 1)
        return (self.path / "blobs" / algorithm / encoded).read_bytes()

    def json_blob(self, digest: str) -> Any:
        return json.loads(self.blob(digest))

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        target = self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return digest

    def add_json(self, value: Any, media_type: str, **fields: Any) -> dict[str, Any]:
        """Store a JSON document as a blob; return its descriptor (with any extra fields)."""
        data = json.dumps(value, indent=2).encode()
        return {"mediaType": media_type, "digest": self.add_blob(data), "size": len(data), **fields}

    @property
    def index(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "index.json").read_text()))

    def resolve(self, tag: str) -> dict[str, Any]:
        """The descriptor index.json gives for a tag."""
        for descriptor in self.index["manifests"]:
            if descriptor.get("annotations", {}).get(REF_NAME) == tag:
                return dict(descriptor)
        raise KeyError(f"{tag} not in {self.path}/index.json")

    def tag(self, tag: str, descriptor: dict[str, Any]) -> None:
        index = self.index
        kept = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) != tag]
        tagged = {**descriptor, "annotations": {**descriptor.get("annotations", {}), REF_NAME: tag}}
        index["manifests"] = [*kept, tagged]
        (self.path / "index.json").write_text(json.dumps(index, indent=2))

    def manifest(self, tag: str) -> dict[str, Any]:
        return dict(self.json_blob(self.resolve(tag)["digest"]))

    def archive(self, destination: Path) -> Path:
        """The layout as one tar (what `ctr images import` reads)."""
        with tarfile.open(destination, "w") as tar:
            for entry in sorted(self.path.rglob("*")):
                tar.add(entry, arcname=str(entry.relative_to(self.path)), recursive=False)
        return destination


def layer_files(layer: bytes) -> dict[str, bytes]:
    """The regular files in a (possibly gzip-compressed) layer tar, by path without leading /."""
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    # umoci 0.4.7 ends its layers right after the last file's data, without the padding and the
    # two zero blocks that close a tar; Go readers accept that, Python's tarfile needs them.
    layer += bytes(-len(layer) % 512 + 1024)
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files[member.name.lstrip("./")] = extracted.read()
    return files


@dataclass(frozen=True)
class TestImage:
    """A one-layer image in an OCI layout, and what a client pulling it back must find."""

    layout: OciLayout
    tag: str
    files: dict[str, bytes]

    __test__ = False  # not a pytest test class

    @property
    def oci_ref(self) -> str:
        """The containers/image transport name (skopeo, podman)."""
        return f"oci:{self.layout.path}:{self.tag}"

    @property
    def manifest_descriptor(self) -> dict[str, Any]:
        return self.layout.resolve(self.tag)

    @property
    def manifest_digest(self) -> str:
        return str(self.manifest_descriptor["digest"])

    @property
    def manifest(self) -> dict[str, Any]:
        return self.layout.manifest(self.tag)

    @property
    def config_digest(self) -> str:
        return str(self.manifest["config"]["digest"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.layout.json_blob(self.config_digest))

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])

    @property
    def platform(self) -> dict[str, str]:
        return {"os": self.config["os"], "architecture": self.config["architecture"]}

    def rootfs_tar(self, destination: Path) -> Path:
        """The image's files as a plain tar (what `docker import` reads)."""
        with tarfile.open(destination, "w") as tar:
            for name, content in sorted(self.files.items()):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        return destination


def umoci_image(
    layout_dir: Path, tag: str, files: dict[str, bytes], architecture: str | None = None
) -> TestImage:
    """Build (or add to an existing layout) a one-layer image holding `files`, with umoci."""
    if not (layout_dir / "oci-layout").exists():
        run(["umoci", "init", "--layout", layout_dir])
    image = f"{layout_dir}:{tag}"
    run(["umoci", "new", "--image", image])
    source = layout_dir.parent / f"{layout_dir.name}-{tag}-files"
    for name, content in files.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    # One `insert` of the whole directory: one layer, whatever the number of files.
    run(["umoci", "insert", "--image", image, source, "/"])
    config = ["--config.cmd", "/" + sorted(files)[0]]
    if architecture:
        config += ["--architecture", architecture]
    run(["umoci", "config", "--image", image, *config])
    run(["umoci", "gc", "--layout", layout_dir])
    return TestImage(OciLayout(layout_dir), tag, dict(files))


def image_index(layout: OciLayout, tag: str, images: list[TestImage]) -> dict[str, Any]:
    """Write an OCI image index over `images` (one per platform) and tag it in the layout."""
    manifests = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest_descriptor["size"],
            "platform": image.platform,
        }
        for image in images
    ]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    descriptor = layout.add_json(index, OCI_INDEX)
    layout.tag(tag, descriptor)
    return descriptor
