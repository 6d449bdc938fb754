"""Typed references to registry content that cross from the metadata layer to the surfaces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RepositoryRef:
    """A resolved repository: what every content operation and access check needs of it."""

    id: int
    project_id: int
    project: str
    name: str
    public: bool
    tag_overwrite: bool
