"""The cache behind access checks and verified tokens: an entry is found until its deadline
and not after, None kept is found as None, and the cache never holds more than its bound
(oldest out first, expired ones out as new ones come)."""

from __future__ import annotations

import pytest

from berth.access.expiring import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_found_until_its_deadline() -> None:
    clock = Clock()
    cache: ExpiringCache[str, str | None] = ExpiringCache(10, ttl=1.0, timer=clock)
    cache["role"] = "admin"
    cache["nobody"] = None  # an absence read from the database is kept too
    clock.now += 0.99
    assert cache["role"] == "admin" and cache.get("role") == "admin"
    assert cache["nobody"] is None
    with pytest.raises(KeyError):
        cache["never"]
    clock.now += 0.01
    with pytest.raises(KeyError):
        cache["role"]
    assert cache.get("nobody", "gone") == "gone"
    assert len(cache) == 0  # found expired: dropped


def test_put_keeps_an_entry_until_the_deadline_it_names() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(10, timer=clock)
    cache.put("token", 1, deadline=clock.now + 60)
    clock.now += 59
    assert cache.get("token") == 1
    clock.now += 1
    assert cache.get("token") is None
    with pytest.raises(TypeError):
        cache["no ttl"] = 2


def test_the_bound_holds_and_the_oldest_go_first() -> None:
    clock = Clock()
    cache: ExpiringCache[int, int] = ExpiringCache(3, ttl=5.0, timer=clock)
    for key in range(3):
        cache[key] = key
    cache[0] = 0  # set again: now the newest
    cache[3] = 3
    assert len(cache) == 3 and sorted(cache) == [0, 2, 3]
    clock.now += 5  # all expired: the next entry clears them out
    cache[4] = 4
    assert list(cache) == [4]
    cache.pop(4)
    cache.pop(4)  # absent: nothing to do
    cache[5] = 5
    cache.clear()
    assert len(cache) == 0
