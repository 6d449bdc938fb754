"""Webhook delivery against a real SQLite database and a real HTTP endpoint on loopback, with
the delivery job's clock driven by the test (retries a day long take no time)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from berth.domain.errors import Conflict, InvalidValue, RegistryError
from berth.domain.events import IMAGE_PUSHED, TAG_DELETED, TEST
from berth.jobs import Scheduler
from berth.jobs.leases import Lease, Leases
from berth.metadata.database import Database
from berth.metadata.tables import projects
from berth.services.records import plain
from berth.services.repositories import Repositories
from berth.services.webhook_addresses import endpoint_key, refused_address
from berth.services.webhook_delivery import WebhookDelivery
from berth.services.webhook_events import EventData, enqueue_event_now
from berth.services.webhook_log import TooManyPendingTests
from berth.services.webhooks import Webhooks
from tests.clients.machine import HOSTS_FILE, HostsEntries
from tests.webhook_receiver import Receiver, receiving

T = TypeVar("T")
START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def run(database_url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        db = Database(database_url)
        try:
            await Repositories(db).create_project("acme", actor="test")
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


async def push_event(db: Database, tag: str, event_type: str = IMAGE_PUSHED) -> None:
    data = EventData(project="acme", repository="app", image="", tag=tag, actor="alice")
    await enqueue_event_now(db, 1, event_type, data, f"app:{tag}")


def delivery(db: Database, clock: Clock, *, allow_private: bool = True) -> WebhookDelivery:
    return WebhookDelivery(
        db, allow_private=allow_private, timeout=2.0, retry_base=10.0, clock=clock
    )


def test_retries_in_order_with_backoff(database_url: str, receiver: Receiver) -> None:
    """500 twice then 200: the event arrives three times, and the next event waits behind it."""
    receiver.statuses = [500, 500]
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await push_event(db, "v2")
        await job.run()  # v1 refused; v2 waits behind it
        assert [e["data"]["tag"] for e in receiver.events()] == ["v1"]
        clock.advance(9)
        await job.run()  # not due yet: 10 s after the first refusal
        assert len(receiver.received) == 1
        clock.advance(1)
        await job.run()  # v1 refused again; the next wait is 20 s
        clock.advance(19)
        await job.run()
        assert len(receiver.received) == 2
        clock.advance(1)
        await job.run()  # v1 accepted, then v2 at once
        log, total = await hooks.deliveries("acme", created.id)
        return created, log, total

    created, log, total = run(database_url, work)
    events = receiver.events()
    assert [e["data"]["tag"] for e in events] == ["v1", "v1", "v1", "v2"]
    assert len({e["id"] for e in events[:3]}) == 1  # a retry repeats the event's id
    assert all(r.signed_with(created.secret) for r in receiver.received)
    assert receiver.received[0].headers["ce-type"] == IMAGE_PUSHED
    assert total == 2
    newest, oldest = log
    assert oldest.state == "delivered" and oldest.attempts == 3
    assert [a.outcome for a in oldest.attempt_log] == ["delivered", "retry", "retry"]
    assert [a.status_code for a in oldest.attempt_log] == [200, 500, 500]
    assert oldest.attempt_log[2].next_attempt_at == START + dt.timedelta(seconds=10)
    assert newest.state == "delivered" and newest.attempts == 1


def test_a_test_event_skips_a_failing_queue_and_is_attempted_once(
    database_url: str, receiver: Receiver
) -> None:
    """v1 refused and waiting for its retry, v2 behind it: a test event is sent at the next
    pass all the same, once. Refused, it has failed with the endpoint's answer, and is not
    sent again; the queue waits on, v2 naming the delivery it waits for."""
    receiver.statuses = [500] * 10
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await push_event(db, "v2")
        await job.run()  # v1 refused: its retry in 10 s
        queued = await hooks.send_test("acme", created.id, actor="alice")
        due = await job.has_work()
        await job.run()
        sent = [e["type"] for e in receiver.events()]
        clock.advance(10)
        await job.run()  # v1's retry is due (a retried test would be too): v1 alone is sent
        log, _ = await hooks.deliveries("acme", created.id)
        return queued, due, sent, log, [e["type"] for e in receiver.events()]

    queued, due, sent, log, received = run(database_url, work)
    assert sent == [IMAGE_PUSHED, TEST]
    assert due
    assert queued.state == "pending" and queued.waiting_for is None
    assert received == [IMAGE_PUSHED, TEST, IMAGE_PUSHED]
    test, v2, v1 = log
    assert test.event_type == TEST and test.state == "failed" and test.attempts == 1
    assert test.next_attempt_at is None and test.waiting_for is None
    (attempt,) = test.attempt_log
    assert attempt.outcome == "failed" and attempt.status_code == 500
    assert attempt.error == "the endpoint answered 500" and attempt.next_attempt_at is None
    assert v1.state == "pending" and v1.waiting_for is None
    assert v1.attempts == 2 and v1.next_attempt_at == START + dt.timedelta(seconds=30)
    assert v2.state == "pending" and v2.attempts == 0
    assert v2.waiting_for == v1.id and v2.next_attempt_at is None


def test_an_accepted_test_event_drains_the_queue_at_once(
    database_url: str, receiver: Receiver
) -> None:
    """The endpoint back (it accepts the test event): the delivery its queue waits for is
    retried in the same pass, not at the end of its backoff, and the rest follow in order."""
    receiver.statuses = [500, 500]
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await push_event(db, "v2")
        await job.run()  # v1 refused: retried in 10 s
        clock.advance(10)
        await job.run()  # refused again: the next retry in 20 s
        waiting = await job.has_work()
        await hooks.send_test("acme", created.id, actor="alice")
        clock.advance(1)
        await job.run()
        log, _ = await hooks.deliveries("acme", created.id)
        return waiting, log

    waiting, log = run(database_url, work)
    assert not waiting
    sent = [(e["type"], e["data"].get("tag")) for e in receiver.events()]
    assert sent == [
        (IMAGE_PUSHED, "v1"),
        (IMAGE_PUSHED, "v1"),
        (TEST, None),
        (IMAGE_PUSHED, "v1"),
        (IMAGE_PUSHED, "v2"),
    ]
    test, v2, v1 = log
    assert [d.state for d in log] == ["delivered"] * 3
    assert [a.outcome for a in v1.attempt_log] == ["delivered", "retry", "retry"]
    assert v1.attempt_log[0].at == START + dt.timedelta(seconds=11)  # not 30 s: its backoff
    assert test.attempts == 1 and v2.attempts == 1


def test_a_refused_test_event_leaves_the_backoff_alone(
    database_url: str, receiver: Receiver
) -> None:
    """The endpoint still down (it refuses the test event too): the queue's retry stays where
    its backoff put it."""
    receiver.statuses = [500, 500, 500]
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await job.run()  # v1 refused: retried in 10 s
        await hooks.send_test("acme", created.id, actor="alice")
        clock.advance(1)
        await job.run()  # the test refused: v1 still waits
        clock.advance(8)
        await job.run()  # 9 s: not yet
        before = len(receiver.received)
        clock.advance(1)
        await job.run()  # 10 s: v1's retry
        return before, [e["type"] for e in receiver.events()]

    before, sent = run(database_url, work)
    assert before == 2
    assert sent == [IMAGE_PUSHED, TEST, IMAGE_PUSHED]


def test_gives_up_after_a_day_then_sends_the_next(database_url: str, receiver: Receiver) -> None:
    receiver.statuses = [503] * 1000
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, sign=False, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await job.run()
        while (await hooks.deliveries("acme", created.id))[0][0].state == "pending":
            clock.advance(3600)
            await job.run()
        receiver.statuses = []
        await push_event(db, "v2")
        await job.run()
        return (await hooks.deliveries("acme", created.id))[0]

    newest, given_up = run(database_url, work)
    assert given_up.state == "failed"
    assert given_up.finished_at is not None
    assert given_up.finished_at - given_up.created_at <= dt.timedelta(days=1)
    assert given_up.attempt_log[0].outcome == "failed"
    assert newest.state == "delivered"
    assert "x-berth-signature" not in receiver.received[-1].headers  # made without a secret


def test_subscriptions_filter_and_secret_shown_once(database_url: str, receiver: Receiver) -> None:
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create(
            "acme", receiver.url, event_types=[TAG_DELETED], secret="s" * 20, actor="alice"
        )
        await push_event(db, "v1")
        await push_event(db, "v1", TAG_DELETED)
        await delivery(db, clock).run()
        return created, await hooks.list_webhooks("acme"), await hooks.get("acme", created.id)

    created, listed, shown = run(database_url, work)
    assert created.secret == "s" * 20
    assert "secret" not in listed[0].model_dump() and "secret" not in shown.model_dump()
    assert shown.signed and shown.event_types == [TAG_DELETED]
    assert [e["type"] for e in receiver.events()] == [TAG_DELETED]


def test_private_addresses_refused(database_url: str, receiver: Receiver) -> None:
    """Without webhook_allow_private: refused at creation, and at delivery (an endpoint made
    while it was allowed)."""
    clock = Clock()

    async def work(db: Database) -> Any:
        with pytest.raises(InvalidValue) as refused:
            await Webhooks(db, allow_private=False).create("acme", receiver.url, actor="alice")
        created = await Webhooks(db, allow_private=True).create("acme", receiver.url, actor="a")
        await push_event(db, "v1")
        await delivery(db, clock, allow_private=False).run()
        log, _ = await Webhooks(db, allow_private=True).deliveries("acme", created.id)
        return refused.value, log

    refusal, log = run(database_url, work)
    assert "the address 127.0.0.1 is a loopback address" in refusal.message
    assert refusal.field == "url"
    assert receiver.received == []
    attempt = log[0].attempt_log[0]
    assert attempt.outcome == "retry" and "loopback" in (attempt.error or "")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "the cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("10.1.2.3", "a private address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("fd00::1", "a private address"),
        ("100.64.0.1", "an address that is not public"),
        ("64:ff9b::a9fe:a9fe", "the cloud metadata address"),  # NAT64
        ("64:ff9b:1::a00:1", "a private address"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4
        ("::ffff:0:7f00:1", "a loopback address"),  # SIIT
        ("::127.0.0.1", "a loopback address"),  # IPv4-compatible
        ("192.0.0.8", "an address that is not public"),
        ("224.0.0.1", "an address that is not public"),
        ("ff02::1", "an address that is not public"),
        ("64:ff9b::5db8:d822", None),  # a public IPv4 address through NAT64
        ("2606:4700::1111", None),
        ("93.184.216.34", None),
    ],
)
def test_address_classes(address: str, why: str | None) -> None:
    import ipaddress

    assert refused_address(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("http://hooks.example./x", "http://Hooks.Example/x", True),
        ("http://hooks.example:80", "http://hooks.example/", True),
        ("https://hooks.example:443/x", "https://hooks.example/x", True),
        ("http://hooks.example:443/x", "http://hooks.example/x", False),
        ("http://h.example/a%2fb?q=%c3%a9", "http://h.example/a%2Fb?q=%C3%A9", True),
        ("http://h.example/%7Eme/%2D", "http://h.example/~me/-", True),
        ("http://h.example/a%2Fb", "http://h.example/a/b", False),
        ("http://h.example/a/./b/../c/..", "http://h.example/a/", True),
        ("http://h.example/../../x", "http://h.example/x", True),
        ("http://h.example/hook/", "http://h.example/hook", False),
        ("http://h.example//hook", "http://h.example/hook", False),
        ("http://h.example/?q=a+b", "http://h.example/?q=a%20b", False),
        ("http://bücher.example/", "http://xn--bcher-kva.example/", True),
        ("http://[0::1]:8080/", "http://[::1]:8080/", True),
    ],
)
def test_urls_compared_as_the_endpoint_they_address(one: str, other: str, same: bool) -> None:
    assert (endpoint_key(one) == endpoint_key(other)) is same


def test_bad_urls_refused(database_url: str) -> None:
    async def work(db: Database) -> list[str]:
        hooks = Webhooks(db, allow_private=True)
        problems = []
        for url in ("ftp://example.com/", "http://user:pw@127.0.0.1/", "http:///x", "x" * 10):
            with pytest.raises(InvalidValue) as refused:
                await hooks.create("acme", url, actor="alice")
            problems.append(refused.value.message)
        return problems

    problems = run(database_url, work)
    assert "http:// or https://" in problems[0]
    assert "user name or password" in problems[1]
    assert "no host" in problems[2]


def test_a_dead_endpoint_holds_up_only_itself(database_url: str, receiver: Receiver) -> None:
    """One pass: the endpoint that never answers costs its timeout once; the other endpoint
    gets both its events meanwhile."""
    clock = Clock()

    async def work(db: Database, silent: Receiver) -> Any:
        hooks = Webhooks(db, allow_private=True)
        dead = await hooks.create("acme", silent.url, actor="alice")
        await hooks.create("acme", receiver.url, actor="alice")
        await push_event(db, "v1")
        await push_event(db, "v2")
        # A timeout long against a loaded machine's delays: twice it is what "held up by
        # both events" would cost, so the bound below tells once from twice under load.
        job = WebhookDelivery(db, allow_private=True, timeout=3.0, retry_base=10.0, clock=clock)
        started = time.monotonic()
        await job.run()
        elapsed = time.monotonic() - started
        log, _ = await hooks.deliveries("acme", dead.id)
        return elapsed, log

    for silent in receiving(silent=True):
        elapsed, log = run(database_url, functools.partial(work, silent=silent))
        assert len(silent.received) == 1  # v2 waits behind v1
    assert [e["data"]["tag"] for e in receiver.events()] == ["v1", "v2"]
    assert elapsed < 6.0
    first = log[1].attempt_log[0]
    assert first.outcome == "retry" and first.error == "no answer within 3 s"
    assert first.status_code is None and 2900 <= first.duration_ms < 6000
    assert log[0].attempts == 0


def test_finished_deliveries_kept_a_week(database_url: str, receiver: Receiver) -> None:
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await job.run()
        clock.advance(6 * 86400)
        kept = await job.prune()
        clock.advance(86400 + 1)
        pruned = await job.prune()
        return kept, pruned, (await hooks.deliveries("acme", created.id))[1]

    assert run(database_url, work) == (0, 1, 0)


def test_work_is_due_only_at_an_endpoints_head(database_url: str, receiver: Receiver) -> None:
    """A pass has work when an event is queued or an endpoint's oldest pending delivery is
    due; not while that one waits for its retry, however many wait behind it."""
    receiver.statuses = [500]
    clock = Clock()

    async def work(db: Database) -> list[bool]:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        seen = [await job.has_work()]  # nothing yet
        await push_event(db, "v1")
        await push_event(db, "v2")
        seen.append(await job.has_work())  # two events queued
        await job.run()  # v1 refused (its retry in 10 s); v2 behind it
        seen.append(await job.has_work())
        clock.advance(10)
        seen.append(await job.has_work())  # v1's retry is due
        await hooks.update("acme", created.id, enabled=False, actor="alice")
        seen.append(await job.has_work())  # a disabled endpoint's queue waits
        return seen

    assert run(database_url, work) == [False, True, False, True, False]


def test_idle_nodes_only_read(database_url: str, receiver: Receiver) -> None:
    """Two nodes' schedulers with nothing to send leave the delivery job's lease untouched
    (no write each second on every node), yet look every second; a queued event is claimed
    and sent by one of them at the next look. (Counted in looks, not seconds: a loaded
    machine delays a pass by seconds.)"""

    async def work(db: Database) -> tuple[Lease, Lease, int, list[bool]]:
        await Webhooks(db, allow_private=True).create("acme", receiver.url, actor="alice")
        job = WebhookDelivery(db, allow_private=True, timeout=2.0, retry_base=10.0)
        looks: list[tuple[float, bool]] = []  # when each node's look began, and what it found

        async def has_work() -> bool:
            began = time.monotonic()
            found = await job.has_work()
            looks.append((began, found))
            return found

        delivery = dataclasses.replace(job.jobs()[0], has_work=has_work)
        nodes = [Scheduler(db, [delivery], holder=holder) for holder in ("a", "b")]
        leases = Leases(db, "reader")
        for node in nodes:
            node.start()
        try:
            await asyncio.sleep(2.5)
            idle = (await leases.read(["webhook-delivery"]))["webhook-delivery"]
            idle_looks = len(looks)
            await push_event(db, "v1")
            queued = time.monotonic()
            while not receiver.received and time.monotonic() - queued < 30:
                await asyncio.sleep(0.05)
            busy = (await leases.read(["webhook-delivery"]))["webhook-delivery"]
        finally:
            for node in nodes:
                await node.stop()
        return idle, busy, idle_looks, [found for began, found in looks if began >= queued]

    idle, busy, idle_looks, after_queued = run(database_url, work)
    assert idle.holder == "" and idle.expires_at.year == 1970  # never claimed
    # Each node looks at once, then every second: a node waiting longer between looks (a
    # retry's 5 s, the minute of MAX_WAIT_SECONDS) would look twice at most in 2.5 s.
    assert idle_looks >= 3
    assert after_queued[:1] == [True]  # the first look after the event found it
    assert busy.holder in ("a", "b")
    assert [e["data"]["tag"] for e in receiver.events()] == ["v1"]


class HookHost:
    """A host name of a test's own in /etc/hosts, which the resolver reads at every look-up:
    a name whose address changes, for real."""

    def __init__(self) -> None:
        self.name = f"hook-{uuid.uuid4().hex[:8]}.test"
        self._entry: HostsEntries | None = None

    def point_at(self, address: str) -> None:
        self.remove()
        self._entry = HostsEntries([self.name], address)
        self._entry.add()

    def remove(self) -> None:
        if self._entry is not None:
            self._entry.remove()
            self._entry = None


@pytest.fixture
def hook_host() -> Iterator[HookHost]:
    if not os.access(HOSTS_FILE, os.W_OK):
        pytest.skip("/etc/hosts is not writable here")
    host = HookHost()
    try:
        yield host
    finally:
        host.remove()


def test_a_name_re_pointed_inside_is_refused_at_delivery(
    database_url: str, receiver: Receiver, hook_host: HookHost
) -> None:
    """A name that resolved to a public address when the endpoint was made, then to loopback
    (DNS rebinding): the delivery is refused, nothing reaches the receiver behind it. Allowed
    private addresses, the same delivery goes to the address checked, under the URL's Host."""
    port = receiver.server.server_address[1]
    url = f"http://{hook_host.name}:{port}/hook"
    clock = Clock()

    async def work(db: Database) -> Any:
        hook_host.point_at("93.184.216.34")  # public: nothing is sent to it here
        created = await Webhooks(db, allow_private=False).create("acme", url, actor="alice")
        hook_host.point_at("127.0.0.1")
        await push_event(db, "v1")
        await delivery(db, clock, allow_private=False).run()
        log, _ = await Webhooks(db, allow_private=False).deliveries("acme", created.id)
        refused = list(receiver.received)
        clock.advance(10)
        await delivery(db, clock, allow_private=True).run()
        return log[0].attempt_log[0], refused

    attempt, refused = run(database_url, work)
    assert refused == []
    assert attempt.outcome == "retry"
    # Where the name leads is not said to the project (the server's log says it).
    assert attempt.error is not None and "127.0.0.1" not in attempt.error
    assert f"the host {hook_host.name!r} does not resolve to public addresses only" in (
        attempt.error
    )
    (sent,) = receiver.received
    assert sent.headers["host"] == f"{hook_host.name}:{port}"


