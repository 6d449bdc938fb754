"""docs/deployment.md's front proxies, as printed there: its nginx and HAProxy examples (only
their listener, certificate and Berth's address swapped for the test's) ending TLS in front of
a node with the settings that page gives. skopeo logs in, pushes and pulls through each: the
token realm Berth names is the proxy's https URL, not http on the TLS port."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.commands import ContainersConfig
from tests.clients.layouts import OciLayout, umoci_image
from tests.clients.tools import require_binary, run
from tests.nginx import running_nginx
from tests.servers import ROOT, BerthServer, free_port, wait_for
from tests.tls import make_ca_and_cert

DOCS = ROOT / "docs" / "deployment.md"
DEPLOY_SITE = ROOT / "deploy" / "nginx-berth.conf"
DOCS_BERTH = "127.0.0.1:5000"  # where the examples reach the node
# What Berth reads from the proxy: the client's Host, address and scheme. Nothing else: the
# registry's addresses, the token realm and audience come from Host, passed on unchanged.
FORWARDED = {
    "Host": "$http_host",
    "X-Forwarded-For": "$proxy_add_x_forwarded_for",
    "X-Forwarded-Proto": "$scheme",
}
# Read by Berth when sane: the request's ID, which deploy/'s site sets so that nginx's log and
# the node's name the same request.
REQUEST_ID = "X-Request-ID"
# For nginx itself: keep-alive connections to Berth.
NGINX_ONLY = {"Connection"}


def fenced(language: str) -> str:
    """The one ```language block of docs/deployment.md."""
    blocks: list[str] = re.findall(rf"^```{language}\n(.*?)^```$", DOCS.read_text(), re.M | re.S)
    (block,) = blocks
    return block


def replaced(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, f"the example no longer has {old!r} {count} time(s)"
    return text.replace(old, new)


def proxy_headers(site: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*proxy_set_header (\S+) (\S+);", site, re.M))


def test_the_docs_nginx_example_forwards_what_the_deployed_site_does() -> None:
    for site in (fenced("nginx"), DEPLOY_SITE.read_text()):
        assert FORWARDED.items() <= proxy_headers(site).items()
        # A header Berth never reads would say it does (an X-Forwarded-Host it ignores).
        headers = proxy_headers(site)
        assert set(headers) <= {*FORWARDED, REQUEST_ID, *NGINX_ONLY}, headers
    assert proxy_headers(DEPLOY_SITE.read_text())[REQUEST_ID] == "$request_id"
    node = fenced("toml")
    assert re.search(r"^trust_forwarded_proto = true\b", node, re.M)
    assert re.search(r'^trusted_proxies = "127\.0\.0\.1"', node, re.M)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a directory holding only the CA, as skopeo's --cert-dir reads, certificate, key)."""
    base = tmp_path_factory.mktemp("proxy-tls")
    ca, crt, key = make_ca_and_cert(base / "made", ["127.0.0.1"])
    trusted = base / "trusted"
    trusted.mkdir()
    shutil.copy(ca, trusted / "ca.crt")
    return trusted, crt, key


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    """A node with the docs' berth.toml (its own port: the examples' is swapped for it)."""
    server = BerthServer(tmp_path_factory.mktemp("proxied"))
    server.data_dir.mkdir(parents=True, exist_ok=True)
    (server.data_dir / "berth.toml").write_text(fenced("toml"))  # BERTH_CONFIG names it
    try:
        server.start()
        server.create_repository("demo", "app")
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def docs_nginx(directory: Path, node: BerthServer, crt: Path, key: Path) -> Iterator[int]:
    port = free_port()
    site = replaced(fenced("nginx"), "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = replaced(
        site,
        "# ssl_certificate ...; ssl_certificate_key ...;",
        f"ssl_certificate {crt}; ssl_certificate_key {key};",
    )
    site = replaced(site, f"http://{DOCS_BERTH};", f"http://{node.address};", count=2)
    with running_nginx(directory, site, lambda: serves(port)):
        yield port


@contextlib.contextmanager
def docs_haproxy(directory: Path, node: BerthServer, crt: Path, key: Path) -> Iterator[int]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    pem = directory / "berth.pem"
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    config = replaced(
        fenced("haproxy"),
        "bind :443 ssl crt /etc/haproxy/berth.pem",
        f"bind 127.0.0.1:{port} ssl crt {pem}",
    )
    config = replaced(config, f"server berth1 {DOCS_BERTH}", f"server berth1 {node.address}")
    (directory / "haproxy.cfg").write_text(config)
    command = [haproxy, "-f", str(directory / "haproxy.cfg")]
    checked = subprocess.run([*command, "-c"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with open(directory / "haproxy.log", "wb") as log:
        process = subprocess.Popen(
            [*command, "-db"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(lambda: serves(port), 20, "haproxy")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def serves(port: int) -> bool:
    return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False).status_code == 200


@pytest.mark.parametrize("proxy", ["nginx", "haproxy"])
def test_skopeo_logs_in_pushes_and_pulls_through_the_docs_proxy(
    proxy: str,
    node: BerthServer,
    certificate: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    cert_dir, crt, key = certificate
    (tmp_path / proxy).mkdir()
    running = docs_nginx if proxy == "nginx" else docs_haproxy
    with running(tmp_path / proxy, node, crt, key) as port:
        address = f"127.0.0.1:{port}"
        trusted = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
        challenged = httpx.get(f"https://{address}/v2/", verify=trusted)
        assert challenged.status_code == 401
        assert f'realm="https://{address}/auth/token"' in challenged.headers["www-authenticate"]

        key_id, secret = node.access_key("demo")
        config = ContainersConfig.create(tmp_path / "containers")
        auth = ["--authfile", str(config.auth_file)]
        logged_in = run(["skopeo", "login", *auth, "--cert-dir", cert_dir, "--username",
                         key_id, "--password", secret, address], config.env)  # fmt: skip
        assert "Login Succeeded!" in logged_in.stdout

        image = umoci_image(tmp_path / "layout", "v1", {"hello.txt": f"via {proxy}\n".encode()})
        remote = f"docker://{address}/demo/app:{proxy}"
        skopeo = ["skopeo", "--policy", str(config.policy), "copy"]
        run([*skopeo, "--dest-authfile", config.auth_file, "--dest-cert-dir", cert_dir,
             image.oci_ref, remote], config.env)  # fmt: skip
        pulled = OciLayout(tmp_path / "pulled")
        run([*skopeo, "--src-authfile", config.auth_file, "--src-cert-dir", cert_dir,
             remote, f"oci:{pulled.path}:v1"], config.env)  # fmt: skip
        assert pulled.manifest("v1") == image.manifest
