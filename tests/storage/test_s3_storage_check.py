"""`berth storage check PROJECT|--all [--repair]` on SeaweedFS and on Ceph RGW: the metadata
compared with the bucket. A blob lost from the bucket is reported missing (pushing it again repairs it); an object
no metadata names is reported as an orphan and, with --repair, removed once older than the
grace period."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from subprocess import CompletedProcess
from typing import Any

import httpx
import pytest

from tests.oci import blob_path, push_bytes
from tests.s3 import BUCKET, S3TestServer
from tests.servers import BERTH, ROOT, BerthServer, running_server


@pytest.fixture(scope="module")
def checked(request: pytest.FixtureRequest, object_store: S3TestServer) -> Iterator[BerthServer]:
    env = object_store.settings_environ()  # and the default gc_grace_period, an hour
    with running_server(request, "s3check", "postgres", extra_env=env) as server:
        yield server


def blob_key(server: BerthServer, digest: str) -> str:
    hex_digest = digest.split(":", 1)[1]
    return f"{server.extra_env['BERTH_S3_PREFIX']}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"


def cli(server: BerthServer, *args: str, grace: int | None = None) -> CompletedProcess[str]:
    """`berth storage check ARGS` on the server's data, with another gc_grace_period if given."""
    env = {**server.env, **({"BERTH_GC_GRACE_PERIOD": str(grace)} if grace is not None else {})}
    command = [*BERTH, "storage", "check", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)


def check(server: BerthServer, *args: str, grace: int | None = None) -> tuple[int, dict[str, Any]]:
    result = cli(server, *args, "--json", grace=grace)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def printed(result: CompletedProcess[str]) -> str:
    return " ".join(result.stdout.split())  # as one line, however the table wrapped it


def test_missing_and_orphaned_objects_are_found_and_repaired(
    checked: BerthServer, object_store: S3TestServer
) -> None:
    s3 = object_store.client()
    checked.create_repository("first", "app")
    checked.create_repository("second", "app")
    kept, lost, elsewhere = os.urandom(2048), os.urandom(3000), os.urandom(1024)
    with httpx.Client(base_url=checked.url, auth=checked.access_key("first"), timeout=60) as first:
        kept_digest = push_bytes(first, "first/app", kept)
        lost_digest = push_bytes(first, "first/app", lost)
    with httpx.Client(
        base_url=checked.url, auth=checked.access_key("second"), timeout=60
    ) as second:
        elsewhere_digest = push_bytes(second, "second/app", elsewhere)
    s3.delete_object(Bucket=BUCKET, Key=blob_key(checked, lost_digest))

    # One project: its two blobs hashed, the lost one missing; the bucket is not listed.
    code, report = check(checked, "first")
    assert code == 1
    assert report["project"] == "first" and report["blobs_checked"] == 1
    assert report["missing"] == [lost_digest] and report["orphans"] == []
    assert f"missing: {lost_digest} (push it again to repair)" in printed(cli(checked, "first"))
    unknown = cli(checked, "nope")
    assert unknown.returncode == 1 and "project 'nope' does not exist" in unknown.stderr

    # An object no metadata names, as a crashed push or an old install leaves behind.
    orphan = os.urandom(4096)
    orphan_digest = "sha256:" + hashlib.sha256(orphan).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=blob_key(checked, orphan_digest), Body=orphan)
    stored_at = time.monotonic()

    code, report = check(checked, "--all", "--repair", "--yes")
    assert code == 1 and report["missing"] == [lost_digest]
    assert report["blobs_checked"] == 2  # of both projects
    assert report["orphans"] == [orphan_digest]
    assert report["orphans_removed"] == []  # younger than the grace period: a push in flight?
    assert s3.head_object(Bucket=BUCKET, Key=blob_key(checked, orphan_digest))

    code, report = check(checked, grace=0)  # the whole install without --repair: kept
    assert report["orphans"] == [orphan_digest] and report["orphans_removed"] == []
    time.sleep(max(0.0, 2.5 - (time.monotonic() - stored_at)))  # S3 times are in seconds
    repaired = printed(cli(checked, "--all", "--repair", "--yes", grace=1))
    assert f"orphan removed: {orphan_digest}" in repaired
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=blob_key(checked, orphan_digest))
    assert listing.get("KeyCount", 0) == 0

    # Pushing the lost blob again repairs it; the blobs in use were never touched.
    with httpx.Client(base_url=checked.url, auth=checked.access_key("first"), timeout=60) as first:
        assert first.head(blob_path("first/app", lost_digest)).status_code == 404
        push_bytes(first, "first/app", lost)
        assert first.get(blob_path("first/app", kept_digest)).content == kept
    code, report = check(checked, "--all", "--repair", "--yes")
    assert code == 0, report
    assert report["missing"] == [] and report["orphans"] == [] and report["blobs_checked"] == 3
    assert elsewhere_digest not in report["orphans_removed"]
