"""Each image's last pull time, for retention rules that keep what is still pulled.

The pull path only adds the manifest's key to an in-memory set (no database work, nothing
awaited). Every `interval` seconds the process writes what it saw with one UPDATE per key that
changes a manifest only when its recorded time is missing or more than `RESOLUTION` old: at most
one write per image per minute, whichever worker or node saw the pull (each flushes its own
set). A key flushed here is not even queued again for `RESOLUTION` seconds.

The write is not noted as a change of `manifests` content (it is raw SQL): a pull time is not
something the manifest cache serves, and bumping the cache's stamp every few seconds would make
every node read its manifests again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from sqlalchemy import bindparam, text

from berth.jobs.periodic import Periodic, unwritten_said
from berth.metadata.database import Database
from berth.metadata.tables import UTCDateTime, utcnow

logger = logging.getLogger("berth.pulls")

RESOLUTION = 60.0  # seconds: a pull time is recorded to within this
# (repository id, image, digest)
Key = tuple[int, str, str]

_RECORD = text(
    "UPDATE manifests SET last_pulled_at = :now "
    "WHERE repository_id = :repository_id AND image = :image AND digest = :digest "
    "AND (last_pulled_at IS NULL OR last_pulled_at < :before)"
).bindparams(bindparam("now", type_=UTCDateTime), bindparam("before", type_=UTCDateTime))


class PullRecorder:
    def __init__(self, db: Database, *, enabled: bool = True, interval: float = 5.0) -> None:
        self.db = db
        self.enabled = enabled
        self._seen: set[Key] = set()
        self._written: dict[Key, float] = {}  # key -> monotonic time of its last flush here
        self._lock = asyncio.Lock()
        self._flusher = Periodic(
            "pull times flush",
            interval,
            self.flush,
            failure="could not record last pull times; kept for the next try",
        )

    def pulled(self, repository_id: int, image: str, digest: str) -> None:
        """A manifest GET was answered. The hot path: a dict lookup and a set add."""
        key = (repository_id, image, digest)
        written = self._written.get(key)
        if written is not None and time.monotonic() - written < RESOLUTION:
            return
        self._seen.add(key)

    async def flush(self) -> int:
        """Write the pulls seen since the last flush; returns how many keys were written."""
        async with self._lock:
            seen, self._seen = self._seen, set()
            if not seen:
                self._forget_old()
                return 0
            now = utcnow()
            before = now - dt.timedelta(seconds=RESOLUTION)
            # Sorted: two nodes' updates take row locks in the same order.
            rows = [
                {
                    "now": now,
                    "before": before,
                    "repository_id": repository_id,
                    "image": image,
                    "digest": digest,
                }
                for repository_id, image, digest in sorted(seen)
            ]
            try:
                async with self.db.write() as conn:
                    await conn.execute(_RECORD, rows)
            except BaseException:
                self._seen |= seen
                raise
            moment = time.monotonic()
            for key in seen:
                self._written[key] = moment
            self._forget_old()
            return len(rows)

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - RESOLUTION
        if len(self._written) > 0:
            self._written = {k: t for k, t in self._written.items() if t >= cutoff}

    def start(self) -> None:
        if self.enabled:
            self._flusher.start()

    async def stop(self) -> None:
        await self._flusher.stop()
        with unwritten_said(
            logger, lambda: f"last pull times of {len(self._seen)} images not recorded at shutdown"
        ):
            await self.flush()
