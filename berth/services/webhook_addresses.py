"""Where a webhook may send: http(s) URLs whose host resolves only to public addresses, unless
the operator allows private ones (`webhook_allow_private`). Checked when an endpoint is made and
again before every delivery (a name's addresses change), and a delivery connects to the address
checked, so a name re-pointed between the check and the connection cannot reach inside."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import string
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from berth.domain.descriptions import NOT_TEXT, lone_surrogate
from berth.domain.errors import InvalidValue

MAX_URL_LENGTH = 2048
RESOLVE_SECONDS = 5.0
METADATA_ADDRESS = ipaddress.ip_address("169.254.169.254")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ONLY_PUBLIC = (
    "webhooks may reach only public addresses unless webhook_allow_private is on (in "
    "berth.toml, which the server and the berth command both read, or as "
    "BERTH_WEBHOOK_ALLOW_PRIVATE in the environment of each)"
)

logger = logging.getLogger(__name__)


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
    if lone_surrogate(url):
        raise AddressRefused(f"the URL is {NOT_TEXT}")
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


def endpoint_key(url: str) -> str:
    """The URL as two webhooks of a project are compared by (one URL registered twice gets
    every event twice), in the forms RFC 3986 calls equal and a delivery sends alike: scheme
    and host in lower case, the host without a trailing dot (`hooks.example.` is the fully
    written `hooks.example`), an international name in its ASCII form, an IPv6 address in
    its short form, the default port left out, an empty path as `/`, `.` and `..` segments
    resolved (the HTTP client does so before sending), and percent-escapes in upper case with
    those of unreserved characters decoded (`%7e` is `~`). Otherwise the path and query stay
    as written, a trailing slash included: they are the receiver's to read, and `/hook` and
    `/hook/` may be different handlers (redirects are not followed). Only compared, never
    stored or shown: the webhook keeps the URL as given. For a URL `check_form` accepted."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = _host_key(parts.hostname or "")
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != (443 if scheme == "https" else 80):
        netloc = f"{netloc}:{parts.port}"
    path = _remove_dot_segments(_escapes_key(parts.path)) or "/"
    return urlunsplit((scheme, netloc, path, _escapes_key(parts.query), ""))


def _host_key(host: str) -> str:
    """A host (lower case already) as compared: the root's dot dropped, an IP address in its
    standard form, a name in IDNA's ASCII form (the resolver looks that one up)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:  # not a name IDNA can write; compared as written
        return name


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _escapes_key(text: str) -> str:
    """`text` with each percent-escape in upper case, or decoded when it is of an unreserved
    character (RFC 3986 6.2.2.1-2: either way the same resource)."""

    def one(escape: re.Match[str]) -> str:
        char = chr(int(escape.group(1), 16))
        return char if char in _UNRESERVED else escape.group(0).upper()

    return _ESCAPE.sub(one, text)


def _remove_dot_segments(path: str) -> str:
    """The path with `.` and `..` segments resolved (RFC 3986 5.2.4)."""
    kept: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                kept.append("")
        elif segment == "..":
            if len(kept) > 1:
                kept.pop()
            if last:
                kept.append("")
        else:
            kept.append(segment)
    return "/".join(kept)


# IPv6 prefixes that carry an IPv4 address in their last 32 bits and lead to it: NAT64's
# well-known and local-use prefixes (a NAT64 gateway connects to that IPv4 address, a private
# or metadata one included), SIIT's IPv4-translated form and the deprecated IPv4-compatible one.
_IPV4_CARRIERS = tuple(
    ipaddress.ip_network(prefix)
    for prefix in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)
# Special-purpose ranges refused whatever Python's `is_global` says: its lists changed between
# versions (3.11 before 3.11.10 takes these for public).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(prefix)
    for prefix in (
        "0.0.0.0/8",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # the 6to4 relay anycast
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "ff00::/8",  # multicast
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",  # documentation
    )
)


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, NAT64, 6to4, IPv4-compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if int(address) > 1 and any(address in network for network in _IPV4_CARRIERS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refused_address(address: Address) -> str | None:
    """Why a webhook may not reach this address (None: it is public). An IPv6 address that
    carries an IPv4 address is judged by that one."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            address = carried
    if address == METADATA_ADDRESS:
        return "the cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global or any(address in network for network in _NOT_PUBLIC):
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
    except (OSError, TimeoutError, UnicodeError) as exc:
        # UnicodeError: a name IDNA cannot encode (a control character, say) names no host.
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
    one a client would use is not ours to know). A name that does not resolve, or resolves
    inside, is refused in the same words, naming no address: a project admin may not map the
    server's network through the refusals (the server's log has the address)."""
    scheme, host, port = check_form(url)
    try:
        addresses = await resolve(host, port)
    except AddressRefused as refusal:
        if allow_private:
            raise
        logger.info("webhook host refused: %s", refusal.message)
        raise AddressRefused(_not_public(host)) from None
    if not allow_private:
        for address in addresses:
            why = refused_address(address)
            if why is None:
                continue
            if not _is_address(host):  # a name: say nothing of where it leads
                logger.info("webhook host refused: %r resolves to %s, %s", host, address, why)
                raise AddressRefused(_not_public(host))
            raise AddressRefused(f"the address {address} is {why}; {ONLY_PUBLIC}")
    return Target(url, scheme, host, port, addresses[0])


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _not_public(host: str) -> str:
    return f"the host {host!r} does not resolve to public addresses only; {ONLY_PUBLIC}"
