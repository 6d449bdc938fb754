"""An image's stored inventory as a CycloneDX SBOM (JSON, spec 1.6), with `cyclonedx-python-lib`."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

MEDIA_TYPE = "application/vnd.cyclonedx+json"


def cyclonedx_json(
    name: str,
    digest: str,
    inventory: dict[str, Any],
    *,
    serial: UUID | None = None,
    timestamp: dt.datetime | None = None,
) -> str:
    """The SBOM of the image `name` (project/repository[/image]) with manifest `digest`:
    the image as the described component, its OS release and each package (by purl, once).
    Without `serial` the document gets a random serial number and the time now; with it, no
    time unless `timestamp` is given (the same inventory gives the same bytes)."""
    # Here: cyclonedx-python-lib takes ~3 MB, which a server process that never exports an
    # SBOM does not hold.
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    bom = Bom(serial_number=serial) if serial is not None else Bom()
    if serial is not None:
        bom.metadata.timestamp = timestamp  # type: ignore[assignment]
    image = Component(name=name, version=digest, type=ComponentType.CONTAINER, bom_ref=digest)
    bom.metadata.component = image
    os = inventory.get("os")
    if os:
        bom.components.add(
            Component(
                name=os["id"],
                version=os["version_id"] or None,
                description=os["pretty_name"] or None,
                type=ComponentType.OPERATING_SYSTEM,
                bom_ref=f"os:{os['id']}@{os['version_id']}",
            )
        )
    seen: set[str] = set()
    for package in inventory["packages"]:
        if package["purl"] in seen:
            continue
        seen.add(package["purl"])
        bom.components.add(
            Component(
                name=package["name"],
                version=package["version"],
                type=ComponentType.LIBRARY,
                purl=PackageURL.from_string(package["purl"]),
                bom_ref=package["purl"],
            )
        )
    bom.register_dependency(image, list(bom.components))  # what the image holds
    return str(JsonV1Dot6(bom).output_as_string(indent=2))
