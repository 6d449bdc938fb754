"""Where users reach the server: the console's address in the start-up banner, project names
that are host names, from the CLI as from the API."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import httpx

from tests.servers import ROOT, BerthServer
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
