"""A serving worker's memory: what `berth serve`'s workers load when they start (the app and
its startup, jobs included) leaves out the libraries only some requests or commands use; they
are imported where they are used (docs/operations.md, "Memory")."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

# Top-level packages a worker loads only when it does what needs them, with what does.
LOADED_ON_USE = {
    "httpx": "sending a webhook",
    "univers": "matching an image's packages against advisories",
    "cvss": "rating an imported advisory",
    "cyclonedx": "writing an image's SBOM",
    "rich": "the CLI (httpx's own command line imports it)",
    "pygments": "the CLI (through rich)",
    "click": "the CLI (httpx's own command line imports it)",
    "typer": "the CLI",
    "alembic": "migrations (berth init, berth serve before the workers start)",
}

# A worker: the app built, its lifespan started (services, jobs: their first pass runs) and
# stopped, on a data directory whose database has the schema.
PROBE = """
import asyncio, json, sys

from sqlalchemy import create_engine

from berth.app import create_app
from berth.config import load_settings
from berth.metadata.tables import metadata

settings = load_settings()
settings.data_dir.mkdir(parents=True)
metadata.create_all(create_engine(f"sqlite:///{settings.data_dir / 'berth.db'}"))
app = create_app()


async def run_lifespan() -> list[str]:
    messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    sent: list[str] = []

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            await asyncio.sleep(1)  # the jobs' first pass
            await messages.put({"type": "lifespan.shutdown"})

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send)
    return sent


print(json.dumps({"lifespan": asyncio.run(run_lifespan()), "modules": sorted(sys.modules)}))
"""


def test_a_serving_worker_does_not_load_what_only_some_requests_use(tmp_path: Path) -> None:
    for name in LOADED_ON_USE:  # installed: the test could find each of them loaded
        assert importlib.util.find_spec(name) is not None, name
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {
        "BERTH_CONFIG": str(tmp_path / "none.toml"),
        "BERTH_DATA_DIR": str(tmp_path / "data"),
        "BERTH_LOG_LEVEL": "warning",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["lifespan"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "[ERROR]" not in done.stderr, done.stderr[-3000:]
    loaded = {name.split(".")[0] for name in found["modules"]}
    assert {name: why for name, why in LOADED_ON_USE.items() if name in loaded} == {}
