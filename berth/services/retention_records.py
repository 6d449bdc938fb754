"""Retention's records: a project's policy, a run's record and the images it lists, their
stored (JSON) form, and what a run's record says of it (`run_note`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from berth.domain.retention import COMBINATION_RULE, MAX_RULES, Deletion, Keep, Rule, RuleInvalid
from berth.domain.wording import counted

AFTER_GC = "Deleted images' storage is freed by the next garbage collection ({how})."

# States of a run: a real one is recorded running when it starts.
RUNNING, SUCCEEDED, FAILED, INTERRUPTED = "running", "succeeded", "failed", "interrupted"


@dataclass(frozen=True, slots=True)
class Policy:
    project: str
    rules: list[Rule]
    schedule: str | None
    next_run_at: dt.datetime | None
    updated_at: dt.datetime | None
    updated_by: str
    combination: str = COMBINATION_RULE


@dataclass(frozen=True, slots=True)
class PlannedImage:
    repository: str  # the repository path: repository[/image]
    digest: str
    tags: list[str]
    pushed_at: dt.datetime
    last_pulled_at: dt.datetime | None
    referrers: int  # referrers (signatures, SBOMs) deleted with it
    platform_manifests: int  # platform manifests of its index deleted with it


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    project: str
    actor: str
    dry_run: bool
    started_at: dt.datetime
    finished_at: dt.datetime | None
    rules: list[Rule]
    images_deleted: int
    images_skipped: int
    deleted: list[PlannedImage]
    kept: int | None  # images in some rule's scope that stay (None: a run recorded before 0023)
    untouched: int | None  # images outside every rule's scope (None: as `kept`)
    error: str | None
    note: str
    state: str = SUCCEEDED


def rules_to_json(rules: Sequence[Rule]) -> str:
    return json.dumps([{k: v for k, v in asdict(rule).items() if v is not None} for rule in rules])


def rules_from_json(text: str) -> list[Rule]:
    return [Rule(**{**item, "keep": Keep(item["keep"])}) for item in json.loads(text)]


def check_rules(rules: Sequence[Rule]) -> None:
    if len(rules) > MAX_RULES:
        raise RuleInvalid(f"a policy holds at most {MAX_RULES} rules")
    for number, rule in enumerate(rules, start=1):
        try:
            rule.check()
        except RuleInvalid as exc:
            raise RuleInvalid(f"rule {number}: {exc}") from None


def planned(deletion: Deletion) -> PlannedImage:
    return PlannedImage(
        repository=deletion.path,
        digest=deletion.image.digest,
        tags=sorted(deletion.image.tags | {t for c in deletion.children for t in c.tags}),
        pushed_at=deletion.image.pushed_at,
        last_pulled_at=deletion.image.last_pulled_at,
        referrers=len(deletion.referrers),
        platform_manifests=len(deletion.children),
    )


def planned_to_json(items: Sequence[PlannedImage]) -> str:
    return json.dumps(
        [
            {
                "repository": item.repository,
                "digest": item.digest,
                "tags": item.tags,
                "referrers": item.referrers,
                "platform_manifests": item.platform_manifests,
                "pushed_at": item.pushed_at.isoformat(),
                "last_pulled_at": item.last_pulled_at.isoformat() if item.last_pulled_at else None,
            }
            for item in items
        ]
    )


def _planned_from_json(text: str) -> list[PlannedImage]:
    found = []
    for item in json.loads(text):
        pulled = item.get("last_pulled_at")
        found.append(
            PlannedImage(
                **{
                    **item,
                    "pushed_at": dt.datetime.fromisoformat(item["pushed_at"]),
                    "last_pulled_at": dt.datetime.fromisoformat(pulled) if pulled else None,
                }
            )
        )
    return found


def run_note(
    project: str,
    dry_run: bool,
    images: int,
    skipped: int,
    gc_command: str | None = None,
    *,
    state: str = SUCCEEDED,
) -> str:
    """What a run's record says of it: what a real run would do, or what this one did and
    how its storage is freed (`gc_command`, what collects the project's garbage as the reader
    would ask for it: by default the API's request and the console's page, as API clients and
    the console read it; the CLI gives only its own command)."""
    if dry_run:
        if not images:
            return "A real run would delete nothing now."
        these = "this" if images == 1 else "these"
        return (
            f"A real run would delete {these} {counted(images, 'image')} now; nothing was deleted."
        )
    note = f"Deleted {counted(images, 'image')}."
    if state == RUNNING:
        note = f"Running: deleted {counted(images, 'image')} so far."
    elif state == INTERRUPTED:
        note = (
            f"Interrupted (its process stopped) after deleting {counted(images, 'image')}; "
            "the rest of its plan was not carried out."
        )
    if skipped:
        note += (
            f" {counted(skipped, 'planned image')} changed since the run's snapshot and "
            f"{'was' if skipped == 1 else 'were'} kept."
        )
    how = gc_command or f"POST /api/v1/projects/{project}/gc, or the console's Management page"
    return f"{note} {AFTER_GC.format(how=how)}"


def run_record(project: str, row: Any) -> RunRecord:
    return RunRecord(
        id=row.id,
        project=project,
        actor=row.actor,
        dry_run=row.dry_run,
        started_at=row.started_at,
        finished_at=row.finished_at,
        rules=rules_from_json(row.rules),
        images_deleted=row.images_deleted,
        images_skipped=row.images_skipped,
        deleted=_planned_from_json(row.deleted) if "deleted" in row._fields else [],
        kept=row.images_kept,
        untouched=row.images_outside_rules,
        error=row.error,
        note=run_note(
            project, row.dry_run, row.images_deleted, row.images_skipped, state=row.state
        ),
        state=row.state,
    )
