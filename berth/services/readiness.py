"""Whether this node can serve: its database and its blob store answer (`/readyz`).

A load balancer or Kubernetes asks every few seconds, on every node: the blob store's answer is
kept for a few seconds so the probes do not become a stream of requests to S3, and concurrent
probes share one check. Each check is bounded in time: an unreachable store or database makes
the node unready within seconds instead of holding the probe for the clients' retry budget.
Why it is not ready is logged when it turns unready, again every UNREACHABLE_LOG_SECONDS while
it stays so (as the database's own warning), and once when it is ready again: not once a probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import text

from berth.domain.errors import Unavailable
from berth.metadata.database import UNREACHABLE_LOG_SECONDS, Database
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
        self._store_problem: _StoreProblem | None = None
        self._store_checked_at = -float("inf")
        self._store_lock = asyncio.Lock()
        self._unready_since: float | None = None
        self._said: list[str] | None = None  # the problems last logged
        self._said_at = -float("inf")

    async def problems(self) -> list[str]:
        """What keeps this node from serving, in words fit for anyone who can reach /readyz
        (no addresses or credentials: those go to the log); empty when ready."""
        found: list[str] = []
        why: list[str] = []
        database = await self._database_problem()
        if database is not None:
            found.append("the database is unreachable")
            why.append(database)
        store = await self._store()
        if store is not None:
            found.append(store.public)
            why.append(store.logged)
        self._log(found, why)
        return found

    async def _database_problem(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout), self.db.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Unavailable:  # its warning, "the database cannot be reached", says why
            return "the database is unreachable"
        except Exception as exc:  # any failure to answer: not ready
            return f"the database does not answer: {exc or type(exc).__name__}"
        return None

    async def _store(self) -> _StoreProblem | None:
        if time.monotonic() - self._store_checked_at < self.cache_seconds:
            return self._store_problem
        async with self._store_lock:  # one check at a time; the others take its answer
            if time.monotonic() - self._store_checked_at >= self.cache_seconds:
                self._store_problem = await self._check_store()
                self._store_checked_at = time.monotonic()
        return self._store_problem

    async def _check_store(self) -> _StoreProblem | None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.probe()
        except TimeoutError:
            return _StoreProblem(
                _UNAVAILABLE, f"the blob store did not answer in {self.timeout:g}s"
            )
        except OSError as exc:
            refusal = getattr(exc, "refusal", None)  # the store refused: say what to check
            public = f"the blob store is unavailable: {refusal}" if refusal else _UNAVAILABLE
            return _StoreProblem(public, f"the blob store cannot be used: {exc}")
        return None

    def _log(self, found: list[str], why: list[str]) -> None:
        """Say why the node is not ready when it turns so or the reasons change, again every
        UNREACHABLE_LOG_SECONDS while it stays so, and once when it is ready again."""
        now = time.monotonic()
        if not found:
            if self._unready_since is not None:
                logger.info(
                    "readiness: ready again, after %.0f s not ready", now - self._unready_since
                )
                self._unready_since = self._said = None
            return
        if self._unready_since is None:
            self._unready_since = now
        if found != self._said or now - self._said_at >= UNREACHABLE_LOG_SECONDS:
            lasting = now - self._unready_since
            since = f" (for {lasting:.0f} s)" if lasting >= 1 else ""
            logger.warning("readiness: not ready%s: %s", since, "; ".join(why))
            self._said, self._said_at = found, now


@dataclass(frozen=True)
class _StoreProblem:
    public: str  # for /readyz's answer
    logged: str  # for the log: may name the store's address