def test_an_event_nobody_takes_is_not_queued(database_url: str, receiver: Receiver) -> None:
    """With no endpoint, a disabled one, or one taking other types, a change queues nothing:
    the delivery job stays unclaimed. The first endpoint to take the type gets what follows."""
    clock = Clock()

    async def work(db: Database) -> list[bool]:
        hooks = Webhooks(db, allow_private=True)
        job = delivery(db, clock)
        await push_event(db, "none")
        seen = [await job.has_work()]
        created = await hooks.create("acme", receiver.url, event_types=[TAG_DELETED], actor="a")
        await push_event(db, "other-type")
        seen.append(await job.has_work())
        await hooks.update("acme", created.id, enabled=False, actor="a")
        await push_event(db, "disabled", TAG_DELETED)
        seen.append(await job.has_work())
        await hooks.update("acme", created.id, enabled=True, actor="a")
        await push_event(db, "taken", TAG_DELETED)
        seen.append(await job.has_work())
        await job.run()
        return seen

    assert run(database_url, work) == [False, False, False, True]
    assert [e["data"]["tag"] for e in receiver.events()] == ["taken"]


def test_a_delivery_that_failed_for_good_is_sent_again_in_order_under_the_new_secret(
    database_url: str, receiver: Receiver
) -> None:
    """v1 given up after a day of refusals; the endpoint gets a new secret, and v2 is queued
    and refused too. Sent again, v1 joins the end of the queue (behind v2, which it names as
    the delivery it waits for) rather than overtaking it; the endpoint back, v2 goes, then
    v1's body once more, the same bytes and event id, signed with the new secret, its
    delivery naming the one it re-sends."""
    receiver.statuses = [500] * 1000
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True, clock=clock)
        created = await hooks.create("acme", receiver.url, actor="alice")
        job = delivery(db, clock)
        await push_event(db, "v1")
        await job.run()
        while (await hooks.deliveries("acme", created.id))[0][0].state == "pending":
            clock.advance(3600)
            await job.run()
        (given_up,), _ = await hooks.deliveries("acme", created.id)
        secret = await hooks.new_secret("acme", created.id, actor="alice")
        await push_event(db, "v2")
        await job.run()  # v2 refused: its retry in 10 s
        again = await hooks.redeliver("acme", created.id, given_up.id, actor="bob")
        refused_before = len(receiver.received)
        receiver.statuses = []
        clock.advance(10)
        await job.run()
        log, _ = await hooks.deliveries("acme", created.id)
        return given_up, secret, again, refused_before, log

    given_up, secret, again, refused_before, log = run(database_url, work)
    assert given_up.state == "failed"
    assert again.state == "pending" and again.redelivery_of == given_up.id
    assert again.event_id == given_up.event_id and again.attempts == 0
    v2_id = again.id - 1
    assert again.waiting_for == v2_id  # behind v2, not ahead of it
    after = receiver.received[refused_before:]
    assert [r.event["data"]["tag"] for r in after] == ["v2", "v1"]
    first_v1 = receiver.received[0]
    assert after[1].body == first_v1.body  # the same event, byte for byte
    assert after[1].headers["ce-id"] == given_up.event_id
    assert after[1].signed_with(secret) and not first_v1.signed_with(secret)
    resent, v2, original = log
    assert (resent.id, resent.state, resent.redelivery_of) == (again.id, "delivered", original.id)
    assert v2.state == "delivered" and v2.redelivery_of is None
    assert original.state == "failed"  # its own record stands


