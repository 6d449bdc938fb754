"""The Settings model: each setting's default and checks, and the order of their sources
(defaults, then a TOML file, then BERTH_<NAME> environment variables, then flags). Loading
them, each bad value said where it was given, is `config_loading.py`'s (`load_settings`)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from berth.database_urls import checked_database_url, with_berth_driver
from berth.network_settings import (
    checked_host_and_port,
    checked_origin,
    checked_proxy_networks,
    proxy_networks,
    split_address,
)

CONFIG_FILE_ENV = "BERTH_CONFIG"
# database_lock_timeout and database_statement_timeout when unset: berth.metadata.database's
# (not imported from there: reading the settings does not load SQLAlchemy).
LOCK_WAIT_SECONDS = 15.0
STATEMENT_SECONDS = 60.0
GiB = 1024**3
DEFAULT_S3_CACHE_SIZE = 10 * GiB
# The most worker processes `berth serve` starts (about 40 MB each): a larger number is a
# mistake, named before serving rather than met as processes the machine cannot hold.
MAX_WORKERS = 1024


# Settings that bound waits on a PostgreSQL server, and why SQLite has none of them.
_POSTGRESQL_ONLY = {
    "database_lock_timeout": "SQLite has no row locks, its writers wait 5 s for another "
    "process's write lock",
    "database_connect_timeout": "SQLite is a file on this node, opened at once",
    "database_statement_timeout": "SQLite is a file on this node, opened at once",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    data_dir: Path = Field(Path("berth-data"), description="where metadata and blobs live")
    listen: str = Field("127.0.0.1:5000", description="host:port to listen on")
    domain: str = Field("localhost", description="registry domain, e.g. kcr.dev")
    region: str = Field("local", description="region served by this deployment")
    tls_cert: Path | None = Field(None, description="PEM certificate; TLS is on when set")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    database_url: str | None = Field(
        None,
        description="postgresql+asyncpg:// (or postgresql://) or sqlite+aiosqlite:// URL; "
        "default sqlite+aiosqlite:///{data_dir}/berth.db",
    )
    # Declared after database_url: its check reads which database that is.
    database_lock_timeout: float | None = Field(
        None,
        gt=0,
        description="PostgreSQL only: seconds a statement waits for a row another transaction "
        "holds locked (its lock_timeout) before the request is answered 503 with Retry-After; "
        "unset: 15. Refused with SQLite, whose writers wait 5 s for another process's write lock",
    )
    database_connect_timeout: float | None = Field(
        None,
        gt=0,
        description="PostgreSQL only: seconds opening a connection, or a pooled connection's "
        "ping before each use, may take before the request is answered 503 with Retry-After "
        "(a server whose packets are dropped never refuses); unset: 5",
    )
    # Checked even when unset (validate_default): a longer database_lock_timeout needs it.
    database_statement_timeout: float | None = Field(
        None,
        gt=0,
        validate_default=True,
        description="PostgreSQL only: seconds Berth waits for any one statement's answer "
        "before giving up on it (a server that stops answering mid-transaction); more than "
        "database_lock_timeout; unset: 60",
    )
    startup_wait: float = Field(
        60.0,
        ge=0,
        description="seconds `berth serve` waits at start-up for a database server or object "
        "store it cannot reach (refused, no DNS answer, silent, still starting) before it gives up "
        "with exit status 75, which systemd restarts; 0: no wait",
    )
    shutdown_drain: float = Field(
        5.0,
        ge=0,
        le=300,
        description="seconds a worker keeps serving after SIGTERM (systemctl stop) with /readyz "
        "answering 503, so that a load balancer's health check takes the node out before it "
        "closes its connections; then it finishes the requests in progress and exits; 0: stop "
        "at once (SIGINT, Ctrl-C, always does)",
    )
    workers: int = Field(
        0,
        ge=0,
        le=MAX_WORKERS,
        description="server worker processes, at most 1024; 0 (the default): one per core this "
        "server may run on",
    )
    admin_password: str | None = Field(
        None,
        min_length=8,
        description="password for the `admin` user created on first start (else random)",
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
    record_pulls: bool = Field(
        True,
        description="record each image's last pull time, for retention rules that keep pulled "
        "images (off only to measure what recording costs)",
    )
    retention_check_interval: float = Field(
        60.0,
        gt=0,
        description="seconds between looks for projects whose scheduled retention run is due",
    )
    scan_check_interval: float = Field(
        10.0,
        gt=0,
        description="seconds between looks (one read) for queued image scans",
    )
    scan_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="image scans run at once across the install (any node may run any of "
        "them; each takes about a core while it runs)",
    )
    rescan_interval: int = Field(
        86_400,
        ge=60,
        description="seconds between requeueing scans made before the latest vulnerability "
        "data import (stale results)",
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
    currency: str = Field(
        "USD",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code (e.g. USD, EUR, KRW) of the traffic price and charge estimates",
    )
    storage_collect_interval: int = Field(
        1800, ge=1, description="seconds between scheduled storage usage collections"
    )
    storage_collect_min_interval: int = Field(
        5,
        ge=0,
        description="seconds after a project's newest storage sample before a collection on "
        "demand measures again (one asked for sooner waits)",
    )
    storage_scrub_interval: int = Field(
        86_400,
        ge=60,
        description="seconds between storage checks that hash every blob and set damaged ones "
        "aside (pushing them again repairs them)",
    )
    gc_grace_period: int = Field(
        3600,
        ge=0,
        description="seconds a blob or image stays safe from garbage collection after its push",
    )
    max_open_uploads: int = Field(
        1000,
        ge=1,
        description="uploads in progress at once per project, half of it per user; more "
        "are refused (429) until some finish, are cancelled or expire",
    )
    upload_expiry: int = Field(
        86_400,
        ge=60,
        description="seconds an upload nobody touches is kept before the hourly job removes "
        "it (its scratch in the store and, on S3, any commit a node left unfinished)",
    )
    gc_test_pause: str = Field(
        "",
        description="testing only: 'marking=SECONDS', 'listing=SECONDS' or 'sweeping=SECONDS' "
        "holds each GC run there",
    )
    retention_test_pause: float = Field(
        0.0,
        ge=0,
        description="testing only: seconds each retention run waits after each batch of "
        "deletions it commits",
    )
    login_failures_per_key: int = Field(
        10,
        ge=1,
        description="failed logins a minute per key (or user) from one client address, "
        "counted in the database for every worker and node",
    )
    login_failures_per_client: int = Field(
        30,
        ge=0,
        description="failed logins a minute per client address, counted in the database for "
        "every worker and node (0: no limit)",
    )
    trusted_proxies: str = Field(
        "",
        description="addresses or networks of the proxies in front, comma-separated (e.g. "
        "'10.0.0.5, 10.0.1.0/24'): a request from one of them is the client's that "
        "X-Forwarded-For names (login throttle, requests per address, logs, audit)",
    )
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
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="server log level (info logs one line per request)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="server log lines: text, or json (one JSON object a line)"
    )
    metrics: bool = Field(
        True,
        description="Prometheus metrics at /metrics (off only to measure what counting costs)",
    )
    pull_fast_path: bool = Field(
        True,
        description="manifest and blob GETs and HEADs skip the router (same answers, less CPU "
        "per pull); off only to compare",
    )
    metrics_listen: str | None = Field(
        None,
        description="host:port of a separate listener serving only /metrics, to anyone who "
        "reaches it (bind it to a private address)",
    )
    metrics_loopback: bool = Field(
        True,
        description="/metrics on the main address answers loopback clients without "
        "credentials (turn off behind a reverse proxy on the same host); others need a "
        "server administrator",
    )
    webhook_allow_private: bool = Field(
        False,
        description="webhook URLs may reach loopback, link-local (the cloud metadata address "
        "169.254.169.254) and private addresses (refused by default)",
    )
    webhook_timeout: float = Field(
        5.0, gt=0, le=60, description="seconds a webhook endpoint has to answer a delivery"
    )
    webhook_retry_base: float = Field(
        10.0,
        gt=0,
        description="seconds before a failed webhook delivery is retried; each retry waits "
        "twice as long (at most an hour), for up to a day",
    )
    node_name: str = Field(
        "",
        max_length=64,
        pattern=r"^[A-Za-z0-9._:\[\]-]*$",
        description="this node's name in an X-Berth-Node header on every response (which "
        "node answered, behind a load balancer) and in every log line (`node=`); empty "
        "(default): no header, so clients do not learn the nodes' names, and log lines name "
        "the machine's host name",
    )
    public_url: str | None = Field(
        None,
        description="the URL users reach Berth at when that is not its own listen address "
        "(behind a load balancer or proxy): scheme and host, with a port unless the scheme's "
        "own, e.g. https://kr-central-2.kcr.dev; the start-up banner and the commands the CLI "
        "prints use it (unset: built from listen, tls and domain)",
    )
    trust_forwarded_proto: bool = Field(
        False,
        description="take the scheme from X-Forwarded-Proto (a proxy in front ends TLS); "
        "only when every request comes through that proxy",
    )
    single_node: bool = Field(
        False,
        description='storage = "s3" with the SQLite database: true to say only this one node '
        "serves the bucket (several nodes need PostgreSQL)",
    )
    storage: Literal["filesystem", "s3"] = Field(
        "filesystem", description="where blobs live: `blobs` in data_dir, or an S3 bucket"
    )
    s3_endpoint: str | None = Field(
        None, description="S3 endpoint URL, e.g. http://127.0.0.1:8333; unset: AWS's own"
    )
    s3_public_endpoint: str | None = Field(
        None,
        description="the store's address as clients reach it (presigned blob URLs are signed "
        "for it; a proxy there must keep the Host header); unset: s3_endpoint",
    )
    # Checked even when unset (validate_default), so `storage = "s3"` without it is refused.
    s3_bucket: str | None = Field(
        None, validate_default=True, description="bucket of the blobs (storage = s3)"
    )
    s3_region: str = Field("us-east-1", description="region of the bucket (signs requests)")
    s3_prefix: str = Field(
        "", description="key prefix of every object, so two installs can share a bucket"
    )
    s3_access_key_id: str | None = Field(
        None, description="S3 access key; unset: the AWS environment or profile chain"
    )
    s3_secret_access_key: str | None = Field(
        None, description="S3 secret key; unset: the AWS environment or profile chain"
    )
    s3_path_style: bool = Field(
        False, description="path-style bucket addressing (most self-hosted stores need it)"
    )
    s3_attempts: int = Field(
        6,
        ge=1,
        le=20,
        description="tries of each S3 request, backing off exponentially between them, before "
        "a client is answered 503 (fewer: a quicker answer while the store is down)",
    )
    s3_cache_dir: Path | None = Field(
        None,
        description="storage = s3: a directory on this node's disk where blobs it sends "
        "are kept (up to s3_cache_size), so repeated pulls are sent from local files; unset: "
        "no cache",
    )
    # Unset (not the default written out) so that giving it without s3_cache_dir is refused.
    s3_cache_size: ByteSize | None = Field(
        None,
        ge=1024 * 1024,
        description="bytes the s3_cache_dir copies may take, e.g. 10GiB or 500MB (least "
        "recently used copies are removed past it); unset: 10GiB",
    )
    blob_redirect: Literal["off", "presigned", "accel"] = Field(
        "off",
        description="blob downloads: off (Berth sends the bytes), presigned (storage = s3: a 307 "
        "to a short-lived presigned URL of the object) or accel (filesystem behind nginx: an "
        "X-Accel-Redirect to its internal /_berth_blobs/ location); the bytes are counted as "
        "outbound traffic when the redirect is issued",
    )
    blob_redirect_ttl: int = Field(
        300,
        ge=10,
        le=7 * 86400,
        description="seconds a presigned blob URL stays valid (blob_redirect = presigned)",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return checked_database_url(value)

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        return checked_host_and_port(value)

    @field_validator("domain", "region")
    @classmethod
    def _lower_case(cls, value: str) -> str:
        """Host names ignore case, and so do routing and the Host check: the banner, the
        printed commands and the registry addresses name them as hosts are compared."""
        return value.lower()

    @field_validator("public_url")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        return checked_origin(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        return checked_proxy_networks(value)

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return proxy_networks(self.trusted_proxies)

    @field_validator(*_POSTGRESQL_ONLY)
    @classmethod
    def _for_postgresql_only(cls, value: float | None, info: ValidationInfo) -> float | None:
        url = info.data.get("database_url")
        if value is not None and (not url or url.startswith("sqlite")):
            raise ValueError(
                "applies to PostgreSQL only (set database_url to a postgresql+asyncpg:// URL); "
                + _POSTGRESQL_ONLY[str(info.field_name)]
            )
        return value

    @field_validator("database_statement_timeout")
    @classmethod
    def _statement_outlasts_lock_wait(
        cls, value: float | None, info: ValidationInfo
    ) -> float | None:
        lock_wait = info.data.get("database_lock_timeout") or LOCK_WAIT_SECONDS
        if (STATEMENT_SECONDS if value is None else value) <= lock_wait:
            unset = "" if value is not None else f" (unset: {STATEMENT_SECONDS:g} s)"
            raise ValueError(
                f"must be more than database_lock_timeout ({lock_wait:g} s){unset}: a "
                "statement waiting for a row lock is refused by the server first, as busy"
            )
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _bucket_for_s3(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("storage") == "s3" and not value:
            raise ValueError(
                f'is needed with storage = "s3": name the bucket of the blobs in '
                f"s3_bucket in {config_file()} or BERTH_S3_BUCKET"
            )
        return value

    @field_validator("s3_cache_dir")
    @classmethod
    def _cache_for_s3(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("storage") != "s3":
            raise ValueError(
                'needs storage = "s3" (the filesystem store sends its own files already)'
            )
        return value

    @field_validator("s3_cache_size")
    @classmethod
    def _size_for_cache(cls, value: ByteSize | None, info: ValidationInfo) -> ByteSize | None:
        if value is not None and info.data.get("s3_cache_dir") is None:
            raise ValueError("bounds the cache of s3_cache_dir, which is unset: set both")
        return value

    @field_validator("blob_redirect")
    @classmethod
    def _redirect_fits_storage(cls, value: str, info: ValidationInfo) -> str:
        storage = info.data.get("storage")
        if value == "presigned" and storage != "s3":
            raise ValueError(
                'needs storage = "s3" (presigned URLs are the object store\'s); behind nginx '
                'on the filesystem store use blob_redirect = "accel"'
            )
        if value == "accel" and storage == "s3":
            raise ValueError(
                'needs storage = "filesystem" (nginx sends local files); on S3 use '
                'blob_redirect = "presigned"'
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
        )

    @property
    def worker_processes(self) -> int:
        """The worker processes `berth serve` starts: `workers`, or with 0 one per usable
        core (the CPU affinity, which a container or `taskset` narrows)."""
        return self.workers or usable_cores()

    @property
    def resolved_database_url(self) -> str:
        """The database URL Berth opens: database_url with Berth's driver named (see
        `with_berth_driver`), else the SQLite file in data_dir."""
        if self.database_url:
            return with_berth_driver(self.database_url)
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'berth.db'}"

    @property
    def s3_cache_bound(self) -> int:
        """The byte bound of the node's blob cache (`s3_cache_size`, else its default)."""
        return DEFAULT_S3_CACHE_SIZE if self.s3_cache_size is None else int(self.s3_cache_size)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir.resolve() / "blobs"

    @property
    def signing_key_file(self) -> Path:
        return self.token_signing_key or data_dir_key_files(self.data_dir.resolve())[0]

    @property
    def secret_key_file(self) -> Path:
        return self.secret_hash_key or data_dir_key_files(self.data_dir.resolve())[1]

    @property
    def host_and_port(self) -> tuple[str, int]:
        return split_address(self.listen)

    @property
    def metrics_host_and_port(self) -> tuple[str, int] | None:
        return split_address(self.metrics_listen) if self.metrics_listen else None

    @property
    def tls(self) -> bool:
        """Whether the server speaks HTTPS: with a certificate and its key."""
        return self.tls_cert is not None and self.tls_key is not None

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


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def config_file() -> Path:
    """The TOML file settings are read from: BERTH_CONFIG's, which must exist (`load_settings`
    refuses it otherwise; /dev/null is none), else berth.toml here, which need not."""
    return Path(os.environ.get(CONFIG_FILE_ENV, "berth.toml")).absolute()


def data_dir_key_files(data_dir: Path) -> tuple[Path, Path]:
    """The token signing and secret hashing key files Berth keeps in a data directory's
    keys/ (unless token_signing_key and secret_hash_key name others)."""
    keys = data_dir / "keys"
    return keys / "token-signing.pem", keys / "secret-hash.key"
