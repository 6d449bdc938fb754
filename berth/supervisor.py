"""The supervisor process of `berth serve`: it loads Berth's modules, then runs granian, which
forks the workers from it. The workers find the modules loaded, in pages they share with the
supervisor and with each other until one of them writes to a page: with two workers the
server's memory (PSS) is 30-40 MB lower than when each worker imports them itself
(docs/operations.md, "Memory"). `berth serve` runs it for two workers or more. Nothing here
opens a file, a connection or a thread: each worker builds its own application and services
after the fork.

Berth's modules are imported in `load_modules`, not when this module is: a scan process is
spawned (berth/services/scanning/processes.py), and spawn imports the main module of the
process that starts it (this one, in a worker forked from here) before its work; imported at
the top, they would put the whole application (FastAPI, the API's models: ~11 MB RSS) in every
scan process, which uses none of it."""

from __future__ import annotations

import gc


def load_modules() -> None:
    """Import what a worker imports to build the app and start it, without building it."""
    from sqlalchemy.engine import make_url

    import berth.app  # noqa: F401 - the point: loaded here, shared by the workers
    from berth.api.app import routers
    from berth.config import load_settings

    routers()  # the management API's, imported by name when a worker builds the API
    # The database's driver (aiosqlite or asyncpg), imported by its first connection.
    make_url(load_settings().resolved_database_url).get_dialect().import_dbapi()
    # Out of the collector's reach: a collection in a worker would otherwise write to the
    # header of every object it finds, copying the shared pages into that worker.
    gc.collect()
    gc.freeze()


def main() -> None:
    load_modules()
    from granian.cli import entrypoint  # granian's command line (click), as `python -m granian`

    entrypoint()  # type: ignore[no-untyped-call]  # berth.server.granian_arguments


if __name__ == "__main__":
    main()
