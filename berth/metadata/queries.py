"""Query fragments more than one service needs."""

from __future__ import annotations

from sqlalchemy import Exists, select

from berth.metadata.tables import manifest_references, manifests


def is_index_child() -> Exists:
    """For a row of `manifests`: some index of the same repository and image lists it.

    An image is a top-level manifest, so `~is_index_child()` selects what counts as images.
    """
    parent = manifests.alias("parent")
    return (
        select(manifest_references.c.digest)
        .join(parent, parent.c.id == manifest_references.c.manifest_id)
        .where(
            manifest_references.c.is_manifest,
            manifest_references.c.digest == manifests.c.digest,
            parent.c.repository_id == manifests.c.repository_id,
            parent.c.image == manifests.c.image,
        )
        .exists()
    )
