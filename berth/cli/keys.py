"""`berth key`: access keys for docker login and other clients."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    KeyIdArg,
    YesFlag,
    cli_actor,
    confirm_deletion,
    console,
    done,
    errors,
    print_json,
    run_service,
    show_rows,
)

if TYPE_CHECKING:
    from berth.services.keys import AccessKey, CreatedKey
    from berth.state import PrintedAddress, Services

key_app = typer.Typer(help="Access keys for docker login and other clients.", no_args_is_help=True)


@key_app.command("create")
def key_create(
    user: Annotated[str, typer.Option(help="Whose key.")],
    project: Annotated[str, typer.Option(help="The project the key works in.")],
    expires: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="When the key stops working, in UTC: YYYY-MM-DD (it works through that day, "
            "as in the console) or YYYY-MM-DDTHH:MM[:SS].",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create an access key. The secret is shown now and never again."""
    expires_at = _expiry(expires) if expires else None

    async def work(s: Services) -> tuple[CreatedKey, PrintedAddress]:
        created = await s.identity.keys.create_key(
            user, project, expires_at=expires_at, actor=cli_actor(), client=CLI_CLIENT
        )
        return created, await s.printed_registry_address(project)

    created, printed = run_service(work)
    address = printed.address.login
    if json_output:
        print_json(created.as_dict())
        return
    console.print(f"Access key ID:     [bold]{created.key_id}[/]")
    console.print(f"Secret access key: [bold]{created.secret}[/]")
    if created.expires_at is not None:
        console.print(f"Expires:           {created.expires_at:%Y-%m-%d %H:%M:%S} UTC")
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
    if printed.serving is False:
        from berth.metadata.presence import LIVE_SECONDS

        errors.print(
            f"Note: no server serves this data now (none has said so in the last "
            f"{LIVE_SECONDS:.0f} s): {address} is where the last berth serve was reached, and "
            "the commands above work once a server answers there.",
            soft_wrap=True,
            markup=False,
        )


def _expiry(text: str) -> dt.datetime:
    """--expires as a UTC time: a date alone is the last second of that day."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return dt.datetime.combine(day, dt.time(23, 59, 59), dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]", param_hint="'--expires'"
        ) from None
    if moment.tzinfo is not None:
        return moment.astimezone(dt.UTC)
    return moment.replace(tzinfo=dt.UTC)


@key_app.command("list")
def key_list(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    project: Annotated[str | None, typer.Option(help="Only keys for this project.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """List access keys (never their secrets)."""
    from berth.services.records import plain

    async def work(s: Services) -> list[AccessKey]:
        # A name mistyped is refused, as every verb naming a project or user refuses it, not
        # listed as a project or user without keys.
        if project is not None:
            await s.repositories.project(project)
        if user is not None:
            await s.identity.users.require_user(user)
        return await s.identity.keys.list_keys(user=user, project=project)

    found = run_service(work)
    show_rows(
        json_output,
        plain(found),
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
    """Disable a key; it stops working within a second and can be enabled again."""
    run_service(
        lambda s: s.identity.keys.set_key_disabled(
            key_id, True, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(json_output, {"access_key_id": key_id, "state": "disabled"}, f"Disabled {key_id}")


@key_app.command("enable")
def key_enable(key_id: KeyIdArg, json_output: JsonFlag = False) -> None:
    """Enable a disabled key."""
    run_service(
        lambda s: s.identity.keys.set_key_disabled(
            key_id, False, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    done(json_output, {"access_key_id": key_id, "state": "active"}, f"Enabled {key_id}")


@key_app.command("delete")
def key_delete(key_id: KeyIdArg, yes: YesFlag = False, json_output: JsonFlag = False) -> None:
    """Delete a key for good (`berth key disable` stops it until enabled again)."""
    confirm_deletion(
        f"delete access key {key_id} for good",
        yes,
        present=lambda s: s.identity.keys.require_key(key_id),
    )
    run_service(lambda s: s.identity.keys.delete_key(key_id, actor=cli_actor(), client=CLI_CLIENT))
    done(json_output, {"access_key_id": key_id, "deleted": True}, f"Deleted {key_id}")
