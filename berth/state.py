"""The services one server process holds, built once at startup and shared by every surface.
A CLI verb builds only the services it uses, on first use, and imports no other: most verbs
touch one or two of them, and importing and wiring every one was a third of a verb's start
(bench/findings.md, "The CLI's start, verb by verb")."""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from berth.addresses import ResolvedNames, host_not_found, public_host
from berth.config import Settings
from berth.config_loading import setting_source
from berth.domain.names import (
    RegistryAddress,
    host_project,
    hostname_of,
    is_loopback_name,
    registry_address,
)
from berth.metadata.database import Database
from berth.storage.base import BlobStore, failures_said_by_caller
from berth.storage.drivers import blob_store, s3_location

if TYPE_CHECKING:  # data_location loads alembic, which a serving worker does not need
    from berth.access.identify import Authenticator
    from berth.access.keyring import Keyring
    from berth.access.throttle import LoginThrottle
    from berth.access.tokens import Tokens
    from berth.data_location import StartUpProblem
    from berth.jobs import Scheduler
    from berth.metadata.presence import Presence
    from berth.services.gc import GarbageCollector
    from berth.services.identity import Identity
    from berth.services.metering import TrafficMeter
    from berth.services.pulls import PullRecorder
    from berth.services.readiness import Readiness
    from berth.services.registry import Registry
    from berth.services.repositories import Repositories
    from berth.services.retention import Retention
    from berth.services.scanning.policy import PullPolicy
    from berth.services.scanning.scans import Scans
    from berth.services.sessions import Sessions
    from berth.services.storage_check import StorageCheck
    from berth.services.tag_rules import TagRules
    from berth.services.uploads import Uploads
    from berth.services.usage import Usage
    from berth.services.vulndb import VulnDb
    from berth.services.webhook_delivery import WebhookDelivery
    from berth.services.webhooks import Webhooks


# The modules a serving process's services come from (each imported on first use, below):
# berth.supervisor loads them before it forks the workers, which then share their pages.
SERVICE_MODULES = (
    "berth.access.identify",
    "berth.access.keyring",
    "berth.access.passwords",
    "berth.access.throttle",
    "berth.access.tokens",
    "berth.jobs",
    "berth.metadata.presence",
    "berth.services.gc",
    "berth.services.identity",
    "berth.services.install",
    "berth.services.manifest_cache",
    "berth.services.metering",
    "berth.services.pulls",
    "berth.services.readiness",
    "berth.services.registry",
    "berth.services.repositories",
    "berth.services.retention",
    "berth.services.scanning.policy",
    "berth.services.scanning.processes",
    "berth.services.scanning.scans",
    "berth.services.sessions",
    "berth.services.storage_check",
    "berth.services.tag_rules",
    "berth.services.uploads",
    "berth.services.usage",
    "berth.services.vulndb",
    "berth.services.webhook_delivery",
    "berth.services.webhooks",
)


def load_service_modules() -> None:
    """Import every module in SERVICE_MODULES, building nothing."""
    for name in SERVICE_MODULES:
        importlib.import_module(name)


@dataclass(frozen=True, slots=True)
class PrintedAddress:
    """A registry address for the CLI to print, and whether a server serves there now (None:
    unknown, or no server has started yet)."""

    address: RegistryAddress
    serving: bool | None


