"""The settings that name network places, in the forms they take: HOST:PORT (listen,
metrics_listen), an origin (public_url), IP addresses and networks (trusted_proxies)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def checked_host_and_port(value: str | None) -> str | None:
    """listen's and metrics_listen's check."""
    if value is None:
        return None
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:5000")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError("needs brackets around an IPv6 address, e.g. [::1]:5000")
    return value


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def checked_origin(value: str | None) -> str | None:
    """public_url's check, and the origin without a trailing slash, its host in lower case
    (as hosts are compared)."""
    if value is None:
        return None
    url = urlsplit(value)
    try:
        port = url.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        port = -1
    if url.scheme not in ("http", "https") or not url.hostname or port == -1:
        raise ValueError(
            "must be http:// or https:// then a host, e.g. https://kr-central-2.kcr.dev"
        )
    if url.path.strip("/") or url.query or url.fragment or url.username or url.password:
        raise ValueError(
            "must be only a scheme and a host (and port): Berth serves at the root of it"
        )
    return f"{url.scheme}://{url.netloc.lower()}"


def checked_proxy_networks(value: str) -> str:
    """trusted_proxies' check: a comma-separated list of IP addresses and networks."""
    entries = _comma_separated(value)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            # The message follows the value as given: the entry is named only in a list.
            which = "" if len(entries) == 1 else f"holds {entry!r}, which "
            raise ValueError(
                f"{which}is not an IP address or network (e.g. 10.0.0.5 or 10.0.1.0/24)"
            ) from None
    return value


def proxy_networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in _comma_separated(value)]


def _comma_separated(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]
