"""The CLI's start: users run `berth` in scripts and loops, so each verb imports what it uses
and no more (bench/findings.md, "The CLI's start, verb by verb"). `berth --help` loads no
database, settings, service or web module; an admin verb on SQLite no migration machinery and
no part of the web application."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import unstarted_environ

# `berth ARGS` as the console script runs it, printing at exit the modules it loaded.
CLI_WITH_ITS_MODULES = """
import atexit, json, sys

atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
from berth.cli.main import app

sys.argv = ["berth", *sys.argv[1:]]
app()
"""

# What no admin verb on SQLite has a use for, with why it was loaded before.
NOT_FOR_AN_ADMIN_VERB = {
    "alembic": "the schema check (now a read of alembic_version)",
    "mako": "Alembic's templates",
    "fastapi": "the web application",
    "starlette": "the web application",
    "granian": "the server",
    "berth.app": "the web application",
    "berth.api": "the Management API",
    "berth.registry": "the registry's /v2",
    "berth.console": "the web console",
    "asyncpg": "PostgreSQL's driver",
}
# Services a listing of projects or keys has no use for, built (and imported) before by every
# admin verb with all the others (`berth.state`).
NOT_FOR_A_LISTING = {
    "berth.services.registry": "the registry's manifests and tags",
    "berth.services.uploads": "blob uploads",
    "berth.services.usage": "storage and traffic figures",
    "berth.services.retention": "retention policies",
    "berth.services.scanning.scans": "image scans",
    "berth.services.vulndb": "the vulnerability database",
    "berth.services.webhooks": "webhooks",
    "berth.services.webhook_delivery": "webhook deliveries",
    "berth.services.sessions": "console sessions",
    "berth.services.storage_check": "the storage check",
}
# What `berth --help` has no use for either: it only lists the verbs.
NOT_FOR_HELP = NOT_FOR_AN_ADMIN_VERB | {
    "sqlalchemy": "the database",
    "pydantic": "the settings",
    "pydantic_settings": "the settings",
    "jwt": "`berth status`'s look at a server's token",
    "cryptography": "the signing keys",
    "rich": "the tables and messages a verb prints",
    "berth.config": "the settings",
    "berth.state": "the services a verb runs",
    "berth.services": "the services a verb runs",
    "berth.metadata.database": "the database",
    "berth.metadata.tables": "the database's tables",
    "berth.data_location": "the data a verb works on",
}


def loaded_by(args: list[str], tmp_path: Path) -> set[str]:
    env = unstarted_environ(tmp_path, {"BERTH_ADMIN_PASSWORD": "imports-test-password"})
    done = subprocess.run(
        [sys.executable, "-c", CLI_WITH_ITS_MODULES, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (args, done.stderr[-3000:])
    return set(json.loads(done.stderr.splitlines()[-1]))


def unwanted(loaded: set[str], unwanted: dict[str, str]) -> dict[str, str]:
    return {
        name: why
        for name, why in unwanted.items()
        if any(module == name or module.startswith(f"{name}.") for module in loaded)
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory `berth init` made (which migrates: Alembic and all), with a project."""
    tmp_path = tmp_path_factory.mktemp("cli")
    initialised = loaded_by(["init"], tmp_path)
    # PostgreSQL's driver is imported by a PostgreSQL database_url's first connection only.
    assert "alembic" in initialised and "asyncpg" not in initialised
    loaded_by(["project", "create", "demo"], tmp_path)
    return tmp_path


def test_the_unwanted_modules_are_installed() -> None:
    """Each could be loaded: the tests below, finding none, could fail."""
    for name in NOT_FOR_HELP:
        assert importlib.util.find_spec(name) is not None, name


def test_help_and_version_load_no_database_settings_or_service_module(data: Path) -> None:
    for args in (["--help"], ["--version"]):
        assert unwanted(loaded_by(args, data), NOT_FOR_HELP) == {}, args


@pytest.mark.parametrize(
    "args", [["project", "list"], ["key", "list", "--project", "demo"], ["status"]]
)
def test_an_admin_verb_loads_neither_alembic_nor_the_web_application(
    data: Path, args: list[str]
) -> None:
    loaded = loaded_by(args, data)
    assert "sqlalchemy" in loaded  # it did read the database
    assert unwanted(loaded, NOT_FOR_AN_ADMIN_VERB) == {}


@pytest.mark.parametrize("args", [["project", "list"], ["key", "list", "--project", "demo"]])
def test_a_listing_builds_only_the_services_it_reads(data: Path, args: list[str]) -> None:
    loaded = loaded_by(args, data)
    assert "berth.services.identity" in loaded  # it did build the service it reads
    assert unwanted(loaded, NOT_FOR_A_LISTING) == {}
