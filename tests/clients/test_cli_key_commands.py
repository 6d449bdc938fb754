"""`berth key create` prints ready `docker login` and `kubectl create secret` commands: run
here exactly as printed (through a shell), against the session's registry over TLS."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import pytest

from tests.clients.commands import Docker
from tests.clients.conftest import Projects
from tests.clients.registry import project_host
from tests.clients.tools import require_binary, run
from tests.servers import BerthServer

pytestmark = pytest.mark.clients


def test_key_create_prints_commands_that_work_as_printed(
    berth: BerthServer, projects: Projects, docker: Docker, tmp_path: Path
) -> None:
    user = "ci" + uuid.uuid4().hex[:8]
    berth.create_user(user, None, service_account=True)
    berth.add_member(projects.auth, user, "member")
    printed = berth.cli("key", "create", "--user", user, "--project", projects.auth).stdout
    key_id = re.search(r"Access key ID: +(\S+)", printed)
    secret = re.search(r"Secret access key: +(\S+)", printed)
    assert key_id and secret, printed
    address = f"{project_host(projects.auth)}:{berth.port}"

    login = next(line.strip() for line in printed.splitlines() if "docker login" in line)
    assert login.endswith("--password-stdin") and address in login, login
    # The printed `docker` is the daemon's own CLI, with a config directory of this test's.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(docker.binary)
    client = docker.with_config(tmp_path / "docker-config")
    env = {**client.env, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    signed_in = run(["bash", "-c", login], env)
    assert "Login Succeeded" in signed_in.stdout
    stored = json.loads((tmp_path / "docker-config" / "config.json").read_text())
    assert address in stored["auths"]

    kubectl_lines = printed[printed.index("kubectl create secret") :].rstrip("\n")
    assert f"--docker-server={address}" in kubectl_lines
    kubectl = f"PATH={Path(require_binary('kubectl')).parent}:$PATH {kubectl_lines}"
    made = run(["bash", "-c", f"{kubectl} --dry-run=client -o yaml"]).stdout
    assert f"name: {projects.auth}-pull" in made and "kubernetes.io/dockerconfigjson" in made
    data = re.search(r"^  \.dockerconfigjson: (\S+)$", made, re.MULTILINE)
    assert data, made
    entry = json.loads(base64.b64decode(data.group(1)))["auths"][address]
    assert (entry["username"], entry["password"]) == (key_id.group(1), secret.group(1))
