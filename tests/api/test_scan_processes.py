"""A serving node scans images in processes of its own (berth/services/scanning/processes.py):
the findings and SBOM are those a scan in one process makes (`berth scan --wait`'s way), and
a server with one worker keeps answering manifest GETs while it scans an image whose reading
is seconds of Python work (a layer of hundreds of thousands of files). The vulnerability data
is the genuine OSV records of tests/fixtures/osv."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import statistics
import tarfile
import time
from typing import Any

import httpx
import pytest

from berth.config_loading import load_settings
from berth.domain.manifests import Descriptor
from berth.services.scanning.inspection import Inspected, inspect_image
from berth.services.scanning.processes import open_scan_resources
from berth.services.vulndb import VulnDb
from tests.api.conftest import Team, ok, push_layers, services
from tests.api.test_scans import EXPECTED, findings, records, wait_done
from tests.oci import OCI_LAYER_GZIP, OCI_MANIFEST, Blob
from tests.servers import S3_BACKEND, BerthServer, server_fixture

__all__ = ["records"]  # the fixture test_scans.py defines, used here too

server = server_fixture(
    "scan-processes",
    backends=("sqlite", S3_BACKEND),
    env={"BERTH_WORKERS": "1", "BERTH_SCAN_CHECK_INTERVAL": "0.2"},
)

FILES = 300_000
# The median manifest GET by tag on the server's one worker while it scans, over the median
# just before the scan: 1.0x here with the scan in a scan process (0.72 ms over 0.70), 5.1x
# with it in a thread of that worker (3.6 ms; 5.6 to 7.9 ms in earlier runs: the GIL). An
# absolute bound of 3 ms failed beside other tests (3.5 ms under -n 2 with the scan process):
# the machine's load moves both medians, not so much their ratio. Measured again at load 4.5
# to 9: 5.8, 7.7 and 8.9x in a thread; in a scan process 1.05 to 1.14x alone, and beside
# tests/api/test_scans.py (-n 2) 0.96 to 1.38x at a lower CPU priority (SCAN_NICENESS), while
# at the same priority two of four such runs at load 9 went past the bound (5.4x, 11x: the
# scan process took the worker's core). So the bound stays.
SLOWDOWN_BOUND = 4.0


@pytest.fixture(scope="module")
def many_files() -> Blob:
    """A gzip layer of FILES empty files: a few MB, read by tarfile header by header."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for number in range(FILES):
            tar.addfile(tarfile.TarInfo(f"srv/data/f{number:07d}"))
    return Blob(gzip.compress(raw.getvalue(), compresslevel=1), OCI_LAYER_GZIP)


def descriptors(layers: list[Blob]) -> list[Descriptor]:
    return [Descriptor(layer.media_type, layer.digest, layer.size) for layer in layers]


def in_this_process(server: BerthServer, layers: list[Descriptor]) -> Inspected:
    """`inspect_image` as `berth scan --wait` runs it, with the server's settings (its
    database and blob store: S3 on the S3 backend)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in server.env.items():
            if name.startswith("BERTH_"):
                env.setenv(name, value)
        settings = load_settings()

    async def inspect() -> Inspected:
        db, store = open_scan_resources(settings)
        try:
            return await inspect_image(VulnDb(db), store, layers)
        finally:
            await store.close()
            await db.dispose()

    return asyncio.run(inspect())


def timed_gets(registry: httpx.Client, path: str, count: int) -> list[float]:
    """Milliseconds each of `count` sequential GETs of the manifest took."""
    took = []
    for _ in range(count):
        began = time.perf_counter()
        response = registry.get(path, headers={"Accept": OCI_MANIFEST})
        took.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return took


def test_a_served_scan_finds_what_a_scan_in_one_process_finds(
    team: Team, app_layers: list[Blob]
) -> None:
    image = push_layers(team, team.repository, app_layers, "v1")
    url = team.repo_url(f"/images/{image.digest}/scan")
    ok(team["member"].post(url), 202)
    served = wait_done(team["reader"], url)
    assert served["state"] == "done" and findings(served) == EXPECTED

    inspected = in_this_process(team.server, descriptors(app_layers))
    key = lambda f: (f["advisory_id"], f["purl"])  # noqa: E731
    assert sorted(served["findings"], key=key) == sorted(
        (f.model_dump() for f in inspected.findings), key=key
    )
    assert served["packages"] == inspected.packages
    sbom = ok(team["reader"].get(team.repo_url(f"/images/{image.digest}/sbom")))
    served_purls = sorted(c["purl"] for c in sbom["components"] if "purl" in c)
    assert served_purls == sorted(p["purl"] for p in json.loads(inspected.sbom)["packages"])


def test_manifest_gets_answer_promptly_while_a_big_image_is_scanned(
    team: Team, many_files: Blob
) -> None:
    services(
        team.server,
        lambda s: s.repositories.create(team.project, "big", scan_mode="manual", actor="test"),
    )
    image = push_layers(team, "big", [many_files], "v1")
    scan = team.repo_url(f"/images/{image.digest}/scan", repository="big")
    manifest = f"/v2/{team.oci_name(repository='big')}/manifests/v1"
    registry = team.registry("reader")
    idle = statistics.median(timed_gets(registry, manifest, 200))
    ok(team["member"].post(scan), 202)
    deadline = time.monotonic() + 60
    while ok(team["reader"].get(scan))["state"] != "scanning":
        assert time.monotonic() < deadline, "the scan did not start"
        time.sleep(0.02)
    latencies: list[float] = []
    state: Any = "scanning"
    while state == "scanning":
        latencies += timed_gets(registry, manifest, 10)
        state = ok(team["reader"].get(scan))["state"]
    result = wait_done(team["reader"], scan)
    assert result["state"] == "done", result
    assert len(latencies) >= 30, f"the scan ended after {len(latencies)} GETs: too small"
    median = statistics.median(latencies)
    assert median < SLOWDOWN_BOUND * idle, (
        f"median {median:.1f} ms over {len(latencies)} GETs during the scan, "
        f"{idle:.1f} ms before it"
    )
