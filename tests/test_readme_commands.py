"""README's shell blocks that run against a registry, pasted as printed (this test's server in
place of http://localhost:5000, and its access key in KEY_ID and SECRET)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.servers import ROOT, BerthServer

README = ROOT / "README.md"


def readme_block(heading: str) -> str:
    """The first ```sh block of README's section `heading`."""
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    (block, *_) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return str(block)


def test_the_management_api_block_works_as_printed(server: BerthServer) -> None:
    """Basic with an access key lists repositories; the token it exchanges for (with jq)
    creates one."""
    for program in ("curl", "jq"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed")
    block = readme_block("Management API")
    assert "http://localhost:5000" in block
    server.create_project("demo", with_key=True)
    key_id, secret = server.access_key("demo")
    env = {**os.environ, "KEY_ID": key_id, "SECRET": secret}
    script = block.replace("http://localhost:5000", server.url)
    done = subprocess.run(
        ["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # curl ends neither answer with a newline: one JSON document after the other.
    listed, end = json.JSONDecoder().raw_decode(done.stdout)
    created = json.loads(done.stdout[end:])
    assert listed["items"] == []
    assert created["name"] == "web"
    assert [r["name"] for r in server.cli_items("repo", "list", "demo")] == ["web"]
