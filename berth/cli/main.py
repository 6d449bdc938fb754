"""`berth`: serve the registry, and administer projects and repositories.

Admin verbs work on the metadata database directly (the same settings as `serve`); they never
create one (`berth init` or `berth serve` does). Every verb takes --json for scripts.
Exit codes: 0 ok, 1 error, 2 a bad setting or flag, 3 already exists.
"""

from __future__ import annotations

import datetime as dt
import shlex
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from berth.cli import accounts
from berth.cli.common import (
    BAD_SETTING,
    CLI_CLIENT,
    JsonFlag,
    KeyIdArg,
    Options,
    ProjectArg,
    TagArg,
    UserArg,
    cell,
    cli_actor,
    console,
    data_table,
    done,
    fail,
    print_json,
    read_password,
    run_service,
    settings_or_exit,
    when,
)
from berth.cli.gc import gc_app
from berth.cli.storage import storage_app
from berth.config import SettingsError, config_file
from berth.data_location import missing_data, shown_database, where_to_point
from berth.domain.errors import NameUnknown
from berth.services.identity import CreatedKey
from berth.services.images import Images
from berth.services.records import plain
from berth.state import Services

# Plain help text (no Rich markup): brackets in argument names such as PROJECT/REPO[/IMAGE]
# are text, and flags show no value type.
app = typer.Typer(
    help="Berth: a multi-tenant OCI container registry.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
project_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
repo_app = typer.Typer(help="Repositories in a project.", no_args_is_help=True)
user_app = typer.Typer(help="Users and service accounts.", no_args_is_help=True)
member_app = typer.Typer(help="Project members and their roles.", no_args_is_help=True)
key_app = typer.Typer(help="Access keys for docker login and other clients.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(repo_app, name="repo")
app.add_typer(user_app, name="user")
app.add_typer(member_app, name="member")
app.add_typer(key_app, name="key")
app.add_typer(gc_app, name="gc")
app.add_typer(storage_app, name="storage")
image_app = typer.Typer(help="Images in a repository and their history.", no_args_is_help=True)
tag_app = typer.Typer(help="Tags: restore a removed tag.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(tag_app, name="tag")


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    console.print(data_table(rows, columns, title))


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
) -> None:
    """Berth: a multi-tenant OCI container registry."""
    Options.data_dir = data_dir
    Options.verbose = verbose


@app.command()
def serve(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    listen: Annotated[str | None, typer.Option(help="host:port to listen on.")] = None,
    domain: Annotated[str | None, typer.Option(help="Registry domain.")] = None,
    region: Annotated[str | None, typer.Option(help="Region name.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Start the registry (creating its data directory and database on first start)."""
    from berth.server import serve as run_server

    flags = {
        "data_dir": data_dir,
        "listen": listen,
        "domain": domain,
        "region": region,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "database_url": database_url,
        "workers": workers,
    }
    settings = settings_or_exit(**flags)
    given = {name for name, value in flags.items() if value is not None}
    if Options.data_dir is not None:
        given.add("data_dir")
    try:
        run_server(settings, given)
    except SettingsError as exc:
        fail(str(exc), BAD_SETTING)


@app.command()
def init(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL.")] = None,
) -> None:
    """Create the data directory, the database and the administrator, without serving."""
    from berth.server import initialise

    settings = settings_or_exit(data_dir=data_dir, database_url=database_url)
    if missing_data(settings) is None:
        fail(f"Berth data exists already: {shown_database(settings)}", 3)
    initialise(settings)
    console.print(
        Text(f"Created Berth data in {settings.data_dir.absolute()} ({shown_database(settings)})")
    )


@app.command()
def status(json_output: JsonFlag = False) -> None:
    """Say which settings file, data directory and database the verbs use, and whether a server
    answers on the configured address."""
    settings = settings_or_exit()
    missing = missing_data(settings)
    host, port = settings.host_and_port
    try:
        socket.create_connection((host, port), timeout=1).close()
        listening = True
    except OSError:
        listening = False
    config, database = config_file(), shown_database(settings)
    data_dir = str(settings.data_dir.absolute())
    if json_output:
        print_json(
            {
                "config_file": str(config),
                "config_file_found": config.is_file(),
                "data_dir": data_dir,
                "database": database,
                "data_found": missing is None,
                "listen": settings.listen,
                "server_listening": listening,
            }
        )
    else:
        table = Table(title="Berth", show_header=False)
        table.add_column("item", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("Config file", Text(f"{config}{'' if config.is_file() else ' (not found)'}"))
        table.add_row("Data directory", Text(data_dir))
        table.add_row("Database", Text(database + ("" if missing is None else " (not found)")))
        answers = " (a server answers)" if listening else " (nothing listening)"
        table.add_row("Listen", Text(settings.listen + answers))
        console.print(table)
    if missing is not None:
        flags = {"data_dir"} if Options.data_dir is not None else set()
        fail(f"{missing}\n{where_to_point(flags)}")


@project_app.command("create")
def project_create(name: ProjectArg, json_output: JsonFlag = False) -> None:
    """Create a project."""
    run_service(lambda s: s.repositories.create_project(name))
    if json_output:
        print_json({"name": name})
    else:
        console.print(f"Created project [bold]{name}[/]")


@project_app.command("list")
def project_list(json_output: JsonFlag = False) -> None:
    """List projects."""
    found = plain(run_service(lambda s: s.repositories.list_projects()))
    if json_output:
        print_json(found)
    else:
        _table(found, ["name", "created_at"], "Projects")


def _split_repo(value: str) -> tuple[str, str]:
    project, _, repository = value.partition("/")
    if not project or not repository:
        raise typer.BadParameter(f"expected PROJECT/REPOSITORY, got {value!r}")
    return project, repository


@repo_app.command("create")
def repo_create(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    public: Annotated[bool, typer.Option("--public", help="Anyone may pull.")] = False,
    no_tag_overwrite: Annotated[
        bool, typer.Option("--no-tag-overwrite", help="Refuse to move an existing tag.")
    ] = False,
    description: Annotated[str, typer.Option(help="Up to 100 characters.")] = "",
    scan: Annotated[str, typer.Option(help="Image scan: auto or manual.")] = "manual",
    json_output: JsonFlag = False,
) -> None:
    """Create a repository; images can be pushed into it afterwards."""
    project, repository = _split_repo(name)
    created = plain(
        run_service(
            lambda s: s.repositories.create(
                project,
                repository,
                public=public,
                tag_overwrite=not no_tag_overwrite,
                description=description,
                scan_mode=scan,
            )
        )
    )
    if json_output:
        print_json(created)
    else:
        console.print(
            f"Created repository [bold]{project}/{repository}[/] ({created['visibility']})"
        )


@repo_app.command("list")
def repo_list(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List a project's repositories."""
    found = plain(run_service(lambda s: s.repositories.list(project)))
    if json_output:
        print_json(found)
    else:
        _table(
            found,
            [
                "name",
                "description",
                "images",
                "scan_mode",
                "tag_overwrite",
                "visibility",
                "updated_at",
            ],
            f"Repositories in {project}",
        )


@repo_app.command("grant")
def repo_grant(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    user: UserArg,
    role: Annotated[str, typer.Option(help="member (push, pull) or viewer (pull).")],
    json_output: JsonFlag = False,
) -> None:
    """Give a user outside the project a role on one repository."""
    project, repository = _split_repo(name)
    run_service(lambda s: s.identity.grant(project, repository, user, role))
    done(
        json_output,
        {"repository": name, "user": user, "role": role},
        f"{user} is now repository {role} of {name}",
    )


@repo_app.command("revoke")
def repo_revoke(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    user: UserArg,
    json_output: JsonFlag = False,
) -> None:
    """Remove a user's role on a repository."""
    project, repository = _split_repo(name)
    run_service(lambda s: s.identity.revoke(project, repository, user))
    done(json_output, {"repository": name, "user": user}, f"{user} has no role on {name} now")


REPOSITORY_COLUMNS = [
    "name",
    "description",
    "images",
    "scan_mode",
    "tag_overwrite",
    "visibility",
    "updated_at",
]


def _show_repository(found: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value", overflow="fold")  # a long name whole, on two lines
    for column in ["project", *REPOSITORY_COLUMNS, "created_at"]:
        table.add_row(column.replace("_", " "), Text(cell(found[column], column)))
    console.print(table)


@repo_app.command("show")
def repo_show(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")], json_output: JsonFlag = False
) -> None:
    """Show a repository's settings and image count."""
    project, repository = _split_repo(name)
    found = plain(run_service(lambda s: s.repositories.show(project, repository)))
    if json_output:
        print_json(found)
    else:
        _show_repository(found, f"Repository {name}")


@repo_app.command("update")
def repo_update(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    public: Annotated[
        bool | None, typer.Option("--public/--private", help="Visibility.", show_default=False)
    ] = None,
    tag_overwrite: Annotated[
        bool | None,
        typer.Option(
            "--tag-overwrite/--no-tag-overwrite", help="Allow moving tags.", show_default=False
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Up to 100 characters.")] = None,
    scan: Annotated[str | None, typer.Option(help="Image scan: auto or manual.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Change a repository's settings (the name is fixed once created)."""
    project, repository = _split_repo(name)
    updated = plain(
        run_service(
            lambda s: s.repositories.update(
                project,
                repository,
                public=public,
                tag_overwrite=tag_overwrite,
                description=description,
                scan_mode=scan,
                actor=cli_actor(),
                client=CLI_CLIENT,
            )
        )
    )
    if json_output:
        print_json(updated)
    else:
        _show_repository(updated, f"Updated repository {name}")


@repo_app.command("delete")
def repo_delete(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete a repository with its images and tags (their data goes at the next GC)."""
    project, repository = _split_repo(name)
    if not yes and not typer.confirm(f"Delete {name} with all its images?"):
        raise typer.Exit(1)

    async def work(s: Services) -> None:
        await s.repositories.delete(project, repository, actor=cli_actor(), client=CLI_CLIENT)

    run_service(work)
    done(json_output, {"repository": name, "deleted": True}, f"Deleted repository {name}")


def _split_image(value: str) -> tuple[str, str, str]:
    """PROJECT/REPOSITORY[/IMAGE...] -> (project, repository, image)."""
    project, repository = _split_repo(value)
    repository, _, image = repository.partition("/")
    return project, repository, image


async def _repository_ref(s: Services, project: str, repository: str) -> Any:
    _project_id, repo = await s.repositories.lookup(project, repository)
    if repo is None:
        raise NameUnknown(f"repository {project}/{repository} does not exist")
    return repo


def _short(digest: str | None) -> str:
    return digest.split(":", 1)[-1][:12] if digest else ""


@image_app.command("list")
def image_list(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=1000, help="Images per page.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List a repository's images, newest first (an index counts once, with its platforms)."""
    project, repository, image = _split_image(name)

    async def work(s: Services) -> tuple[list[dict[str, Any]], int]:
        repo = await _repository_ref(s, project, repository)
        found, total = await Images(s.db, s.store).list_images(
            repo, image=image or None, page=page, per_page=per_page
        )
        # The CLI's listing shows the referrers themselves, not their count.
        return [plain(i.model_dump(exclude={"referrer_count"})) for i in found], total

    items, total = run_service(work)
    if json_output:
        print_json({"items": items, "page": page, "per_page": per_page, "total": total})
        return
    table = Table(title=f"Images in {name} ({total} in all, page {page})")
    for column in ("image", "digest", "tags", "size", "platforms", "referrers", "pushed at"):
        table.add_column(column)
    for item in items:
        table.add_row(
            item["image"] or "-",
            _short(item["digest"]),
            ", ".join(item["tags"]),
            f"{item['size']:,}",
            ", ".join(item["platforms"]),
            ", ".join(r["artifact_type"] or _short(r["digest"]) for r in item["referrers"]),
            when(item["pushed_at"], "-"),
        )
    console.print(table)


@image_app.command("history")
def image_history(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    tag: Annotated[str | None, typer.Option(help="Only this tag's events.")] = None,
    digest: Annotated[str | None, typer.Option(help="Only events of this digest.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Show image and tag history: pushes, tags, untags, moves, deletes and restores."""
    project, repository, image = _split_image(name)

    async def work(s: Services) -> list[dict[str, Any]]:
        repo = await _repository_ref(s, project, repository)
        items, _total = await Images(s.db).history(
            repo,
            image=image or None,
            tag=tag,
            digest=digest,
            per_page=limit,
        )
        events: list[dict[str, Any]] = plain(items)
        return events

    found = run_service(work)
    if json_output:
        print_json(found)
        return
    table = Table(title=f"History of {name}")
    for column in ("at", "actor", "action", "image", "tag", "old", "new", "restorable"):
        table.add_column(column)
    for event in found:
        table.add_row(
            when(event["at"]),
            event["actor"],
            event["action"],
            event["image"] or "-",
            event["tag"] or "",
            _short(event["old_digest"]),
            _short(event["new_digest"]),
            "yes" if event["restorable"] else "",
        )
    console.print(table)


@tag_app.command("restore")
def tag_restore(
    name: Annotated[str, typer.Argument(metavar="PROJECT/REPO[/IMAGE]")],
    tag: TagArg,
    json_output: JsonFlag = False,
) -> None:
    """Put a removed tag back on the image it last named (while that image is stored)."""
    project, repository, image = _split_image(name)

    async def work(s: Services) -> str:
        repo = await _repository_ref(s, project, repository)
        return await s.registry.restore_tag(repo, image, tag, actor=cli_actor(), client=CLI_CLIENT)

    digest = run_service(work)
    done(
        json_output,
        {"repository": f"{project}/{repository}", "image": image, "tag": tag, "digest": digest},
        f"Restored {name}:{tag} -> {digest}",
    )


@user_app.command("create")
def user_create(
    name: UserArg,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    service_account: Annotated[
        bool, typer.Option("--service-account", help="A robot user for CI: keys, no password.")
    ] = False,
    admin: Annotated[bool, typer.Option("--admin", help="Administer every project.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Create a user (prompts for the password unless --password-stdin or --service-account)."""
    password: str | None = None
    if not service_account:
        password = read_password(password_stdin)
    created = run_service(
        lambda s: s.identity.create_user(
            name, password, is_admin=admin, service_account=service_account
        )
    )
    done(json_output, created, f"Created user [bold]{name}[/]")


@user_app.command("list")
def user_list(json_output: JsonFlag = False) -> None:
    """List users."""
    found = run_service(lambda s: s.identity.list_users())
    if json_output:
        print_json(found)
    else:
        _table(found, ["name", "admin", "service_account", "created_at"], "Users")


@member_app.command("add")
def member_add(
    project: ProjectArg,
    user: UserArg,
    role: Annotated[str, typer.Option(help="admin, member or reader.")],
    json_output: JsonFlag = False,
) -> None:
    """Add a user to a project, or change their role."""
    run_service(lambda s: s.identity.add_member(project, user, role))
    done(
        json_output,
        {"project": project, "user": user, "role": role},
        f"{user} is now {role} of {project}",
    )


@member_app.command("remove")
def member_remove(project: ProjectArg, user: UserArg, json_output: JsonFlag = False) -> None:
    """Remove a user from a project; their access keys there stop working."""
    run_service(lambda s: s.identity.remove_member(project, user))
    done(json_output, {"project": project, "user": user}, f"{user} left {project}")


@member_app.command("list")
def member_list(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List a project's members."""
    found = run_service(lambda s: s.identity.list_members(project))
    if json_output:
        print_json(found)
    else:
        _table(found, ["user", "role", "since"], f"Members of {project}")


@key_app.command("create")
def key_create(
    user: Annotated[str, typer.Option(help="Whose key.")],
    project: Annotated[str, typer.Option(help="The project the key works in.")],
    expires: Annotated[
        dt.datetime | None, typer.Option(help="Expiry date (YYYY-MM-DD), UTC.")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create an access key. The secret is shown now and never again."""
    expires_at = expires.replace(tzinfo=dt.UTC) if expires else None

    async def work(s: Services) -> tuple[CreatedKey, str]:
        created = await s.identity.create_key(user, project, expires_at=expires_at)
        return created, s.registry_address(project, None).login

    created, address = run_service(work)
    if json_output:
        print_json(created.as_dict())
        return
    console.print(f"Access key ID:     [bold]{created.key_id}[/]")
    console.print(f"Secret access key: [bold]{created.secret}[/]")
    console.print("[yellow]The secret is shown only now: store it safely.[/]")
    # Printed as plain lines, never wrapped to the terminal: they are pasted as they are.
    sys.stdout.write(
        "\nSign in with docker:\n"
        f"  echo {shlex.quote(created.secret)} | docker login {address} "
        f"--username {created.key_id} --password-stdin\n"
        "\nKubernetes pull secret (then name it under imagePullSecrets in the pod spec):\n"
        f"  kubectl create secret docker-registry {project}-pull \\\n"
        f"    --docker-server={address} \\\n"
        f"    --docker-username={created.key_id} \\\n"
        f"    --docker-password={shlex.quote(created.secret)}\n"
    )


@key_app.command("list")
def key_list(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    project: Annotated[str | None, typer.Option(help="Only keys for this project.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """List access keys (never their secrets)."""
    found = run_service(lambda s: s.identity.list_keys(user=user, project=project))
    if json_output:
        print_json(found)
    else:
        _table(
            found,
            [
                "access_key_id",
                "user",
                "project",
                "created_at",
                "last_used_at",
                "expires_at",
                "state",
            ],
            "Access keys",
        )


@key_app.command("disable")
def key_disable(key_id: KeyIdArg, json_output: JsonFlag = False) -> None:
    """Disable a key; it stops working at once and can be enabled again."""
    run_service(lambda s: s.identity.set_key_disabled(key_id, True))
    done(json_output, {"access_key_id": key_id, "state": "disabled"}, f"Disabled {key_id}")


@key_app.command("enable")
def key_enable(key_id: KeyIdArg, json_output: JsonFlag = False) -> None:
    """Enable a disabled key."""
    run_service(lambda s: s.identity.set_key_disabled(key_id, False))
    done(json_output, {"access_key_id": key_id, "state": "active"}, f"Enabled {key_id}")


@key_app.command("delete")
def key_delete(key_id: KeyIdArg, json_output: JsonFlag = False) -> None:
    """Delete a key for good."""
    run_service(lambda s: s.identity.delete_key(key_id))
    done(json_output, {"access_key_id": key_id, "deleted": True}, f"Deleted {key_id}")


@app.command()
def audit(
    project: ProjectArg,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Show a project's audit log: logins, key and role changes."""
    found = run_service(lambda s: s.identity.audit_entries(project, limit))
    if json_output:
        print_json(found)
    else:
        _table(found, ["at", "actor", "action", "target", "client"], f"Audit log of {project}")


def _size(value: int) -> str:
    """Bytes in decimal units (GB = 10^9, as traffic is charged)."""
    if value < 1000:
        return f"{value:,} B"
    amount = value / 1000
    for unit in ("kB", "MB", "GB"):
        if amount < 1000:
            return f"{amount:,.2f} {unit}"
        amount /= 1000
    return f"{amount:,.2f} TB"


def _change(month: dict[str, Any]) -> str:
    percent = month["change_percent"]
    shown = f"{percent:+.1f}%" if percent is not None else "n/a"
    delta = month["change_bytes"]
    return f"{shown} ({'+' if delta >= 0 else '-'}{_size(abs(delta))})"


@app.command()
def usage(
    project: ProjectArg,
    days: Annotated[int, typer.Option(help="Days of storage and traffic series to show.")] = 14,
    collect: Annotated[
        bool, typer.Option("--collect", help="Collect storage usage now, first.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Show a project's management summary, storage usage and outbound traffic."""

    async def gather(s: Services) -> dict[str, Any]:
        if collect:
            await s.usage.collect(project)
        return {
            "summary": await s.usage.summary(project),
            "storage": await s.usage.storage(project, days),
            "traffic": await s.usage.traffic(project, days=min(days, 92)),
        }

    found = plain(run_service(gather))
    if json_output:
        print_json(found)
        return
    summary, storage, traffic = found["summary"], found["storage"], found["traffic"]
    repos, images, stored = summary["repositories"], summary["images"], summary["storage"]
    this_month = traffic["this_month"]
    table = Table(title=f"Project {project}", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("Repositories", f"{repos['stored']} / {repos['maximum']}")
    table.add_row(
        "Images", f"{images['stored']:,} (at most {images['limit_per_repository']:,} a repository)"
    )
    collected = when(stored["collected_at"], "not collected yet (measured now)")
    table.add_row("Storage used", f"{_size(stored['bytes'])} in {stored['blobs']:,} blobs")
    table.add_row("Storage collected", collected)
    table.add_row(
        f"Outbound traffic {this_month['month']}",
        f"{_size(this_month['bytes'])}, {_change(this_month)} over the previous month",
    )
    table.add_row(
        "Estimated charge", f"{this_month['estimated_charge']:,.2f} {this_month['currency']}"
    )
    table.add_row("Last garbage collection", when(summary["last_gc_at"]))
    console.print(table)

    # One storage row a day (the day's last sample): the schedule takes 48 a day by default.
    by_day: dict[str, dict[str, Any]] = {}
    for sample in storage["samples"]:
        by_day[sample["collected_at"][:10]] = sample
    series = Table(title=f"Storage, last {days} days (last sample of each day)")
    for column in ("day", "collected at", "storage", "blobs", "images"):
        series.add_column(column)
    for day, sample in by_day.items():
        series.add_row(
            day,
            sample["collected_at"][11:19],
            _size(sample["bytes"]),
            f"{sample['blobs']:,}",
            f"{sample['images']:,}",
        )
    console.print(series)

    daily = Table(title=f"Outbound traffic, last {len(traffic['daily'])} days (UTC)")
    for column in ("day", "bytes", "requests"):
        daily.add_column(column)
    for day in traffic["daily"]:
        daily.add_row(day["day"], _size(day["bytes"]), f"{day['requests']:,}")
    console.print(daily)
    monthly = Table(title="Outbound traffic by month")
    for column in ("month", "bytes", "requests", "change", "estimated charge"):
        monthly.add_column(column)
    for month in traffic["months"]:
        monthly.add_row(
            month["month"],
            _size(month["bytes"]),
            f"{month['requests']:,}",
            _change(month),
            f"{month['estimated_charge']:,.2f} {month['currency']}",
        )
    console.print(monthly)


project_app.command("delete")(accounts.project_delete)
user_app.command("set-password")(accounts.user_set_password)
user_app.command("delete")(accounts.user_delete)

if __name__ == "__main__":
    app()
