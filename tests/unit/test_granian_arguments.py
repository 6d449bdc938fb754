"""The granian command line `berth serve` hands over to (`granian_arguments`): what it pins down
and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.config import Settings
from berth.config_loading import SettingsError, load_settings
from berth.server import granian_arguments
from berth.supervisor import worker_count


@pytest.fixture(autouse=True)
def defaults_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings from their defaults: no BERTH_* variable of the caller's, no settings file."""
    for name in list(os.environ):
        if name.startswith("BERTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BERTH_CONFIG", os.devnull)


def option(arguments: list[str], name: str) -> str:
    assert arguments.count(name) == 1, arguments
    return arguments[arguments.index(name) + 1]


def test_by_default_one_worker_per_core_the_server_may_use() -> None:
    usable = len(os.sched_getaffinity(0))
    settings = load_settings()
    assert settings.workers == 0
    assert settings.worker_processes == usable
    assert option(granian_arguments(settings), "--workers") == str(usable)


@pytest.mark.parametrize("given", ["1", "3"])
def test_a_number_of_workers_given_is_the_number_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: str
) -> None:
    (tmp_path / "berth.toml").write_text(f"workers = {given}\n")
    monkeypatch.setenv("BERTH_CONFIG", str(tmp_path / "berth.toml"))
    assert option(granian_arguments(load_settings()), "--workers") == given  # the file
    monkeypatch.setenv("BERTH_WORKERS", "2")
    assert option(granian_arguments(load_settings()), "--workers") == "2"  # the environment
    flagged = load_settings(workers=int(given))  # `berth serve --workers`
    assert option(granian_arguments(flagged), "--workers") == given


def test_a_negative_number_of_workers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_WORKERS", "-1")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == "BERTH_WORKERS: '-1' must be at least 0"


def test_the_server_runs_berths_app_on_uvloop_whatever_else_is_installed() -> None:
    """granian's default loop is rloop whenever it is importable, and asyncpg fails on it
    ("TCPTransport protocol cannot be changed": every PostgreSQL query answers 500): the
    server names uvloop, a dependency of Berth's."""
    arguments = granian_arguments(Settings(listen="127.0.0.1:5123"))
    assert option(arguments, "--loop") == "uvloop"
    assert (option(arguments, "--host"), option(arguments, "--port")) == ("127.0.0.1", "5123")
    assert option(arguments, "--interface") == "asgi"
    assert "--factory" in arguments and arguments[-1] == "berth.app:create_app"
    assert "--no-access-log" in arguments  # query strings may carry what is not to be logged


def test_connection_limits_follow_the_settings() -> None:
    arguments = granian_arguments(Settings(max_connections=5000, header_read_timeout=2.5))
    assert option(arguments, "--backpressure") == "5000"
    assert option(arguments, "--backlog") == "5000"
    assert option(arguments, "--http1-header-read-timeout") == "2500"
    few = granian_arguments(Settings(max_connections=100))
    assert option(few, "--backlog") == "1024"  # the kernel's queue no shorter than its default


def test_tls_options_only_with_a_certificate_and_key(tmp_path: Path) -> None:
    plain = granian_arguments(Settings())
    assert not [argument for argument in plain if argument.startswith("--ssl")]
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    secured = granian_arguments(Settings(tls_cert=cert, tls_key=key))
    assert option(secured, "--ssl-certificate") == str(cert)
    assert option(secured, "--ssl-keyfile") == str(key)
    assert option(secured, "--ssl-protocol-min") == "tls1.2"


def test_several_workers_fork_from_a_supervisor_that_loaded_berths_modules() -> None:
    """Loaded before the fork, Berth's modules are shared by the workers (berth.supervisor);
    with one worker there is no one to share them with, and the supervisor loads none (it
    runs for both, to remove the metric files when granian stops)."""
    several = granian_arguments(Settings(workers=2))
    assert several[1:3] == ["-m", "berth.supervisor"] and worker_count(several) == 2
    one = granian_arguments(Settings(workers=1))
    assert one[1:3] == ["-m", "berth.supervisor"] and worker_count(one) == 1
    # The rest of the command line is the same but for the number of workers.
    differing = [(a, b) for a, b in zip(one[3:], several[3:], strict=True) if a != b]
    assert differing == [("1", "2")]
