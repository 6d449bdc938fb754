"""`berth`: serve the registry, and administer projects and repositories.

Admin verbs work on the metadata database directly (the same settings as `serve`); they never
create one or migrate its schema (`berth init` or `berth serve` does). Every verb takes --json for scripts.
Exit codes: 0 ok, 1 error, 2 a bad setting or flag, 3 already exists.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer

from berth.cli.common import Options
from berth.cli.data import data_app
from berth.cli.gc import gc_app
from berth.cli.images import image_app, tag_app
from berth.cli.immutability import immutability_app
from berth.cli.keys import key_app
from berth.cli.projects import member_app, project_app
from berth.cli.repositories import repo_app
from berth.cli.retention import retention_app
from berth.cli.scans import scan
from berth.cli.server import init, serve, status
from berth.cli.storage import storage_app
from berth.cli.uploads import upload_app
from berth.cli.usage import audit, usage
from berth.cli.users import user_app
from berth.cli.vulndb import vulndb_app
from berth.cli.webhooks import webhook_app

# Plain help text (no Rich markup): brackets in argument names such as PROJECT/REPO[/IMAGE]
# are text, and flags show no value type.
app = typer.Typer(
    help="Berth: a multi-tenant OCI container registry.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
# The order here is the order `berth --help` lists them in: verbs first, then nouns.
for verb in (serve, init, status, audit, usage, scan):
    app.command()(verb)
app.add_typer(project_app, name="project")
app.add_typer(repo_app, name="repo")
app.add_typer(user_app, name="user")
app.add_typer(member_app, name="member")
app.add_typer(key_app, name="key")
app.add_typer(gc_app, name="gc")
app.add_typer(retention_app, name="retention")
app.add_typer(storage_app, name="storage")
app.add_typer(upload_app, name="upload")
app.add_typer(image_app, name="image")
app.add_typer(tag_app, name="tag")
app.add_typer(webhook_app, name="webhook")
app.add_typer(immutability_app, name="immutability")
app.add_typer(vulndb_app, name="vulndb")
app.add_typer(data_app, name="data")


def _print_version(asked: bool) -> None:
    if asked:
        from berth.metadata.revisions import schema_head

        # The schema revision too: what a refusal of a newer or older schema names.
        print(f"berth {version('berth')} (database schema {schema_head()})")
        raise typer.Exit()


@app.callback()
def options(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="The data directory (else BERTH_DATA_DIR, the config file, ./berth-data)."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Say which database a verb uses.")
    ] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print Berth's version and the database schema revision it migrates to.",
        ),
    ] = False,
) -> None:
    """Berth: a multi-tenant OCI container registry."""
    Options.data_dir = data_dir
    Options.verbose = verbose


if __name__ == "__main__":
    app()
