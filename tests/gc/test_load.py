"""Garbage collection under load: workers push and tag images continuously, through the raw
API and with skopeo, while garbage collection runs again and again (every other run with
delete-untagged). Afterwards every image whose push succeeded (and whose tag still names it)
pulls completely with the right digests, nothing unreferenced older than the grace period is
left, and metadata and storage agree file for file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from berth.metadata.tables import (
    blobs,
    manifest_references,
    manifests,
    repository_blobs,
    tags,
)
from berth.state import Services
from tests.clients.commands import ContainersConfig, Skopeo
from tests.clients.layouts import TestImage, umoci_image
from tests.clients.registry import Registry, Trust
from tests.clients.tools import require_binary
from tests.gc.conftest import GcProject, age_past_grace, in_process, new_project
from tests.oci import OCI_CONFIG, OCI_EMPTY, OCI_LAYER, Blob, image_index, image_manifest
from tests.servers import BACKENDS, BerthServer, running_server
from tests.tls import make_ca_and_cert

# Seconds. A push here takes well under a second on a quiet machine, but over 3 s at load 14
# (a 3 s grace period then collected a skopeo push's blobs before its manifest came).
GRACE = 15
LOAD_SECONDS = 10  # at least; on a loaded machine until enough has happened (`keep_load_on`)
LOAD_LIMIT_SECONDS = 180
ENOUGH_PUSHES, ENOUGH_RUNS = 20, 3
RAW_WORKERS = 3
GC_TEXT = "garbage collection in progress"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


@pytest.fixture(scope="module", params=BACKENDS)
def load_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BerthServer]:
    """A registry of its own (storage is checked file for file), over TLS for skopeo."""
    _ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])
    with running_server(
        request,
        "gc-load",
        request.param,
        tls=(cert, key),
        # Each run holds its write restriction 0.3 s at least, so pushes surely meet it.
        extra_env={"BERTH_GC_GRACE_PERIOD": str(GRACE), "BERTH_GC_TEST_PAUSE": "marking=0.3"},
    ) as server:
        yield server


@dataclass
class Pushed:
    """What a successful push stored under a tag: the manifest and every blob's bytes."""

    digest: str
    manifest: bytes
    blobs: dict[str, bytes]


