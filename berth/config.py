"""Settings: defaults, then a TOML file, then BERTH_<NAME> environment variables, then flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "BERTH_CONFIG"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    data_dir: Path = Field(Path("berth-data"), description="where metadata and blobs live")
    listen: str = Field("127.0.0.1:5000", description="host:port to listen on")
    domain: str = Field("localhost", description="registry domain, e.g. kcr.dev")
    region: str = Field("local", description="region served by this deployment")
    tls_cert: Path | None = Field(None, description="PEM certificate; TLS is on when set")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite+aiosqlite:///{data_dir}/berth.db"
    )
    workers: int = Field(1, ge=1, description="server worker processes")
    admin_password: str | None = Field(
        None, description="password for the `admin` user created on first start (else random)"
    )
    token_ttl: int = Field(300, ge=30, description="lifetime of registry tokens, seconds")
    refresh_token_ttl: int = Field(30 * 86400, ge=60, description="refresh token lifetime")
    api_token_ttl: int = Field(
        12 * 3600, ge=60, description="lifetime of management API tokens (POST /api/v1/auth/tokens)"
    )
    session_ttl: int = Field(
        12 * 3600,
        ge=300,
        description="lifetime of a web console sign-in (its session cookie), seconds",
    )
    max_access_keys: int = Field(2, ge=1, description="access keys per user per project")
    token_signing_key: Path | None = Field(
        None, description="EC P-256 PEM key that signs tokens; default {data_dir}/keys/"
    )
    secret_hash_key: Path | None = Field(
        None, description="key for hashing access-key secrets; default {data_dir}/keys/"
    )
    max_images_per_repository: int = Field(10_000, ge=1, description="images per repository")
    repository_quota: int = Field(
        100, ge=0, description="repositories per project, unless the project sets its own"
    )
    traffic_metering: bool = Field(
        True, description="count outbound traffic (off only to measure what counting costs)"
    )
    traffic_flush_interval: float = Field(
        5.0, gt=0, description="seconds between writes of the outbound traffic counters"
    )
    traffic_retention_days: int = Field(
        124, ge=92, description="days of outbound traffic kept (at least 92)"
    )
    traffic_price_per_gb: float = Field(
        0.0, ge=0, description="price of outbound traffic per GB (10^9 bytes), for estimates"
    )
    traffic_free_gb: float = Field(
        0.0, ge=0, description="outbound GB per project and month that are not charged"
    )
    storage_collect_interval: int = Field(
        1800, ge=1, description="seconds between scheduled storage usage collections"
    )
    gc_grace_period: int = Field(
        3600,
        ge=0,
        description="seconds a blob or image stays safe from garbage collection after its push",
    )
    gc_test_pause: str = Field(
        "",
        description="testing only: 'marking=SECONDS' or 'sweeping=SECONDS' holds each GC run there",
    )
    login_failures_per_key: int = Field(
        10, ge=1, description="failed logins a minute per key (or user) from one address"
    )
    login_failures_per_client: int = Field(30, ge=1, description="failed logins a minute per IP")
    max_connections: int = Field(
        8192, ge=64, description="connections each worker process holds open at once"
    )
    header_read_timeout: float = Field(
        10.0, gt=0, le=60, description="seconds a client may take to send its request headers"
    )
    body_read_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a client may take to send a small body (form, JSON), or pause "
        "while sending an upload",
    )
    max_requests_per_client: int = Field(
        256, ge=0, description="requests in progress per client address and worker (0: no limit)"
    )
    log_level: str = Field("info")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get(CONFIG_FILE_ENV, "berth.toml")
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'berth.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir.resolve() / "blobs"

    @property
    def signing_key_file(self) -> Path:
        return self.token_signing_key or self.data_dir.resolve() / "keys" / "token-signing.pem"

    @property
    def secret_key_file(self) -> Path:
        return self.secret_hash_key or self.data_dir.resolve() / "keys" / "secret-hash.key"

    @property
    def host_and_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def project_host_suffix(self) -> str:
        """Hosts ending in this name a project: `{project}.{region}.{domain}`."""
        return f".{self.region}.{self.domain}"

    def to_environ(self) -> dict[str, str]:
        """The settings as BERTH_* variables, so worker processes see what the CLI resolved."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is not None and name != "admin_password":
                env[f"BERTH_{name.upper()}"] = str(value)
        return env


def load_settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
