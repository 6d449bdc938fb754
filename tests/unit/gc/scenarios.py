"""A small builder of registry content for GC scenarios: projects, repositories, images, indexes,
referrers, blob links and uploads, as the rows `reachability.decide` reads.

Times are relative to the test's `NOW`: `OLD` content is past the grace period, `YOUNG` within it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from dataclasses import dataclass, field

from berth.services.gc.reachability import Blob, Graph, Link, Manifest, Reference, Upload

# A day of grace: NOW is taken when the module is imported, and a real run (test_runs_agree)
# reads the clock when it runs, which in a full suite on a busy machine is an hour later.
GRACE = 86400.0
NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=2)
YOUNG = NOW - dt.timedelta(minutes=1)
CUTOFF = NOW - dt.timedelta(seconds=GRACE)
PROJECT = "shop"  # the project under collection


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


@dataclass
class Content:
    """Everything in the registry: the project under collection is `PROJECT`, other projects'
    repositories hold blobs too."""

    manifests: list[Manifest] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    links: dict[tuple[int, str], Link] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    repositories: dict[int, str] = field(default_factory=dict)  # id -> project
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def repository(self, project: str = "") -> int:
        repository_id = len(self.repositories) + 1
        self.repositories[repository_id] = project or PROJECT
        return repository_id

    def blob(self, repository: int, name: str, at: dt.datetime = OLD) -> str:
        """A blob uploaded to the repository at `at` (stored and linked then)."""
        found = digest(name)
        self.blobs.setdefault(found, Blob(found, at))
        self.links.setdefault((repository, found), Link(repository, found, at))
        return found

    def image(
        self,
        repository: int,
        name: str,
        layers: list[str],
        *,
        tagged: bool = False,
        at: dt.datetime = OLD,
        subject: str | None = None,
    ) -> Manifest:
        """An image manifest (config and layers uploaded with it) pushed at `at`; with
        `subject`, a referrer of the manifest of that digest."""
        blobs = [self.blob(repository, layer, at) for layer in (f"{name}-config", *layers)]
        return self._manifest(repository, name, blobs, [], tagged, at, subject)

    def index(
        self,
        repository: int,
        name: str,
        children: list[Manifest],
        *,
        tagged: bool = False,
        at: dt.datetime = OLD,
    ) -> Manifest:
        return self._manifest(repository, name, [], children, tagged, at, None)

    def referrer(
        self, subject: Manifest, name: str, *, tagged: bool = False, at: dt.datetime = OLD
    ) -> Manifest:
        """A signature or SBOM of `subject` (its subject field set)."""
        return self.image(
            subject.repository_id,
            name,
            [f"{name}-payload"],
            tagged=tagged,
            at=at,
            subject=subject.digest,
        )

    def _manifest(
        self,
        repository: int,
        name: str,
        blobs: list[str],
        children: list[Manifest],
        tagged: bool,
        at: dt.datetime,
        subject: str | None,
    ) -> Manifest:
        manifest = Manifest(
            id=next(self._ids),
            repository_id=repository,
            image="app",
            digest=digest(name),
            pushed_at=at,
            tagged=tagged,
            subject_digest=subject,
        )
        self.manifests.append(manifest)
        self.references.extend(Reference(manifest.id, b) for b in blobs)
        self.references.extend(Reference(manifest.id, c.digest, True) for c in children)
        return manifest

    def stored(self, name: str, at: dt.datetime) -> str:
        """A blob in storage that no repository links (its last one was deleted)."""
        found = digest(name)
        self.blobs[found] = Blob(found, at)
        return found

    def upload(self, repository: int, name: str, at: dt.datetime) -> str:
        """An upload in progress, last touched at `at` (`name`: letters and digits)."""
        self.uploads.append(Upload(name, repository, at))
        return name

    def graph(self) -> Graph:
        ours = frozenset(r for r, project in self.repositories.items() if project == PROJECT)
        mine = [m for m in self.manifests if m.repository_id in ours]
        ids = {m.id for m in mine}
        return Graph(
            repositories=ours,
            manifests=tuple(mine),
            references=tuple(r for r in self.references if r.manifest_id in ids),
            links=tuple(self.links.values()),
            blobs=tuple(self.blobs.values()),
            uploads=tuple(u for u in self.uploads if u.repository_id in ours),
        )
