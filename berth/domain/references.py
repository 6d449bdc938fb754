"""Typed references to registry content that cross from the metadata layer to the surfaces."""

from __future__ import annotations

from dataclasses import dataclass

# The largest id a row can have (the database's 32-bit integer columns): what the API's paths
# and the CLI's arguments take as an id; a larger number is refused as a bad value.
MAX_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RepositoryRef:
    """A resolved repository: what every content operation and access check needs of it."""

    id: int
    project_id: int
    project: str
    name: str
    public: bool
    tag_overwrite: bool
    # The project's pull policy: pulls of images whose scan found something at least this
    # severe (a `Severity` value) are refused; None: off. Read with the repository (cached).
    refuse_pulls_at: int | None = None
