"""What `berth serve` prints on its first start, followed as printed: the console and API
addresses open, the administrator signs in with the password shown, the project command
pasted into a shell (without the server's environment) makes a project, and the
`docker login` line, with a key's ID and secret in place of KEY_ID and SECRET, signs docker in."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.clients.daemons import Dockerd
from tests.clients.tools import run
from tests.servers import ROOT, BerthServer

pytestmark = pytest.mark.clients


def printed_after(banner: str, start: str, end: str) -> str:
    """What the banner prints between `start` and `end` on one line."""
    (line,) = [line for line in banner.splitlines() if start in line]
    return line.split(start, 1)[1].split(end, 1)[0]


class NoPasswordGiven(BerthServer):
    """A server started without BERTH_ADMIN_PASSWORD: its banner shows the one it made."""

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in super().env.items() if k != "BERTH_ADMIN_PASSWORD"}


def test_the_first_start_banner_works_as_printed(tmp_path: Path, dockerd: Dockerd) -> None:
    server = NoPasswordGiven(tmp_path / "data")
    server.start()
    try:
        banner = server.log_path.read_text()
        password = printed_after(banner, "password (shown only now): ", "\n")
        console = printed_after(banner, "Web console: ", "  ")
        assert printed_after(banner, "Sign in to the console at ", " as 'admin'") == console
        api_docs = printed_after(banner, "Management API and its documentation: ", "\n")

        page = httpx.get(console, timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert httpx.get(api_docs, timeout=10).status_code == 200
        signed_in = httpx.post(
            f"{console.removesuffix('/console/')}/api/v1/session",
            json={"user": "admin", "password": password},
            timeout=30,
        )
        assert signed_in.status_code == 201, signed_in.text

        # The project command, as a user pastes it into another shell where the server was
        # started (the checkout: it names .venv/bin/berth from there), without its settings.
        (hint,) = [line for line in banner.splitlines() if "project create PROJECT" in line]
        create = hint.strip().removeprefix("(").split(")", 1)[0].strip()
        create = create.replace("PROJECT", "demo")
        shell = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        run(["bash", "-c", create], shell, cwd=ROOT)
        assert [p["name"] for p in server.cli_items("project", "list")] == ["demo"]

        login = printed_after(banner, "  docker login", "\n")
        key_id, secret = server.access_key("demo")
        login = f"docker login{login}".replace("KEY_ID", key_id).replace("SECRET", secret)
        config = tmp_path / "docker-config"
        config.mkdir()
        (config / "config.json").write_text('{"auths": {}}\n')
        signed = run(["bash", "-c", login], {**dockerd.env, "DOCKER_CONFIG": str(config)})
        assert "Login Succeeded" in signed.stdout
    finally:
        server.stop()
