"""`berth image` and `berth tag`: a repository's images, their history, deleting an image, and
restoring a tag."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    TagArg,
    YesFlag,
    cli_actor,
    confirm_deletion,
    console,
    data_table,
    done,
    listing,
    print_json,
    run_service,
    short_digest,
    split_image,
    when,
)
from berth.domain.wording import counted

if TYPE_CHECKING:
    from berth.services.image_records import ImageDeletion, KeptManifest
    from berth.services.platform_manifests import DeletedImage
    from berth.state import Services

image_app = typer.Typer(help="Images in a repository and their history.", no_args_is_help=True)
tag_app = typer.Typer(help="Tags: restore a removed tag.", no_args_is_help=True)


HISTORY_COLUMNS = ["at", "actor", "action", "image", "tag", "old", "new", "restorable"]
HISTORY_DIGESTS = frozenset({"old", "new"})


def _platforms_cell(item: dict[str, Any]) -> str:
    """An image's platforms, saying how many more there are when the listing cut them."""
    shown = ", ".join(item["platforms"])
    beyond = item["platform_count"] - len(item["platforms"])
    return f"{shown} (+{beyond} more)" if beyond > 0 else shown


@image_app.command("list")
def image_list(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    page: Annotated[int, typer.Option(min=1, max=100_000, help="Page number.")] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=1000, help="Images per page.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List a repository's images, newest first (an index counts once, with its platforms)."""
    from rich.table import Table

    from berth.services.images import Images
    from berth.services.records import plain

    project, repository, image = split_image(name)

    async def work(s: Services) -> tuple[list[dict[str, Any]], int]:
        repo = await s.repositories.require(project, repository)
        found, total = await Images(s.db, s.store).list_images(
            repo, image=image or None, page=page, per_page=per_page
        )
        # The CLI's listing shows the referrers themselves, not their count.
        return [plain(i.model_dump(exclude={"referrer_count"})) for i in found], total

    items, total = run_service(work, uses_store=True)  # platforms from image configs
    if json_output:
        print_json(listing(items, total, page=page, per_page=per_page))
        return
    table = Table(title=f"Images in {name} ({total} in all, page {page})")
    # Each image's scan is in --json and `berth scan`: an eighth column does not fit 80 columns.
    for column in ("image", "digest", "tags", "size", "platforms", "referrers", "pushed at"):
        if column == "digest":  # whole: `image delete` and `scan` take it as shown
            table.add_column(column, no_wrap=True, min_width=12)
        else:
            table.add_column(column)
    for item in items:
        table.add_row(
            item["image"] or "-",
            short_digest(item["digest"]),
            _tags_cell(item),
            f"{item['size']:,}",
            _platforms_cell(item),
            ", ".join(r["artifact_type"] or short_digest(r["digest"]) for r in item["referrers"]),
            when(item["pushed_at"], "-"),
        )
    console.print(table)


def _tags_cell(item: dict[str, Any]) -> str:
    """An image's tags, then those on the manifests its index lists (per-platform tags)."""
    own = ", ".join(item["tags"])
    if not item["child_tags"]:
        return own
    listed = "entries: " + ", ".join(item["child_tags"])
    return f"{own}; {listed}" if own else listed


@image_app.command("history")
def image_history(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    tag: Annotated[str | None, typer.Option(help="Only this tag's events.")] = None,
    digest: Annotated[
        str | None,
        typer.Option(help="Only events of this digest, or of digests starting so (12+ hex)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Show image and tag history: pushes, tags, untags, moves, deletes and restores."""

    from berth.services.images import Images
    from berth.services.records import plain

    project, repository, image = split_image(name)

    async def work(s: Services) -> tuple[list[dict[str, Any]], int]:
        repo = await s.repositories.require(project, repository)
        items, total = await Images(s.db).history(
            repo,
            image=image or None,
            tag=tag,
            digest=digest,
            per_page=limit,
        )
        events: list[dict[str, Any]] = plain(items)
        return events, total

    found, total = run_service(work)
    if json_output:
        print_json(listing(found, total, per_page=limit))
        return
    rows = [
        {
            "at": event["at"],
            "actor": event["actor"],
            "action": event["action"],
            "image": event["image"] or "-",
            "tag": event["tag"],
            "old": short_digest(event["old_digest"]),
            "new": short_digest(event["new_digest"]),
            "restorable": event["restorable"],
        }
        for event in found
    ]
    # The digests whole (`image history --digest`, `image delete` and `scan` take them as
    # shown): a table when the terminal is wide enough for them, else one record per event.
    console.print(data_table(rows, HISTORY_COLUMNS, f"History of {name}", ids=HISTORY_DIGESTS))


@image_app.command("delete")
def image_delete(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    digest: Annotated[
        str,
        typer.Argument(
            metavar="DIGEST",
            help="The image's digest, or its first 12 or more hex digits as listed.",
        ),
    ],
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete an image and every tag on it, as the API and the console do: with an index's
    platform manifests that nothing else holds, and the referrers (signatures, SBOMs) of all
    of these. Its data goes at the next garbage collection."""
    from berth.services.digest_starts import resolve_digest
    from berth.services.records import plain

    project, repository, image = split_image(name)

    async def named(s: Services) -> str:
        # As `berth image list` shows it (its first 12 hex digits) or whole.
        repo = await s.repositories.require(project, repository)
        return await resolve_digest(s.db, repo, image, digest)

    digest = run_service(named)

    async def planned(s: Services) -> ImageDeletion:
        repo = await s.repositories.require(project, repository)
        return await s.registry.image_deletion(repo, image, digest)

    confirm_deletion(
        f"delete {name}@{digest} with its tags, its platform manifests and its referrers",
        yes,
        told=lambda: _what_goes(f"{name}@{digest}", run_service(planned)),
    )

    async def work(s: Services) -> DeletedImage:
        repo = await s.repositories.require(project, repository)
        return await s.registry.delete_image(
            repo, image, digest, actor=cli_actor(), client=CLI_CLIENT
        )

    gone = run_service(work)
    went = [
        counted(len(gone.platform_manifests), "platform manifest"),
        counted(len(gone.referrers), "referrer"),
    ]
    done(
        json_output,
        {
            "repository": f"{project}/{repository}",
            "image": image,
            "digest": gone.digest,
            "tags": gone.tags,
            "platform_manifests": gone.platform_manifests,
            "referrers": plain(gone.referrers),
        },
        f"Deleted {name}@{digest} with {went[0]} and {went[1]}",
    )


def _what_goes(shown: str, deletion: ImageDeletion) -> str:
    """What deleting `shown` takes with it and what it reaches that stays, with why, as the
    console's Delete dialog says it (GET .../deletion)."""
    platforms, referrers = deletion.platform_manifest_count, deletion.referrer_count
    lines = []
    if platforms or referrers:
        lines.append(f"Deleting {shown} takes with it:")
    if platforms:
        lines.append(f"  {counted(platforms, 'platform manifest')} it lists")
    if referrers:
        theirs = ", and those of the platform manifests going" if platforms else ""
        lines.append(
            f"  {counted(referrers, 'referrer')} (signatures, SBOMs): its own and their "
            f"referrers{theirs}"
        )
    if deletion.kept_count:
        stay = "stays" if deletion.kept_count == 1 else "stay"
        lines.append(f"{counted(deletion.kept_count, 'manifest')} it reaches {stay}:")
        lines += [f"  {_why_kept(kept)}" for kept in deletion.kept]
        if (more := deletion.kept_count - len(deletion.kept)) > 0:
            lines.append(f"  and {more} more")
    lines.append(
        "Its tags can be restored (berth tag restore) until garbage collection removes the "
        "image's data."
    )
    return "\n".join(lines)


def _why_kept(kept: KeptManifest) -> str:
    kind = "referrer" if kept.kind == "referrer" else "platform manifest"
    reasons = []
    if kept.listed_by:
        reasons.append(f"another index lists it ({', '.join(kept.listed_by)})")
    if kept.tags:
        own = "a tag" if len(kept.tags) == 1 else "tags"
        reasons.append(f"it has {own} of its own ({', '.join(kept.tags)})")
    return f"{kind} {kept.digest}: {' and '.join(reasons)}"


@tag_app.command("restore")
def tag_restore(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    tag: TagArg,
    json_output: JsonFlag = False,
) -> None:
    """Put a removed tag back on the image it last named (while that image is stored)."""
    project, repository, image = split_image(name)

    async def work(s: Services) -> str:
        repo = await s.repositories.require(project, repository)
        return await s.registry.restore_tag(repo, image, tag, actor=cli_actor(), client=CLI_CLIENT)

    digest = run_service(work)
    done(
        json_output,
        {"repository": f"{project}/{repository}", "image": image, "tag": tag, "digest": digest},
        f"Restored {name}:{tag} -> {digest}",
    )
