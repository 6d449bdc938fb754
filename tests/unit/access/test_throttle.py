"""The failed-login throttle's counters live in the database: every worker and node counts
the same failures, and each refuses from memory once it has seen a counter over its limit."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from berth.access.throttle import LoginThrottle
from berth.domain.errors import TooManyRequests
from berth.metadata.tables import login_failures
from berth.state import Services
from tests.unit.access.conftest import World


def test_workers_share_the_count_and_each_learns_at_its_next_failure(world: World) -> None:
    async def scenario(services: Services) -> None:
        first, second = (LoginThrottle(services.db, 3, 0) for _ in range(2))  # two workers
        for worker in (first, second, first):
            worker.check("BKSHARED", "198.51.100.1")
            await worker.failed("BKSHARED", "198.51.100.1")
        with pytest.raises(TooManyRequests, match="access key; try again in") as refused:
            first.check("BKSHARED", "198.51.100.1")
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
        # The second worker has not seen the third failure: one more attempt, then it knows.
        second.check("BKSHARED", "198.51.100.1")
        await second.failed("BKSHARED", "198.51.100.1")
        with pytest.raises(TooManyRequests):
            second.check("BKSHARED", "198.51.100.1")
        # The same key from another address, and another key, are not refused.
        first.check("BKSHARED", "198.51.100.2")
        first.check("BKOTHER", "198.51.100.1")

    world.run(scenario)


def test_the_per_address_limit_counts_every_name_and_can_be_off(world: World) -> None:
    async def scenario(services: Services) -> None:
        throttle = LoginThrottle(services.db, 100, 2)
        await throttle.failed("BKONE", "198.51.100.10")
        await throttle.failed("x" * 8192, "198.51.100.10")  # no key ID: counted by address
        with pytest.raises(TooManyRequests, match="address"):
            throttle.check("BKTHREE", "198.51.100.10")
        off = LoginThrottle(services.db, 100, 0)
        for _ in range(5):
            await off.failed("x" * 8192, "198.51.100.11")
        off.check("BKTHREE", "198.51.100.11")

    world.run(scenario)


def test_a_new_window_starts_the_count_again_and_old_ones_are_pruned(world: World) -> None:
    async def scenario(services: Services) -> int:
        throttle = LoginThrottle(services.db, 2, 0, window_seconds=0.5)
        for _ in range(2):
            await throttle.failed("BKWINDOW", "198.51.100.20")
        with pytest.raises(TooManyRequests):
            throttle.check("BKWINDOW", "198.51.100.20")
        await asyncio.sleep(0.6)
        throttle.check("BKWINDOW", "198.51.100.20")
        await throttle.failed("BKWINDOW", "198.51.100.20")  # the first of a new window
        throttle.check("BKWINDOW", "198.51.100.20")
        await asyncio.sleep(0.6)
        assert await throttle.prune() >= 1
        async with services.db.read() as conn:
            left = await conn.scalar(
                select(func.count())
                .select_from(login_failures)
                .where(login_failures.c.counter.like("key:BKWINDOW@%"))
            )
        return int(left or 0)

    assert world.run(scenario) == 0


def test_the_refusals_kept_in_memory_are_bounded(world: World) -> None:
    async def scenario(services: Services) -> None:
        throttle = LoginThrottle(services.db, 1, 0, max_tracked=20)
        for number in range(100):
            await throttle.failed(f"BKMANY{number:04d}", "198.51.100.30")
        assert len(throttle) == 20
        # The refusals kept are the recent ones.
        with pytest.raises(TooManyRequests):
            throttle.check("BKMANY0099", "198.51.100.30")

    world.run(scenario)


def test_an_ipv6_client_is_counted_by_its_64_network(world: World) -> None:
    """A guesser with a /64 (what one host or subscriber is given) cannot take turns with its
    2^64 addresses: the per-address and per-key limits count the network as one client. Another
    /64, and IPv4 clients (mapped into IPv6 too), are counted by their own address."""

    async def scenario(services: Services) -> None:
        throttle = LoginThrottle(services.db, 2, 3)
        for host in range(1, 3):
            await throttle.failed("BKSIXFOUR", f"2001:db8:1:2::{host}")
        with pytest.raises(TooManyRequests, match="access key"):
            throttle.check("BKSIXFOUR", "2001:db8:1:2:ffff:ffff:ffff:ffff")
        await throttle.failed("alice", "2001:db8:1:2:abcd::7")
        with pytest.raises(TooManyRequests, match="address"):
            throttle.check("bob", "2001:db8:1:2::99", user=True)
        throttle.check("BKSIXFOUR", "2001:db8:1:3::1")  # another /64
        throttle.check("bob", "2001:db8:1:3::1", user=True)
        for _ in range(3):
            await throttle.failed("carol", "::ffff:198.51.100.30")
        with pytest.raises(TooManyRequests, match="address"):
            throttle.check("dave", "198.51.100.30", user=True)
        throttle.check("dave", "198.51.100.31", user=True)

    world.run(scenario)