def test_only_a_finished_delivery_of_an_enabled_endpoint_is_sent_again(
    database_url: str, receiver: Receiver
) -> None:
    # Both endpoints refuse the event: their tasks run side by side, so either may be first.
    receiver.statuses = [500, 500]
    clock = Clock()

    async def work(db: Database) -> list[str]:
        hooks = Webhooks(db, allow_private=True, clock=clock)
        created = await hooks.create("acme", receiver.url, actor="alice")
        other = await hooks.create("acme", receiver.url + "/other", actor="alice")
        await push_event(db, "v1")
        await delivery(db, clock).run()  # refused: pending, its retry in 10 s
        (pending,), _ = await hooks.deliveries("acme", created.id)
        refusals = []
        for webhook_id, delivery_id in (
            (created.id, pending.id),  # pending: being sent already
            (created.id, pending.id + 100),  # no such delivery
            (other.id, pending.id),  # another endpoint's
        ):
            with pytest.raises(RegistryError) as refused:
                await hooks.redeliver("acme", webhook_id, delivery_id, actor="alice")
            refusals.append(f"{refused.value.status} {refused.value.message}")
        clock.advance(10)
        await delivery(db, clock).run()  # delivered
        await hooks.update("acme", created.id, enabled=False, actor="alice")
        with pytest.raises(RegistryError) as refused:
            await hooks.redeliver("acme", created.id, pending.id, actor="alice")
        refusals.append(f"{refused.value.status} {refused.value.message}")
        log, total = await hooks.deliveries("acme", created.id)
        assert total == 1 and log[0].state == "delivered"
        return refusals

    pending_refusal, unknown, elsewhere, disabled = run(database_url, work)
    assert pending_refusal.startswith("409 delivery 1 is still pending")
    assert unknown == "404 webhook 1 has no delivery 101"
    assert elsewhere == "404 webhook 2 has no delivery 1"
    assert disabled == "409 webhook 1 is disabled; enable it to send it events"


