"""Where users reach this server: its public URL (the banner, the CLI's ready commands)."""

from __future__ import annotations

import ipaddress

from berth.config import Settings


def public_url(settings: Settings) -> str:
    """Where users reach this server: with a domain configured, its registry host
    `{region}.{domain}` (which a certificate for the domain covers, unlike 127.0.0.1), with the
    port unless it is the scheme's own; else the address it listens on."""
    host, port = settings.host_and_port
    tls = settings.tls_cert is not None and settings.tls_key is not None
    scheme = "https" if tls else "http"
    if has_domain(settings):
        default_port = 443 if tls else 80
        name = settings.project_host_suffix.lstrip(".")
        return f"{scheme}://{name}" + ("" if port == default_port else f":{port}")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"  # listening on every address: this machine's own reaches it
    shown_host = f"[{host.strip('[]')}]" if ":" in host else host
    return f"{scheme}://{shown_host}:{port}"


def has_domain(settings: Settings) -> bool:
    """A domain of the server's own (not the default `localhost`, not an IP address)."""
    domain = settings.domain.strip(".").lower()
    return domain not in ("localhost", "") and not _is_ip_address(domain)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
