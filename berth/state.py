"""The services one server process holds, built once at startup and shared by every surface."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from berth import __version__
from berth.access.identify import Authenticator
from berth.access.keyring import Keyring
from berth.access.passwords import password_slots
from berth.access.throttle import LoginThrottle
from berth.access.tokens import Tokens
from berth.addresses import ResolvedNames, host_not_found, public_host
from berth.config import Settings, setting_source, usable_cores
from berth.domain.names import (
    RegistryAddress,
    host_project,
    hostname_of,
    is_loopback_name,
    registry_address,
)
from berth.jobs import Job, Scheduler
from berth.metadata.database import Database
from berth.metadata.presence import Presence
from berth.services.gc import GarbageCollector
from berth.services.identity import Identity
from berth.services.install import served_at, served_project_host_suffix
from berth.services.manifest_cache import BLOB_STAMP_FILE, BlobSizes, ManifestCache, node_stamp
from berth.services.metering import TrafficMeter
from berth.services.pulls import PullRecorder
from berth.services.readiness import Readiness
from berth.services.registry import Registry
from berth.services.repositories import Repositories
from berth.services.retention import Retention
from berth.services.scanning.policy import PullPolicy
from berth.services.scanning.processes import ScanProcesses
from berth.services.scanning.scans import Scans, scan_queue_job
from berth.services.sessions import Sessions
from berth.services.storage_check import StorageCheck
from berth.services.tag_rules import TagRules
from berth.services.uploads import Uploads
from berth.services.usage import Pricing, Usage
from berth.services.vulndb import VulnDb
from berth.services.webhook_delivery import WebhookDelivery
from berth.services.webhooks import Webhooks
from berth.storage.base import BlobStore, failures_said_by_caller
from berth.storage.drivers import blob_store, s3_location

if TYPE_CHECKING:  # data_location loads alembic, which a serving worker does not need
    from berth.data_location import StartUpProblem


@dataclass
class Services:
    settings: Settings
    db: Database
    store: BlobStore
    repositories: Repositories
    registry: Registry
    uploads: Uploads
    identity: Identity
    authenticator: Authenticator
    tokens: Tokens
    throttle: LoginThrottle
    traffic: TrafficMeter
    pulls: PullRecorder
    usage: Usage
    jobs: Scheduler
    gc: GarbageCollector
    sessions: Sessions
    storage_check: StorageCheck
    readiness: Readiness
    webhooks: Webhooks
    webhook_delivery: WebhookDelivery
    tag_rules: TagRules
    retention: Retention
    vulndb: VulnDb
    scans: Scans
    pull_policy: PullPolicy
    presence: Presence
    # Whether project host names under `.localhost` resolve here (`pasted_registry_address`).
    resolved_names: ResolvedNames = field(default_factory=ResolvedNames)

    @classmethod
    def build(
        cls, settings: Settings, keyring: Keyring | None = None, *, serving: bool = False
    ) -> Services:
        """This process's services; `keyring`: the server's keys if the caller has read them
        already (the start-up, which checked them), else they are read (or created) here.
        `serving`: a serving worker's (`start` follows), not a CLI verb's."""
        db = Database.for_settings(settings)
        store = blob_store(settings)
        if keyring is None:
            keyring = Keyring(settings.signing_key_file, settings.secret_key_file)
        usage = Usage(
            db,
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
        storage_check = StorageCheck(
            db, store, orphan_age=settings.gc_grace_period, upload_expiry=settings.upload_expiry
        )
        identity = Identity(
            db,
            keyring,
            settings.max_access_keys,
            password_slots(usable_cores(), settings.worker_processes),
            store,
        )
        tokens = Tokens(keyring, settings.token_ttl, settings.refresh_token_ttl)
        webhook_delivery = WebhookDelivery(
            db,
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout,
            retry_base=settings.webhook_retry_base,
        )
        manifest_cache = ManifestCache(node_stamp(settings.data_dir))
        registry = Registry(
            db,
            store,
            settings.max_images_per_repository,
            manifest_cache=manifest_cache,
            blob_sizes=BlobSizes(node_stamp(settings.data_dir, BLOB_STAMP_FILE)),
        )
        retention = Retention(db, registry, test_pause=settings.retention_test_pause)
        vulndb = VulnDb(db)
        pull_policy = PullPolicy(db)
        # A serving worker's scans read layers and match packages in processes of their own,
        # not on the GIL its requests need; `berth scan --wait` serves nothing and scans in
        # its own process.
        scans = Scans(
            db,
            store,
            vulndb,
            on_finished=pull_policy.forget_verdicts,
            processes=ScanProcesses(settings.scan_workers, settings) if serving else None,
        )
        throttle = LoginThrottle(
            db, settings.login_failures_per_key, settings.login_failures_per_client
        )
        return cls(
            settings=settings,
            db=db,
            store=store,
            repositories=Repositories(
                db, settings.repository_quota, store=store, forget_access=identity.forget_cached
            ),
            registry=registry,
            uploads=Uploads(db, store, settings.max_open_uploads, settings.upload_expiry),
            identity=identity,
            authenticator=Authenticator(identity.credentials, tokens, throttle, identity.audit),
            tokens=tokens,
            throttle=throttle,
            traffic=TrafficMeter(
                db,
                enabled=settings.traffic_metering,
                flush_interval=settings.traffic_flush_interval,
            ),
            pulls=PullRecorder(
                db, enabled=settings.record_pulls, interval=settings.traffic_flush_interval
            ),
            usage=usage,
            jobs=Scheduler(
                db,
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
                    *webhook_delivery.jobs(),
                    # Projects' scheduled retention runs: looked for every minute (a read).
                    Job(
                        "retention-schedule",
                        settings.retention_check_interval,
                        retention.run_due,
                        has_work=retention.has_due,
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
                    Job("login-failures-prune", 3600, throttle.prune),
                ],
            ),
            gc=GarbageCollector(
                db,
                store,
                grace_period=settings.gc_grace_period,
                upload_expiry=settings.upload_expiry,
                test_pause=settings.gc_test_pause,
            ),
            sessions=Sessions(db, settings.session_ttl, tokens),
            storage_check=storage_check,
            readiness=Readiness(db, store),
            webhooks=Webhooks(db, allow_private=settings.webhook_allow_private),
            webhook_delivery=webhook_delivery,
            tag_rules=TagRules(db),
            retention=retention,
            vulndb=vulndb,
            scans=scans,
            pull_policy=pull_policy,
            presence=Presence(db, node_name=settings.node_name, version=__version__),
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

    async def printed_registry_address(self, project: str) -> RegistryAddress:
        """Where clients find `project`'s registry, for a command the CLI prints: what the API
        answers as `registry_address` to a client that reached the server where the last
        `berth serve` recorded it is reached (its host and port, and its own project hosts:
        it may have been started with a `listen`, `domain` or `region` of its own environment
        or flags). This command's own settings only before any server has started."""
        host = await served_at(self.db)
        suffix = await served_project_host_suffix(self.db) if host else None
        return await self.pasted_registry_address(project, host, suffix)

    def start(self) -> None:
        """Background work of a serving process (not of CLI verbs)."""
        self.identity.audit.start()
        self.traffic.start()
        self.pulls.start()
        self.jobs.start()
        self.gc.start()
        self.retention.start()
        self.presence.start()

    async def close(self) -> None:
        self.db.stopping()
        await self.presence.stop()
        await self.gc.stop()
        await self.retention.stop()
        await self.jobs.stop()
        if self.scans.processes is not None:
            self.scans.processes.close()
        await self.traffic.stop()
        await self.pulls.stop()
        await self.identity.audit.stop()
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
