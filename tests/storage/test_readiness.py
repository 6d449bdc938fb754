"""`/readyz` of a node on S3 and PostgreSQL: 503 while the object store or the database cannot
be reached (SeaweedFS SIGKILLed, PostgreSQL stopped), ready again once they are back; the
store is asked at most every few seconds however often the probe comes.

On PostgreSQL: several nodes on S3 share one, so that is how S3 is run."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from berth.services.readiness import STORE_CACHE_SECONDS
from tests.s3 import SeaweedFS
from tests.servers import BerthServer, PostgresCluster


def readiness(server: BerthServer) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=30)


def becomes(server: BerthServer, status: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    answer = readiness(server)
    while answer.status_code != status and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = readiness(server)
    assert answer.status_code == status, answer.text
    return answer


def test_readyz_follows_the_object_store_and_the_database(
    own_seaweedfs: SeaweedFS, own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    server = BerthServer(
        tmp_path / "berth",
        own_postgres.create_database(),
        extra_env=own_seaweedfs.settings_environ(),
    ).start()
    try:
        assert readiness(server).text == "ready"

        own_seaweedfs.kill()
        killed_at = time.monotonic()
        unready = becomes(server, 503)
        # Noticed within the cache's lifetime and a check's timeout, not after minutes.
        assert time.monotonic() - killed_at < STORE_CACHE_SECONDS + 10
        assert unready.text == "not ready: the blob store is unavailable\n"
        assert own_seaweedfs.endpoint.split("//")[1] not in unready.text  # no address shown
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, only not ready

        # A check made afresh (the last answer expired) knows a refused connection at once:
        # one try, not the S3 client's retries and their back-off cut off by the timeout.
        time.sleep(STORE_CACHE_SECONDS + 0.5)
        started = time.monotonic()
        assert readiness(server).status_code == 503
        assert time.monotonic() - started < 1

        # Probes in a burst share the store's last answer: each failed check is logged once.
        log = server.data_dir / "server.log"
        checks_before = log.read_text().count("blob store")
        started = time.monotonic()
        for _ in range(50):
            assert readiness(server).status_code == 503
        elapsed = time.monotonic() - started
        checks = log.read_text().count("blob store") - checks_before
        assert checks <= elapsed / STORE_CACHE_SECONDS + 1, (checks, elapsed)

        own_seaweedfs.start()
        assert becomes(server, 200).text == "ready"

        own_postgres.pg_ctl("stop")
        assert becomes(server, 503).text == "not ready: the database is unreachable\n"
        own_postgres.pg_ctl("start")
        assert becomes(server, 200).text == "ready"
    finally:
        server.stop()


def test_readyz_tells_a_bucket_policy_refusing_the_listing_from_refused_credentials(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """A bucket policy that denies s3:ListBucket, put on the bucket of a serving node, makes
    its check (HeadBucket) answer 403 as revoked credentials would: /readyz says that the
    store refused the listing of its bucket and what the operator should check, not its
    credentials (test_s3_outage.py has those revoked); the log names the bucket. Ready again
    once the policy is gone."""
    bucket = f"berth-unlistable-{uuid.uuid4().hex[:12]}"  # of its own: it gets a policy
    seaweedfs.create_bucket(bucket)
    server = BerthServer(
        tmp_path / "berth", extra_env={**seaweedfs.settings_environ(), "BERTH_S3_BUCKET": bucket}
    ).start()
    try:
        assert readiness(server).text == "ready"
        seaweedfs.deny(bucket, ["s3:ListBucket"], f"arn:aws:s3:::{bucket}")
        assert becomes(server, 503).text == (
            "not ready: the blob store is unavailable: the object store accepted the registry's "
            "credentials but refused it the listing of its bucket (the operator should check "
            "that the bucket policy and the credentials' permissions allow s3:ListBucket on "
            "it)\n"
        )
        logged = " ".join(server.log_path.read_text().split())
        assert (
            f"readiness: not ready: the blob store cannot be used: the bucket {bucket!r} at "
            f"{seaweedfs.endpoint} accepts the credentials, but the bucket policy or their "
            "permissions refuse them s3:ListBucket on the bucket"
        ) in logged, logged

        seaweedfs.client().delete_bucket_policy(Bucket=bucket)
        assert becomes(server, 200).text == "ready"
    finally:
        server.stop()
