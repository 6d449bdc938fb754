"""Where users reach the server: the console's address in the start-up banner, project names
that are host names, from the CLI as from the API."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.clients.machine import HOSTS_FILE, HostsEntries
from tests.servers import ADMIN_PASSWORD, BERTH, ROOT, BerthServer
from tests.tls import make_ca_and_cert


def test_with_a_domain_and_tls_the_banner_names_the_console_on_the_domain(
    tmp_path: Path,
) -> None:
    hosts = ["kr-central-2.kcr.test", "*.kr-central-2.kcr.test", "127.0.0.1"]
    _, certificate, key = make_ca_and_cert(tmp_path / "tls", hosts)
    server = BerthServer(
        tmp_path / "data",
        tls=(certificate, key),
        extra_env={"BERTH_DOMAIN": "kcr.test", "BERTH_REGION": "kr-central-2"},
    )
    server.start()
    try:
        banner = (server.data_dir / "server.log").read_text()
        # The certificate names the domain, not 127.0.0.1: the banner gives the domain's name.
        assert f"Web console: https://kr-central-2.kcr.test:{server.port}/console/" in banner
        assert f"https://127.0.0.1:{server.port}/console" not in banner
        assert f"docker login kr-central-2.kcr.test:{server.port}" in banner
        # A browser opening a registry host's root (a project's host too) goes to the console.
        with httpx.Client(base_url=server.url, verify=server.ssl_context()) as client:
            for host in ("kr-central-2.kcr.test", "demo.kr-central-2.kcr.test"):
                root = client.get("/", headers={"Host": f"{host}:{server.port}"})
                assert root.status_code == 302 and root.headers["location"] == "/console/"
    finally:
        server.stop()


def test_the_cli_refuses_a_project_name_that_is_no_host_name(sqlite_server: BerthServer) -> None:
    refused = sqlite_server.cli("project", "create", "my_proj", check=False)
    assert refused.returncode != 0
    printed = " ".join((refused.stdout + refused.stderr).split())  # Rich wraps at 80 columns
    assert "invalid project name 'my_proj'" in printed, printed
    assert "lowercase letters, digits and '-'" in printed
    assert "Traceback" not in printed


def test_the_banner_says_how_to_recover_the_password_and_that_a_new_one_given_is_not_used(
    tmp_path: Path,
) -> None:
    """Started again on its data, with BERTH_ADMIN_PASSWORD still set (as `make run` users do
    to choose it): the server says that setting applies only when the data is created, and
    the banner names the command that sets a new password, which works as printed."""
    server = BerthServer(tmp_path / "data")
    server.start()
    server.stop()
    first = (server.data_dir / "server.log").read_text()
    assert "note: admin_password" not in first  # the first start used it
    server.start()
    try:
        again = (server.data_dir / "server.log").read_text()[len(first) :]
        assert "note: admin_password (BERTH_ADMIN_PASSWORD) is used only when the data is" in again
        printed = again.split("lost it? ", 1)[1].split(")", 1)[0]
        assert printed.endswith("user set-password admin")
        reset = subprocess.run(
            [*shlex.split(printed), "--password-stdin"],
            env=server.env,
            input="a-new-password-1\n",
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert reset.returncode == 0, reset.stderr
        signed_in = httpx.get(f"{server.url}/api/v1/users", auth=("admin", "a-new-password-1"))
        assert signed_in.status_code == 200
    finally:
        server.stop()


def test_key_create_prints_the_project_host_the_api_answers_and_it_signs_in(
    tmp_path: Path,
) -> None:
    """A server started with `--domain` and `--region` flags and the CLI run without them (or
    with the domain and region but not the port): `berth key create` prints the project's own
    host with the server's port, as the API answers it, and the printed docker login address
    takes the new key (the name resolving through /etc/hosts)."""
    if not os.access(HOSTS_FILE, os.W_OK):
        pytest.skip("/etc/hosts is not writable here")
    suffix = f"r1.cli-{uuid.uuid4().hex[:8]}.test"
    domain = suffix.removeprefix("r1.")
    _, certificate, key = make_ca_and_cert(tmp_path / "tls", [suffix, f"*.{suffix}", "127.0.0.1"])
    server = BerthServer(
        tmp_path / "data",
        tls=(certificate, key),
        serve_args=["--domain", domain, "--region", "r1"],
    )
    entry = HostsEntries([f"p1.{suffix}"])
    server.start()
    entry.add()
    try:
        server.create_project("p1")
        served = f"{suffix}:{server.port}"
        with httpx.Client(base_url=server.url, verify=server.ssl_context()) as client:
            answered = client.get(
                "/api/v1/projects/p1",
                headers={"Host": served},
                auth=("admin", ADMIN_PASSWORD),
            )
        assert answered.status_code == 200, answered.text
        api_address = answered.json()["registry_address"]
        assert api_address == f"p1.{suffix}:{server.port}"

        bare = {
            name: value
            for name, value in server.env.items()
            if name not in ("BERTH_LISTEN", "BERTH_TLS_CERT", "BERTH_TLS_KEY")
        }
        for env in (bare, {**bare, "BERTH_DOMAIN": domain, "BERTH_REGION": "r1"}):
            created = subprocess.run(
                [*BERTH, "key", "create", "--user", "admin", "--project", "p1"],
                env=env,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=120,
            )
            assert created.returncode == 0, created.stderr
            printed = created.stdout
            login = re.search(r"docker login (\S+) --username (\S+)", printed)
            secret = re.search(r"Secret access key:\s*(\S+)", printed)
            assert login and secret, printed
            assert login.group(1) == api_address, printed
            assert f"--docker-server={api_address} " in printed
            signed_in = httpx.get(
                f"https://{login.group(1)}/v2/",
                auth=(login.group(2), secret.group(1)),
                verify=server.ssl_context(),
            )
            assert signed_in.status_code == 200, signed_in.text
    finally:
        entry.remove()
        server.stop()
