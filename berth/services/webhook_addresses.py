"""Where a webhook may send: http(s) URLs whose host resolves only to public addresses, unless
the operator allows private ones (`webhook_allow_private`). Checked when an endpoint is made and
again before every delivery (a name's addresses change), and a delivery connects to the address
checked, so a name re-pointed between the check and the connection cannot reach inside."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from berth.domain.errors import InvalidValue

MAX_URL_LENGTH = 2048
RESOLVE_SECONDS = 5.0
METADATA_ADDRESS = ipaddress.ip_address("169.254.169.254")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(InvalidValue):
    """A webhook URL that may not be used (its form, or where its host leads)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "url")


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL and the address a delivery connects to."""

    url: str
    scheme: str
    host: str
    port: int
    address: Address

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return parts._replace(netloc=f"{host}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_form(url: str) -> tuple[str, str, int]:
    """The URL's scheme, host and port, or AddressRefused saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise AddressRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("the URL must start with http:// or https://")
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused(
            "the URL may not carry a user name or password; the endpoint checks the "
            "X-Berth-Signature header instead (give the webhook a secret)"
        )
    if parts.fragment:
        raise AddressRefused("the URL may not have a #fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refused_address(address: Address) -> str | None:
    """Why a webhook may not reach this address (None: it is public)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address == METADATA_ADDRESS:
        return "the cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "an address that is not public"
    return None


async def resolve(host: str, port: int) -> list[Address]:
    """The host's addresses (an address literal is its own)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS
        )
    except (OSError, TimeoutError) as exc:
        raise AddressRefused(f"the host {host!r} cannot be resolved ({exc})") from None
    addresses: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise AddressRefused(f"the host {host!r} has no addresses")
    return addresses


async def check_url(url: str, *, allow_private: bool) -> Target:
    """The URL checked and resolved, or AddressRefused. Without `allow_private`, every address
    of the host must be public (one private address among public ones is refused too: which
    one a client would use is not ours to know)."""
    scheme, host, port = check_form(url)
    addresses = await resolve(host, port)
    if not allow_private:
        for address in addresses:
            why = refused_address(address)
            if why is not None:
                raise AddressRefused(
                    f"the host {host!r} resolves to {address}, {why}; webhooks may reach "
                    "only public addresses unless the server's webhook_allow_private "
                    "setting is on"
                )
    return Target(url, scheme, host, port, addresses[0])
