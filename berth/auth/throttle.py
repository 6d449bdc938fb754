"""Failed-login throttling per access key ID and per client address (in memory, per node)."""

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

    def check(self, key_id: str | None, client: str | None) -> None:
        """Refuse (429 with Retry-After) while either the key or the client is over its limit."""
        now = time.monotonic()
        for kind, value in (("key", key_id), ("client", client)):
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
        for kind, value in (("key", key_id), ("client", client)):
            if value:
                self._recent(kind, value, now).append(now)
