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
from typing import Any

import pytest

# Top-level packages a worker loads only when it does what needs them, with what does.
LOADED_ON_USE = {
    "httpx": "sending a webhook",
    "univers": "matching an image's packages against advisories",
    "cvss": "rating an imported advisory",
    "rich": "the CLI (httpx's own command line imports it)",
    "pygments": "the CLI (through rich)",
    "click": "the CLI (httpx's own command line imports it)",
    "typer": "the CLI",
    "alembic": "migrations (berth init, berth serve before the workers start)",
}

# A worker: after its supervisor's loading (IN_THE_SUPERVISOR, run before it), the app built,
# its lifespan started (services, jobs: their first pass runs) and stopped, on a data
# directory whose database has the schema.
PROBE = """
import asyncio, json, sys

from sqlalchemy import create_engine

from berth.app import create_app
from berth.config_loading import load_settings
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


# What granian's supervisor loads (berth.supervisor) before it forks the workers.
IN_THE_SUPERVISOR = """
import json, sys

from berth.supervisor import load_modules

load_modules()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], dict[str, Any]]:
    """A worker as `berth serve` starts one: the modules its supervisor loaded before the
    fork, and what the worker's probe found."""
    tmp_path = tmp_path_factory.mktemp("worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {
        "BERTH_CONFIG": os.devnull,
        "BERTH_DATA_DIR": str(tmp_path / "data"),
        "BERTH_LOG_LEVEL": "warning",
    }
    done = subprocess.run(
        [sys.executable, "-c", IN_THE_SUPERVISOR + PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *printed, last = done.stdout.splitlines()
    found = json.loads(last)
    assert found["lifespan"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert "[ERROR]" not in done.stderr, done.stderr[-3000:]
    return set(json.loads(printed[-1])), found


def test_a_serving_worker_does_not_load_what_only_some_requests_use(
    worker: tuple[set[str], dict[str, Any]],
) -> None:
    for name in LOADED_ON_USE:  # installed: the test could find each of them loaded
        assert importlib.util.find_spec(name) is not None, name
    _, found = worker
    loaded = {name.split(".")[0] for name in found["modules"]}
    assert "sqlalchemy.dialects.postgresql" not in found["modules"]  # on SQLite
    assert {name: why for name, why in LOADED_ON_USE.items() if name in loaded} == {}


def test_the_supervisor_loads_every_library_and_berth_module_a_worker_starts_with(
    worker: tuple[set[str], dict[str, Any]],
) -> None:
    """Loaded before the fork, a module's pages are shared by the workers; one a worker imports
    itself is its own, once per worker. The standard library's few left to the workers (the
    event loop's thread pool's) are small."""
    in_the_supervisor, found = worker
    assert "berth.api.projects" in in_the_supervisor  # the API's routers, imported by name
    assert "aiosqlite" in in_the_supervisor  # the database's driver
    left_to_the_workers = sorted(
        name
        for name in set(found["modules"]) - in_the_supervisor
        if name.split(".")[0] not in sys.stdlib_module_names and name != "__main__"
    )
    assert left_to_the_workers == []


# A serving worker forked by granian from berth.supervisor (its main module, as `berth serve`
# starts two workers or more) starting a scan process, whose work sends back what it loaded.
SCAN_PROCESS = """
import asyncio, json, sys

import berth.supervisor
from berth.config_loading import load_settings
from berth.services.scanning.processes import ScanProcesses
from tests.unit.test_serving_imports import loaded_modules

sys.modules["__main__"] = berth.supervisor


async def main() -> None:
    processes = ScanProcesses(1, load_settings())
    try:
        print(json.dumps(await processes.run(loaded_modules)))
    finally:
        processes.close()


asyncio.run(main())
"""

# What a scan process has no use for: the application and the services it does not run.
NOT_IN_A_SCAN_PROCESS = {"fastapi", "starlette", "granian", "berth.app", "berth.api", "berth.state"}


async def loaded_modules(db: object, store: object) -> list[str]:
    return sorted(sys.modules)


def test_a_scan_process_loads_neither_the_app_nor_the_services_it_does_not_run(
    tmp_path: Path,
) -> None:
    """A scan process is spawned: it imports its starter's main module (berth.supervisor in a
    worker) and what its work names, each megabyte of it once per scan process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {"BERTH_CONFIG": os.devnull, "BERTH_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SCAN_PROCESS],
        env=env,
        cwd=Path(__file__).parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    unused = {
        name
        for name in loaded
        if any(
            name == unwanted or name.startswith(f"{unwanted}.")
            for unwanted in NOT_IN_A_SCAN_PROCESS
        )
    }
    assert sorted(unused) == []
