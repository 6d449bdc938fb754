"""Garbage collection over a big project: 100,000 blobs and 10,000 images.

Builds the project straight into a fresh data directory (metadata in bulk, one small file per
blob), everything pushed two hours ago, then times a dry run and a real run with
delete-untagged, in-process (as `berth gc run` does), and checks what is left.

The project, in 10 repositories:

- 250 tagged multi-architecture indexes, 2 platform images each (pushed by digest);
- 6,000 tagged images and 300 signatures (referrers of tagged images, untagged);
- 2,950 untagged images nothing references: delete-untagged removes them;
- each image: a config, 4 layers of its own and 2 of 50 base layers the project shares;
- the rest of the 100,000 blobs linked but unreferenced (left by deleted images).

    .venv/bin/python bench/gc.py [--database-url URL | --postgres] [--keep] [--json]

`make bench` runs it with `--json` (SQLite, then PostgreSQL when installed) and puts
`report()`'s section into BENCHMARKS.md.

Targets: the run under 30 s, the restricted window (writes refused) under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402 - after the path is set

from berth.config import Settings  # noqa: E402
from berth.metadata.migrate import upgrade  # noqa: E402
from berth.metadata.tables import (  # noqa: E402
    blobs,
    manifest_references,
    manifests,
    projects,
    repositories,
    repository_blobs,
    tags,
)
from berth.state import Services  # noqa: E402

BLOBS = 100_000
REPOSITORIES = 10
INDEXES, CHILDREN_PER_INDEX = 250, 2
TAGGED, SIGNATURES, UNTAGGED = 6_000, 300, 2_950
OWN_LAYERS, BASE_LAYERS, SHARED_BASES = 4, 2, 50
TARGET_SECONDS, TARGET_RESTRICTED = 30.0, 2.0
PROJECT = "bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
CHUNK = 5_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Project:
    """The rows to insert, and what a run must keep."""

    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> content
    links: set[tuple[int, str]] = field(default_factory=set)  # (repository, digest)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    kept_blobs: set[str] = field(default_factory=set)
    kept_images: int = 0

    def blob(self, label: str) -> str:
        data = f"berth gc bench {label} {len(self.blobs)}".encode()
        digest = sha256(data)
        self.blobs[digest] = data
        return digest


def build(pushed_at: dt.datetime) -> Project:
    p = Project()
    bases = [p.blob("base") for _ in range(SHARED_BASES)]
    signature_config = p.blob("empty config")
    next_id = 0

    def manifest(
        repo: int,
        document: dict[str, Any],
        blob_refs: list[str],
        children: list[str],
        *,
        tag: str | None = None,
        subject: str | None = None,
        kept: bool,
    ) -> str:
        nonlocal next_id
        next_id += 1
        content = json.dumps(document, separators=(",", ":")).encode()
        digest = sha256(content)
        p.manifests.append(
            {
                "id": next_id,
                "repository_id": repo,
                "image": "app",
                "digest": digest,
                "media_type": document["mediaType"],
                "artifact_type": document.get("artifactType"),
                "subject_digest": subject,
                "size": len(content),
                "content": content,
                "annotations": None,
                "pushed_at": pushed_at,
            }
        )
        for blob in blob_refs:
            p.references.append({"manifest_id": next_id, "digest": blob, "is_manifest": False})
            p.links.add((repo, blob))
            if kept:
                p.kept_blobs.add(blob)
        for child in children:
            p.references.append({"manifest_id": next_id, "digest": child, "is_manifest": True})
        if tag is not None:
            p.tags.append(
                {
                    "repository_id": repo,
                    "image": "app",
                    "name": tag,
                    "digest": digest,
                    "updated_at": pushed_at,
                }
            )
        return digest

    def image(repo: int, n: int, *, tag: str | None, kept: bool) -> tuple[str, int]:
        config = p.blob("config")
        own = [p.blob("layer") for _ in range(OWN_LAYERS)]
        layers = [*own, *(bases[(n + i) % SHARED_BASES] for i in range(BASE_LAYERS))]
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 40},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": 40} for d in layers],
        }
        size = len(json.dumps(document, separators=(",", ":")))
        return manifest(repo, document, [config, *layers], [], tag=tag, kept=kept), size

    counter = 0
    for i in range(INDEXES):
        repo = i % REPOSITORIES + 1
        children: list[dict[str, Any]] = []
        for arch in range(CHILDREN_PER_INDEX):
            counter += 1
            digest, size = image(repo, counter, tag=None, kept=True)
            platform = {"os": "linux", "architecture": f"arch{arch}"}
            children.append(
                {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": platform}
            )
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        manifest(repo, document, [], [c["digest"] for c in children], tag=f"multi{i}", kept=True)
        p.kept_images += 1
    tagged = []
    for i in range(TAGGED):
        counter += 1
        repo = i % REPOSITORIES + 1
        tagged.append((repo, *image(repo, counter, tag=f"v{i}", kept=True)))
        p.kept_images += 1
    for i in range(SIGNATURES):
        repo, subject, size = tagged[i * (TAGGED // SIGNATURES)]
        payload = p.blob("signature")
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE,
            "config": {"mediaType": OCI_CONFIG, "digest": signature_config, "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": payload, "size": 40}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": size},
        }
        manifest(repo, document, [signature_config, payload], [], subject=subject, kept=True)
        p.kept_images += 1
    for _ in range(UNTAGGED):
        counter += 1
        image(counter % REPOSITORIES + 1, counter, tag=None, kept=False)
    # Garbage: blobs left linked by images deleted long ago.
    while len(p.blobs) < BLOBS:
        p.links.add((len(p.blobs) % REPOSITORIES + 1, p.blob("garbage")))
    return p


def write_files(blob_dir: Path, project: Project) -> None:
    for digest, data in project.blobs.items():
        hex_digest = digest.split(":", 1)[1]
        directory = blob_dir / "sha256" / hex_digest[:2]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / hex_digest).write_bytes(data)


async def insert(services: Services, project: Project, pushed_at: dt.datetime) -> None:
    async def rows(table: Any, values: list[dict[str, Any]]) -> None:
        for start in range(0, len(values), CHUNK):
            async with services.db.write() as conn:
                await conn.execute(table.insert(), values[start : start + CHUNK])

    await services.repositories.create_project(PROJECT, actor="bench")
    for n in range(1, REPOSITORIES + 1):
        await services.repositories.create(PROJECT, f"repo{n}", actor="bench")
    async with services.db.read() as conn:
        ids = dict(
            (
                await conn.execute(
                    select(repositories.c.name, repositories.c.id)
                    .join(projects, projects.c.id == repositories.c.project_id)
                    .where(projects.c.name == PROJECT)
                )
            ).all()
        )
    repo_id = {n: ids[f"repo{n}"] for n in range(1, REPOSITORIES + 1)}
    await rows(
        blobs,
        [{"digest": d, "size": len(v), "created_at": pushed_at} for d, v in project.blobs.items()],
    )
    await rows(
        repository_blobs,
        [
            {"repository_id": repo_id[r], "digest": d, "linked_at": pushed_at}
            for r, d in sorted(project.links)
        ],
    )
    await rows(
        manifests, [{**m, "repository_id": repo_id[m["repository_id"]]} for m in project.manifests]
    )
    await rows(manifest_references, project.references)
    await rows(tags, [{**t, "repository_id": repo_id[t["repository_id"]]} for t in project.tags])


async def count(services: Services) -> tuple[int, int]:
    async with services.db.read() as conn:
        blob_rows = (await conn.execute(select(func.count()).select_from(blobs))).scalar_one()
        manifest_rows = (
            await conn.execute(select(func.count()).select_from(manifests))
        ).scalar_one()
    return int(blob_rows), int(manifest_rows)


async def bench(settings: Settings) -> dict[str, Any]:
    pushed_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    started = time.monotonic()
    project = build(pushed_at)
    write_files(settings.blob_dir, project)
    services = Services.build(settings)
    try:
        await insert(services, project, pushed_at)
        setup = time.monotonic() - started
        before = await count(services)
        print(f"built {before[0]:,} blobs and {before[1]:,} manifests in {setup:.1f} s", flush=True)

        started = time.monotonic()
        dry = (
            await services.gc.run(PROJECT, dry_run=True, delete_untagged=True, actor="bench")
        ).as_json()
        dry_seconds = time.monotonic() - started
        started = time.monotonic()
        run = (await services.gc.run(PROJECT, delete_untagged=True, actor="bench")).as_json()
        seconds = time.monotonic() - started

        after = await count(services)
        files = sum(1 for _ in (settings.blob_dir / "sha256").glob("*/*"))
    finally:
        await services.close()
    assert run["state"] == "succeeded", run
    assert after[0] == len(project.kept_blobs) == files, (after, len(project.kept_blobs), files)
    assert run["images_deleted"] == UNTAGGED, run
    for figure in ("images_deleted", "blobs_deleted", "bytes_freed"):
        assert dry[figure] == run[figure], (figure, dry, run)
    return {
        "backend": "sqlite"
        if settings.resolved_database_url.startswith("sqlite")
        else "postgresql",
        "blobs": before[0],
        "manifests": before[1],
        "seconds": seconds,
        "restricted_seconds": run["restricted_seconds"],
        "dry_run_seconds": dry_seconds,
        "images_deleted": run["images_deleted"],
        "blobs_deleted": run["blobs_deleted"],
        "files_removed": run["storage_blobs_deleted"],
        "blobs_kept": after[0],
        "manifests_kept": after[1],
    }


def measure(database_url: str | None, keep: bool = False) -> dict[str, Any]:
    """One benchmark run in a fresh data directory (and the given database, or SQLite)."""
    data_dir = Path(tempfile.mkdtemp(prefix="berth-gc-bench-"))
    try:
        settings = Settings(data_dir=data_dir, database_url=database_url)
        upgrade(settings.resolved_database_url)
        return asyncio.run(bench(settings))
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def met(result: dict[str, Any]) -> bool:
    return result["seconds"] < TARGET_SECONDS and result["restricted_seconds"] < TARGET_RESTRICTED


def report(figures: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for `--json`'s figures (bench/run.py appends it)."""
    runs = figures["runs"]
    first = runs[0]
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL 15"}
    lines = [
        "## Garbage collection (bench/gc.py)",
        "",
        f"`bench/gc.py` builds a project with {first['blobs']:,} blobs and "
        f"{first['manifests']:,} manifests (metadata inserted in bulk, small files on disk) and "
        "runs delete-untagged garbage collection, the heaviest case; it checks what was deleted "
        f"and kept ({first['images_deleted']:,} images and {first['blobs_deleted']:,} blobs with "
        f"their files deleted; {first['manifests_kept']:,} manifests and "
        f"{first['blobs_kept']:,} blobs kept). Measured on {figures['measured']}.",
        "",
        "| backend | whole run | writes refused for | dry run | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        verdict = "met" if met(run) else "**not met**"
        lines.append(
            f"| {names.get(run['backend'], run['backend'])} | {run['seconds']:.2f} s | "
            f"{run['restricted_seconds']:.3f} s | {run['dry_run_seconds']:.2f} s | "
            f"run < {TARGET_SECONDS:.0f} s, window < {TARGET_RESTRICTED:.0f} s: {verdict} |"
        )
    if figures.get("postgresql_missing"):
        lines.append("")
        lines.append("PostgreSQL 15 is not installed here: only SQLite was measured.")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL 15")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--json",
        action="store_true",
        help="SQLite and (when installed) PostgreSQL, figures as JSON on stdout (for bench/run.py)",
    )
    options = parser.parse_args()
    if options.json:
        # Progress lines go to stderr: stdout is the document.
        sys.stdout = sys.stderr
        figures = measure_all()
        sys.stdout = sys.__stdout__
        print(json.dumps(figures))
        return
    cluster = None
    url = options.database_url
    if options.postgres:
        from tests.servers import PostgresCluster

        cluster = PostgresCluster().start()
        url = cluster.create_database()
    try:
        result = measure(url, keep=options.keep)
    finally:
        if cluster is not None:
            cluster.stop()
    print(
        f"GC ({result['backend']}, delete-untagged) over {result['blobs']:,} blobs and "
        f"{result['manifests']:,} manifests: {result['seconds']:.2f} s "
        f"(target < {TARGET_SECONDS:.0f} s), writes refused for "
        f"{result['restricted_seconds']:.3f} s (target < {TARGET_RESTRICTED:.0f} s); "
        f"dry run {result['dry_run_seconds']:.2f} s"
    )
    print(
        f"  deleted {result['images_deleted']:,} images and {result['blobs_deleted']:,} blobs "
        f"({result['files_removed']:,} files); kept {result['manifests_kept']:,} manifests and "
        f"{result['blobs_kept']:,} blobs"
    )
    print(json.dumps(result))
    print("targets met" if met(result) else "TARGETS NOT MET")
    sys.exit(0 if met(result) else 1)


def measure_all() -> dict[str, Any]:
    from tests.servers import PostgresCluster

    runs = [measure(None)]
    missing = not PostgresCluster.available()
    if not missing:
        cluster = PostgresCluster().start()
        try:
            runs.append(measure(cluster.create_database()))
        finally:
            cluster.stop()
    return {
        "runs": runs,
        "postgresql_missing": missing,
        "measured": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    os.environ.pop("BERTH_CONFIG", None)
    main()
