"""Whether this node can serve: its database and its blob store answer (`/readyz`).

A load balancer or Kubernetes asks every few seconds, on every node: the blob store's answer is
kept for a few seconds so the probes do not become a stream of requests to S3, and concurrent
probes share one check. Each check is bounded in time: an unreachable store or database makes
the node unready within seconds instead of holding the probe for the clients' retry budget.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text

from berth.domain.errors import Unavailable
from berth.metadata.database import Database
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.readiness")

STORE_CACHE_SECONDS = 5.0
CHECK_TIMEOUT_SECONDS = 3.0
_UNAVAILABLE = "the blob store is unavailable"


class Readiness:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        *,
        cache_seconds: float = STORE_CACHE_SECONDS,
        timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self.db = db
        self.store = store
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._store_problem: str | None = None
        self._store_checked_at = -float("inf")
        self._store_lock = asyncio.Lock()

    async def problems(self) -> list[str]:
        """What keeps this node from serving, in words fit for anyone who can reach /readyz
        (no addresses or credentials: those go to the log); empty when ready."""
        found = []
        if not await self._database_answers():
            found.append("the database is unreachable")
        store_problem = await self._store()
        if store_problem is not None:
            found.append(store_problem)
        return found

    async def _database_answers(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout), self.db.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to answer: not ready
            logger.warning("readiness: the database does not answer: %s", exc or type(exc).__name__)
            return False
        return True

    async def _store(self) -> str | None:
        if time.monotonic() - self._store_checked_at < self.cache_seconds:
            return self._store_problem
        async with self._store_lock:  # one check at a time; the others take its answer
            if time.monotonic() - self._store_checked_at >= self.cache_seconds:
                self._store_problem = await self._check_store()
                self._store_checked_at = time.monotonic()
        return self._store_problem

    async def _check_store(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.probe()
        except TimeoutError:
            logger.warning("readiness: the blob store did not answer in %gs", self.timeout)
            return _UNAVAILABLE
        except OSError as exc:  # ObjectStoreError has logged where and why
            if not isinstance(exc, Unavailable):
                logger.warning("readiness: the blob store cannot be used: %s", exc)
            refusal = getattr(exc, "refusal", None)  # the store refused: say what to check
            return f"the blob store is unavailable: {refusal}" if refusal else _UNAVAILABLE
        return None
