"""Failed-login throttling per access key ID and per client address (in memory, per worker
process: each worker of each node counts on its own, so a guesser spread over them gets the
limits once per worker).

The per-key limit counts a key's failures from one client address: someone who knows a key ID
(IDs are not secret: they show in logs and configs) cannot lock its owner out from another
address. Behind a proxy that holds only while the proxy is in `trusted_proxies` (so the address
is the client's it forwards, not the proxy's). The per-address limit, over every key and user
name, is what slows a guesser down (0 turns it off); a secret is long and random, so guessing
one is hopeless anyway.

The memory is bounded: a name that cannot be a key ID or user name is counted only against its
address, a refused attempt remembers nothing new, and at most `max_tracked` counters are kept
(the least recently failed are forgotten first).
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict, deque

from berth.domain.errors import TooManyRequests

MAX_TRACKED = 20_000
# Key IDs and user names: what is longer or carries other characters cannot log in.
_PLAUSIBLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class LoginThrottle:
    def __init__(
        self,
        per_key: int,
        per_client: int,
        window_seconds: float = 60.0,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.limits = {"key": per_key, "client": per_client}
        self.window = window_seconds
        self.max_tracked = max_tracked
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many counters are kept (for the bound's sake)."""
        return len(self._failures)

    def _recent(self, kind: str, value: str, now: float) -> deque[float]:
        failures = self._failures.get((kind, value))
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    @staticmethod
    def _counters(key_id: str | None, client: str | None) -> tuple[tuple[str, str | None], ...]:
        plausible = key_id is not None and _PLAUSIBLE_NAME.fullmatch(key_id) is not None
        key = f"{key_id}@{client or ''}" if plausible else None
        return (("key", key), ("client", client))

    def check(self, key_id: str | None, client: str | None) -> None:
        """Refuse (429 with Retry-After) while the key (from this client) or the client is
        over its limit."""
        now = time.monotonic()
        for kind, value in self._counters(key_id, client):
            if not value or not self.limits[kind]:
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
        for kind, value in self._counters(key_id, client):
            if not value or not self.limits[kind]:
                continue  # a limit of 0 is none: nothing to remember
            failures = self._recent(kind, value, now)
            failures.append(now)
            self._failures[(kind, value)] = failures
            self._failures.move_to_end((kind, value))
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
