"""A second real S3 server for tests: Ceph's RADOS Gateway (Debian's `radosgw`, Ceph 16) on the
smallest cluster it can run on, as plain processes under one directory, on loopback only.

RGW keeps its objects in RADOS, so it needs a cluster: here one monitor (`ceph-mon`), one OSD
(`ceph-osd`) whose store is memory (`memstore`: no disk to prepare, gone when it stops), pools
of one copy, and no cephx (the daemons trust each other on loopback; S3 requests are still
signed and checked by RGW against its own user's secret). No manager daemon: RGW and the
commands below do not need one. `radosgw-admin user create` then makes the one S3 user, with
the fixed key of the tests and a random secret.

Use `rgw_server` as a session-scoped fixture (`rgw`, tests/conftest.py); it has the same face
as the SeaweedFS one (`S3TestServer`: `location()`, `client()`, `settings_environ()`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from tests.ports import free_port
from tests.s3 import BUCKET, S3TestServer
from tests.tls import make_ca_and_cert

DAEMONS = ("ceph-mon", "ceph-osd", "radosgw")
TOOLS = ("monmaptool", "ceph", "radosgw-admin")
CONFIG = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
# One machine, loopback only: msgr2 alone, and no cephx between the daemons.
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
# A client talks to the monitor in "secure" mode by default, which needs cephx.
ms mon client mode = crc secure
run dir = {directory}/run
admin socket = {directory}/run/$name.asok
log file = {directory}/log/$name.log
log to stderr = false
err to stderr = true
# One OSD: pools of one copy, few placement groups, and no warnings about either.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 1
osd pool default pgp num = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# Commit map changes at once (default: batched each second), so pools are made faster.
paxos propose interval = 0.01
paxos min wait = 0.01
# The machine's disk may be fuller than a production monitor tolerates.
mon data avail warn = 1
mon data avail crit = 0

[mon]
mon data = {directory}/mon.$id

[osd]
osd data = {directory}/osd.$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}

[client.rgw]
rgw frontends = {frontends}
rgw thread pool size = 16
# Buckets of the tests are made and dropped by the tests; no usage log, no lifecycle work.
rgw enable usage log = false
rgw enable lc threads = false
"""


def available() -> bool:
    """Whether Debian's Ceph daemons and tools are installed (scripts/test-deps.sh)."""
    return all(shutil.which(name) for name in (*DAEMONS, *TOOLS))


@dataclass
class CephRGW(S3TestServer):
    """One monitor, one in-memory OSD and one RGW under `directory`."""

    mon_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)  # the same gateway over TLS
    memstore_bytes: int = 2 * 1024**3  # a ceiling: memory is taken only by what is written
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.directory / "ceph.conf"

    @property
    def https_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca_bundle(self) -> Path:
        """The CA of the gateway's TLS certificate (for AWS_CA_BUNDLE)."""
        return self.directory / "tls" / "ca.crt"

    def start(self, timeout: float = 120) -> CephRGW:
        deadline = time.monotonic() + timeout
        for name in ("run", "log", "osd.0"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        make_ca_and_cert(self.directory / "tls", ["127.0.0.1"])
        fsid = str(uuid.uuid4())
        self.config.write_text(
            CONFIG.format(
                fsid=fsid,
                directory=self.directory,
                mon_port=self.mon_port,
                frontends=" ".join(
                    [
                        f"beast endpoint=127.0.0.1:{self.s3_port}",
                        f"ssl_endpoint=127.0.0.1:{self.https_port}",
                        f"ssl_certificate={self.directory}/tls/server.crt",
                        f"ssl_private_key={self.directory}/tls/server.key",
                    ]
                ),
                memstore_bytes=self.memstore_bytes,
            )
        )
        try:
            monmap = self.directory / "monmap"
            self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                      f"[v2:127.0.0.1:{self.mon_port}]", str(monmap))  # fmt: skip
            self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
            self._spawn("ceph-mon", "-i", "a")
            osd_uuid = str(uuid.uuid4())
            self._run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid, "0")
            self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
            self._spawn("ceph-osd", "-i", "0")
            # RGW makes its pools on first start, which waits for the OSD to come up.
            self._spawn("radosgw", "-n", "client.rgw")
            self._wait_for_gateway(deadline)
            self._run("radosgw-admin", "-n", "client.admin", "user", "create", "--uid=berth",
                      "--display-name=Berth tests", f"--access-key={self.access_key_id}",
                      f"--secret-key={self.secret_access_key}")  # fmt: skip
            while True:
                try:
                    self.create_bucket(BUCKET)
                    return self
                except (BotoCoreError, ClientError) as exc:
                    self._check_running()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"RGW refuses to make the bucket: {exc}") from None
                time.sleep(0.2)
        except BaseException as exc:
            tail = self.log_tail()
            self.stop()
            if isinstance(exc, (RuntimeError, TimeoutError, subprocess.SubprocessError)):
                raise RuntimeError(f"Ceph RGW did not start: {exc}\n{tail}") from exc
            raise

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [tool, "-c", str(self.config), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stderr or done.stdout}")

    def _spawn(self, daemon: str, *args: str) -> None:
        """A daemon in the foreground (-f), in a session of its own, its stderr in log/."""
        output = (self.directory / "log" / f"{daemon}.stderr").open("wb")
        self.processes[daemon] = subprocess.Popen(
            [daemon, "-f", "-c", str(self.config), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()

    def _check_running(self) -> None:
        for daemon, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{daemon} exited early ({process.returncode})")

    def _wait_for_gateway(self, deadline: float) -> None:
        while True:
            self._check_running()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.endpoint, timeout=2)  # any answer: RGW serves
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"RGW does not answer on {self.endpoint}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL whatever has not gone within 5 s; the gateway first, the
        monitor last. The OSD is killed at once: on a clean stop memstore would write all it
        holds to disk, which nobody reads again."""
        for daemon in reversed(DAEMONS):
            process = self.processes.get(daemon)
            if process is None or process.poll() is not None:
                continue
            kill = signal.SIGKILL if daemon == "ceph-osd" else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, kill)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of each daemon's log and of its stderr."""
        tails = []
        for path in sorted((self.directory / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)


@contextlib.contextmanager
def rgw_server(directory: Path) -> Iterator[CephRGW]:
    server = CephRGW(directory).start()
    try:
        yield server
    finally:
        server.stop()