def _nulls(value: Any) -> list[str]:
    """The paths of the null values in a JSON value."""
    if isinstance(value, dict):
        return [f"{k}{'.' + p if p else ''}" for k, v in value.items() for p in _nulls(v) or []]
    if isinstance(value, list):
        return [p for item in value for p in _nulls(item)]
    return [""] if value is None else []


def test_the_delivery_log_shows_the_body_as_sent(database_url: str, receiver: Receiver) -> None:
    """A push by digest (no tag) and a test event (no subject, hardly any data): the log's
    event is the body the endpoint received, field for field, with no nulls for what the
    body leaves out."""
    clock = Clock()

    async def work(db: Database) -> Any:
        hooks = Webhooks(db, allow_private=True)
        created = await hooks.create("acme", receiver.url, actor="alice")
        data = EventData(project="acme", repository="app", image="", digest="sha256:ab", actor="a")
        await enqueue_event_now(db, 1, IMAGE_PUSHED, data, "app@sha256:ab")
        await hooks.send_test("acme", created.id, actor="alice")
        await delivery(db, clock).run()
        return (await hooks.deliveries("acme", created.id))[0]

    log = run(database_url, work)
    as_api = {d.event_id: d.model_dump(mode="json")["event"] for d in log}
    as_cli = {d["event_id"]: d["event"] for d in plain(log)}  # times as isoformat() writes them
    received = receiver.events()
    assert len(received) == 2
    for body in received:
        assert as_api[body["id"]] == body
        assert as_cli[body["id"]].keys() == body.keys() and _nulls(as_cli[body["id"]]) == []
        assert _nulls(body) == []
    test = next(e for e in received if e["type"] == TEST)
    assert "subject" not in test and set(test["data"]) == {"project", "actor"}


