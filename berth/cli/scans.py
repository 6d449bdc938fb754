"""`berth scan`: scan an image for known vulnerabilities, or queue stale results again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    cli_actor,
    console,
    errors,
    fail,
    pasteable,
    print_json,
    run_service,
    split_image,
)
from berth.domain.wording import counted

if TYPE_CHECKING:
    from berth.services.sbom_referrers import AttachedSbom
    from berth.services.scanning.results import ScanResult
    from berth.state import Services

SEVERITY_STYLES = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def split_reference(value: str) -> tuple[str, str, str, str]:
    """PROJECT/REPO[/IMAGE]:TAG or PROJECT/REPO[/IMAGE]@DIGEST -> (project, repository,
    image, tag or digest)."""
    name, at, digest = value.partition("@")
    if at:
        reference = digest
    else:
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon <= slash or colon == len(name) - 1:  # no tag, or an empty one
            raise typer.BadParameter(
                f"expected PROJECT/REPO[/IMAGE]:TAG or PROJECT/REPO[/IMAGE]@DIGEST, got {value!r}"
            )
        name, reference = name[:colon], name[colon + 1 :]
    project, repository, image = split_image(name)
    return project, repository, image, reference


def _print(name: str, result: ScanResult) -> None:
    from rich.table import Table
    from rich.text import Text

    if result.state == "failed":
        errors.print(Text(f"Scan of {name} failed: {result.reason}"), soft_wrap=True)
        raise typer.Exit(1)
    counts = result.counts
    if result.state == "no_data" or counts is None:
        # Not a clean result: a script testing the exit status must not take it for one.
        errors.print(
            Text(
                f"Scan of {name} checked nothing: the vulnerability database is empty. Import "
                f"OSV records with `{pasteable('vulndb', 'import', 'PATH')}`; images scanned "
                "without data are scanned again then."
            ),
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(
        Text(
            f"{name}: {counted(result.packages, 'package')}, "
            f"{counted(len(result.findings), 'finding')} "
            f"({counts.critical} critical, {counts.high} high, {counts.medium} medium, "
            f"{counts.low} low, {counts.unknown} unknown)."
        ),
        soft_wrap=True,
    )
    if not result.findings:
        return
    table = Table()
    # What a user copies (IDs, versions) is never folded. Summaries follow the table, one line
    # each: in a column beside these, 80 columns left them 9 characters, and an advisory
    # without a summary (its details' first paragraph instead) took dozens of lines.
    for column in ("severity", "advisory", "package", "installed", "fixed in"):
        table.add_column(column, no_wrap=True)
    for finding in result.findings:
        table.add_row(
            Text(finding.severity, SEVERITY_STYLES.get(finding.severity, "")),
            finding.advisory_id,
            finding.name,
            finding.installed,
            finding.fixed or "-",
        )
    console.print(table)
    summaries = {f.advisory_id: f.summary for f in result.findings if f.summary}
    for advisory, summary in summaries.items():
        console.print(Text(f"{advisory}: {summary}"), no_wrap=True, overflow="ellipsis")
    if summaries:
        console.print("(summaries cut to one line; --json has them whole)")


def scan(
    image: Annotated[
        str | None,
        typer.Argument(
            metavar="PROJECT/REPO[/IMAGE]:TAG|@DIGEST",
            help="The image to scan (an index: each platform); a digest whole or its first "
            "12 or more hex digits, as `berth image list` shows them.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Scan now, in this process, and print the findings (else a running server "
            "scans it in the background).",
        ),
    ] = False,
    attach_sbom: Annotated[
        bool,
        typer.Option(
            "--attach-sbom",
            help="Attach the image's SBOM to it as an OCI referrer (artifact type "
            "application/vnd.cyclonedx+json): after the scan with --wait, else the SBOM of its "
            "last scan. Attaching the same SBOM again adds nothing.",
        ),
    ] = False,
    rescan_stale: Annotated[
        bool,
        typer.Option(
            "--rescan-stale",
            help="Queue again every scan made before the latest vulnerability data import "
            "(with --wait: scan them now).",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Scan an image's packages for known vulnerabilities (OSV records imported with `berth
    vulndb import`), or queue stale results again. With --wait, a scan that could not finish,
    or that had no vulnerability data to check against (the database is empty), exits 1."""
    from rich.text import Text

    from berth.services.digest_starts import resolve_digest
    from berth.services.records import plain
    from berth.services.sbom_referrers import SbomReferrers

    if rescan_stale:
        if image is not None:
            fail("--rescan-stale takes no image", 2)

        async def requeue(s: Services) -> tuple[int, int]:
            queued = await s.scans.rescan_stale(cli_actor())
            return queued, (await s.scans.run_queued() if wait else 0)

        queued, scanned = run_service(requeue, uses_store=wait)
        if json_output:
            print_json({"queued": queued, "scanned": scanned})
        elif wait:
            console.print(Text(f"Scanned {counted(scanned, 'image')} again ({queued:,} stale)."))
        else:
            console.print(
                Text(
                    f"Queued {counted(queued, 'stale scan')}; a running server scans them in "
                    "the background."
                )
            )
        return
    if image is None:
        fail("name an image (PROJECT/REPO[/IMAGE]:TAG or @DIGEST), or pass --rescan-stale", 2)
    project, repository, name, reference = split_reference(image)

    async def work(s: Services) -> tuple[ScanResult, AttachedSbom | None]:
        repo = await s.repositories.require(project, repository)
        if "@" in image:  # a digest as `berth image list` shows it (12 hex digits) or whole
            named = await resolve_digest(s.db, repo, name, reference)
        else:
            named = reference
        digest = (await s.registry.get_manifest(repo, name, named)).digest
        await s.scans.request_scan(repo, name, digest, cli_actor(), client=CLI_CLIENT)
        if wait:
            result = await s.scans.scan_now(repo.id, name, digest)
        else:
            found = await s.scans.result(repo.id, name, digest)
            assert found is not None
            result = found
        attached = None
        if attach_sbom and result.state != "failed":
            referrers = SbomReferrers(s.registry, s.uploads, s.scans)
            attached = await referrers.attach(repo, name, digest, cli_actor())
        return result, attached

    result, attached = run_service(work, uses_store=wait or attach_sbom)
    if json_output:
        if attach_sbom:
            print_json({**plain(result), "sbom_referrer": plain(attached) if attached else None})
        else:
            print_json(plain(result))
        if result.state in ("failed", "no_data"):
            raise typer.Exit(1)
        return
    if not wait:
        console.print(
            Text(
                f"Queued a scan of {image} ({result.digest}); a running server scans it in the "
                f"background. To scan it now and see the findings: "
                f"{pasteable('scan', image, '--wait')}"
            ),
            soft_wrap=True,
        )
    else:
        _print(image, result)
    if attached is not None:
        state = "attached" if attached.created else "was already attached"
        console.print(
            Text(
                f"SBOM {state} to {image} as referrer {attached.digest} "
                f"(artifact type {attached.artifact_type})."
            ),
            soft_wrap=True,
        )
