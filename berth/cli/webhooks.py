"""`berth webhook`: a project's webhook endpoints, their delivery log, test events, and
sending a past delivery again.

Deliveries are sent by a running server (`berth serve`), one node of it at a time; these verbs
change what it sends and show what it sent.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from berth.cli.common import (
    CLI_CLIENT,
    JsonFlag,
    ProjectArg,
    YesFlag,
    cli_actor,
    confirm_deletion,
    console,
    data_table,
    done,
    listing,
    pasteable,
    print_json,
    run_service,
    show_rows,
    when,
)
from berth.domain.errors import StateRefusal
from berth.domain.events import EVENT_TYPES, TEST
from berth.domain.references import MAX_ID

if TYPE_CHECKING:
    from berth.services.webhook_log import Delivery
    from berth.state import Services

T = TypeVar("T")

webhook_app = typer.Typer(
    help="Webhooks: events of a project POSTed to your endpoints.", no_args_is_help=True
)

WebhookIdArg = Annotated[
    int, typer.Argument(min=1, max=MAX_ID, metavar="WEBHOOK_ID", help="The webhook's id.")
]
DeliveryIdArg = Annotated[
    int,
    typer.Argument(
        min=1,
        max=MAX_ID,
        metavar="DELIVERY_ID",
        help="The delivery's id (the first column of `webhook deliveries`).",
    ),
]
EventOption = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        help="An event type to send (repeat for several; none: every type). Types: "
        + ", ".join(EVENT_TYPES),
    ),
]
COLUMNS = ["id", "url", "events", "enabled", "signed", "description", "created_at"]


def _row(webhook: dict[str, Any]) -> dict[str, Any]:
    return {**webhook, "events": " ".join(webhook["event_types"]) or "all"}


def _delivery_json(delivery: Delivery) -> dict[str, Any]:
    """A delivery for --json, its event the body as sent (its time as the body writes it)."""
    from berth.services.records import plain

    shown: dict[str, Any] = plain(delivery)
    return {**shown, "event": delivery.event.model_dump(mode="json")}


@webhook_app.command("create")
def webhook_create(
    project: ProjectArg,
    url: Annotated[str, typer.Argument(metavar="URL", help="Where events are POSTed.")],
    event: EventOption = None,
    secret_stdin: Annotated[
        bool,
        typer.Option(
            "--secret-stdin", help="Read your own signing secret from standard input's first line."
        ),
    ] = False,
    sign: Annotated[
        bool, typer.Option("--sign/--no-sign", help="Sign deliveries (X-Berth-Signature).")
    ] = True,
    description: Annotated[str, typer.Option(help="A note: what the endpoint is for.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Add a webhook endpoint. Its signing secret is shown now and never again. Refused (exit
    3) when the project has a webhook to the same URL already: scheme and host in any case,
    a host's trailing dot, the default port written or not, no path or `/`, `.` and `..`
    segments and percent-escapes in either case make the same URL; a trailing slash on a
    path makes another one."""
    from berth.services.records import plain

    secret = sys.stdin.readline().rstrip("\n") if secret_stdin else None
    created = run_service(
        lambda s: s.webhooks.create(
            project,
            url,
            event_types=event or [],
            secret=secret,
            sign=sign,
            description=description,
            actor=cli_actor(),
            client=CLI_CLIENT,
        )
    )
    if json_output:
        print_json(plain(created))
        return
    console.print(f"Webhook [bold]{created.id}[/] sends {_row(plain(created))['events']} events")
    if created.secret is not None and not secret_stdin:
        sys.stdout.write(f"Signing secret: {created.secret}\n")
        console.print("[yellow]The secret is shown only now: store it with the endpoint.[/]")
    elif created.secret is None:
        console.print("Deliveries are not signed.")
    sys.stdout.write(
        f"\nSend it a test event:\n  {pasteable('webhook', 'test', project, str(created.id))}\n"
    )


