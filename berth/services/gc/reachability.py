"""What a garbage collection run may delete, as a pure function of rows and edges.

No database here: given a project's manifests (tagged or not, when pushed), their references
(index children and blobs), referrer/subject edges, blob links, blobs and uploads, and the grace
cutoff, `decide` says what goes. The run (`decide.py`) applies the manifest rule to the rows it
reads; the link and blob rules run there as SQL written from the rules below (the same
conditions, on the rows as they are after the manifests' deletion).

The rules:

- A manifest is **kept** when it is tagged or pushed at or after the cutoff (a push in flight
  uploads an index's children, or an image before its signature, untagged), and, transitively,
  when it is a child of a kept index, a referrer of a kept manifest (its subject) or the subject
  of a kept referrer. Without delete-untagged every manifest is kept.
- A **link** (a repository's hold on a blob) of the project goes when it was made before the
  cutoff and no kept manifest of its repository references the blob.
- A **blob** (row and file) goes when no link of any project is left to it and either this run
  removed one of its links or it was stored before the cutoff.
- An **upload** goes when nobody has touched it since before the upload cutoff
  (`upload_expiry` before now, not the grace period).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field


def grace_cutoff(now: dt.datetime, grace_seconds: float) -> dt.datetime:
    """What was pushed, linked or touched before this is old enough to be collected."""
    return now - dt.timedelta(seconds=grace_seconds)


def collectable_from(newest: dt.datetime | None, grace_seconds: float) -> dt.datetime | None:
    """When what was kept for being young (the newest of it at `newest`) can go."""
    return newest + dt.timedelta(seconds=grace_seconds) if newest is not None else None


@dataclass(frozen=True, slots=True)
class Manifest:
    id: int
    repository_id: int
    image: str
    digest: str
    pushed_at: dt.datetime
    tagged: bool = False
    subject_digest: str | None = None  # set on a referrer: the manifest it refers to


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest's reference to a digest: an index's child (`is_manifest`) or a blob."""

    manifest_id: int
    digest: str
    is_manifest: bool = False


@dataclass(frozen=True, slots=True)
class Link:
    """A repository's hold on a blob (`repository_blobs`), of any project."""

    repository_id: int
    digest: str
    linked_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    repository_id: int
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Young:
    """What was kept only because it is younger than the grace period."""

    images: int = 0  # untagged images nothing else keeps (`queries.is_image`)
    blobs: int = 0  # blobs linked in a repository that no manifest of it references
    newest: dt.datetime | None = None  # push or link time of the youngest of them


@dataclass(frozen=True, slots=True)
class ManifestVerdict:
    doomed: tuple[Manifest, ...] = ()  # manifests to delete
    removed: tuple[Manifest, ...] = ()  # of those, what a user sees go (not an index's child)
    images: int = 0  # of those, images as `queries.is_image` counts them (not referrers)
    young: Young = Young()


