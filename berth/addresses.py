"""Where users reach this server: its public URL (the banner, the CLI's ready commands)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from berth.config import Settings

# The resolver's answer that a name does not exist (a typo in a setting), as opposed to one it
# could not get (EAI_AGAIN: no DNS server answered yet, as at a cold boot).
NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def host_not_found(host: str) -> str | None:
    """The resolver's words when it says `host` does not exist (a setting to put right, not an
    outage to wait out), else None: found, or no answer (waited for as an outage)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in NO_SUCH_NAME:
            return exc.strerror
    return None


def public_url(settings: Settings) -> str:
    """Where users reach this server: the `public_url` setting (a load balancer in front), or
    its own scheme and `public_host`."""
    if settings.public_url:
        return settings.public_url
    return f"{'https' if settings.tls else 'http'}://{public_host(settings)}"


def public_host(settings: Settings) -> str:
    """The host (and port) users reach this server at: the `public_url` setting's; with a
    domain configured, its registry host `{region}.{domain}` (which a certificate for the domain
    covers, unlike 127.0.0.1), with the port unless it is the scheme's own; else the address it
    listens on."""
    if settings.public_url:
        return urlsplit(settings.public_url).netloc
    if _has_domain(settings):
        port = settings.host_and_port[1]
        default_port = 443 if settings.tls else 80
        name = settings.project_host_suffix.lstrip(".")
        return name + ("" if port == default_port else f":{port}")
    return listen_address(settings)


def listen_address(settings: Settings) -> str:
    """The host and port `listen` is reached at from this machine (an IPv6 address in
    brackets)."""
    host, port = settings.host_and_port
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # listening on every address: this machine's own reaches it
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _has_domain(settings: Settings) -> bool:
    """A domain of the server's own (not the default `localhost`, not an IP address)."""
    domain = settings.domain.strip(".").lower()
    return domain not in ("localhost", "") and not _is_ip_address(domain)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class ResolvedNames:
    """Whether this machine's resolver finds a host name (what docker on it would ask), each
    answer kept `keep_for` seconds: a console page asks once per project it shows. One per
    `Services` (an app's own, not the process's); at most `bound` names are kept, all
    forgotten at once when that many are (names come from requests' Host headers)."""

    def __init__(
        self,
        *,
        keep_for: float = 60.0,
        bound: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep_for = keep_for
        self.bound = bound
        self.clock = clock
        self._answers: dict[str, tuple[float, bool]] = {}

    async def resolves_here(self, hostname: str) -> bool:
        now = self.clock()
        kept = self._answers.get(hostname)
        if kept is not None and now - kept[0] < self.keep_for:
            return kept[1]
        try:
            await asyncio.get_running_loop().getaddrinfo(hostname, None, type=socket.SOCK_STREAM)
            found = True
        except OSError:  # socket.gaierror: no such name here
            found = False
        if hostname not in self._answers and len(self._answers) >= self.bound:
            self._answers.clear()
        self._answers[hostname] = (now, found)
        return found

    def __len__(self) -> int:
        return len(self._answers)
