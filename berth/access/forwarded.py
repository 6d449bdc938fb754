"""The client's own address behind trusted proxies.

Behind a proxy every connection comes from the proxy's address, so limits and counters per
address (the login throttle, requests in progress) would count every client together. A proxy
named in `trusted_proxies` appends the address it saw to X-Forwarded-For; `ForwardedClient`
puts that address in the scope's `client`, where everything after it reads the caller's address.

Only the entries trusted proxies wrote are believed: the list is read from the right, past
the trusted proxies' own addresses, and the first other address is the client. What a client
wrote itself (to the left) is never taken, so it cannot pose as another address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: Sequence[Network]
) -> bool:
    return any(address in network for network in proxies)


def forwarded_client(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The client's address: `peer` (the connection's), or when it is a trusted proxy, the
    address X-Forwarded-For names from outside the trusted proxies (`forwarded_for`: the
    header's values, in order). An entry that is not an address ends the walk at the last
    trusted one: the peer is kept rather than believing garbage."""
    client = _address(peer)
    if client is None or not _trusted(client, proxies):
        return peer
    entries = [entry for value in forwarded_for for entry in value.split(",")]
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            break
        client = address
        if not _trusted(address, proxies):
            break
    return str(client)


class ForwardedClient:
    """Pure ASGI middleware: the scope's `client` becomes the address a trusted proxy forwarded
    (the connection's own port is kept)."""

    def __init__(self, app: ASGIApp, *, proxies: Sequence[Network]) -> None:
        self.app = app
        self.proxies = list(proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client:
            forwarded_for = [
                value.decode("latin-1")
                for name, value in scope.get("headers", [])
                if name == b"x-forwarded-for"
            ]
            if forwarded_for:
                address = forwarded_client(str(client[0]), forwarded_for, self.proxies)
                if address != client[0]:
                    scope["client"] = (address, client[1])
        await self.app(scope, receive, send)
