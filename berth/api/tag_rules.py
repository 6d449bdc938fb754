"""Immutable tag rules of a project: a tag matching a rule cannot be moved to another image or
removed by any client or surface, and retention never deletes its image. Project members and
readers may list them; project admins make and remove them (audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import Field

from berth.api.bodies import RequestBody
from berth.api.deps import AdminProject, ReadProject
from berth.api.problems import responses
from berth.domain.patterns import MAX_REPOSITORY_PATTERN, MAX_TAG_PATTERN
from berth.domain.references import MAX_ID
from berth.services.tag_rules import TagRule

router = APIRouter(
    prefix="/projects/{project}/immutable-tag-rules",
    tags=["immutable tag rules"],
    responses=responses(403, 404),
)

RuleId = Annotated[int, Path(ge=1, le=MAX_ID, description="rule id")]


class NewTagRule(RequestBody):
    tag_pattern: str = Field(
        min_length=1,
        max_length=MAX_TAG_PATTERN,
        description="glob matched against the whole tag: * any characters, ? one, [abc] one "
        "of; e.g. v* or release-*",
        examples=["v*"],
    )
    repository_pattern: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_REPOSITORY_PATTERN,
        description="glob matched against the repository name or the full name "
        "(repository/image); omitted: every repository of the project",
        examples=["app"],
    )


@router.get("")
async def list_rules(ctx: ReadProject) -> list[TagRule]:
    """The project's immutable tag rules, oldest first (a refusal names the first that
    matches). The repository's tag overwrite switch, when off, also makes every tag of that
    repository immutable."""
    return await ctx.services.tag_rules.list_rules(ctx.project)


@router.post("", status_code=201, responses=responses(409, 422))
async def create_rule(ctx: AdminProject, body: NewTagRule) -> TagRule:
    """Add a rule: from now on a matching tag cannot be moved or removed. Audited."""
    return await ctx.services.tag_rules.create(
        ctx.project,
        body.tag_pattern,
        body.repository_pattern,
        actor=ctx.actor,
        client=ctx.caller.client,
    )


@router.delete("/{rule_id}", status_code=204)
async def delete_rule(ctx: AdminProject, rule_id: RuleId) -> Response:
    """Remove a rule: its tags may move and go again, unless another rule or the repository's
    tag overwrite switch fixes them. Audited."""
    await ctx.services.tag_rules.delete(
        ctx.project, rule_id, actor=ctx.actor, client=ctx.caller.client
    )
    return Response(status_code=204)
