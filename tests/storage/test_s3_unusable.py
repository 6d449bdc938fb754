"""Settings of the object store that cannot work, through the real `berth serve` and CLI on
SeaweedFS: no credentials, half of them, a wrong secret, an AWS_CA_BUNDLE naming no file. Each
is refused before anything changes (exit 2), naming what to put right, with no traceback; and
a garbage collection whose removals the store refuses midway fails saying so in one line, and
never counts as removed the objects still in the bucket."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gc.conftest import GcProject, new_project
from tests.oci import digest_of, put_manifest, random_image
from tests.s3 import READER_KEY_ID, SeaweedFS
from tests.servers import BERTH, ROOT, BerthServer, running_server, serve_refused, unstarted_environ

WITHOUT_CREDENTIALS = ("BERTH_S3_ACCESS_KEY_ID", "BERTH_S3_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def gc_s3(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    """Nodes' settings: PostgreSQL and SeaweedFS; the CLI collects with no grace period."""
    with running_server(request, "s3-unusable", "postgres-s3") as server:
        yield server


@pytest.fixture
def project(gc_s3: BerthServer) -> Iterator[GcProject]:
    created = new_project(gc_s3)
    yield created
    created.close()


def untagged_image(project: GcProject) -> tuple[str, list[str]]:
    """An image pushed by digest only (collected with --delete-untagged): its digest, and
    those of its blobs."""
    manifest = random_image(project.registry, project.name(), layers=2)
    digest = digest_of(manifest)
    pushed = put_manifest(project.registry, project.name(), digest, manifest)
    assert pushed.status_code == 201, pushed.text
    document = json.loads(manifest)
    return digest, [
        document["config"]["digest"],
        *(layer["digest"] for layer in document["layers"]),
    ]


