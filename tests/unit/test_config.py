"""Reading settings (`berth.config`): problems named in words."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from berth import config
from berth.config_loading import SettingsError, load_settings, setting_source
from berth.metadata import database
from berth.server import check
from tests.ports import free_port


def empty_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty berth.toml in tmp_path, which BERTH_CONFIG names: the test writes in it."""
    config = tmp_path / "berth.toml"
    config.touch()
    monkeypatch.setenv("BERTH_CONFIG", str(config))
    return config


def test_setting_problems_are_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_CURRENCY", "usd")
    with pytest.raises(SettingsError) as currency:
        load_settings()
    assert str(currency.value) == "BERTH_CURRENCY: 'usd' must be 3 capital letters, e.g. USD"
    monkeypatch.delenv("BERTH_CURRENCY")
    monkeypatch.setenv("BERTH_HEADER_READ_TIMEOUT", "100")
    with pytest.raises(SettingsError) as timeout:
        load_settings()
    assert str(timeout.value) == "BERTH_HEADER_READ_TIMEOUT: '100' must be at most 60"


def test_host_names_in_the_settings_are_lower_case(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """domain, region and public_url's host, written in mixed case, are host names as
    requests' Host headers are compared: in lower case."""
    (empty_config_file(monkeypatch, tmp_path)).write_text('domain = "Example.COM"\n')
    monkeypatch.setenv("BERTH_REGION", "Kr-Central-2")
    monkeypatch.setenv("BERTH_PUBLIC_URL", "HTTPS://Registry.Example.COM:8443/")
    settings = load_settings()
    assert settings.project_host_suffix == ".kr-central-2.example.com"
    assert settings.public_url == "https://registry.example.com:8443"


def test_s3_storage_without_a_bucket_is_refused_saying_where_to_set_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty_config_file(monkeypatch, tmp_path)
    monkeypatch.setenv("BERTH_STORAGE", "s3")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        's3_bucket is needed with storage = "s3": name the bucket of the blobs in '
        f"s3_bucket in {tmp_path / 'berth.toml'} or BERTH_S3_BUCKET"
    )
    (tmp_path / "berth.toml").write_text('s3_bucket = "blobs"\ns3_path_style = true\n')
    settings = load_settings()
    assert (settings.storage, settings.s3_bucket, settings.s3_path_style) == ("s3", "blobs", True)


def test_a_blob_redirect_the_storage_cannot_give_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty_config_file(monkeypatch, tmp_path)
    monkeypatch.setenv("BERTH_BLOB_REDIRECT", "presigned")
    with pytest.raises(SettingsError) as presigned:
        load_settings()
    assert str(presigned.value) == (
        "BERTH_BLOB_REDIRECT: 'presigned' needs storage = \"s3\" (presigned URLs are the object "
        'store\'s); behind nginx on the filesystem store use blob_redirect = "accel"'
    )
    monkeypatch.setenv("BERTH_BLOB_REDIRECT", "accel")
    assert load_settings().blob_redirect == "accel"
    (tmp_path / "berth.toml").write_text('storage = "s3"\ns3_bucket = "blobs"\n')
    with pytest.raises(SettingsError) as accel:
        load_settings()
    assert "BERTH_BLOB_REDIRECT: 'accel' needs storage = \"filesystem\"" in str(accel.value)
    monkeypatch.setenv("BERTH_BLOB_REDIRECT", "presigned")
    assert load_settings().blob_redirect == "presigned"


def test_a_metrics_address_that_is_taken_or_the_registrys_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty_config_file(monkeypatch, tmp_path)
    monkeypatch.setenv("BERTH_DATA_DIR", str(tmp_path / "data"))
    # Both ports from the test run's allocator: a port next to an ephemeral one may be any
    # other process's connection, and then the registry's address is the one refused.
    with socket.create_server(("127.0.0.1", free_port())) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setenv("BERTH_LISTEN", f"127.0.0.1:{free_port()}")
        monkeypatch.setenv("BERTH_METRICS_LISTEN", f"127.0.0.1:{port}")
        with pytest.raises(SettingsError) as in_use:
            check(load_settings())
        assert str(in_use.value) == (
            f"address 127.0.0.1:{port} is already in use; choose a free one for metrics_listen "
            "(now BERTH_METRICS_LISTEN): in berth.toml, which the berth command reads as well, "
            "or as BERTH_METRICS_LISTEN=HOST:PORT"
        )
    monkeypatch.setenv("BERTH_METRICS_LISTEN", os.environ["BERTH_LISTEN"])
    with pytest.raises(SettingsError) as same:
        check(load_settings())
    assert str(same.value).startswith("BERTH_METRICS_LISTEN is the address the registry serves on")


