"""The address a server tells clients to use (`berth.addresses`)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TypedDict

import pytest
from pydantic import ValidationError

from berth.addresses import ResolvedNames, listen_address, public_host, public_url
from berth.config import Settings
from tests.clients.machine import HOSTS_FILE, HostsEntries


class GivenSettings(TypedDict, total=False):
    """The settings each case gives, as a user would write them."""

    listen: str
    domain: str
    region: str
    tls_cert: str
    tls_key: str
    public_url: str


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({}, "http://127.0.0.1:5000"),
        ({"listen": "[::1]:5000"}, "http://[::1]:5000"),
        ({"domain": "kcr.dev", "region": "kr-central-2"}, "http://kr-central-2.kcr.dev:5000"),
        (
            {"domain": "kcr.dev", "listen": "0.0.0.0:443", "tls_cert": "c", "tls_key": "k"},
            "https://local.kcr.dev",
        ),
        ({"domain": "10.0.0.5", "listen": "0.0.0.0:80"}, "http://127.0.0.1:80"),
    ],
)
def test_the_public_url(settings: GivenSettings, url: str) -> None:
    assert public_url(Settings(**settings)) == url


@pytest.mark.parametrize(
    ("given", "url", "host"),
    [
        ("https://kr-central-2.kcr.dev/", "https://kr-central-2.kcr.dev", "kr-central-2.kcr.dev"),
        ("https://127.0.0.1:21443", "https://127.0.0.1:21443", "127.0.0.1:21443"),
        ("http://[::1]:8080", "http://[::1]:8080", "[::1]:8080"),
    ],
)
def test_a_public_url_behind_a_load_balancer_replaces_the_nodes_own(
    given: str, url: str, host: str
) -> None:
    """A node listening on 0.0.0.0:5000 behind nginx tells users the balancer's address."""
    settings = Settings(
        listen="0.0.0.0:5000", domain="kcr.dev", region="kr-central-2", public_url=given
    )
    assert (public_url(settings), public_host(settings)) == (url, host)


@pytest.mark.parametrize(
    ("settings", "address"),
    [
        ({"listen": "0.0.0.0:5000"}, "127.0.0.1:5000"),
        ({"listen": "[::]:5000"}, "127.0.0.1:5000"),
        ({"listen": "[::1]:5000"}, "[::1]:5000"),
        ({"listen": "0.0.0.0:443", "domain": "kcr.dev"}, "127.0.0.1:443"),
        ({"listen": "10.0.0.5:80", "public_url": "https://kcr.dev"}, "10.0.0.5:80"),
    ],
)
def test_the_listen_address_is_where_this_machine_reaches_listen(
    settings: GivenSettings, address: str
) -> None:
    """What `berth status` compares the recorded `served_at` with: `listen` as reached from
    this machine, whatever domain or public_url name the server elsewhere."""
    assert listen_address(Settings(**settings)) == address


@pytest.mark.parametrize(
    "given",
    [
        "kr-central-2.kcr.dev",
        "ftp://kcr.dev",
        "https://",
        "https://kcr.dev/registry",
        "https://kcr.dev:99999",
    ],
)
def test_a_public_url_is_a_scheme_and_host_only(given: str) -> None:
    with pytest.raises(ValidationError, match="public_url"):
        Settings(public_url=given)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hosts_file_writable() -> None:
    if not os.access(HOSTS_FILE, os.W_OK):
        pytest.skip("/etc/hosts is not writable here")


def _names(count: int) -> list[str]:
    suffix = uuid.uuid4().hex[:8]
    return [f"p{n}-{suffix}.localhost" for n in range(count)]


@pytest.mark.usefixtures("hosts_file_writable")
def test_a_name_s_answer_is_kept_for_its_time_then_asked_again() -> None:
    """A name that does not resolve, then does (added to /etc/hosts): the answer kept says
    it does not until `keep_for` has passed since it was asked, the resolver's after."""
    (name,) = _names(1)
    clock = Clock()
    names = ResolvedNames(keep_for=60.0, clock=clock)
    entry = HostsEntries([name])

    async def asked() -> list[bool]:
        answers = [await names.resolves_here(name)]
        entry.add()
        clock.now += 59.9
        answers.append(await names.resolves_here(name))
        clock.now += 0.1
        answers.append(await names.resolves_here(name))
        entry.remove()
        clock.now += 30
        answers.append(await names.resolves_here(name))  # kept from its last asking
        return answers

    try:
        assert asyncio.run(asked()) == [False, False, True, True]
    finally:
        entry.remove()


@pytest.mark.usefixtures("hosts_file_writable")
def test_at_most_bound_names_are_kept_and_then_all_are_asked_again() -> None:
    """With `bound` names kept, a new one forgets them all (none has expired): a name that
    resolves since is found at its next asking; an app's answers are its own."""
    first, second, third = _names(3)
    names = ResolvedNames(bound=2, clock=Clock())
    other_app = ResolvedNames(bound=2, clock=Clock())
    entry = HostsEntries([first])

    async def asked() -> list[object]:
        seen: list[object] = [await names.resolves_here(first), await names.resolves_here(second)]
        entry.add()
        seen += [await names.resolves_here(first), len(names)]  # kept: still not found
        seen += [await other_app.resolves_here(first)]  # asked afresh: found
        seen += [await names.resolves_here(third), len(names)]  # the bound: all forgotten
        seen += [await names.resolves_here(first), len(names)]
        return seen

    try:
        assert asyncio.run(asked()) == [False, False, False, 2, True, False, 1, True, 2]
    finally:
        entry.remove()
