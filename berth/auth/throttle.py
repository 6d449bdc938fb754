"""Failed-login throttling per access key ID and per client address (in memory, per node).

The per-key limit counts a key's failures from one address: someone who knows a key ID (IDs
are not secret: they show in logs and configs) cannot lock its owner out from elsewhere. The
per-address limit, over every key and user name, is what slows a guesser down; a secret is
long and random, so guessing one is hopeless anyway.
"""

from __future__ import annotations

import math
import time
from collections import deque

from berth.domain.errors import TooManyRequests


class LoginThrottle:
    def __init__(self, per_key: int, per_client: int, window_seconds: float = 60.0) -> None:
        self.limits = {"key": per_key, "client": per_client}
        self.window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, kind: str, value: str, now: float) -> deque[float]:
        failures = self._failures.setdefault((kind, value), deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    @staticmethod
    def _counters(key_id: str | None, client: str | None) -> tuple[tuple[str, str | None], ...]:
        key = f"{key_id}@{client or ''}" if key_id else None
        return (("key", key), ("client", client))

    def check(self, key_id: str | None, client: str | None) -> None:
        """Refuse (429 with Retry-After) while the key (from this client) or the client is
        over its limit."""
        now = time.monotonic()
        for kind, value in self._counters(key_id, client):
            if not value:
                continue
            failures = self._recent(kind, value, now)
            if len(failures) >= self.limits[kind]:
                retry_after = max(1, math.ceil(failures[0] + self.window - now))
                error = TooManyRequests(
                    f"too many failed logins for this {'access key' if kind == 'key' else 'address'}"
                    f"; try again in {retry_after} seconds"
                )
                error.headers["Retry-After"] = str(retry_after)
                raise error

    def failed(self, key_id: str | None, client: str | None) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:
            self._failures.clear()
        for kind, value in self._counters(key_id, client):
            if value:
                self._recent(kind, value, now).append(now)
