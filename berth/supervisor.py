"""The supervisor process of `berth serve`: with two workers or more it loads Berth's modules,
then runs granian, which forks the workers from it. The workers find the modules loaded, in
pages they share with the supervisor and with each other until one of them writes to a page:
with two workers the server's memory (PSS) is 30-40 MB lower than when each worker imports them
itself (docs/operations.md, "Memory"). One worker shares them with no one, and the supervisor
would hold a second copy of every page the worker writes to (~8 MB more): then it loads
nothing. Nothing here opens a file, a connection or a thread before granian: each worker
builds its own application and services after the fork. Once granian has stopped its workers,
it removes the directory of their metric files that `berth serve` made.

Berth's modules are imported in `load_modules`, not when this module is: a scan process is
spawned (berth/services/scanning/processes.py), and spawn imports the main module of the
process that starts it (this one, in a worker forked from here) before its work; imported at
the top, they would put the whole application (FastAPI, the API's models: ~11 MB RSS) in every
scan process, which uses none of it."""

from __future__ import annotations

import gc
import os
import sys


def load_modules() -> None:
    """Import what a worker imports to build the app and start it, without building it."""
    from sqlalchemy.engine import make_url

    import berth.app  # noqa: F401 - the point: loaded here, shared by the workers
    from berth.api.app import routers
    from berth.config_loading import load_settings
    from berth.state import load_service_modules

    routers()  # the management API's, imported by name when a worker builds the API
    load_service_modules()  # imported by name when a worker builds its services
    # The database's driver (aiosqlite or asyncpg), imported by its first connection.
    make_url(load_settings().resolved_database_url).get_dialect().import_dbapi()
    # Out of the collector's reach: a collection in a worker would otherwise write to the
    # header of every object it finds, copying the shared pages into that worker.
    gc.collect()
    gc.freeze()


def worker_count(arguments: list[str]) -> int:
    """The `--workers` of granian's command line (berth.server.granian_arguments names it)."""
    return int(arguments[arguments.index("--workers") + 1])


def remove_metric_files() -> None:
    """Remove the directory of the workers' metric files (PROMETHEUS_MULTIPROC_DIR, which
    `berth serve` made and emptied for this server alone: berth.server.metrics_directory),
    unless it is in systemd's RuntimeDirectory=, which systemd removes (or keeps, by
    RuntimeDirectoryPreserve=). In /dev/shm it would stay until the machine restarts."""
    import shutil
    from pathlib import Path

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not directory or (runtime and Path(directory).is_relative_to(runtime)):
        return
    shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    if worker_count(sys.argv) > 1:
        load_modules()
    from granian.cli import entrypoint  # granian's command line (click), as `python -m granian`

    try:
        entrypoint()  # type: ignore[no-untyped-call]  # berth.server.granian_arguments
    finally:
        # granian returns (or exits) once it has stopped its workers: on SIGTERM, SIGINT, or
        # workers dying again and again. SIGKILL leaves the directory to the next start.
        remove_metric_files()


if __name__ == "__main__":
    main()
