"""The address a server tells clients to use (`berth.addresses`)."""

from __future__ import annotations

from typing import TypedDict

import pytest
from pydantic import ValidationError

from berth.addresses import public_host, public_url
from berth.config import Settings


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