def test_one_url_is_one_webhook_per_project(database_url: str) -> None:
    """A URL the project has already, however its scheme, host and default port are written,
    is refused, when added and when another webhook is moved to it; a trailing slash on the
    path is another URL, and another project may have the same one."""

    async def work(db: Database) -> Any:
        await Repositories(db).create_project("other", actor="test")
        hooks = Webhooks(db, allow_private=True)
        first = await hooks.create("acme", "http://127.0.0.1:9/hook", actor="alice")
        refused = []
        for url in (
            "http://127.0.0.1:9/hook",
            "HTTP://127.0.0.1:9/hook",
            "http://LOCALHOST/",
        ):
            if url == "http://LOCALHOST/":
                await hooks.create("acme", "http://localhost:80", actor="alice")
            with pytest.raises(Conflict) as conflict:
                await hooks.create("acme", url, actor="alice")
            refused.append(conflict.value.message)
        slash = await hooks.create("acme", "http://127.0.0.1:9/hook/", actor="alice")
        await hooks.create("other", "http://127.0.0.1:9/hook", actor="alice")
        with pytest.raises(Conflict) as moved:
            await hooks.update("acme", slash.id, url="http://127.0.0.1:9/hook", actor="alice")
        # Its own URL written another way is no clash.
        same = await hooks.update("acme", first.id, url="HTTP://127.0.0.1:9/hook", actor="a")
        listed = [w.url for w in await hooks.list_webhooks("acme")]
        return refused, moved.value.message, same, listed

    refused, moved, same, listed = run(database_url, work)
    assert refused[0] == (
        "project 'acme' has a webhook to this URL already: webhook 1 (http://127.0.0.1:9/hook); "
        "a second would get every event twice. Change or delete that one instead"
    )
    assert "webhook 1 (http://127.0.0.1:9/hook)" in refused[1]
    assert "webhook 2 (http://localhost:80)" in refused[2]
    assert "webhook 1 (http://127.0.0.1:9/hook)" in moved
    assert same.url == "HTTP://127.0.0.1:9/hook"
    assert listed == ["HTTP://127.0.0.1:9/hook", "http://localhost:80", "http://127.0.0.1:9/hook/"]