@dataclass
class Ledger:
    """What the workers did: the images their tags name now, and what went wrong."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    tagged: dict[tuple[str, str], Pushed] = field(default_factory=dict)  # (image, tag) -> push
    pushes: int = 0
    refusals: int = 0  # requests refused with the GC text (then retried)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def retried(ledger: Ledger, send: Callable[[], httpx.Response]) -> httpx.Response:
    """Send until garbage collection no longer refuses it (its window is short)."""
    for _ in range(200):
        response = send()
        if response.status_code != 403 or GC_TEXT not in response.text:
            return response
        with ledger.lock:
            ledger.refusals += 1
        time.sleep(0.02)
    return response


def push_blob(project: GcProject, ledger: Ledger, image: str, data: bytes) -> bool:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = retried(
        ledger,
        lambda: project.registry.post(
            f"/v2/{project.name(image)}/blobs/uploads/", params={"digest": digest}, content=data
        ),
    )
    if response.status_code != 201:
        ledger.fail(f"blob {digest}: {response.status_code} {response.text[:200]}")
    return response.status_code == 201


def raw_worker(project: GcProject, ledger: Ledger, number: int, stop: threading.Event) -> None:
    """Pushes images under a few tags of its own (moving them, so old images lose their tag),
    some untagged ones, and deletes a tag now and then."""
    image = f"raw{number}"
    base = os.urandom(2048)  # a layer every image of this worker shares
    step = 0
    while not stop.is_set():
        step += 1
        if step % 7 == 0:
            tag = f"t{step % 4}"
            response = project.registry.delete(f"/v2/{project.name(image)}/manifests/{tag}")
            if response.status_code == 202:
                with ledger.lock:
                    ledger.tagged.pop((image, tag), None)
            continue
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex})
        contents = {
            "config": Blob(config.encode(), OCI_CONFIG),
            "base": Blob(base, OCI_LAYER),
            "top": Blob(os.urandom(1024 + step), OCI_LAYER),
        }
        if not all(push_blob(project, ledger, image, b.data) for b in contents.values()):
            continue
        manifest = image_manifest(
            contents["config"].descriptor(),
            [contents["base"].descriptor(), contents["top"].descriptor()],
        )
        reference = None if step % 5 == 0 else f"t{step % 4}"  # every fifth image is untagged
        response = retried(
            ledger,
            lambda: project.put_manifest(manifest, reference, image),  # noqa: B023
        )
        if response.status_code != 201:
            ledger.fail(f"manifest {reference}: {response.status_code} {response.text[:200]}")
            continue
        with ledger.lock:
            ledger.pushes += 1
            if reference is not None:
                ledger.tagged[(image, reference)] = Pushed(
                    manifest.digest, manifest.data, {b.digest: b.data for b in contents.values()}
                )


def skopeo_worker(
    skopeo: Skopeo,
    registry: Registry,
    images: list[TestImage],
    ledger: Ledger,
    stop: threading.Event,
) -> None:
    """`skopeo copy` of a few different images under a few tags, round and round."""
    step = 0
    while not stop.is_set():
        step += 1
        source = images[step % len(images)]
        tag = f"s{step % 3}"
        result = skopeo(
            "copy",
            f"--dest-cert-dir={registry.trust.cert_dir}",
            f"--dest-creds={':'.join(registry.credentials or ())}",
            source.oci_ref,
            f"docker://{registry.address}/{registry.name('app', 'skopeo')}:{tag}",
            check=False,
        )
        if result.returncode != 0:
            if GC_TEXT in result.stdout + result.stderr:
                with ledger.lock:
                    ledger.refusals += 1
                continue
            ledger.fail(f"skopeo {tag}: {result.stderr[-300:]}")
            continue
        layout = source.layout
        stored = {d: layout.blob(d) for d in [source.config_digest, *source.layer_digests]}
        descriptor = source.manifest_descriptor
        with ledger.lock:
            ledger.pushes += 1
            ledger.tagged[("skopeo", tag)] = Pushed(
                str(descriptor["digest"]), layout.blob(str(descriptor["digest"])), stored
            )


def gc_worker(project: GcProject, runs: list[dict[str, Any]], stop: threading.Event) -> None:
    """Garbage collection again and again, every other run deleting untagged images."""
    while not stop.is_set():
        started = project.start_gc(delete_untagged=len(runs) % 2 == 1)
        if started.status_code == 409:
            time.sleep(0.05)
            continue
        assert started.status_code == 202, started.text
        runs.append(project.wait_for_run(started.json()["id"]))
        time.sleep(0.3)


def keep_load_on(ledger: Ledger, runs: list[dict[str, Any]]) -> None:
    """Load for `LOAD_SECONDS`, and longer (up to `LOAD_LIMIT_SECONDS`) until the workers have
    raced enough to tell: pushes, runs, one deleting images, a push refused by one. How much
    happens in a fixed time depends on the machine's load (18 pushes in 10 s at load 12);
    what the test checks afterwards does not."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < LOAD_LIMIT_SECONDS:
        with ledger.lock:
            pushed = ledger.pushes > ENOUGH_PUSHES and ledger.refusals > 0
        ran = len(runs) >= ENOUGH_RUNS and any(run["images_deleted"] for run in list(runs))
        if elapsed >= LOAD_SECONDS and pushed and ran:
            return
        time.sleep(0.2)