class Services:
    """Each service is built on first use (imported then too) and kept: a serving process
    builds them all at once (`build(serving=True)`), a CLI verb only those it uses."""

    def __init__(
        self, settings: Settings, db: Database, keyring: Keyring, *, serving: bool = False
    ) -> None:
        self.settings = settings
        self.db = db
        self.keyring = keyring
        self.serving = serving
        # Whether project host names under `.localhost` resolve here (`pasted_registry_address`).
        self.resolved_names = ResolvedNames()

    @classmethod
    def build(
        cls, settings: Settings, keyring: Keyring | None = None, *, serving: bool = False
    ) -> Services:
        """This process's services; `keyring`: the server's keys if the caller has read them
        already (the start-up, which checked them), else they are read (or created) here.
        `serving`: a serving worker's (`start` follows), not a CLI verb's: every service is
        built now, none on a request's time."""
        if keyring is None:
            from berth.access.keyring import Keyring

            keyring = Keyring(settings.signing_key_file, settings.secret_key_file)
        services = cls(settings, Database.for_settings(settings), keyring, serving=serving)
        if serving:
            for name, value in vars(cls).items():
                if isinstance(value, cached_property):
                    getattr(services, name)
        return services

    @cached_property
    def store(self) -> BlobStore:
        return blob_store(self.settings)

    @cached_property
    def usage(self) -> Usage:
        from berth.services.usage import Usage
        from berth.services.usage_pricing import Pricing

        settings = self.settings
        return Usage(
            self.db,
            default_quota=settings.repository_quota,
            max_images_per_repository=settings.max_images_per_repository,
            pricing=Pricing(
                settings.traffic_price_per_gb, settings.traffic_free_gb, settings.currency
            ),
            traffic_retention_days=settings.traffic_retention_days,
            storage_collect_interval=settings.storage_collect_interval,
            storage_collect_min_interval=settings.storage_collect_min_interval,
            gc_grace_period=settings.gc_grace_period,
        )

    @cached_property
    def storage_check(self) -> StorageCheck:
        from berth.services.storage_check import StorageCheck

        return StorageCheck(
            self.db,
            self.store,
            orphan_age=self.settings.gc_grace_period,
            upload_expiry=self.settings.upload_expiry,
        )

    @cached_property
    def identity(self) -> Identity:
        from berth.access.passwords import password_slots
        from berth.config import usable_cores
        from berth.services.identity import Identity

        return Identity(
            self.db,
            self.keyring,
            self.settings.max_access_keys,
            password_slots(usable_cores(), self.settings.worker_processes),
            self.store,
        )

    @cached_property
    def tokens(self) -> Tokens:
        from berth.access.tokens import Tokens

        return Tokens(self.keyring, self.settings.token_ttl, self.settings.refresh_token_ttl)

    @cached_property
    def webhook_delivery(self) -> WebhookDelivery:
        from berth.services.webhook_delivery import WebhookDelivery

        return WebhookDelivery(
            self.db,
            allow_private=self.settings.webhook_allow_private,
            timeout=self.settings.webhook_timeout,
            retry_base=self.settings.webhook_retry_base,
        )

    @cached_property
    def registry(self) -> Registry:
        from berth.services.manifest_cache import (
            BLOB_STAMP_FILE,
            BlobSizes,
            ManifestCache,
            node_stamp,
        )
        from berth.services.registry import Registry

        data_dir = self.settings.data_dir
        return Registry(
            self.db,
            self.store,
            self.settings.max_images_per_repository,
            manifest_cache=ManifestCache(node_stamp(data_dir)),
            blob_sizes=BlobSizes(node_stamp(data_dir, BLOB_STAMP_FILE)),
        )

    @cached_property
    def retention(self) -> Retention:
        from berth.services.retention import Retention

        return Retention(
            self.db,
            self.registry,
            settling_seconds=self.settings.gc_grace_period,
            test_pause=self.settings.retention_test_pause,
        )

    @cached_property
    def vulndb(self) -> VulnDb:
        from berth.services.vulndb import VulnDb

        return VulnDb(self.db)

    @cached_property
    def pull_policy(self) -> PullPolicy:
        from berth.services.scanning.policy import PullPolicy

        return PullPolicy(self.db)

    @cached_property
    def scans(self) -> Scans:
        from berth.services.scanning.processes import ScanProcesses
        from berth.services.scanning.scans import Scans

        # A serving worker's scans read layers and match packages in processes of their own,
        # not on the GIL its requests need; `berth scan --wait` serves nothing and scans in
        # its own process.
        return Scans(
            self.db,
            self.store,
            self.vulndb,
            on_finished=self.pull_policy.forget_verdicts,
            processes=(
                ScanProcesses(self.settings.scan_workers, self.settings) if self.serving else None
            ),
        )

    @cached_property
    def throttle(self) -> LoginThrottle:
        from berth.access.throttle import LoginThrottle

        return LoginThrottle(
            self.db,
            self.settings.login_failures_per_key,
            self.settings.login_failures_per_client,
        )

    @cached_property
    def repositories(self) -> Repositories:
        from berth.services.repositories import Repositories

        return Repositories(
            self.db,
            self.settings.repository_quota,
            store=self.store,
            forget_access=self.identity.forget_cached,
        )

    @cached_property
    def uploads(self) -> Uploads:
        from berth.services.uploads import Uploads

        return Uploads(
            self.db, self.store, self.settings.max_open_uploads, self.settings.upload_expiry
        )

    @cached_property
    def authenticator(self) -> Authenticator:
        from berth.access.identify import Authenticator

        return Authenticator(
            self.identity.credentials, self.tokens, self.throttle, self.identity.audit
        )

    @cached_property
    def traffic(self) -> TrafficMeter:
        from berth.services.metering import TrafficMeter

        return TrafficMeter(
            self.db,
            enabled=self.settings.traffic_metering,
            flush_interval=self.settings.traffic_flush_interval,
        )

    @cached_property
    def pulls(self) -> PullRecorder:
        from berth.services.pulls import PullRecorder

        return PullRecorder(
            self.db,
            enabled=self.settings.record_pulls,
            interval=self.settings.traffic_flush_interval,
        )

    @cached_property
    def jobs(self) -> Scheduler:
        from berth.jobs import Job, Scheduler
        from berth.services.scanning.scans import scan_queue_job

        settings = self.settings
        usage, storage_check, scans = self.usage, self.storage_check, self.scans
        return Scheduler(
            self.db,
            [
                Job("storage-collect", settings.storage_collect_interval, usage.collect_all),
                Job("usage-prune", 86_400, usage.prune),
                # Hashes every blob: first due one interval after the first start.
                Job(
                    "storage-scrub",
                    settings.storage_scrub_interval,
                    storage_check.check_blobs,
                    first_after_interval=True,
                ),
                # Cheap (listings): uploads untouched for upload_expiry, scratch files left
                # by a crash and commits a dead node began go within the hour after.
                Job("abandoned-uploads", 3600, storage_check.remove_abandoned_uploads),
                *self.webhook_delivery.jobs(),
                # Projects' scheduled retention runs: looked for every minute (a read).
                Job(
                    "retention-schedule",
                    settings.retention_check_interval,
                    self.retention.run_due,
                    has_work=self.retention.has_due,
                ),
                # Queued image scans (auto on push, or requested): a read when idle. One
                # job per worker, so that as many nodes or processes scan at once.
                *(
                    Job(
                        scan_queue_job(worker),
                        settings.scan_check_interval,
                        scans.run_queued,
                        has_work=scans.has_queued,
                    )
                    for worker in range(1, settings.scan_workers + 1)
                ),
                Job(
                    "scan-rescan-stale",
                    settings.rescan_interval,
                    scans.rescan_stale,
                    first_after_interval=True,
                ),
                Job("scan-sbom-prune", 86_400, scans.prune_sboms),
                Job("login-failures-prune", 3600, self.throttle.prune),
            ],
        )

    @cached_property
    def gc(self) -> GarbageCollector:
        from berth.services.gc import GarbageCollector

        return GarbageCollector(
            self.db,
            self.store,
            grace_period=self.settings.gc_grace_period,
            upload_expiry=self.settings.upload_expiry,
            test_pause=self.settings.gc_test_pause,
        )

    @cached_property
    def sessions(self) -> Sessions:
        from berth.services.sessions import Sessions

        return Sessions(self.db, self.settings.session_ttl, self.tokens)

    @cached_property
    def readiness(self) -> Readiness:
        from berth.services.readiness import Readiness

        return Readiness(self.db, self.store)

    @cached_property
    def webhooks(self) -> Webhooks:
        from berth.services.webhooks import Webhooks

        return Webhooks(self.db, allow_private=self.settings.webhook_allow_private)

    @cached_property
    def tag_rules(self) -> TagRules:
        from berth.services.tag_rules import TagRules

        return TagRules(self.db)

    @cached_property
    def presence(self) -> Presence:
        from berth import __version__
        from berth.metadata.presence import Presence

        return Presence(
            self.db,
            node_name=self.settings.node_name,
            version=__version__,
            served_at=public_host(self.settings),
            project_host_suffix=self.settings.project_host_suffix,
        )

    def host_project(self, host: str | None) -> str | None:
        """The project this server's Host names (`domain.names.host_project`)."""
        return host_project(host, self.settings.project_host_suffix)

    def registry_address(
        self, project: str, host: str | None, project_host_suffix: str | None = None
    ) -> RegistryAddress:
        """Where clients that reached this server at `host` find `project`'s registry (from
        the server's public URL when there is no request: the CLI). `project_host_suffix`:
        the serving server's (`printed_registry_address`), else this process's setting."""
        if not host:
            host = public_host(self.settings)
        # "" is a recorded path-style server's: kept, not replaced by this process's setting.
        suffix = (
            self.settings.project_host_suffix
            if project_host_suffix is None
            else project_host_suffix
        )
        return registry_address(project, host, suffix)

    async def pasted_registry_address(
        self, project: str, host: str | None, project_host_suffix: str | None = None
    ) -> RegistryAddress:
        """`registry_address` for the commands a browser shows its user to paste: a project
        host under `.localhost` that this machine's resolver does not find (Chromium resolves
        every `*.localhost` name itself, docker and skopeo ask the system) gives way to path
        style on `localhost` with the same port, which reaches the same loopback listener."""
        address = self.registry_address(project, host, project_host_suffix)
        hostname = hostname_of(address.login)
        if not address.host_style or not is_loopback_name(hostname):
            return address
        if await self.resolved_names.resolves_here(hostname):
            return address
        port = address.login[len(hostname) :]
        return self.registry_address(project, f"localhost{port}", project_host_suffix)

    async def printed_registry_address(self, project: str) -> PrintedAddress:
        """Where clients find `project`'s registry, for a command the CLI prints: what the API
        answers as `registry_address` to a client that reached the live server that started
        last where it is reached (its host and port, and its own project hosts: it may have
        been started with a `listen`, `domain` or `region` of its own environment or flags).
        With none serving, where the last `berth serve` was reached; this command's own
        settings only before any server has started."""
        from berth.services.install import where_served

        served = await where_served(self.db)
        if served is None:
            return PrintedAddress(await self.pasted_registry_address(project, None), None)
        address = await self.pasted_registry_address(
            project, served.host, served.project_host_suffix
        )
        return PrintedAddress(address, served.serving)

    def start(self) -> None:
        """Background work of a serving process (not of CLI verbs)."""
        self.identity.audit.start()
        self.traffic.start()
        self.pulls.start()
        self.jobs.start()
        self.gc.start()
        self.retention.start()
        self.presence.start()

    def _built(self, name: str) -> bool:
        """Whether the service `name` was built (what was not has nothing to stop)."""
        return name in vars(self)

    async def close(self) -> None:
        self.db.stopping()
        if self._built("presence"):
            await self.presence.stop()
        if self._built("gc"):
            await self.gc.stop()
        if self._built("retention"):
            await self.retention.stop()
        if self._built("jobs"):
            await self.jobs.stop()
        if self._built("scans") and self.scans.processes is not None:
            self.scans.processes.close()
        if self._built("traffic"):
            await self.traffic.stop()
        if self._built("pulls"):
            await self.pulls.stop()
        if self._built("identity"):
            await self.identity.audit.stop()
        if self._built("store"):
            await self.store.close()
        await self.db.dispose()