def berth(
    server: BerthServer, *args: str, drop: tuple[str, ...] = (), **settings: str
) -> subprocess.CompletedProcess[str]:
    """A CLI verb on the server's data, with environment variables left out or changed."""
    env = {k: v for k, v in server.env.items() if k not in drop} | {"BERTH_GC_GRACE_PERIOD": "0"}
    env |= settings
    return subprocess.run(
        [*BERTH, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_verbs_that_use_the_store_refuse_credentials_that_cannot_work_before_changing_anything(
    gc_s3: BerthServer, project: GcProject
) -> None:
    image, digests = untagged_image(project)
    unusable: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
        "none": (
            {"drop": WITHOUT_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"},
            ("no credentials", "s3_access_key_id and s3_secret_access_key"),
        ),
        "secret only": (
            {"drop": ("BERTH_S3_ACCESS_KEY_ID",)},
            ("s3_secret_access_key is set but s3_access_key_id is not",),
        ),
        "wrong secret": (
            {"BERTH_S3_SECRET_ACCESS_KEY": "not-the-secret"},
            ("refused the credentials", "s3_access_key_id and s3_secret_access_key"),
        ),
    }
    for case, (settings, named) in unusable.items():
        for verb in (
            ("gc", "run", project.project, "--delete-untagged", "--yes"),
            ("storage", "check", project.project),
        ):
            refused = berth(gc_s3, *verb, **settings)
            said = " ".join(refused.stderr.split())
            assert refused.returncode == 2, (case, verb, refused.stdout, refused.stderr)
            assert "Traceback" not in said and not refused.stdout, (case, verb, said)
            assert "error: the blob store cannot be used" in said, (case, verb, said)
            assert all(words in said for words in named), (case, verb, said)

    # Nothing was collected: no run, the image and every object still there.
    assert gc_s3.cli_items("gc", "history", project.project) == []
    assert project.has_manifest(image)
    assert all(project.stored(digest) and project.blob_row(digest) for digest in digests)


def test_a_collection_the_store_fails_midway_counts_nothing_removed_and_the_next_removes_it(
    gc_s3: BerthServer, project: GcProject
) -> None:
    _, digests = untagged_image(project)
    sizes = sum(len(project.blob_bytes(digest)) for digest in digests)

    # A key that may read the bucket (the store is checked) but not delete from it.
    failed = berth(
        gc_s3,
        "gc",
        "run",
        project.project,
        "--delete-untagged",
        "--yes",
        "--json",
        BERTH_S3_ACCESS_KEY_ID=READER_KEY_ID,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    run = json.loads(failed.stdout)
    # One line says it (not the store's warning of the same failure before it).
    assert failed.stderr.splitlines() == [
        f"gc run {run['id']} failed: {run['error'].rsplit(' (', 1)[0]}"
    ], failed.stderr
    assert run["state"] == "failed" and "AccessDenied" in run["error"], run
    assert run["images_deleted"] == 1 and run["blobs_deleted"] == len(digests)
    assert (run["storage_blobs_deleted"], run["storage_bytes_freed"]) == (0, 0), run
    assert (run["progress_done"], run["progress_total"]) == (0, len(digests)), run
    assert all(project.stored(digest) for digest in digests)

    # The next run removes what the failed one left, and counts it.
    done = berth(gc_s3, "gc", "run", project.project, "--yes", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(done.stdout)
    assert run["state"] == "succeeded", run
    assert (run["storage_blobs_deleted"], run["storage_bytes_freed"]) == (len(digests), sizes)
    assert (run["progress_done"], run["progress_total"]) == (len(digests), len(digests)), run
    assert not any(project.stored(digest) for digest in digests)


@pytest.fixture
def s3_settings(seaweedfs: SeaweedFS, tmp_path: Path) -> dict[str, str]:
    """A `berth serve` of its own on SeaweedFS, not started."""
    return unstarted_environ(tmp_path, seaweedfs.settings_environ())


def test_serve_refuses_half_the_credentials_naming_the_missing_setting(
    s3_settings: dict[str, str],
) -> None:
    # README "Run several nodes" put only the secret in berth.env.
    del s3_settings["BERTH_S3_ACCESS_KEY_ID"]
    said = " ".join(serve_refused(s3_settings).split())
    assert "s3_secret_access_key is set but s3_access_key_id is not" in said, said
    s3_settings["BERTH_S3_ACCESS_KEY_ID"] = "berth-test-key"
    del s3_settings["BERTH_S3_SECRET_ACCESS_KEY"]
    said = " ".join(serve_refused(s3_settings).split())
    assert "s3_access_key_id is set but s3_secret_access_key is not" in said, said


def test_serve_refuses_credentials_the_store_refuses_in_one_error(
    s3_settings: dict[str, str],
) -> None:
    s3_settings["BERTH_S3_SECRET_ACCESS_KEY"] = "not-the-secret"
    said = serve_refused(s3_settings).splitlines()
    assert len(said) == 1 and said[0].startswith("error: "), said  # no warning saying it too
    assert "refused the credentials" in said[0], said


def test_serve_and_the_cli_refuse_a_ca_bundle_that_names_no_file(
    s3_settings: dict[str, str], seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    bundle = tmp_path / "no-such-bundle.pem"
    https = seaweedfs.endpoint.replace("http://", "https://")
    s3_settings |= {"AWS_CA_BUNDLE": str(bundle), "BERTH_S3_ENDPOINT": https}
    said = " ".join(serve_refused(s3_settings).split())
    assert f"the CA bundle {bundle} (AWS_CA_BUNDLE) cannot be read" in said, said
    assert "Traceback" not in said

    # A CLI verb on the same settings, on data a working serve made.
    data = tmp_path / "data"
    made = subprocess.run(
        [*BERTH, "init"],
        env={**s3_settings, "BERTH_S3_ENDPOINT": seaweedfs.endpoint},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert made.returncode == 0 and data.is_dir(), made.stdout + made.stderr
    refused = subprocess.run(
        [*BERTH, "storage", "check", "--all"],
        env=s3_settings,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "Traceback" not in said, said
    assert f"the CA bundle {bundle} (AWS_CA_BUNDLE) cannot be read" in said, said


def test_serve_and_the_cli_tell_a_bucket_policy_refusing_the_listing_from_a_wrong_secret(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """A bucket policy that denies s3:ListBucket makes the bucket's check answer 403 as a
    wrong secret does: `berth serve` (exit status 2, before serving) and a verb that uses the
    store say which, the permission with what Berth needs, the secret as before."""
    bucket = f"berth-unlistable-{uuid.uuid4().hex[:12]}"  # of its own: it gets a policy
    seaweedfs.create_bucket(bucket)
    env = unstarted_environ(tmp_path, {**seaweedfs.settings_environ(), "BERTH_S3_BUCKET": bucket})
    made = subprocess.run(
        [*BERTH, "init"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert made.returncode == 0, made.stdout + made.stderr  # data for the verb to run on
    seaweedfs.deny(bucket, ["s3:ListBucket"], f"arn:aws:s3:::{bucket}")
    permission = (
        "accepts the credentials, but the bucket policy or their permissions refuse them "
        "s3:ListBucket on the bucket (its check, HeadBucket: 403; ListObjectsV2: AccessDenied). "
        "Berth needs s3:ListBucket and s3:ListBucketMultipartUploads on the bucket, and "
        "s3:GetObject, "
    )
    credentials = (
        "refused the credentials (SignatureDoesNotMatch): check s3_access_key_id and "
        "s3_secret_access_key"
    )
    wrong_secret = {**env, "BERTH_S3_SECRET_ACCESS_KEY": "not-the-secret"}
    for settings, named, not_named in (
        (env, permission, "refused the credentials"),
        (wrong_secret, credentials, "s3:ListBucket"),
    ):
        said = " ".join(serve_refused(settings).split())
        assert f"bucket {bucket!r} at {seaweedfs.endpoint} {named}" in said, said
        assert not_named not in said, said

        refused = subprocess.run(
            [*BERTH, "storage", "check", "--all"],
            env=settings,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2 and "Traceback" not in said, said
        assert "error: the blob store cannot be used" in said, said
        assert named in said and not_named not in said, said
