"""Failed-login throttling per access key ID and per client address, shared by every worker
and node through the database.

The per-key limit counts a key's failures from one client address: someone who knows a key ID
(IDs are not secret: they show in logs and configs) cannot lock its owner out from another
address. Behind a proxy that holds only while the proxy is in `trusted_proxies` (so the address
is the client's it forwards, not the proxy's). The per-address limit, over every key and user
name, is what slows a guesser down (0 turns it off); a secret is long and random, so guessing
one is hopeless anyway.

Only a failure touches the database: one upsert per counter in a minute's window (the
`login_failures` table). The count it returns tells this worker when a counter is over its
limit, and until the window ends the worker refuses from memory, so a sign-in that succeeds
costs nothing here. Another worker learns it at its own next failure for that counter: a
guesser spread over the workers gets at most one failure past the limit per worker.

An IPv6 client is counted by its /64 network, the block one host or subscriber is given (an
IPv4 client, or IPv4 mapped into IPv6, by its address): a guesser with a /64 has 2^64 addresses
to take turns with, and would never reach a limit counted per address.

The memory is bounded: a name that cannot be a key ID or user name is counted only against its
address, a refused attempt remembers nothing new, and at most `max_tracked` refusals are kept
(the oldest forgotten first).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import time
from collections import OrderedDict
from typing import Any

from sqlalchemy import case, delete

from berth.domain.errors import TooManyRequests
from berth.metadata.database import Database
from berth.metadata.tables import login_failures, utcnow

MAX_TRACKED = 20_000
# Key IDs and user names: what is longer or carries other characters cannot log in.
_PLAUSIBLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KINDS = {"key": "access key", "client": "address"}
# The IPv6 network counted as one client (RFC 6177: a subscriber or host gets at least a /64).
IPV6_CLIENT_PREFIX = 64


def client_counted(client: str | None) -> str | None:
    """What the throttle counts `client` as: an IPv6 address by its /64 network (`2001:db8::/64`),
    any other address (IPv4, IPv4 mapped into IPv6: as its IPv4 address) as it is."""
    if not client:
        return client
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client  # not an address (a test client's name): counted as written
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return client


class LoginThrottle:
    def __init__(
        self,
        db: Database,
        per_key: int,
        per_client: int,
        window_seconds: float = 60.0,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.db = db
        self.limits = {"key": per_key, "client": per_client}
        self.window = window_seconds
        self.max_tracked = max_tracked
        # Counter -> when (time.monotonic()) its window ends, for counters over their limit.
        self._refused_until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        """How many refusals are kept in memory (for the bound's sake)."""
        return len(self._refused_until)

    def _counters(self, key_id: str | None, client: str | None) -> list[tuple[str, str]]:
        """(kind, counter) for each limit this attempt counts against."""
        plausible = key_id is not None and _PLAUSIBLE_NAME.fullmatch(key_id) is not None
        client = client_counted(client)
        counters = []
        if plausible and self.limits["key"]:
            counters.append(("key", f"key:{key_id}@{client or ''}"))
        if client and self.limits["client"]:
            counters.append(("client", f"client:{client}"))
        return counters

    def check(self, key_id: str | None, client: str | None, *, user: bool = False) -> None:
        """Refuse (429 with Retry-After) while the key (from this client) or the client is
        over its limit; `user`: `key_id` is a user name signing in with a password."""
        now = time.monotonic()
        for kind, counter in self._counters(key_id, client):
            until = self._refused_until.get(counter)
            if until is None:
                continue
            if until <= now:
                del self._refused_until[counter]
                continue
            retry_after = max(1, math.ceil(until - now))
            named = "user" if kind == "key" and user else _KINDS[kind]
            error = TooManyRequests(
                f"too many failed logins for this {named}; try again in {retry_after} seconds"
            )
            error.headers["Retry-After"] = str(retry_after)
            raise error

    async def failed(self, key_id: str | None, client: str | None) -> None:
        """Count a failed login, for every worker and node."""
        counters = self._counters(key_id, client)
        if not counters:
            return
        now = utcnow()
        async with self.db.write() as conn:
            # Sorted: two workers' upserts lock rows in the same order (no deadlock).
            for kind, counter in sorted(counters, key=lambda c: c[1]):
                row = (await conn.execute(self._count(counter, now))).one()
                if row.failures >= self.limits[kind]:
                    ends = row.window_start + dt.timedelta(seconds=self.window)
                    self._refuse(counter, (ends - now).total_seconds())

    def _count(self, counter: str, now: dt.datetime) -> Any:
        """One more failure in the counter's window, or the first of a new window once its
        minute has passed; returns the count and when the window started."""
        expired = login_failures.c.window_start <= now - dt.timedelta(seconds=self.window)
        counted = {
            "failures": case((expired, 1), else_=login_failures.c.failures + 1),
            "window_start": case((expired, now), else_=login_failures.c.window_start),
        }
        return (
            self.db.upsert(login_failures, ["counter"], counted)
            .values(counter=counter, window_start=now, failures=1)
            .returning(login_failures.c.failures, login_failures.c.window_start)
        )

    def _refuse(self, counter: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self._refused_until[counter] = time.monotonic() + seconds
        self._refused_until.move_to_end(counter)
        while len(self._refused_until) > self.max_tracked:
            self._refused_until.popitem(last=False)

    async def prune(self) -> int:
        """Delete the counters of windows that have ended (hourly job)."""
        cutoff = utcnow() - dt.timedelta(seconds=self.window)
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(login_failures).where(login_failures.c.window_start <= cutoff)
            )
        return int(result.rowcount or 0)
