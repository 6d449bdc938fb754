"""The services one server process holds, built once at startup and shared by every surface."""

from __future__ import annotations

from dataclasses import dataclass

from berth.auth.keyring import Keyring
from berth.auth.throttle import LoginThrottle
from berth.auth.tokens import Tokens
from berth.config import Settings
from berth.metadata.database import Database
from berth.services.identity import Identity
from berth.services.registry import Registry
from berth.services.repositories import Repositories
from berth.services.uploads import Uploads
from berth.storage.base import BlobStore
from berth.storage.filesystem import FilesystemBlobStore


@dataclass
class Services:
    settings: Settings
    db: Database
    store: BlobStore
    repositories: Repositories
    registry: Registry
    uploads: Uploads
    identity: Identity
    tokens: Tokens
    throttle: LoginThrottle

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.resolved_database_url)
        store = FilesystemBlobStore(settings.blob_dir)
        keyring = Keyring(settings.signing_key_file, settings.secret_key_file)
        return cls(
            settings=settings,
            db=db,
            store=store,
            repositories=Repositories(db, settings.repository_quota),
            registry=Registry(db, store, settings.max_images_per_repository),
            uploads=Uploads(db, store),
            identity=Identity(db, keyring, settings.max_access_keys),
            tokens=Tokens(keyring, settings.token_ttl, settings.refresh_token_ttl),
            throttle=LoginThrottle(
                settings.login_failures_per_key, settings.login_failures_per_client
            ),
        )

    def host_project(self, host: str | None) -> str | None:
        """The project a `{project}.{region}.{domain}[:port]` Host names; None for path style."""
        if not host:
            return None
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        suffix = self.settings.project_host_suffix
        if hostname.endswith(suffix):
            project = hostname[: -len(suffix)]
            if project and "." not in project:
                return project
        return None

    def start(self) -> None:
        """Background work of a serving process (not of CLI verbs)."""
        self.identity.start()

    async def close(self) -> None:
        await self.identity.stop()
        await self.db.dispose()
