"""Retention: the project's policy (rules and schedule), dry runs, runs and their history."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from berth.api.bodies import RequestBody
from berth.api.deps import AdminProject, ManageProject, Page, PagingDep, ReadProject
from berth.api.problems import responses
from berth.auth.guard import client_address
from berth.domain.references import MAX_ID
from berth.domain.retention import COMBINATION_RULE, MAX_RULES, Keep
from berth.domain.retention import Rule as DomainRule
from berth.services.retention_records import RunRecord

router = APIRouter(prefix="/projects/{project}/retention", tags=["retention"])

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="run id")]


class RetentionRule(RequestBody):
    """One rule: its scope (`repositories`, optionally `tags`) and what it keeps of it."""

    # Built from the domain's Rule by attribute name (`model_validate`) as well as from JSON.
    model_config = ConfigDict(from_attributes=True)

    keep: Keep = Field(
        strict=False,
        description="`last`: the `count` most recently pushed images of each repository; "
        "`pushed_within` / `pulled_within`: images pushed / pulled within `days`; "
        "`tagged`: images with a tag matching `pattern`; `untagged_within`: every tagged "
        "image, and untagged ones pushed within `days` (older untagged images are removed)",
    )
    # The bounds here are loose on purpose: rules stored under an older, wider syntax (or
    # count 0) still load and show; a new policy is checked by the domain, which says why.
    repositories: str = Field(
        "*",
        max_length=255,
        description="repository pattern, matched against `repository` and `repository/image` "
        "(so `app` covers every image of the repository app): `*` any characters, `?` one, "
        "`[abc]` one of, `[!abc]` none of; as immutable tag rules read it",
    )
    tags: str | None = Field(
        None,
        max_length=255,
        description="tag pattern (the same globs): the rule covers only tagged images whose "
        "every tag matches it; an image carrying a tag outside it (a CI build promoted with a "
        "release tag) and an untagged image are outside this rule",
    )
    count: int | None = Field(
        None, ge=0, le=100_000, description="for `last`: at least 1 (0 is refused)"
    )
    days: float | None = Field(
        None, ge=0, le=36_500, description="for the `*_within` rules: more than 0"
    )
    pattern: str | None = Field(None, max_length=255, description="for `tagged`")

    def to_domain(self) -> DomainRule:
        return DomainRule(**self.model_dump())


class RetentionPolicyBody(RequestBody):
    rules: list[RetentionRule] = Field(max_length=MAX_RULES)
    schedule: str | None = Field(
        None,
        max_length=64,
        description="`daily HH:MM` (UTC) or a five-field cron expression (UTC); null: runs "
        "only when started",
    )


class RetentionPolicy(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from the service's Policy

    project: str
    rules: list[RetentionRule]
    schedule: str | None
    next_run_at: dt.datetime | None = Field(description="when the schedule next runs it")
    updated_at: dt.datetime | None
    updated_by: str
    combination: str = Field(COMBINATION_RULE, description="how the rules combine")


class RetentionImage(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from the service's PlannedImage

    repository: str = Field(description="`repository` or `repository/image`")
    digest: str
    tags: list[str]
    pushed_at: dt.datetime
    last_pulled_at: dt.datetime | None
    referrers: int = Field(description="referrers (signatures, SBOMs) that go with it")
    platform_manifests: int = Field(description="its index's platform manifests that go with it")


class RetentionRun(BaseModel):
    """A retention run: a dry run lists what a real run would delete; a real run what it did."""

    id: int
    project: str
    actor: str = Field(description="who started it, or `schedule`")
    dry_run: bool
    state: Literal["running", "succeeded", "failed", "interrupted"] = Field(
        description="a real run is recorded running when it starts, its counts and images "
        "growing as each batch of deletions commits; interrupted: its process stopped "
        "mid-run (killed, or its node lost), and it says what it deleted until then"
    )
    started_at: dt.datetime = Field(description="its snapshot: later pushes and tags are safe")
    finished_at: dt.datetime | None
    rules: list[RetentionRule]
    images_deleted: int = Field(description="a dry run: how many a real run would delete")
    images_skipped: int = Field(description="planned images that changed since the snapshot")
    images_kept: int | None = Field(
        None,
        description="images some rule covers and keeps, as the run found them (null for runs "
        "recorded before schema revision 0023_retention_run_kept, which did not keep it)",
    )
    images_outside_rules: int | None = Field(
        None,
        description="images no rule's scope covers: never touched (null for runs recorded "
        "before schema revision 0023_retention_run_kept)",
    )
    images: list[RetentionImage] = Field(
        description="what it deleted (a dry run: would delete); empty in the runs listing, "
        "whose items are fetched one by one for theirs"
    )
    error: str | None
    note: str

    @classmethod
    def of(cls, run: RunRecord) -> RetentionRun:
        return cls(
            id=run.id,
            project=run.project,
            actor=run.actor,
            dry_run=run.dry_run,
            state=run.state,
            started_at=run.started_at,
            finished_at=run.finished_at,
            rules=[RetentionRule.model_validate(r) for r in run.rules],
            images_deleted=run.images_deleted,
            images_skipped=run.images_skipped,
            images_kept=run.kept,
            images_outside_rules=run.untouched,
            images=[RetentionImage.model_validate(i) for i in run.deleted],
            error=run.error,
            note=run.note,
        )


@router.get("", responses=responses(404))
async def get_policy(ctx: ReadProject) -> RetentionPolicy:
    """The project's retention policy (no rules: retention deletes nothing)."""
    return RetentionPolicy.model_validate(await ctx.services.retention.policy(ctx.project))


@router.put("", responses=responses(404, 422))
async def set_policy(
    request: Request, ctx: AdminProject, body: RetentionPolicyBody
) -> RetentionPolicy:
    """Replace the project's rules and schedule (project admins). Audited."""
    policy = await ctx.services.retention.set_policy(
        ctx.project,
        [rule.to_domain() for rule in body.rules],
        body.schedule,
        actor=ctx.actor,
        client=client_address(request),
    )
    return RetentionPolicy.model_validate(policy)


@router.post("/dry-run", responses=responses(404))
async def dry_run(request: Request, ctx: ManageProject) -> RetentionRun:
    """What a run now would delete, image by image; nothing is deleted. Recorded in the history
    and the audit log."""
    record = await ctx.services.retention.run(
        ctx.project, dry_run=True, actor=ctx.actor, client=client_address(request)
    )
    return RetentionRun.of(record)


@router.post("/runs", responses=responses(404))
async def run(request: Request, ctx: AdminProject) -> RetentionRun:
    """Apply the policy now (project admins): deletes what a dry run lists, except images
    pushed or re-tagged since the run's snapshot. The storage comes back at the next garbage
    collection."""
    record = await ctx.services.retention.run(
        ctx.project, dry_run=False, actor=ctx.actor, client=client_address(request)
    )
    return RetentionRun.of(record)


@router.get("/runs", responses=responses(404))
async def history(ctx: ReadProject, paging: PagingDep) -> Page[RetentionRun]:
    """The project's retention runs, dry and real, newest first."""
    runs, total = await ctx.services.retention.history(
        ctx.project, offset=paging.offset, limit=paging.per_page
    )
    return Page[RetentionRun].of([RetentionRun.of(r) for r in runs], paging, total)


@router.get("/runs/{run_id}", responses=responses(404))
async def get_run(ctx: ReadProject, run_id: RunId) -> RetentionRun:
    """One run of the project, with its images."""
    return RetentionRun.of(await ctx.services.retention.get_run(ctx.project, run_id))