def judge_manifests(
    manifests: Iterable[Manifest],
    references: Iterable[Reference],
    cutoff: dt.datetime,
) -> ManifestVerdict:
    """The manifest rule (with delete-untagged): which of a project's manifests nothing keeps.
    `references` may hold blob references too; only index children are edges."""
    rows = list(manifests)
    by_key = {(m.repository_id, m.image, m.digest): m.id for m in rows}
    edges: dict[int, list[int]] = {}
    for m in rows:
        if m.subject_digest is not None:
            subject = by_key.get((m.repository_id, m.image, m.subject_digest))
            if subject is not None:
                edges.setdefault(subject, []).append(m.id)  # a subject keeps its referrers
                edges.setdefault(m.id, []).append(subject)  # a referrer keeps its subject
    parents = {m.id: m for m in rows}
    children: set[int] = set()
    for ref in references:
        parent = parents.get(ref.manifest_id)
        if not ref.is_manifest or parent is None:
            continue
        child = by_key.get((parent.repository_id, parent.image, ref.digest))
        if child is not None:
            edges.setdefault(parent.id, []).append(child)
            children.add(child)

    def reached_from(roots: set[int]) -> set[int]:
        kept = set(roots)
        frontier = list(kept)
        while frontier:
            for reached in edges.get(frontier.pop(), ()):
                if reached not in kept:
                    kept.add(reached)
                    frontier.append(reached)
        return kept

    def is_image(m: Manifest) -> bool:  # as `queries.is_image`
        is_referrer = (m.repository_id, m.image, m.subject_digest) in by_key
        return m.id not in children and not is_referrer

    kept = reached_from({m.id for m in rows if m.tagged or m.pushed_at >= cutoff})
    kept_by_tags = reached_from({m.id for m in rows if m.tagged})
    only_young = [m for m in rows if m.id in kept and m.id not in kept_by_tags]
    young = Young(
        images=sum(1 for m in only_young if is_image(m)),
        newest=max((m.pushed_at for m in only_young), default=None),
    )
    doomed = tuple(m for m in rows if m.id not in kept)
    removed = tuple(m for m in doomed if m.id not in children)  # an index stands for its children
    return ManifestVerdict(doomed, removed, sum(1 for m in removed if is_image(m)), young)


@dataclass(frozen=True, slots=True)
class Graph:
    """One project's content and what it shares: the input of `decide`."""

    repositories: frozenset[int]  # the project's repositories
    manifests: tuple[Manifest, ...] = ()  # the project's
    references: tuple[Reference, ...] = ()  # of those manifests
    links: tuple[Link, ...] = ()  # of every project
    blobs: tuple[Blob, ...] = ()
    uploads: tuple[Upload, ...] = ()  # the project's


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a run deletes, and what it keeps only for being young."""

    manifests: frozenset[int] = frozenset()  # ids of the manifests deleted
    images: int = 0  # of those, images as `queries.is_image` counts them
    links: frozenset[tuple[int, str]] = frozenset()  # (repository id, digest) links removed
    blobs: frozenset[str] = frozenset()  # blobs whose rows and files go
    uploads: frozenset[str] = frozenset()
    young: Young = field(default_factory=Young)


def decide(
    graph: Graph,
    cutoff: dt.datetime,
    *,
    delete_untagged: bool,
    upload_cutoff: dt.datetime | None = None,
) -> Verdict:
    """Everything a run decides, by the rules in this module's docstring (`upload_cutoff`:
    the grace `cutoff` when not given)."""
    upload_cutoff = cutoff if upload_cutoff is None else upload_cutoff
    verdict = ManifestVerdict()
    if delete_untagged:
        verdict = judge_manifests(graph.manifests, graph.references, cutoff)
    doomed = {m.id for m in verdict.doomed}
    repository_of = {m.id: m.repository_id for m in graph.manifests if m.id not in doomed}
    referenced = {
        (repository_of[r.manifest_id], r.digest)
        for r in graph.references
        if r.manifest_id in repository_of
    }
    unreferenced = [
        link
        for link in graph.links
        if link.repository_id in graph.repositories
        and (link.repository_id, link.digest) not in referenced
    ]
    links = frozenset((ln.repository_id, ln.digest) for ln in unreferenced if ln.linked_at < cutoff)
    young_links = [ln for ln in unreferenced if ln.linked_at >= cutoff]
    still_linked = {ln.digest for ln in graph.links if (ln.repository_id, ln.digest) not in links}
    unlinked = {digest for _, digest in links}
    blobs = frozenset(
        b.digest
        for b in graph.blobs
        if b.digest not in still_linked and (b.digest in unlinked or b.created_at < cutoff)
    )
    uploads = frozenset(
        u.id
        for u in graph.uploads
        if u.repository_id in graph.repositories and u.updated_at < upload_cutoff
    )
    times = [t for t in (verdict.young.newest, *(ln.linked_at for ln in young_links)) if t]
    young = Young(
        verdict.young.images, len({ln.digest for ln in young_links}), max(times, default=None)
    )
    return Verdict(frozenset(doomed), verdict.images, links, blobs, uploads, young)