def push_keepers(project: GcProject) -> dict[str, Blob]:
    """A multi-architecture index and a signed image: delete-untagged must keep both whole."""
    kept: dict[str, Blob] = {}
    children = []
    for arch in ("amd64", "arm64"):
        config = Blob(json.dumps({"architecture": arch, "os": "linux"}).encode(), OCI_CONFIG)
        layer = Blob(os.urandom(512), OCI_LAYER)
        for blob in (config, layer):
            project.push(blob, "multi")
        child = image_manifest(config.descriptor(), [layer.descriptor()])
        assert project.put_manifest(child, image="multi").status_code == 201
        children.append(child.descriptor(platform={"os": "linux", "architecture": arch}))
        kept[f"child-{arch}"] = child
    index = image_index(children)
    assert project.put_manifest(index, "v1", "multi").status_code == 201
    kept["index"] = index

    config = Blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
    layer = Blob(os.urandom(512), OCI_LAYER)
    for blob in (config, layer):
        project.push(blob, "signed")
    signed = image_manifest(config.descriptor(), [layer.descriptor()])
    assert project.put_manifest(signed, "v1", "signed").status_code == 201
    project.push(Blob(b"{}", OCI_EMPTY), "signed")
    payload = Blob(b"signature " + os.urandom(32), OCI_LAYER)
    project.push(payload, "signed")
    signature = image_manifest(
        Blob(b"{}", OCI_EMPTY).descriptor(),
        [payload.descriptor()],
        artifact_type=SIGNATURE,
        subject=signed.descriptor(),
    )
    assert project.put_manifest(signature, image="signed").status_code == 201
    kept["signed"], kept["signature"] = signed, signature
    return kept