def test_a_slow_endpoint_holds_up_only_its_own_queue(database_url: str, receiver: Receiver) -> None:
    """An endpoint that takes 0.8 s to accept each event has six queued; another project's
    event, queued once the job is at them, arrives at the job's next pass, a second or so
    later, not after the slow queue (another 4 s): the pass does not wait for it."""
    clock = Clock()

    async def work(db: Database, slow: Receiver) -> float | None:
        await Repositories(db).create_project("other", actor="test")
        async with db.read() as conn:
            other_id = (
                await conn.execute(select(projects.c.id).where(projects.c.name == "other"))
            ).scalar_one()
        hooks = Webhooks(db, allow_private=True)
        await hooks.create("acme", slow.url, actor="alice")
        await hooks.create("other", receiver.url, actor="bob")
        for n in range(6):
            await push_event(db, f"v{n}")
        running = asyncio.create_task(delivery(db, clock).run())
        while not slow.received:
            await asyncio.sleep(0.02)
        data = EventData(project="other", repository="app", image="", tag="b1", actor="bob")
        await enqueue_event_now(db, other_id, IMAGE_PUSHED, data, "app:b1")
        queued = time.monotonic()
        arrived: float | None = None
        while not running.done():
            if arrived is None and receiver.received:
                arrived = time.monotonic() - queued
            await asyncio.sleep(0.02)
        await running
        return arrived

    for slow in receiving(delay=0.8):
        arrived = run(database_url, functools.partial(work, slow=slow))
        assert [e["data"]["tag"] for e in slow.events()] == [f"v{n}" for n in range(6)]
    assert [e["data"]["tag"] for e in receiver.events()] == ["b1"]
    assert arrived is not None and arrived < 2.5, arrived


