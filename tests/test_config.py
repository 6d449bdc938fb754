"""Settings precedence and serving over TLS."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from berth.config import Settings, load_settings
from tests.servers import ROOT, BerthServer
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
    server.start()
    try:
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
