"""What a retention run reads: a snapshot of a project's manifests (no content), the tags a
run must never delete, and the plan made from them (`PreparedRun`)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.references import RepositoryRef
from berth.domain.retention import Manifest, Plan, Protected, Rule
from berth.domain.tag_rules import ImmutableTagRule, protecting_rule
from berth.metadata.tables import manifest_references, manifests, repositories, tags, utcnow
from berth.services.tag_rules import immutable_rules


@dataclass(frozen=True, slots=True)
class Snapshot:
    project_id: int
    taken_at: dt.datetime
    manifests: list[Manifest]
    ids: dict[tuple[str, str, str], int]  # (repository, image, digest) -> manifest id
    repositories: dict[str, RepositoryRef]  # by name
    protected: Protected


@dataclass(frozen=True, slots=True)
class PreparedRun:
    project: str
    project_id: int
    rules: list[Rule]
    snapshot: Snapshot
    plan: Plan


def tag_protection(locked: set[str], rules: list[ImmutableTagRule]) -> Protected:
    """Tags that cannot move: every tag of a repository whose tag overwrite is off, and every
    tag an immutable tag rule of the project covers."""

    def protected(path: str, tag: str) -> bool:
        return path.split("/", 1)[0] in locked or protecting_rule(rules, path, tag) is not None

    return protected


async def take_snapshot(conn: AsyncConnection, project_id: int, project: str) -> Snapshot:
    taken_at = utcnow()
    repo_rows = (
        await conn.execute(
            select(
                repositories.c.id,
                repositories.c.name,
                repositories.c.public,
                repositories.c.tag_overwrite,
            ).where(repositories.c.project_id == project_id)
        )
    ).all()
    repos = {
        row.id: RepositoryRef(row.id, project_id, project, row.name, row.public, row.tag_overwrite)
        for row in repo_rows
    }
    in_project = manifests.c.repository_id.in_(list(repos))
    rows = (
        await conn.execute(
            select(
                manifests.c.id,
                manifests.c.repository_id,
                manifests.c.image,
                manifests.c.digest,
                manifests.c.subject_digest,
                manifests.c.pushed_at,
                manifests.c.last_pulled_at,
            ).where(in_project)
        )
    ).all()
    tag_rows = (
        await conn.execute(
            select(tags.c.repository_id, tags.c.image, tags.c.digest, tags.c.name).where(
                tags.c.repository_id.in_(list(repos))
            )
        )
    ).all()
    child_rows = (
        await conn.execute(
            select(manifest_references.c.manifest_id, manifest_references.c.digest)
            .join(manifests, manifests.c.id == manifest_references.c.manifest_id)
            .where(in_project, manifest_references.c.is_manifest)
        )
    ).all()
    tags_of: dict[tuple[int, str, str], set[str]] = defaultdict(set)
    for t in tag_rows:
        tags_of[(t.repository_id, t.image, t.digest)].add(t.name)
    children_of: dict[int, list[str]] = defaultdict(list)
    for c in child_rows:
        children_of[c.manifest_id].append(c.digest)
    found = []
    ids = {}
    for m in rows:
        repo = repos[m.repository_id]
        found.append(
            Manifest(
                repository=repo.name,
                image=m.image,
                digest=m.digest,
                tags=frozenset(tags_of.get((m.repository_id, m.image, m.digest), ())),
                pushed_at=m.pushed_at,
                last_pulled_at=m.last_pulled_at,
                children=tuple(sorted(children_of.get(m.id, ()))),
                subject=m.subject_digest,
            )
        )
        ids[(repo.name, m.image, m.digest)] = m.id
    return Snapshot(
        project_id,
        taken_at,
        found,
        ids,
        {repo.name: repo for repo in repos.values()},
        await protection(conn, project_id, list(repos.values())),
    )


async def protection(
    conn: AsyncConnection, project_id: int, repos: list[RepositoryRef]
) -> Protected:
    """Which (repository path, tag) a run must never delete: every tag of a repository
    whose tag overwrite is off, and every tag an immutable tag rule covers."""
    locked = {repo.name for repo in repos if not repo.tag_overwrite}
    return tag_protection(locked, await immutable_rules(conn, project_id))
