"""Which address a request behind trusted proxies is counted against."""

from __future__ import annotations

import ipaddress

import pytest

from berth.access.forwarded import forwarded_client
from berth.config_loading import SettingsError, load_settings

PROXIES = [ipaddress.ip_network("10.0.0.5"), ipaddress.ip_network("10.1.0.0/16")]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # A trusted proxy: the address it appended (the rightmost) is the client.
        ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
        # What the client wrote itself, to the left, is not believed.
        ("10.0.0.5", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),
        # Trusted proxies in a chain are looked past, over several header lines too.
        ("10.0.0.5", ["198.51.100.1, 203.0.113.7", "10.1.2.3"], "203.0.113.7"),
        ("10.0.0.5", ["2001:db8::7"], "2001:db8::7"),
        # Not a trusted proxy: its header is ignored.
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        # Garbage ends the walk at the last trusted address.
        ("10.0.0.5", ["not-an-address"], "10.0.0.5"),
        ("10.0.0.5", ["198.51.100.1, junk, 10.1.0.9"], "10.1.0.9"),
        # Only trusted proxies: the leftmost of them.
        ("10.0.0.5", ["10.1.0.1, 10.1.0.2"], "10.1.0.1"),
    ],
)
def test_the_client_is_the_address_trusted_proxies_forwarded(
    peer: str, forwarded_for: list[str], client: str
) -> None:
    assert forwarded_client(peer, forwarded_for, PROXIES) == client


def test_trusted_proxies_must_be_addresses_or_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_TRUSTED_PROXIES", "10.0.0.5, nginx.internal")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        "BERTH_TRUSTED_PROXIES: '10.0.0.5, nginx.internal' holds 'nginx.internal', which is "
        "not an IP address or network (e.g. 10.0.0.5 or 10.0.1.0/24)"
    )
    # One value is said once.
    monkeypatch.setenv("BERTH_TRUSTED_PROXIES", "notanip")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        "BERTH_TRUSTED_PROXIES: 'notanip' is not an IP address or network "
        "(e.g. 10.0.0.5 or 10.0.1.0/24)"
    )
    monkeypatch.setenv("BERTH_TRUSTED_PROXIES", " 10.0.0.5 , 10.1.0.0/16,")
    assert load_settings().trusted_proxy_networks == PROXIES