def test_an_endpoint_has_five_test_events_waiting_at_most(
    database_url: str, receiver: Receiver
) -> None:
    """A sixth test event, or a test's redelivery, is refused while five wait to be sent (each
    may take the whole timeout of an endpoint that hangs); an ordinary redelivery is not. Once
    the job has sent them, the next test is taken."""
    clock = Clock()

    async def work(db: Database) -> tuple[str, str, int, list[str]]:
        hooks = Webhooks(db, allow_private=True, clock=clock)
        hook = await hooks.create("acme", receiver.url, actor="alice")
        first = await hooks.send_test("acme", hook.id, actor="alice")
        await push_event(db, "v1")
        job = delivery(db, clock)
        await job.run()
        log, _ = await hooks.deliveries("acme", hook.id)
        pushed = next(d for d in log if d.event_type == IMAGE_PUSHED)
        for _ in range(5):
            await hooks.send_test("acme", hook.id, actor="alice")
        with pytest.raises(TooManyPendingTests) as sixth:
            await hooks.send_test("acme", hook.id, actor="alice")
        with pytest.raises(TooManyPendingTests) as again:
            await hooks.redeliver("acme", hook.id, first.id, actor="alice")
        await hooks.redeliver("acme", hook.id, pushed.id, actor="alice")
        await job.run()
        await hooks.send_test("acme", hook.id, actor="alice")
        await job.run()
        log, total = await hooks.deliveries("acme", hook.id, limit=50)
        return sixth.value.message, again.value.message, total, [d.state for d in log]

    sixth, again, total, states = run(database_url, work)
    assert (
        sixth
        == again
        == (
            "webhook 1 has 5 test events waiting to be sent, the most it may have; send another "
            "once they are sent (each within the webhook timeout): their outcomes are in its "
            "delivery log"
        )
    )
    assert total == 9 and set(states) == {"delivered"}
    types = [e["type"] for e in receiver.events()]
    assert types.count(TEST) == 7 and types.count(IMAGE_PUSHED) == 2
