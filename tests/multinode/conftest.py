"""Three `berth serve` nodes on one PostgreSQL database and one SeaweedFS bucket, behind nginx
running the configuration in deploy/ (its addresses, ports and certificate swapped for the
test's), as README's "Run several nodes" sets them up."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.gc.conftest import GRACE
from tests.s3 import SeaweedFS, seaweedfs_server
from tests.servers import ROOT, BerthServer, PostgresCluster, free_port, wait_for
from tests.tls import make_ca_and_cert

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DEPLOY = ROOT / "deploy"
NODES = 3
FLUSH_SECONDS = 0.3


@dataclass
class Balancer:
    """nginx on a free loopback port, from deploy/nginx-berth.conf."""

    directory: Path
    nodes: list[BerthServer]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    @property
    def access_log(self) -> Path:
        """The log of the deploy/ site's own format (which node answered each request)."""
        return self.directory / "berth-access.log"

    def render(self, certificate: Path, key: Path) -> str:
        """The deploy/ site configuration with this test's listener, certificate and nodes."""
        site = (DEPLOY / "nginx-berth.conf").read_text()
        site = site.replace("listen 443 ssl;", f"listen {self.address} ssl;")
        site = site.replace("/etc/berth/tls/registry.crt", str(certificate))
        site = site.replace("/etc/berth/tls/registry.key", str(key))
        site = site.replace("/var/log/nginx/berth-access.log", str(self.access_log))
        upstreams = re.findall(r"^\s*server 10\.0\.0\.\d+:5000 ", site, flags=re.M)
        assert len(upstreams) == len(self.nodes), "deploy/nginx-berth.conf names three nodes"
        for written, node in zip(upstreams, self.nodes, strict=True):
            site = site.replace(written, written.replace(written.split()[1], node.address), 1)
        return site

    def start(self) -> Balancer:
        certs = make_ca_and_cert(self.directory / "tls", ["127.0.0.1", "localhost"])
        (self.directory / "berth.conf").write_text(self.render(certs[1], certs[2]))
        temporary = self.directory / "temp"
        temporary.mkdir(parents=True, exist_ok=True)
        (self.directory / "nginx.conf").write_text(
            "user root;\n"
            "worker_processes 1;\n"  # one worker: round-robin in one order for every request
            "daemon off;\n"
            f"pid {self.directory}/nginx.pid;\n"
            f"error_log {self.directory}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  access_log {self.directory}/access.log;\n"
            f"  client_body_temp_path {temporary}/body;\n"
            f"  proxy_temp_path {temporary}/proxy;\n"
            f"  fastcgi_temp_path {temporary}/fastcgi;\n"
            f"  uwsgi_temp_path {temporary}/uwsgi;\n"
            f"  scgi_temp_path {temporary}/scgi;\n"
            f"  include {self.directory}/berth.conf;\n"
            "}\n"
        )
        command = [NGINX, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf")]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        self.process = subprocess.Popen(
            [*command, "-e", str(self.directory / "error.log")], start_new_session=True
        )
        wait_for(
            lambda: httpx.get(f"{self.url}/healthz", verify=False, timeout=2).status_code == 200,
            20,
            "nginx",
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def client(self, auth: tuple[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=False, auth=auth, timeout=60)


@dataclass
class Cluster:
    nodes: list[BerthServer]
    balancer: Balancer
    seaweedfs: SeaweedFS
    database_url: str

    def by_name(self, name: str) -> BerthServer:
        return next(node for node in self.nodes if node.extra_env["BERTH_NODE_NAME"] == name)

    def wait_for_every_node(self, timeout: float = 30) -> None:
        """Until nginx sends requests to every node again (it skips one that failed for a
        while: `fail_timeout`)."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        with self.balancer.client() as client:
            while len(seen) < len(self.nodes) and time.monotonic() < deadline:
                seen.add(client.get("/healthz").headers.get("x-berth-node", ""))
                if len(seen) < len(self.nodes):
                    time.sleep(0.1)
        assert len(seen) == len(self.nodes), f"nginx reaches only {sorted(seen)}"


@contextlib.contextmanager
def started_nodes(
    base: Path, database_url: str, seaweedfs: SeaweedFS, public_url: str
) -> Iterator[list[BerthServer]]:
    prefix = f"multinode-{time.monotonic_ns()}"
    shared = {
        # The database, bucket and addresses of this test over deploy/berth.toml's.
        **seaweedfs.settings_environ(prefix),
        "BERTH_PUBLIC_URL": public_url,
        "BERTH_SINGLE_NODE": "false",
        "BERTH_TRAFFIC_FLUSH_INTERVAL": str(FLUSH_SECONDS),
        "BERTH_WORKERS": "1",  # three nodes on the test machine's cores
        # Longer than any test: a test makes what it pushed old enough for GC to take with
        # `age_past_grace` (tests/gc/conftest.py), not by sleeping. Each GC run holds its
        # write restriction at least 0.5 s, so pushes on the other nodes surely meet it.
        "BERTH_GC_GRACE_PERIOD": str(GRACE),
        "BERTH_GC_TEST_PAUSE": "marking=0.5",
    }
    nodes = [
        BerthServer(
            base / f"node{number}",
            database_url,
            extra_env={**shared, "BERTH_NODE_NAME": f"node{number}"},
        )
        for number in range(1, NODES + 1)
    ]
    for node in nodes:  # deploy/berth.toml, with the key files in the node's data directory
        node.data_dir.mkdir(parents=True)
        config = (DEPLOY / "berth.toml").read_text()
        config = config.replace("/etc/berth/keys/", f"{node.data_dir}/keys/")
        (node.data_dir / "berth.toml").write_text(config)
    try:
        nodes[0].start()  # creates the tables and the keys
        for node in nodes[1:]:  # the first node's keys, as the README says
            shutil.copytree(nodes[0].data_dir / "keys", node.data_dir / "keys")
        with concurrent.futures.ThreadPoolExecutor(len(nodes) - 1) as starting:
            list(starting.map(BerthServer.start, nodes[1:]))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Iterator[Cluster]:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    if not Path(NGINX).exists():
        pytest.skip("nginx not installed (scripts/test-deps.sh installs it)")
    base = tmp_path_factory.mktemp("multinode")
    url = postgres.create_database()
    balancer_port = free_port()  # the nodes' public_url names it
    with (
        seaweedfs_server(base / "seaweedfs") as seaweedfs,
        started_nodes(base, url, seaweedfs, f"https://127.0.0.1:{balancer_port}") as nodes,
    ):
        balancer = Balancer(base / "nginx", nodes, balancer_port).start()
        try:
            yield Cluster(nodes, balancer, seaweedfs, url)
        finally:
            balancer.stop()


@contextlib.contextmanager
def haproxy_in_front(cluster: Cluster, directory: Path) -> Iterator[tuple[str, Path]]:
    """HAProxy from deploy/haproxy-berth.cfg (its listener, certificate and nodes swapped for
    the test's, its log on stdout) in front of the cluster's nodes: its URL and its log."""
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy not installed (apt-get install haproxy)")
    directory.mkdir(parents=True, exist_ok=True)
    _, certificate, key = make_ca_and_cert(directory / "tls", ["127.0.0.1"])
    pem = directory / "berth.pem"
    pem.write_bytes(certificate.read_bytes() + key.read_bytes())
    port = free_port()
    config = (DEPLOY / "haproxy-berth.cfg").read_text()
    bind = "bind :443 ssl crt /etc/haproxy/berth.pem"
    assert config.count(bind) == 1
    config = config.replace(bind, f"bind 127.0.0.1:{port} ssl crt {pem}")
    servers = re.findall(r"^\s*server node\d 10\.0\.0\.\d+:5000$", config, flags=re.M)
    assert len(servers) == len(cluster.nodes), "deploy/haproxy-berth.cfg names three nodes"
    for written, node in zip(servers, cluster.nodes, strict=True):
        config = config.replace(written, written.replace(written.split()[2], node.address), 1)
    # Debian's haproxy.cfg, which the file is appended to, has the global section: its log.
    (directory / "haproxy.cfg").write_text("global\n    log stdout format raw local0\n" + config)
    command = [HAPROXY, "-f", str(directory / "haproxy.cfg")]
    checked = subprocess.run([*command, "-c"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = directory / "haproxy.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "-db"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"https://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/healthz", verify=False, timeout=2).status_code == 200,
            20,
            "haproxy",
        )
        yield url, log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
