"""Settings precedence and serving over TLS."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from berth.config import Settings
from berth.config_loading import load_settings
from berth.data_location import create_data
from tests.in_process import invoked
from tests.servers import BERTH, ROOT, BerthServer, free_port, in_own_thread, wait_for
from tests.tls import make_ca_and_cert


def test_settings_precedence_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "berth.toml"
    config.write_text('domain = "kcr.dev"\nregion = "kr-central-2"\nlisten = "0.0.0.0:443"\n')
    monkeypatch.setenv("BERTH_CONFIG", str(config))
    settings = load_settings()
    assert (settings.domain, settings.region, settings.listen) == (
        "kcr.dev",
        "kr-central-2",
        "0.0.0.0:443",
    )
    assert settings.project_host_suffix == ".kr-central-2.kcr.dev"
    monkeypatch.setenv("BERTH_REGION", "eu-west-1")
    assert load_settings().region == "eu-west-1"
    assert load_settings(region="ap-1").region == "ap-1"
    assert load_settings().resolved_database_url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_serves_tls_with_the_given_certificate(tmp_path: Path, host: str) -> None:
    _ca, cert, key = make_ca_and_cert(tmp_path / "tls", ["localhost", host])
    server = BerthServer(tmp_path / "data", host=host, tls=(cert, key)).start()
    try:
        assert server.url.startswith("https://")
        response = httpx.get(f"{server.url}/v2/", verify=server.ssl_context())
        assert response.status_code == 401  # served over TLS, and asking for credentials
        assert response.headers["WWW-Authenticate"].startswith(
            f'Bearer realm="https://{server.address}/auth/token"'
        )
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/", verify=True)  # not trusted without our CA
    finally:
        server.stop()


def test_serve_flags_override_the_environment(tmp_path: Path) -> None:
    server = BerthServer(tmp_path / "data")
    server.extra_env["BERTH_LISTEN"] = "127.0.0.1:1"  # flags on `serve` must win over this
    server.serve_args = ["--listen", server.address]
    # The open-file limit is per process: each of two workers needs room for its own
    # max_connections, not for both workers' together (which would exceed the hard limit).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > 4096:
        server.extra_env["BERTH_WORKERS"] = "2"
        server.extra_env["BERTH_MAX_CONNECTIONS"] = str(hard - 2048)
    server.start()
    try:
        assert httpx.get(f"{server.url}/healthz").text == "ok"
        assert "open-file limit" not in server.log_tail(), server.log_tail()
    finally:
        server.stop()


def test_serve_starts_one_worker_per_usable_core_unless_told(tmp_path: Path) -> None:
    usable = len(os.sched_getaffinity(0))
    server = BerthServer(tmp_path / "data", workers=None).start()  # Berth's default
    try:
        wait_for(lambda: len(server.worker_pids()) == usable, 60, f"{usable} workers")
        time.sleep(0.5)  # and no more than that
        assert len(server.worker_pids()) == usable
        plural = "es" if usable != 1 else ""
        assert f"Starting {usable} worker process{plural} (one per usable core" in (
            server.log_tail()
        )
        assert httpx.get(f"{server.url}/healthz").text == "ok"
    finally:
        server.stop()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert sorted(set(Settings.model_fields) - documented) == [], "settings missing from README"
    assert sorted(documented - set(Settings.model_fields)) == [], "README names no such setting"


def test_bad_settings_are_named_before_serving(tmp_path: Path) -> None:
    _ca, cert, key = make_ca_and_cert(tmp_path / "tls", ["localhost"])
    _ca, other_cert, _key = make_ca_and_cert(tmp_path / "other-tls", ["localhost"])
    config = tmp_path / "berth.toml"
    config.write_text('workers = "many"\n')
    cases = {
        "missing certificate": (
            ["--tls-cert", "/nonexistent.crt", "--tls-key", str(key)],
            {},
            "--tls-cert: '/nonexistent.crt': no such file or directory",
        ),
        "certificate without key": (
            ["--tls-cert", str(cert)],
            {},
            "--tls-cert is set but tls_key is not",
        ),
        "key of another certificate": (
            ["--tls-cert", str(other_cert), "--tls-key", str(key)],
            {},
            "the private key does not belong to the certificate",
        ),
        "workers not a number": (
            [],
            {"BERTH_WORKERS": "abc"},
            "BERTH_WORKERS: 'abc' is not a whole number",
        ),
        "workers past the most": (
            ["--workers", "99999999999999999999"],
            {},
            "--workers: 99999999999999999999 must be at most 1024",
        ),
        "lock timeout on SQLite": (
            [],
            {"BERTH_DATABASE_LOCK_TIMEOUT": "1"},
            "applies to PostgreSQL only",
        ),
        "workers in the file": (
            [],
            {"BERTH_CONFIG": str(config)},
            f"workers in {config}: 'many' is not a whole number",
        ),
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    started = {}
    for case, (flags, env, _) in cases.items():
        data = tmp_path / case.replace(" ", "-")
        started[case] = subprocess.Popen(
            [*BERTH, "serve", *flags],
            env={
                **clean,
                "BERTH_DATA_DIR": str(data),
                "BERTH_LISTEN": f"127.0.0.1:{free_port()}",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    for case, process in started.items():
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        expected = cases[case][2]
        assert process.returncode == 2, (case, out, err)
        assert err.startswith("error: ") and expected in err, (case, err)
        assert "Usage:" not in err + out and "pydantic" not in err, (case, err)
        assert "Traceback" not in err and "Berth registry on" not in out, (case, out, err)
        assert not (tmp_path / case.replace(" ", "-")).exists(), f"{case}: data created"


def test_a_name_that_is_no_setting_is_refused_by_every_verb_naming_the_closest(
    tmp_path: Path,
) -> None:
    """A misspelled setting (gc_grace for gc_grace_period), in the file or the environment,
    is refused with exit status 2 instead of leaving its setting at the default unsaid; the
    BERTH_* variables that are no settings (the config file's, the test suite's) are not."""
    config = tmp_path / "berth.toml"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env = {**clean, "BERTH_DATA_DIR": str(tmp_path / "data"), "BERTH_CONFIG": str(config)}
    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    verbs = [["status"], ["serve", *listen], ["project", "list"], ["init"]]

    def refusal(verb: list[str], extra: dict[str, str]) -> str:
        done = subprocess.run(
            [*BERTH, *verb], env={**env, **extra}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, (verb, done.stderr)
        return " ".join(done.stderr.split())

    config.write_text("gc_grace = 5\n")
    for verb in verbs:
        assert (
            f"error: gc_grace in {config} is not a setting (did you mean gc_grace_period?)"
            in refusal(verb, {})
        ), verb
    config.write_text("gc_grace_period = 5\n")
    for verb in verbs:
        assert (
            "the environment variable BERTH_GC_GRACE is not a setting (did you mean "
            "BERTH_GC_GRACE_PERIOD?)" in refusal(verb, {"BERTH_GC_GRACE": "5"})
        ), verb
    assert not (tmp_path / "data").exists()

    harness = {"BERTH_FUZZ_SEED": "1", "BERTH_FUZZ_EXAMPLES": "1", "BERTH_REQUIRE_POSTGRES": "1"}
    initialised = subprocess.run(
        [*BERTH, "init"], env={**env, **harness}, capture_output=True, text=True, timeout=120
    )
    assert initialised.returncode == 0, initialised.stderr


def test_a_config_file_named_by_berth_config_must_exist(tmp_path: Path) -> None:
    """BERTH_CONFIG naming a file that is not there (a typo, a mount gone) is refused by every
    verb, exit status 2, naming the path and the variable: ignored, `berth serve` would start
    a new install on the defaults. Only the working directory's berth.toml may be absent, and
    /dev/null names no file on purpose."""
    (tmp_path / "a-directory").mkdir()
    named = {
        str(tmp_path / "nope.toml"): f"the config file {tmp_path / 'nope.toml'} named by "
        "BERTH_CONFIG does not exist",
        str(tmp_path / "a-directory"): f"the config file {tmp_path / 'a-directory'} named by "
        "BERTH_CONFIG is a directory",
        "": "BERTH_CONFIG is set but empty",
    }
    password = {"BERTH_ADMIN_PASSWORD": "admin-password-1"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    for config, said in named.items():
        for verb in (["status"], ["project", "list"], ["init"]):
            refused = invoked(tmp_path, verb, {**password, "BERTH_CONFIG": config})
            err = " ".join(refused.stderr.split())
            assert refused.returncode == 2, (config, verb, refused.stdout, err)
            assert err.startswith(f"error: {said}: correct BERTH_CONFIG"), (config, verb, err)
            assert refused.stdout == "", (config, verb, refused.stdout)
        served = subprocess.run(
            [*BERTH, "serve", "--listen", f"127.0.0.1:{free_port()}"],
            env={**clean, **password, "BERTH_CONFIG": config},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        err = " ".join(served.stderr.split())
        assert served.returncode == 2 and err.startswith(f"error: {said}: "), (config, err)
        assert "Traceback" not in err and "Berth registry on" not in served.stdout, config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]  # nothing created

    assert invoked(tmp_path, ["init"], {**password, "BERTH_CONFIG": os.devnull}).returncode == 0
    assert invoked(tmp_path, ["status"], {}).returncode == 0  # no berth.toml here: defaults


def test_a_second_server_on_a_taken_address_refuses(tmp_path: Path) -> None:
    fresh = tmp_path / "new-data"
    first = BerthServer(tmp_path / "first", serve_args=["--data-dir", str(fresh)]).start()
    try:
        # The data directory serve created is private, and so is the database in it.
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
        assert stat.S_IMODE((fresh / "berth.db").stat().st_mode) == 0o600
        second = subprocess.Popen(
            [*BERTH, "serve", "--data-dir", str(tmp_path / "second")],
            env=first.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # should it serve after all, its workers go with it
        )
        try:
            _out, err = second.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
            _out, err = second.communicate()
        assert second.returncode != 0
        assert f"error: address {first.address} is already in use" in err
        assert not (tmp_path / "second").exists()
        # A new connection for each request: a second listener would take some of them.
        answers = [httpx.get(f"{first.url}/healthz").status_code for _ in range(20)]
        assert answers == [200] * 20
        assert first.process is not None and first.process.poll() is None
    finally:
        first.stop()


def started_at_once(servers: list[BerthServer], logs: Path) -> list[subprocess.Popen[bytes]]:
    """`berth serve` for each of `servers`, launched back to back (their checks of the port
    and their binds overlap: each takes a second or more from start to bind)."""
    logs.mkdir()
    processes = []
    for number, server in enumerate(servers):
        with (logs / f"{number}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [*BERTH, "serve"],
                    env=server.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
    for server, process in zip(servers, processes, strict=True):
        server.process = process
    return processes


@pytest.mark.parametrize("case", ["same data directory", "own data directories", "metrics"])
def test_two_servers_started_at_once_on_one_port_one_serves(tmp_path: Path, case: str) -> None:
    """Two `berth serve` started at the same moment for one port: exactly one serves on it, the
    other exits non-zero naming the address (without the claim, both pass the check of the port
    before either binds it, and both serve: SO_REUSEPORT)."""
    port = free_port()
    servers = [
        BerthServer(
            tmp_path / ("data" if case == "same data directory" else f"data{number}"),
            port=port if case != "metrics" else free_port(),
            extra_env={"BERTH_NODE_NAME": f"node{number}"},
        )
        for number in (1, 2)
    ]
    if case == "metrics":  # each its own listen address, one metrics address for both
        for server in servers:
            server.extra_env["BERTH_METRICS_LISTEN"] = f"127.0.0.1:{port}"
    processes = started_at_once(servers, tmp_path / "logs")
    try:
        deadline = time.monotonic() + 90
        while all(process.poll() is None for process in processes):
            assert time.monotonic() < deadline, "both servers are running"
            time.sleep(0.05)
        (loser,) = [n for n, process in enumerate(processes) if process.poll() is not None]
        winner = servers[1 - loser]
        said = (tmp_path / "logs" / f"{loser}.log").read_text()
        assert processes[loser].returncode == 2, said
        assert said.startswith(f"error: address 127.0.0.1:{port} is already in use"), said
        assert "another `berth serve` on this machine is starting or serving" in said
        assert "Traceback" not in said and "Berth registry on" not in said
        if case == "own data directories":
            assert not servers[loser].data_dir.exists()  # refused before creating anything

        def answers() -> list[tuple[int, str]]:
            return [
                (response.status_code, response.headers.get("x-berth-node", ""))
                for response in (httpx.get(f"{winner.url}/healthz") for _ in range(20))
            ]

        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.TransportError):
                # A new connection for each request: a second listener would take some of them.
                assert answers() == [(200, winner.extra_env["BERTH_NODE_NAME"])] * 20
                break
            assert processes[1 - loser].poll() is None, winner.log_tail()
            assert time.monotonic() < deadline, "the other server does not serve"
            time.sleep(0.1)
        if case == "metrics":
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
            assert scraped.status_code == 200 and "berth_" in scraped.text
    finally:
        for server in servers:
            server.stop()


def test_serving_makes_an_older_database_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    in_own_thread(lambda: create_data(settings))
    database = tmp_path / "data" / "berth.db"
    database.chmod(0o644)  # as Berth made it before
    (tmp_path / "data").chmod(0o755)  # likewise its data directory, or one made by hand
    in_own_thread(lambda: create_data(settings))  # what `berth serve` does before serving
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