def unusable_storage(settings: Settings) -> StartUpProblem | None:
    """Why the configured blob store cannot be used (a bucket missing, credentials refused,
    the endpoint unreachable: a problem that may pass), or None: checked before serving."""
    if settings.storage == "filesystem":
        return None  # its directory is made with the data directory (data_location)
    unresolved = unresolved_endpoint(settings)
    if unresolved is not None:
        return unresolved

    async def probe() -> None:
        store = blob_store(settings)
        try:
            await store.check()
        finally:
            await store.close()

    try:
        with failures_said_by_caller():  # in the refusal to serve
            asyncio.run(probe())
    except OSError as exc:
        from berth.data_location import StartUpProblem

        return StartUpProblem(str(exc), passing=getattr(exc, "passing", False))
    return None


def unresolved_endpoint(settings: Settings) -> StartUpProblem | None:
    """A store endpoint whose host name the resolver says does not exist (a typo in
    s3_endpoint): a setting to put right, said at once, not an outage waited out for
    startup_wait (then exit 75, which systemd restarts again and again)."""
    from berth.data_location import StartUpProblem

    if settings.storage != "s3":
        return None
    location = s3_location(settings)
    host = location.host_resolved_here
    why = None if host is None else host_not_found(host)
    if why is None:
        return None
    return StartUpProblem(
        f"{setting_source('s3_endpoint')}: cannot resolve S3 endpoint host {host} ({why}): "
        f"{location.shown}"
    )
