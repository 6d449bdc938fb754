"""A node set up as README's "Run several nodes" and deploy/ say: the systemd unit lets Berth
write what deploy/berth.toml names, and what the unit cannot fix (a key file Berth cannot
create, a database its user may not create tables in or bring up to this Berth's schema)
is refused with exit status 2, which the unit does not restart, and a message instead of a
traceback; so is an admin verb's database user that may not migrate the schema."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from berth.metadata.migrate import alembic_config
from tests.servers import (
    BERTH,
    ROOT,
    BerthServer,
    PostgresCluster,
    serve_refused,
    unstarted_environ,
)

DEPLOY = ROOT / "deploy"


def unit_service_section() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "berth.service").read_text())
    return unit["Service"]


def writable_under_the_unit(path: PurePosixPath) -> bool:
    """Whether deploy/berth.service (ProtectSystem=strict) lets its process write `path`."""
    service = unit_service_section()
    writable = [PurePosixPath(p.lstrip("-")) for p in service.get("ReadWritePaths", "").split()]
    writable += [PurePosixPath("/var/lib") / d for d in service.get("StateDirectory", "").split()]
    writable += [PurePosixPath("/var/cache") / d for d in service.get("CacheDirectory", "").split()]
    return any(path.is_relative_to(directory) for directory in writable)


def test_the_unit_lets_berth_write_every_path_the_example_settings_name() -> None:
    text = (DEPLOY / "berth.toml").read_text()
    settings = tomllib.loads(text)
    # The node's blob cache is an example left commented out: an operator uncomments it.
    (cache_dir,) = re.findall(r'^# s3_cache_dir = "([^"]+)"', text, re.MULTILINE)
    written = {
        "data_dir": PurePosixPath(settings["data_dir"]),
        "token_signing_key": PurePosixPath(settings["token_signing_key"]).parent,
        "secret_hash_key": PurePosixPath(settings["secret_hash_key"]).parent,
        "s3_cache_dir": PurePosixPath(cache_dir),
    }
    for setting, path in written.items():
        assert writable_under_the_unit(path), f"berth.service cannot write {setting}: {path}"
    assert unit_service_section()["ProtectSystem"] == "strict"


def test_the_unit_runs_the_berth_the_readme_installs() -> None:
    executable = unit_service_section()["ExecStart"].split()[0]
    readme = (ROOT / "README.md").read_text()
    nodes = readme.split("## Run several nodes\n", 1)[1].split("\n## ", 1)[0]
    assert f"ln -s /opt/berth/.venv/bin/berth {executable}" in nodes


@pytest.mark.parametrize("setting", ["token_signing_key", "secret_hash_key"])
def test_a_key_file_berth_cannot_create_is_refused_naming_its_setting(
    tmp_path: Path, setting: str
) -> None:
    # A key directory under a regular file: mkdir fails (ENOTDIR), as it fails under a
    # read-only /etc (EROFS) for a service user, which a test run as root cannot reproduce.
    (tmp_path / "not-a-directory").write_text("")
    key_file = tmp_path / "not-a-directory" / "keys" / "key"
    env = unstarted_environ(tmp_path, {f"BERTH_{setting.upper()}": str(key_file)})
    problem = " ".join(serve_refused(env).split())
    assert f"BERTH_{setting.upper()}: cannot create the key file '{key_file}'" in problem
    assert "Not a directory" in problem and "ReadWritePaths=" in problem


def test_a_database_its_user_may_not_create_tables_in_is_refused_until_the_user_owns_it(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()  # owned by postgres, as `CREATE DATABASE berth` makes it
    database = make_url(url).database
    assert database is not None
    role = f"berth_{os.getpid()}_guest"
    postgres.sql(f"CREATE ROLE {role} LOGIN")
    postgres.sql(f"GRANT CONNECT ON DATABASE {database} TO {role}")
    guest_url = url.replace("postgres@", f"{role}@", 1)

    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": guest_url})
    problem = " ".join(serve_refused(env).split())
    assert "permission denied for schema public" in problem
    assert f"the user {role} may not create Berth's tables in the database {database}" in problem
    assert f"CREATE DATABASE {database} OWNER {role}" in problem
    assert f"GRANT CREATE ON SCHEMA public TO {role}" in problem

    # As the README says: the role owns the database.
    postgres.sql(f"ALTER DATABASE {database} OWNER TO {role}")
    assert_serves(tmp_path / "owned", guest_url)


def test_a_node_whose_user_may_not_migrate_the_schema_is_refused_naming_the_fix(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    # Data an older Berth made (the schema a migration behind), owned by postgres; this
    # Berth run as a role that may read the schema's revision but change no table.
    url = postgres.create_database()
    database = make_url(url).database
    assert database is not None
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_revision(str(script.get_current_head()))
    assert head is not None and isinstance(head.down_revision, str)
    command.upgrade(alembic_config(url), head.down_revision)
    role = f"berth_{os.getpid()}_operator"
    postgres.sql(f"CREATE ROLE {role} LOGIN")
    postgres.sql(f"GRANT SELECT, UPDATE ON alembic_version TO {role}", database)
    guest_url = url.replace("postgres@", f"{role}@", 1)
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": guest_url})
    (tmp_path / "data").mkdir()

    served = " ".join(serve_refused(env).split())
    assert f"the user {role} may not bring Berth's tables in the database {database}" in served
    assert "must be owner of table" in served and "database_url of that user" in served
    # An admin verb migrates nothing, whoever runs it: it says the schema is older.
    refused = subprocess.run(
        [*BERTH, "project", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"at revision {head.down_revision}, older than" in refused.stderr

    # As it says: with the user that owns the tables.
    assert_serves(tmp_path / "owner", url)


def test_a_node_whose_user_may_not_use_the_tables_is_refused_naming_their_owner(
    postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """A node (or an admin verb) given another role than the one that made the tables (its
    own PostgreSQL user, say) is told whose they are, not shown a traceback that systemd
    restarts."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    database = make_url(url).database
    assert database is not None
    owner = BerthServer(tmp_path / "first", url)  # the first node makes the tables
    try:
        owner.start()
    finally:
        owner.stop()
    role = f"berth_{os.getpid()}_node2"
    postgres.sql(f"CREATE ROLE {role} LOGIN")
    postgres.sql(f"GRANT CONNECT ON DATABASE {database} TO {role}")
    node2_url = url.replace("postgres@", f"{role}@", 1)
    env = unstarted_environ(tmp_path, {"BERTH_DATABASE_URL": node2_url})

    served = " ".join(serve_refused(env).split())
    assert f"the user {role} may not use Berth's tables in the database {database}" in served
    assert "permission denied for table alembic_version" in served
    assert "Berth uses its tables as their owner, the user postgres" in served
    assert f"GRANT postgres TO {role}" in served
    verb = subprocess.run(
        [*BERTH, "project", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert verb.returncode == 2 and "Traceback" not in verb.stderr, verb.stderr
    assert f"the user {role} may not use Berth's tables" in " ".join(verb.stderr.split())
    status = subprocess.run(
        [*BERTH, "status"], env=env, capture_output=True, text=True, timeout=120
    )
    assert f"GRANT postgres TO {role}" in " ".join(status.stderr.split()), status.stderr


def assert_serves(data_dir: Path, database_url: str) -> None:
    """A node on `database_url` starts, and its admin verbs work."""
    node = BerthServer(data_dir, database_url)
    try:
        node.start()
        assert node.cli("project", "list").returncode == 0
    finally:
        node.stop()
