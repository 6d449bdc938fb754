"""Run the ASGI app under granian, which sends files through ASGI pathsend without copying them
through Python."""

from __future__ import annotations

import os

from granian import Granian
from granian.constants import Interfaces, SSLProtocols
from granian.log import LogLevels

from berth.config import Settings
from berth.metadata.migrate import upgrade


def serve(settings: Settings) -> None:
    settings.data_dir = settings.data_dir.resolve()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    # Worker processes build their own Settings; hand them exactly what was resolved here.
    os.environ.update(settings.to_environ())
    host, port = settings.host_and_port
    tls = settings.tls_cert is not None and settings.tls_key is not None
    scheme = "https" if tls else "http"
    shown_host = f"[{host}]" if ":" in host else host
    print(f"Berth registry on {scheme}://{shown_host}:{port}  (data in {settings.data_dir})")
    print("Access control is not enabled yet: anyone who reaches this address can push and pull.")
    server = Granian(
        "berth.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        log_level=LogLevels(settings.log_level),
        ssl_cert=settings.tls_cert if tls else None,
        ssl_key=settings.tls_key if tls else None,
        ssl_protocol_min=SSLProtocols.tls12,
    )
    server.serve()
