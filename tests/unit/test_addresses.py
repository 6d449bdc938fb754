"""The address a server tells clients to use (`berth.addresses`)."""

from __future__ import annotations

from typing import TypedDict

import pytest

from berth.addresses import public_url
from berth.config import Settings


class GivenSettings(TypedDict, total=False):
    """The settings each case gives, as a user would write them."""

    listen: str
    domain: str
    region: str
    tls_cert: str
    tls_key: str


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