def test_a_setting_is_attributed_to_the_config_file_only_when_the_file_gives_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A refusal names where its value came from: the file only when it sets that name."""
    config = tmp_path / "berth.toml"
    monkeypatch.setenv("BERTH_CONFIG", str(config))
    monkeypatch.delenv("BERTH_LISTEN", raising=False)
    assert setting_source("listen") == "listen, the default"  # no file
    config.write_text("webhook_allow_private = true\n")
    assert setting_source("listen") == "listen, the default"
    assert setting_source("webhook_allow_private") == f"webhook_allow_private in {config}"
    config.write_text('listen = "127.0.0.1:5999"\n')
    assert setting_source("listen") == f"listen in {config}"
    monkeypatch.setenv("BERTH_LISTEN", "127.0.0.1:5998")
    assert setting_source("listen") == "BERTH_LISTEN"
    assert setting_source("listen", {"listen"}) == "--listen"


def test_database_timeouts_are_postgresqls_and_a_statement_outlasts_a_lock_wait(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty_config_file(monkeypatch, tmp_path)
    monkeypatch.setenv("BERTH_DATABASE_CONNECT_TIMEOUT", "2")
    with pytest.raises(SettingsError) as on_sqlite:
        load_settings()
    assert str(on_sqlite.value).startswith(
        "BERTH_DATABASE_CONNECT_TIMEOUT: '2' applies to PostgreSQL only"
    )
    monkeypatch.setenv("BERTH_DATABASE_URL", "postgresql+asyncpg://berth@db.internal/berth")
    monkeypatch.setenv("BERTH_DATABASE_STATEMENT_TIMEOUT", "15")
    with pytest.raises(SettingsError) as too_short:
        load_settings()
    assert str(too_short.value).startswith(
        "BERTH_DATABASE_STATEMENT_TIMEOUT: '15' must be more than database_lock_timeout (15 s)"
    )
    (tmp_path / "berth.toml").write_text("database_lock_timeout = 5\n")
    settings = load_settings()
    assert (settings.database_connect_timeout, settings.database_statement_timeout) == (2, 15)
    monkeypatch.delenv("BERTH_DATABASE_STATEMENT_TIMEOUT")
    (tmp_path / "berth.toml").write_text("database_lock_timeout = 90\n")
    with pytest.raises(SettingsError) as unset:
        load_settings()
    assert str(unset.value).startswith(
        "database_statement_timeout must be more than database_lock_timeout (90 s) (unset: 60 s)"
    )


@pytest.mark.parametrize("parameter", ["timeout=2.5", "connect_timeout=3"])
def test_a_connect_timeout_in_the_database_url_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, parameter: str
) -> None:
    """asyncpg's `timeout` failed every start with a traceback, libpq's `connect_timeout`
    with asyncpg's words, once the database was reached."""
    url = f"postgresql://berth:pw-secret-4@db.internal/berth?sslmode=prefer&{parameter}"
    monkeypatch.setenv("BERTH_DATABASE_URL", url)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    name = parameter.partition("=")[0]
    assert str(refused.value) == (
        f"BERTH_DATABASE_URL: '{url.replace('pw-secret-4', '***')}' has the parameter {name}, "
        "which Berth does not take: set database_connect_timeout (seconds) instead"
    )


def test_the_bounds_the_settings_check_against_are_the_databases() -> None:
    assert config.LOCK_WAIT_SECONDS == database.LOCK_WAIT_SECONDS
    assert config.STATEMENT_SECONDS == database.STATEMENT_SECONDS
