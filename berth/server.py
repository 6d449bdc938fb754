"""Prepare the data directory and database, then hand over to granian, which sends blob files
through ASGI pathsend without copying them through Python."""

from __future__ import annotations

import asyncio
import os
import sys

from berth.addresses import public_url
from berth.config import Settings
from berth.metadata.migrate import upgrade
from berth.state import Services


def _bootstrap_admin(settings: Settings, url: str) -> None:
    """On an empty data directory, create the administrator and say once how to log in."""

    async def bootstrap() -> tuple[str, str | None] | None:
        services = Services.build(settings)  # also creates the server keys, before any worker
        try:
            return await services.identity.bootstrap_admin(settings.admin_password)
        finally:
            await services.close()

    created = asyncio.run(bootstrap())
    if created is None:
        return
    name, generated = created
    print(f"Created the administrator {name!r}.", flush=True)
    if generated:
        print(f"  password (shown only now): {generated}", flush=True)
    else:
        print("  password: the one given in BERTH_ADMIN_PASSWORD", flush=True)
    print(
        f"  Sign in to the console at {url}/console/ as {name!r}; create a project there (or\n"
        f"  berth project create PROJECT), then an access key under Access keys, and\n"
        f"  docker login {url.split('://', 1)[1]} --username KEY_ID --password SECRET",
        flush=True,
    )


def serve(settings: Settings) -> None:
    settings.data_dir = settings.data_dir.resolve()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    # Worker processes build their own Settings; hand them exactly what was resolved here.
    os.environ.update(settings.to_environ())
    host, port = settings.host_and_port
    tls = settings.tls_cert is not None and settings.tls_key is not None
    base = public_url(settings)
    print(f"Berth registry on {base}  (data in {settings.data_dir})")
    print(f"Web console: {base}/console/  (sign in as admin with its password)")
    print(f"Management API and its documentation: {base}/api/v1/docs")
    _bootstrap_admin(settings, base)
    # Replace this process with granian's own launcher: the supervisor then carries only
    # granian (not the CLI, Alembic and the rest), and workers import just the app.
    arguments = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(settings.workers),
        "--log-level",
        settings.log_level,
        "--no-access-log",  # an access log would carry query strings; nothing secret is logged
        "--respawn-failed-workers",
    ]
    if tls:
        arguments += [
            "--ssl-certificate",
            str(settings.tls_cert),
            "--ssl-keyfile",
            str(settings.tls_key),
            "--ssl-protocol-min",
            "tls1.2",
        ]
    sys.stdout.flush()
    os.execv(sys.executable, [*arguments, "berth.app:create_app"])
