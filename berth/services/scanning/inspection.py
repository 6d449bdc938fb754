"""The CPU work of an image's scan: the inventory of its layers (`layers.image_inventory`),
kept as the digest's SBOM document, matched against the vulnerability database; in this
process or in a scan process."""

from __future__ import annotations

import json
from dataclasses import dataclass

from berth.domain.manifests import Descriptor
from berth.domain.packages import Package
from berth.domain.vulns import AdvisoryIndex, findings_for
from berth.metadata.database import Database
from berth.services.scanning.layers import Inventory, image_inventory
from berth.services.scanning.results import ScanFinding
from berth.services.vulndb import VulnDb
from berth.storage.base import BlobStore


def _sbom_document(inventory: Inventory) -> str:
    os = inventory.os
    return json.dumps(
        {
            "os": None
            if os is None
            else {"id": os.id, "version_id": os.version_id, "pretty_name": os.pretty_name},
            "packages": [
                {
                    "purl": p.purl,
                    "type": p.type,
                    "name": p.name,
                    "version": p.version,
                    "path": p.path,
                }
                for p in inventory.packages
            ],
            "notes": inventory.notes,
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class Inspected:
    """An image's scan before it is stored: plain data, as a scan process returns it."""

    sbom: str  # the inventory's document (`_sbom_document`)
    findings: list[ScanFinding]
    packages: int


async def inspect_image(vulndb: VulnDb, store: BlobStore, layers: list[Descriptor]) -> Inspected:
    """The CPU work of an image's scan: the inventory of its layers, matched against the
    vulnerability database; LayerRefused when a layer cannot be read."""
    inventory = await image_inventory(store, layers)
    found = await match_packages(vulndb, inventory.packages)
    return Inspected(_sbom_document(inventory), found, len(inventory.packages))


async def inspect_in_child(db: Database, store: BlobStore, layers: list[Descriptor]) -> Inspected:
    """`inspect_image` in a scan process (`ScanProcesses.run`), on its own database."""
    return await inspect_image(VulnDb(db), store, layers)


async def match_packages(vulndb: VulnDb, packages: list[Package]) -> list[ScanFinding]:
    installed = [(p, i) for p in packages if (i := p.installed()) is not None]
    index = AdvisoryIndex(await vulndb.advisories_for([i for _, i in installed]))
    found: list[ScanFinding] = []
    for package, wanted in installed:
        for finding in findings_for(wanted, index):
            found.append(
                ScanFinding(
                    purl=package.purl,
                    name=package.name,
                    installed=package.version,
                    fixed=finding.fixed,
                    advisory_id=finding.advisory_id,
                    aliases=list(finding.aliases),
                    summary=finding.summary,
                    severity=finding.severity.label,
                    link=finding.link,
                )
            )
    return found