@webhook_app.command("list")
def webhook_list(project: ProjectArg, json_output: JsonFlag = False) -> None:
    """List a project's webhook endpoints (never their secrets)."""
    from berth.services.records import plain

    found = run_service(lambda s: s.webhooks.list_webhooks(project))
    show_rows(json_output, [_row(plain(w)) for w in found], COLUMNS, f"Webhooks of {project}")


@webhook_app.command("update")
def webhook_update(
    project: ProjectArg,
    webhook_id: WebhookIdArg,
    url: Annotated[str | None, typer.Option(help="A new URL.")] = None,
    event: EventOption = None,
    all_events: Annotated[bool, typer.Option("--all-events", help="Send every type.")] = False,
    enabled: Annotated[
        bool | None,
        typer.Option(
            "--enable/--disable",
            help="Send events, or stop: events raised while disabled are dropped for it "
            "(not sent later); deliveries queued before wait until it is enabled.",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option(help="A new note.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Change a webhook endpoint. A disabled one gets no new events; queued ones wait. A URL
    another webhook of the project has already is refused (exit 3)."""
    from berth.services.records import plain

    event_types = [] if all_events else event
    changed = run_service(
        lambda s: s.webhooks.update(
            project,
            webhook_id,
            url=url,
            event_types=event_types,
            enabled=enabled,
            description=description,
            actor=cli_actor(),
            client=CLI_CLIENT,
        )
    )
    done(json_output, plain(changed), f"Updated webhook {webhook_id}")


@webhook_app.command("new-secret")
def webhook_new_secret(
    project: ProjectArg,
    webhook_id: WebhookIdArg,
    secret_stdin: Annotated[
        bool,
        typer.Option(
            "--secret-stdin", help="Read the new secret from standard input's first line."
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Give a webhook a new signing secret, shown now and never again."""
    own = sys.stdin.readline().rstrip("\n") if secret_stdin else None
    secret = run_service(
        lambda s: s.webhooks.new_secret(
            project, webhook_id, secret=own, actor=cli_actor(), client=CLI_CLIENT
        )
    )
    if json_output:
        print_json({"id": webhook_id, "secret": secret})
    elif own is None:
        sys.stdout.write(f"Signing secret: {secret}\n")
        console.print("[yellow]The secret is shown only now: store it with the endpoint.[/]")
    else:
        console.print(f"Webhook {webhook_id} signs with the new secret from now on.")


@webhook_app.command("delete")
def webhook_delete(
    project: ProjectArg,
    webhook_id: WebhookIdArg,
    yes: YesFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Remove a webhook endpoint with its queue and delivery log (`update --disable` holds
    it instead)."""
    confirm_deletion(
        f"delete webhook {webhook_id} of {project} with its queue and delivery log",
        yes,
        present=lambda s: s.webhooks.get(project, webhook_id),
    )
    run_service(
        lambda s: s.webhooks.delete(project, webhook_id, actor=cli_actor(), client=CLI_CLIENT)
    )
    done(json_output, {"id": webhook_id, "deleted": True}, f"Deleted webhook {webhook_id}")


def _enabled_only(
    project: str, work: Callable[[Services], Awaitable[T]]
) -> Callable[[Services], Awaitable[T]]:
    """`work` refused for a disabled webhook in words that end in the command enabling it,
    and for one with as many test events waiting as it may have in words that end in the
    command showing them."""
    from berth.services.webhook_log import TooManyPendingTests, WebhookDisabled

    async def run(services: Services) -> T:
        try:
            return await work(services)
        except WebhookDisabled as disabled:
            enable = pasteable("webhook", "update", project, str(disabled.webhook_id), "--enable")
            raise StateRefusal(
                f"webhook {disabled.webhook_id} of project {project!r} is disabled: nothing "
                f"would send it. Enable it (it then gets new events, and its waiting queue "
                f"is sent) with:\n  {enable}"
            ) from None
        except TooManyPendingTests as refusal:
            log = pasteable("webhook", "deliveries", project, str(refusal.webhook_id))
            raise StateRefusal(f"{refusal.message}. Follow them with:\n  {log}") from None

    return run


@webhook_app.command("test")
def webhook_test(
    project: ProjectArg, webhook_id: WebhookIdArg, json_output: JsonFlag = False
) -> None:
    """Queue a test event (io.berth.webhook.test) for the endpoint: a running server sends it
    within seconds, ahead of anything queued for the endpoint, and attempts it once (it is not
    retried). Accepted, the endpoint's waiting queue is retried at once."""
    queued = run_service(
        _enabled_only(
            project, lambda s: s.webhooks.send_test(project, webhook_id, actor=cli_actor())
        )
    )
    if json_output:
        print_json(_delivery_json(queued))
        return
    console.print(
        f"Queued test event {queued.event_id}: a running server sends it within seconds, "
        "ahead of the endpoint's queue, once (it is not retried)."
    )
    sys.stdout.write(
        f"Follow it with:\n  {pasteable('webhook', 'deliveries', project, str(webhook_id))}\n"
    )


@webhook_app.command("redeliver")
def webhook_redeliver(
    project: ProjectArg,
    webhook_id: WebhookIdArg,
    delivery_id: DeliveryIdArg,
    json_output: JsonFlag = False,
) -> None:
    """Send a delivered or failed delivery's event again: a new delivery of the same body
    (same event id), signed with the current secret, at the end of the endpoint's queue
    (events go in order) and retried like any for a day. Refused (exit 1) for a pending
    delivery and while the endpoint is disabled."""
    queued = run_service(
        _enabled_only(
            project,
            lambda s: s.webhooks.redeliver(
                project, webhook_id, delivery_id, actor=cli_actor(), client=CLI_CLIENT
            ),
        )
    )
    if json_output:
        print_json(_delivery_json(queued))
        return
    if queued.event_type == TEST:
        when_sent = "a running server sends it within seconds, once (a test is not retried)"
    else:
        when_sent = (
            "a running server sends it after what is queued before it for the endpoint, "
            "and retries it for a day"
        )
    console.print(
        f"Queued delivery {queued.id}: event {queued.event_id} of delivery {delivery_id} "
        f"again; {when_sent}."
    )
    sys.stdout.write(
        f"Follow it with:\n  {pasteable('webhook', 'deliveries', project, str(webhook_id))}\n"
    )


@webhook_app.command("deliveries")
def webhook_deliveries(
    project: ProjectArg,
    webhook_id: WebhookIdArg,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    json_output: JsonFlag = False,
) -> None:
    """The endpoint's delivery log: each event sent, its state and its last attempt. A
    delivery waiting behind an earlier one (an endpoint gets its events in order) shows
    `after ID` as its next attempt: it is sent once delivery ID is delivered or given up. A
    redelivery's event says `(again: ID)`, the delivery it re-sends. --json shows each
    event's body as sent: a field that does not apply is absent."""
    from berth.services.records import plain

    found, total = run_service(lambda s: s.webhooks.deliveries(project, webhook_id, limit=limit))
    if json_output:
        print_json(listing([_delivery_json(delivery) for delivery in found], total, per_page=limit))
        return
    rows = []
    for delivery in found:
        last = delivery.attempt_log[0] if delivery.attempt_log else None
        rows.append(
            {
                "id": delivery.id,
                "event": delivery.event_type.removeprefix("io.berth.")
                + (f" (again: {delivery.redelivery_of})" if delivery.redelivery_of else ""),
                "state": delivery.state,
                "attempts": delivery.attempts,
                "code": last.status_code if last else None,
                "ms": last.duration_ms if last else None,
                "error": last.error if last else None,
                "next": (
                    f"after {delivery.waiting_for}"
                    if delivery.waiting_for is not None
                    else when(plain(delivery.next_attempt_at), "-")
                ),
                "created_at": plain(delivery.created_at),
            }
        )
    columns = ["id", "event", "state", "attempts", "code", "ms", "error", "next", "created_at"]
    console.print(data_table(rows, columns, f"Deliveries of webhook {webhook_id}"))