def check_pull(project: GcProject, image: str, tag: str, pushed: Pushed) -> None:
    response = project.registry.get(
        f"/v2/{project.name(image)}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.status_code == 200, (image, tag, response.text)
    assert response.headers["Docker-Content-Digest"] == pushed.digest, (image, tag)
    assert response.content == pushed.manifest
    for digest, data in pushed.blobs.items():
        blob = project.registry.get(f"/v2/{project.name(image)}/blobs/{digest}")
        assert blob.status_code == 200, (image, tag, digest)
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == digest
        assert blob.content == data


def leftovers(server: BerthServer) -> dict[str, Any]:
    """What garbage collection should have removed but did not, and where metadata and
    storage disagree, on the whole server (the test's own). Everything here is older than the
    grace period."""

    async def read(services: Services) -> dict[str, Any]:
        async with services.db.read() as conn:
            manifest_rows = (
                await conn.execute(
                    select(
                        manifests.c.id,
                        manifests.c.repository_id,
                        manifests.c.image,
                        manifests.c.digest,
                        manifests.c.subject_digest,
                    )
                )
            ).all()
            tagged = {
                tuple(r)
                for r in await conn.execute(
                    select(tags.c.repository_id, tags.c.image, tags.c.digest)
                )
            }
            child_refs = (
                await conn.execute(
                    select(manifest_references.c.manifest_id, manifest_references.c.digest).where(
                        manifest_references.c.is_manifest
                    )
                )
            ).all()
            blob_refs = {
                tuple(r)
                for r in await conn.execute(
                    select(manifests.c.repository_id, manifest_references.c.digest)
                    .join(manifests, manifests.c.id == manifest_references.c.manifest_id)
                    .where(~manifest_references.c.is_manifest)
                )
            }
            links = (
                await conn.execute(
                    select(repository_blobs.c.repository_id, repository_blobs.c.digest)
                )
            ).all()
            blob_rows = set((await conn.execute(select(blobs.c.digest))).scalars())
        # An independent walk of what keeps what: tags, index children, subjects, referrers.
        by_key = {(r.repository_id, r.image, r.digest): r for r in manifest_rows}
        by_id = {r.id: r for r in manifest_rows}
        kept = {r.id for r in manifest_rows if (r.repository_id, r.image, r.digest) in tagged}
        changed = True
        while changed:
            changed = False
            for r in manifest_rows:
                if r.id in kept:
                    continue
                subject = by_key.get((r.repository_id, r.image, r.subject_digest))
                parents = [by_id[m] for m, d in child_refs if d == r.digest and m in by_id]
                if (
                    (subject is not None and subject.id in kept)
                    or any(
                        p.id in kept and (p.repository_id, p.image) == (r.repository_id, r.image)
                        for p in parents
                    )
                    or any(
                        o.id in kept
                        and o.subject_digest == r.digest
                        and (o.repository_id, o.image) == (r.repository_id, r.image)
                        for o in manifest_rows
                    )
                ):
                    kept.add(r.id)
                    changed = True
        root = services.settings.blob_dir / "sha256"
        files = {f"sha256:{p.name}" for p in root.glob("*/*")} if root.exists() else set()
        linked = {d for _, d in links}
        return {
            "unreachable images": [r.digest for r in manifest_rows if r.id not in kept],
            "unreferenced links": [(rid, d) for rid, d in links if (rid, d) not in blob_refs],
            "unlinked blob rows": sorted(blob_rows - linked),
            "rows without a file": sorted(blob_rows - files),
            "files without a row": sorted(files - blob_rows),
        }

    return dict(in_process(server, read))


def test_gc_under_load_keeps_every_pushed_image_whole(
    load_server: BerthServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = new_project(load_server)
    assert load_server.tls is not None
    # The CA alone in a directory: containers/image reads any *.key beside it as a client key.
    trust = Trust(tmp_path_factory.mktemp("trust") / "ca.crt")
    shutil.copyfile(load_server.tls[0].parent / "ca.crt", trust.ca)
    registry = Registry(
        load_server,
        project.project,
        trust,
        load_server.access_key(project.project),
        host_style=False,
    )
    skopeo = Skopeo(
        require_binary("skopeo"),
        ContainersConfig.create(tmp_path_factory.mktemp("containers")),
        registry,
    )
    require_binary("umoci")
    layouts = tmp_path_factory.mktemp("layouts")
    images = [
        umoci_image(layouts / f"image{i}" / "layout", "v1", {f"file{i}.txt": os.urandom(64)})
        for i in range(2)
    ]
    keepers = push_keepers(project)
    ledger, stop = Ledger(), threading.Event()
    runs: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=raw_worker, args=(project, ledger, n, stop))
        for n in range(RAW_WORKERS)
    ]
    threads.append(
        threading.Thread(target=skopeo_worker, args=(skopeo, registry, images, ledger, stop))
    )
    threads.append(threading.Thread(target=gc_worker, args=(project, runs, stop)))
    for thread in threads:
        thread.start()
    try:
        keep_load_on(ledger, runs)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)

    # Shown when the test fails (pytest -s shows it always): how much load there was.
    print(
        f"{ledger.pushes} pushes, {ledger.refusals} refused by GC and retried, {len(runs)} runs "
        f"deleting {sum(r['images_deleted'] for r in runs)} images and "
        f"{sum(r['blobs_deleted'] for r in runs)} blobs; longest restricted window "
        # A run that never restricted writes (one that failed) has none: the assertions below
        # name its state.
        f"{max((r['restricted_seconds'] or 0.0) for r in runs):.3f} s"
    )
    assert not ledger.failures, ledger.failures[:5]
    assert ledger.pushes > ENOUGH_PUSHES
    assert len(runs) >= ENOUGH_RUNS
    assert ledger.refusals > 0, "no push met a run's write restriction: nothing was raced"
    assert all(run["state"] == "succeeded" for run in runs), [
        r for r in runs if r["state"] != "succeeded"
    ]
    assert any(run["images_deleted"] for run in runs), "no run had anything to delete"

    age_past_grace(load_server)  # everything is past the grace period now
    final = project.gc(delete_untagged=True)
    assert final["state"] == "succeeded"

    for (image, tag), pushed in sorted(ledger.tagged.items()):
        check_pull(project, image, tag, pushed)
    for name, manifest in keepers.items():
        image = "multi" if name in ("index", "child-amd64", "child-arm64") else "signed"
        assert project.has_manifest(manifest.digest, image), name
        for blob in json.loads(manifest.data).get("layers", []):
            assert project.has_blob(blob["digest"], image), name
    referrers = project.registry.get(
        f"/v2/{project.name('signed')}/referrers/{keepers['signed'].digest}"
    ).json()
    assert [d["digest"] for d in referrers["manifests"]] == [keepers["signature"].digest]
    found = leftovers(load_server)
    assert found == {key: [] for key in found}, found
    project.close()
