"""Property-based fuzzing of the served OpenAPI document with schemathesis: whatever valid or
invalid request it makes, the API answers without a server error (5xx).

schemathesis runs as its command-line tool (its pytest plugin does not follow pytest 9), with
the `not_a_server_error` check, every phase (examples, coverage, fuzzing, stateful: the last
one feeds identifiers from answers into later requests) and a fixed seed, so a failure
reproduces. It authenticates with an API token issued for the server administrator's access
key in a project holding content (an image, a multi-architecture index, a signature, a nested
image name and some history), and every request names that project and its repository, so
requests reach the handlers instead of stopping at authorization.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.api.conftest import push_image
from tests.oci import image_index, push_manifest
from tests.servers import BACKENDS, BerthServer, server_fixture

PROJECT, REPOSITORY = "fuzz", "app"
# Per operation, for the fuzzing phase (and stateful's scenarios); the coverage phase makes its
# ~2,600 boundary cases whatever this is. 15 spent half the run's CPU on 1,100 fuzzed cases.
EXAMPLES = 10
# Fixed, so a failure reproduces; BERTH_FUZZ_SEED explores others.
SEED = int(os.environ.get("BERTH_FUZZ_SEED", "20260101"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

# Each collection on demand within `storage_collect_min_interval` of the last one waits for it
# (5 s by default): the fuzzer's two dozen calls of it slept 105 s of the run. Measuring at once
# answers the same requests; tests/usage/test_collect_on_demand.py covers the wait.
server = server_fixture(
    "fuzz",
    backends=BACKENDS,
    env={"BERTH_STORAGE_COLLECT_MIN_INTERVAL": "0"},
    doc="A running registry per backend whose collections on demand measure at once.",
)


def _content(server: BerthServer) -> None:
    server.create_repository(PROJECT, REPOSITORY)
    with httpx.Client(base_url=server.url, auth=server.access_key(PROJECT), timeout=60) as client:
        name = f"{PROJECT}/{REPOSITORY}"
        image = push_image(client, name, "v1")
        amd64 = push_image(client, name, None, architecture="amd64")
        arm64 = push_image(client, name, None, architecture="arm64")
        index = image_index(
            [
                amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
                arm64.descriptor(platform={"os": "linux", "architecture": "arm64"}),
            ]
        )
        push_manifest(client, name, "multi", index)
        push_image(client, name, None, subject=image, artifact_type="application/example")
        push_image(client, f"{name}/team/tool", "v1")
        assert client.delete(f"/v2/{name}/manifests/v1").status_code == 202  # some history


def test_no_server_errors(server: BerthServer, tmp_path: Path) -> None:
    _content(server)
    issued = httpx.post(f"{server.url}/api/v1/auth/tokens", auth=server.access_key(PROJECT))
    assert issued.status_code == 201, issued.text
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'[parameters]\n"path.project" = "{PROJECT}"\n"path.repository" = "{REPOSITORY}"\n'
    )
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/api/v1/openapi.json",
        "--url",
        f"{server.url}/api/v1",
        "--header",
        f"Authorization: Bearer {issued.json()['token']}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",  # one thread: hypothesis's source inspection is not thread-safe on Python 3.11
        "--no-shrink",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--request-timeout",
        "30",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts and int(counts[1]) > 500 and counts[1] == counts[2], report
    # The administrator's key survived the run (it must not fuzz itself out of the API).
    survivor = httpx.get(f"{server.url}/api/v1/projects", auth=server.access_key(PROJECT))
    assert survivor.status_code == 200, survivor.text
    assert server.log_tail().count("Traceback") == 0, server.log_tail(80)
