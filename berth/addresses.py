"""Where users reach this server: its public URL (the banner, the CLI's ready commands)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from berth.config import Settings


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
    host, port = settings.host_and_port
    if _has_domain(settings):
        default_port = 443 if settings.tls else 80
        name = settings.project_host_suffix.lstrip(".")
        return name + ("" if port == default_port else f":{port}")
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
