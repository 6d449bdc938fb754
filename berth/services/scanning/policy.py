"""A project's pull policy: refuse pulls of images whose scan found vulnerabilities at or above
a severity (off by default).

What a pull is checked against:
- the manifest's own finished scan (`done`, stale or not: its findings stand until it is
  scanned again, and while a rescan of it is queued or running);
- an index: its own scan (the union of its platforms') and its platforms' own scans; the most
  findings any of them has decides. A client pulling one platform by digest meets that
  platform's scan anyway.
- an image never scanned, queued, being scanned or whose scan failed is let through (as
  Harbor does by default): refusing them would stop every pull of a repository the moment
  the policy is turned on, and a scan that cannot read an image would make it unpullable.
  A scan made while the vulnerability database was empty (`no_data`) checked nothing and
  counts as no scan: let through the same way, until the import that follows rescans it.

The policy travels with the repository lookup every /v2 request makes (`RepositoryRef`,
cached `REPOSITORY_CACHE_SECONDS`), so with the policy off a pull pays one attribute read.
With it on, a verdict is kept `VERDICT_SECONDS` per manifest (the same second the access
caches keep), so a finished scan or a changed policy is seen within about a second on other
nodes, and at once on the node that stored it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from berth.access.expiring import ExpiringCache
from berth.domain.errors import Denied, InvalidValue
from berth.domain.manifests import parse_stored_manifest
from berth.domain.names import ImageName
from berth.domain.references import RepositoryRef
from berth.domain.vulns import Severity
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import require_project
from berth.metadata.tables import manifests, project_settings, scans
from berth.services.manifest_cache import StoredManifest
from berth.services.records import Record

VERDICT_SECONDS = 1.0
VERDICT_ENTRIES = 10_000
# Most severe first: what `refuse_severity` takes. "unknown" refuses any finding at all
# (records that carry no severity rank below low, as in Harbor).
POLICY_SEVERITIES = ("critical", "high", "medium", "low", "unknown")
_COLUMNS = {s: getattr(scans.c, s.label) for s in Severity}


def severity_rank(label: str | None) -> int | None:
    """The `Severity` value of a stored policy label; None when the policy is off."""
    if label is None:
        return None
    return int(Severity[label.upper()])


class PullPolicySettings(Record):
    refuse_severity: str | None


@dataclass(frozen=True, slots=True)
class _Verdict:
    count: int  # findings at or above the policy's severity (0: the pull goes ahead)
    digest: str  # the manifest whose scan found them


def threshold_words(label: str) -> str:
    """How a message names the findings a policy at `label` counts."""
    severity = Severity[label.upper()]
    if severity is Severity.UNKNOWN:
        return "of any severity"
    if severity is Severity.CRITICAL:
        return "of critical severity"
    return f"of {severity.label} severity or above"


class PullPolicy:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._verdicts: ExpiringCache[tuple[int, str, str, int], _Verdict] = ExpiringCache(
            VERDICT_ENTRIES, VERDICT_SECONDS
        )

    # --- the setting ----------------------------------------------------------------------

    async def settings(self, project: str) -> PullPolicySettings:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            label = (
                await conn.execute(
                    select(project_settings.c.refuse_pulls_severity).where(
                        project_settings.c.project_id == project_id
                    )
                )
            ).scalar()
        return PullPolicySettings(refuse_severity=label)

    async def set(
        self, project: str, severity: str | None, actor: str, client: str | None = None
    ) -> PullPolicySettings:
        """Turn the policy on at `severity` (one of POLICY_SEVERITIES) or off (None), audited
        as `project.pull_policy`. This node's pulls see it at once once the caller drops the
        project's cached repositories; other nodes within a second."""
        if severity is not None and severity not in POLICY_SEVERITIES:
            raise InvalidValue(
                f"refuse_severity must be one of {', '.join(POLICY_SEVERITIES)}, or null (off)",
                "refuse_severity",
            )
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            await conn.execute(
                self.db.upsert(
                    project_settings, ["project_id"], {"refuse_pulls_severity": severity}
                ).values(project_id=project_id, refuse_pulls_severity=severity)
            )
            await write_audit_entry(
                conn,
                actor,
                "project.pull_policy",
                project_id=project_id,
                target=project,
                detail={"refuse_severity": severity},
                client=client,
            )
        self.forget_verdicts()
        return PullPolicySettings(refuse_severity=severity)

    def forget_verdicts(self) -> None:
        """Judge every pull afresh (a scan finished or the policy changed on this node)."""
        self._verdicts.clear()

    # --- the check on each pull -------------------------------------------------------------

    async def check(self, repo: RepositoryRef, name: ImageName, manifest: StoredManifest) -> None:
        """Raise DENIED when the project refuses this manifest (see the module's docstring)."""
        rank = repo.refuse_pulls_at
        if rank is None:
            return
        key = (repo.id, name.image, manifest.digest, rank)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = await self._verdict(repo, name.image, manifest, rank)
            self._verdicts[key] = verdict
        if verdict.count:
            raise Denied(self._message(repo, name, manifest.digest, verdict, rank))

    async def _verdict(
        self, repo: RepositoryRef, image: str, manifest: StoredManifest, rank: int
    ) -> _Verdict:
        digests = [manifest.digest]
        parsed = parse_stored_manifest(manifest.content, manifest.media_type)
        if parsed.is_index:
            digests += [child.digest for child in parsed.children]
        counted = [column for severity, column in _COLUMNS.items() if severity >= rank]
        query = (
            select(manifests.c.digest, *counted)
            .join(scans, scans.c.manifest_id == manifests.c.id)
            .where(
                manifests.c.repository_id == repo.id,
                manifests.c.image == image,
                manifests.c.digest.in_(digests),
                # A finished result; while a rescan of it waits or runs, still that result
                # (its counts stay until the new one replaces them): asking for a rescan
                # must not open the image to pulls meanwhile. A first scan, and one after a
                # failure, have none (`finished_at` null).
                scans.c.state.in_(("done", "queued", "scanning")),
                scans.c.finished_at.is_not(None),
                scans.c.vulndb_state > 0,  # 0: made with no data (`no_data`), not a result
            )
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        worst = _Verdict(0, manifest.digest)
        for row in rows:
            count = sum(int(value) for value in row[1:])
            if count > worst.count:
                worst = _Verdict(count, row.digest)
        return worst

    @staticmethod
    def _message(
        repo: RepositoryRef, name: ImageName, digest: str, verdict: _Verdict, rank: int
    ) -> str:
        findings = "finding" if verdict.count == 1 else "findings"
        where = f"/api/v1/projects/{repo.project}/repositories/{repo.name}/images/{verdict.digest}"
        query = f"?image={name.image}" if name.image else ""
        platform = "" if verdict.digest == digest else f" (platform {verdict.digest})"
        return (
            f"pull refused: image {name.display}@{digest}{platform} has {verdict.count} "
            f"vulnerability {findings} {threshold_words(Severity(rank).label)}, and project {repo.project} "
            f"refuses pulls of such images; see them with GET {where}/scan{query} "
            "(or in the console)"
        )
