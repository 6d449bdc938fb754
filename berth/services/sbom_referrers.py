"""An image's SBOM attached to it as an OCI 1.1 referrer, on request.

The referrer is an artifact manifest in the image's own repository: `artifactType` and its
one layer `application/vnd.cyclonedx+json` (the CycloneDX document), the empty config, and
`subject` the image. It is pushed through the same upload and manifest code as a client's push,
so a garbage collection's write restriction, the image limit and webhooks apply as to any
push. The document is made deterministic (serial number from its content, no timestamp), so
attaching the same SBOM again stores nothing new: one referrer per distinct SBOM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator

from berth.domain.errors import ManifestUnknown, NotFound
from berth.domain.manifests import OCI_EMPTY_CONFIG, OCI_MANIFEST, parse_stored_manifest
from berth.domain.names import joined_name
from berth.domain.references import RepositoryRef
from berth.services.records import Record
from berth.services.registry import Registry
from berth.services.scanning.sbom import MEDIA_TYPE, cyclonedx_json
from berth.services.scanning.scans import Scans
from berth.services.uploads import Uploads

EMPTY_CONFIG = b"{}"
SBOM_TITLE = "sbom.cdx.json"


class AttachedSbom(Record):
    digest: str  # the referrer manifest's
    artifact_type: str
    subject: str
    sbom_digest: str  # the layer's: the CycloneDX document
    sbom_size: int
    created: bool  # false: this SBOM was attached already


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class SbomReferrers:
    def __init__(self, registry: Registry, uploads: Uploads, scans: Scans) -> None:
        self.registry = registry
        self.uploads = uploads
        self.scans = scans

    async def attach(
        self, repo: RepositoryRef, image: str, digest: str, actor: str
    ) -> AttachedSbom:
        """Push the SBOM of the image manifest `digest` as its referrer (see the module)."""
        subject = await self.registry.get_manifest(repo, image, digest)
        name = joined_name(repo.project, repo.name, image)
        if parse_stored_manifest(subject.content, subject.media_type).is_index:
            raise NotFound(
                f"{name}@{digest} is an index: it has no SBOM of its own; attach each "
                "platform's (scanning the index scans them)"
            )
        inventory = await self.scans.sbom(digest)
        if inventory is None:
            raise NotFound(f"image {name}@{digest} has no SBOM yet: scan it first")
        content_key = json.dumps(inventory, sort_keys=True).encode()
        serial = uuid.uuid5(
            uuid.NAMESPACE_URL, f"berth:sbom:{name}@{digest}:{_sha256(content_key)}"
        )
        document = cyclonedx_json(name, digest, inventory, serial=serial).encode()
        for blob in (EMPTY_CONFIG, document):
            upload = await self.uploads.start(repo, image)
            await self.uploads.complete(repo, upload, _sha256(blob), _once(blob), None)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": MEDIA_TYPE,
            "config": {
                "mediaType": OCI_EMPTY_CONFIG,
                "digest": _sha256(EMPTY_CONFIG),
                "size": len(EMPTY_CONFIG),
                "data": base64.b64encode(EMPTY_CONFIG).decode(),
            },
            "layers": [
                {
                    "mediaType": MEDIA_TYPE,
                    "digest": _sha256(document),
                    "size": len(document),
                    "annotations": {"org.opencontainers.image.title": SBOM_TITLE},
                }
            ],
            "subject": {
                "mediaType": subject.media_type,
                "digest": digest,
                "size": len(subject.content),
            },
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        reference = _sha256(body)
        try:
            await self.registry.get_manifest(repo, image, reference)
            created = False
        except ManifestUnknown:
            created = True
        pushed = await self.registry.put_manifest(
            repo, image, reference, body, OCI_MANIFEST, project_wide=True, actor=actor
        )
        return AttachedSbom(
            digest=pushed.digest,
            artifact_type=MEDIA_TYPE,
            subject=digest,
            sbom_digest=_sha256(document),
            sbom_size=len(document),
            created=created,
        )
