"""`berth webhook`: the verbs against a running server's data; the server delivers what they
queue to a real HTTP endpoint on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.in_process import in_process
from tests.pasting import data_dir_only, line_after
from tests.servers import BERTH, ROOT, BerthServer, server_fixture, wait_for
from tests.webhook_receiver import Receiver, receiving

hooks_server = server_fixture("cli-webhooks", env={"BERTH_WEBHOOK_ALLOW_PRIVATE": "true"})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def test_webhook_verbs(hooks_server: BerthServer, receiver: Receiver) -> None:
    hooks_server.create_project("clihooks")
    created = (
        in_process(hooks_server)
        .cli("webhook", "create", "clihooks", receiver.url, "--event", "io.berth.tag.deleted")
        .stdout
    )
    secret = created.split("Signing secret: ", 1)[1].split()[0]
    assert "berth webhook test clihooks 1" in created
    assert secret not in in_process(hooks_server).cli("webhook", "list", "clihooks").stdout
    (webhook,) = in_process(hooks_server).cli_items("webhook", "list", "clihooks")
    assert webhook["event_types"] == ["io.berth.tag.deleted"] and webhook["signed"] is True
    assert secret not in json.dumps(webhook)

    queued = in_process(hooks_server).cli("webhook", "test", "clihooks", "1").stdout
    assert "berth webhook deliveries clihooks 1" in queued  # the command it prints works:
    (received,) = receiver.wait_for(1)
    assert received.event["type"] == "io.berth.webhook.test" and received.signed_with(secret)
    deadline = time.monotonic() + 10
    while True:
        log = in_process(hooks_server).cli_items("webhook", "deliveries", "clihooks", "1")
        if log[0]["state"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert log[0]["state"] == "delivered" and log[0]["attempt_log"][0]["status_code"] == 200
    shown = in_process(hooks_server).cli("webhook", "deliveries", "clihooks", "1").stdout
    assert "delivered" in shown and "200" in shown

    renewed = in_process(hooks_server).cli_json("webhook", "new-secret", "clihooks", "1")["secret"]
    assert (
        renewed != secret
        and renewed not in in_process(hooks_server).cli("webhook", "list", "clihooks").stdout
    )
    in_process(hooks_server).cli("webhook", "update", "clihooks", "1", "--disable", "--all-events")
    (webhook,) = in_process(hooks_server).cli_items("webhook", "list", "clihooks")
    assert webhook["enabled"] is False and webhook["event_types"] == []
    refused = in_process(hooks_server).cli("webhook", "test", "clihooks", "1", check=False)
    assert refused.returncode == 1 and "disabled" in refused.stderr
    in_process(hooks_server).cli("webhook", "delete", "clihooks", "1", "--yes")
    assert in_process(hooks_server).cli_items("webhook", "list", "clihooks") == []


def test_the_commands_it_prints_work_as_printed_with_the_data_directory_it_was_given(
    hooks_server: BerthServer, receiver: Receiver
) -> None:
    """Run with --data-dir (nothing else pointing at the data), `webhook create` prints the
    test command and `webhook test` the delivery log's, each naming that directory: pasted
    as printed, the test event is queued (and delivered), and its delivery listed."""
    hooks_server.create_project("clihooks4")
    only = data_dir_only(hooks_server)
    created = only.berth("webhook", "create", "clihooks4", receiver.url, "--no-sign").stdout
    printed = line_after(created, "Send it a test event:")
    assert printed.split()[-3:-1] == ["test", "clihooks4"], printed
    queued = only.paste(printed).stdout
    assert "Queued test event" in queued
    (received,) = receiver.wait_for(1)
    assert received.event["type"] == "io.berth.webhook.test"
    deliveries = only.paste(line_after(queued, "Follow it with:")).stdout
    assert "webhook.test" in deliveries, deliveries


def test_a_test_event_goes_past_a_failing_queue(hooks_server: BerthServer) -> None:
    """The endpoint refuses everything: two GC runs' events queue up, the second listed as
    sent `after` the first rather than at a time long past, and `webhook test` is sent within
    seconds all the same, once, its refusal in the delivery log."""
    hooks_server.create_project("clihooks6")
    for failing in receiving([500] * 1000):
        made = hooks_server.cli_json(
            "webhook", "create", "clihooks6", failing.url, "--event", "io.berth.gc.finished"
        )
        hook = str(made["id"])
        for _ in range(2):
            hooks_server.cli("gc", "run", "clihooks6", "--dry-run")
        failing.wait_for(1)
        # Both runs' events made deliveries (the server's job fans them out) before the test
        # event: the listing is in the order deliveries were made.
        wait_for(
            lambda hook=hook: (
                len(hooks_server.cli_items("webhook", "deliveries", "clihooks6", hook)) == 2
            ),
            10,
            "both gc.finished deliveries",
        )
        queued = hooks_server.cli("webhook", "test", "clihooks6", hook).stdout
        wait_for(
            lambda failing=failing: any(
                r.event["type"] == "io.berth.webhook.test" for r in failing.received
            ),
            10,
            "the test event sent",
        )
        assert "ahead of the endpoint's queue" in " ".join(queued.split())
        deadline = time.monotonic() + 10
        while True:
            test, second, first = hooks_server.cli_items("webhook", "deliveries", "clihooks6", hook)
            if test["state"] != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        shown = hooks_server.cli("webhook", "deliveries", "clihooks6", hook).stdout
        sent = [r.event["type"] for r in failing.received]
    assert test["event_type"] == "io.berth.webhook.test"
    assert test["state"] == "failed" and test["attempts"] == 1
    assert test["attempt_log"][0]["status_code"] == 500
    assert sent.count("io.berth.webhook.test") == 1  # not retried
    assert first["state"] == "pending" and first["waiting_for"] is None
    assert second["waiting_for"] == first["id"] and second["next_attempt_at"] is None
    assert f"after {first['id']}" in shown, shown  # the one waiting: the second


def test_private_url_refused_without_the_setting(sqlite_server: BerthServer) -> None:
    sqlite_server.create_project("clihooks2")
    refused = in_process(sqlite_server).cli(
        "webhook", "create", "clihooks2", "http://169.254.169.254/", check=False
    )
    assert refused.returncode == 2  # a value the settings refuse, as a bad flag
    assert "the cloud metadata address" in refused.stderr
    assert "BERTH_WEBHOOK_ALLOW_PRIVATE" in refused.stderr
    both = in_process(sqlite_server).cli(
        "webhook",
        "create",
        "clihooks2",
        "ftp://example.com/",
        "--description",
        "a\tb",
        check=False,
    )
    assert both.returncode == 2
    assert (
        "url: the URL must start with http:// or https://; "
        f"description: {DESCRIPTION_RULE}; this one has '\\t'"
    ) in " ".join(both.stderr.split())


DESCRIPTION_RULE = (
    "a description is at most 100 characters, with no line breaks or control characters"
)


def test_a_description_is_any_text_but_control_characters_as_a_repository_s(
    hooks_server: BerthServer,
) -> None:
    """`webhook create` takes a description with a non-breaking space; one with a control
    character is refused (exit 2) in the words `repo create` refuses it with."""
    hooks_server.create_project("clihooks5")
    made = in_process(hooks_server).cli_json(
        "webhook", "create", "clihooks5", "http://127.0.0.1:9/", "--description", "CI\u00a0hook"
    )
    assert made["description"] == "CI\u00a0hook"
    url = "http://127.0.0.1:9/"
    as_webhook = ("webhook", "create", "clihooks5", url, "--description", "a\u0085b")
    as_repository = ("repo", "create", "clihooks5/app", "--description", "a\u0085b")
    for refused in (
        in_process(hooks_server).cli(*as_webhook, check=False),
        in_process(hooks_server).cli(*as_repository, check=False),
    ):
        assert refused.returncode == 2, refused.stderr
        assert f"{DESCRIPTION_RULE}; this one has '\\x85'" in " ".join(refused.stderr.split())
        assert "Traceback" not in refused.stderr
    assert [
        w["description"] for w in in_process(hooks_server).cli_items("webhook", "list", "clihooks5")
    ] == ["CI\u00a0hook"]


def test_an_argument_that_is_not_utf8_is_refused_not_stored(hooks_server: BerthServer) -> None:
    """A description or URL typed in a terminal that is not UTF-8 ("caf\\xe9" in Latin-1)
    reaches Python as a lone surrogate, which no database stores: refused (exit 2) saying so,
    at its field, rather than failing with a traceback; nothing is made."""
    hooks_server.create_project("clihooks11")
    latin1 = b"caf\xe9"
    url_is, description_is = "the URL is not text", f"{DESCRIPTION_RULE}; this one is not text"
    for args, why in [
        ([b"webhook", b"create", b"clihooks11", b"http://127.0.0.1:9/" + latin1], url_is),
        (
            [
                b"webhook",
                b"create",
                b"clihooks11",
                b"http://127.0.0.1:9/",
                b"--description",
                latin1,
            ],
            description_is,
        ),
        ([b"repo", b"create", b"clihooks11/app", b"--description", latin1], description_is),
    ]:
        refused = subprocess.run(
            [*BERTH, *args], env=hooks_server.env, capture_output=True, cwd=ROOT, timeout=120
        )
        said = " ".join(refused.stderr.decode(errors="replace").split())
        assert refused.returncode == 2, said
        assert f"{why}: it holds a lone surrogate" in said, said
        assert "Traceback" not in said
    assert in_process(hooks_server).cli_items("webhook", "list", "clihooks11") == []
    assert in_process(hooks_server).cli_items("repo", "list", "clihooks11") == []


def test_the_setting_the_refusal_names_lets_the_cli_make_a_private_endpoint(
    sqlite_server: BerthServer,
) -> None:
    """The CLI checks the URL with its own settings: the environment variable the refusal
    names, given to the command, lets it make the endpoint."""
    sqlite_server.create_project("clihooks3")
    made = subprocess.run(
        [*BERTH, "webhook", "create", "clihooks3", "http://127.0.0.1:9/hook", "--json"],
        env={**sqlite_server.env, "BERTH_WEBHOOK_ALLOW_PRIVATE": "true"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["url"] == "http://127.0.0.1:9/hook"


def _nulls(value: object) -> bool:
    if isinstance(value, dict):
        return any(_nulls(item) for item in value.values())
    if isinstance(value, list):
        return any(_nulls(item) for item in value)
    return value is None


def test_redeliver_sends_a_delivery_again_and_the_log_shows_the_body_as_sent(
    hooks_server: BerthServer, receiver: Receiver
) -> None:
    """A GC run's event delivered, then `webhook redeliver`: the receiver gets the same body
    again, signed with the new secret; the command it prints lists the log, where the new
    delivery names the one it re-sends. `deliveries --json` shows each body as sent: no
    nulls for the fields a GC event does not carry (repository, tag, ...)."""
    hooks_server.create_project("clihooks7")
    made = in_process(hooks_server).cli_json(
        "webhook", "create", "clihooks7", receiver.url, "--event", "io.berth.gc.finished"
    )
    hook = str(made["id"])
    in_process(hooks_server).cli("gc", "run", "clihooks7", "--dry-run")
    (first,) = receiver.wait_for(1)
    deadline = time.monotonic() + 10
    while (log := in_process(hooks_server).cli_items("webhook", "deliveries", "clihooks7", hook))[
        0
    ]["state"] != "delivered":
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    (sent,) = log
    assert sent["event"] == first.event and not _nulls(sent["event"])
    assert {"repository", "tag", "digest", "scan"}.isdisjoint(sent["event"]["data"])
    secret = in_process(hooks_server).cli_json("webhook", "new-secret", "clihooks7", hook)["secret"]

    only = data_dir_only(hooks_server)
    queued = only.berth("webhook", "redeliver", "clihooks7", hook, str(sent["id"])).stdout
    assert f"of delivery {sent['id']} again" in " ".join(queued.split()), queued
    again = receiver.wait_for(2)[1]
    assert again.body == first.body and again.signed_with(secret)
    shown = only.paste(line_after(queued, "Follow it with:")).stdout
    assert f"(again: {sent['id']})" in " ".join(shown.split()), shown
    newest = in_process(hooks_server).cli_items("webhook", "deliveries", "clihooks7", hook)[0]
    assert newest["redelivery_of"] == sent["id"] and newest["event"] == sent["event"]


def test_a_disabled_webhook_s_test_and_redelivery_are_refused_naming_the_command_to_enable_it(
    hooks_server: BerthServer, receiver: Receiver
) -> None:
    """`webhook test` and `webhook redeliver` of a disabled endpoint exit 1 (a refusal, not
    3, "exists"), queueing nothing, with one `error:` saying so and the command that enables
    it; pasted as printed, it does, and the test is then sent."""
    hooks_server.create_project("clihooks9")
    only = data_dir_only(hooks_server)
    hook = str(
        in_process(hooks_server).cli_json("webhook", "create", "clihooks9", receiver.url)["id"]
    )
    in_process(hooks_server).cli("webhook", "test", "clihooks9", hook)
    receiver.wait_for(1)
    sent = in_process(hooks_server).cli_items("webhook", "deliveries", "clihooks9", hook)[0]
    in_process(hooks_server).cli("webhook", "update", "clihooks9", hook, "--disable")
    for verb in (["test"], ["redeliver"]):
        args = [
            "webhook",
            *verb,
            "clihooks9",
            hook,
            *([str(sent["id"])] if verb == ["redeliver"] else []),
        ]
        refused = only.berth(*args, check=False)
        assert refused.returncode == 1, refused.stderr
        assert refused.stdout == ""
        assert refused.stderr.startswith(
            f"error: webhook {hook} of project 'clihooks9' is disabled: nothing would send it."
        ), refused.stderr
        assert refused.stderr.count("error:") == 1
        printed = line_after(refused.stderr, refused.stderr.splitlines()[0])
        assert printed.split()[-5:] == ["webhook", "update", "clihooks9", hook, "--enable"]
    assert len(in_process(hooks_server).cli_items("webhook", "deliveries", "clihooks9", hook)) == 1
    only.paste(printed)
    (webhook,) = in_process(hooks_server).cli_items("webhook", "list", "clihooks9")
    assert webhook["enabled"] is True
    only.berth("webhook", "test", "clihooks9", hook)
    assert len(receiver.wait_for(2)) == 2


def test_a_url_the_project_has_is_refused_as_existing(hooks_server: BerthServer) -> None:
    """A second webhook of a URL (its host in capitals; a percent-escape in the other case
    and a `.` segment) exits 3, as for something that exists; so does moving another webhook
    to it."""
    hooks_server.create_project("clihooks8")
    url = "http://127.0.0.1:9/hook"
    made = in_process(hooks_server).cli_json("webhook", "create", "clihooks8", url)
    refused = in_process(hooks_server).cli(
        "webhook", "create", "clihooks8", "HTTP://127.0.0.1:9/hook", check=False
    )
    assert refused.returncode == 3, refused.stderr
    assert f"has a webhook to this URL already: webhook {made['id']}" in " ".join(
        refused.stderr.split()
    )
    escaped = in_process(hooks_server).cli_json("webhook", "create", "clihooks8", url + "/a%2fb")
    refused = in_process(hooks_server).cli(
        "webhook", "create", "clihooks8", url + "/./a%2Fb", check=False
    )
    assert refused.returncode == 3, refused.stderr
    assert f"already: webhook {escaped['id']}" in " ".join(refused.stderr.split())
    other = in_process(hooks_server).cli_json("webhook", "create", "clihooks8", url + "/")
    moved = in_process(hooks_server).cli(
        "webhook", "update", "clihooks8", str(other["id"]), "--url", url, check=False
    )
    assert moved.returncode == 3 and "already" in moved.stderr
    assert [
        w["url"] for w in in_process(hooks_server).cli_items("webhook", "list", "clihooks8")
    ] == [
        url,
        url + "/a%2fb",
        url + "/",
    ]


def test_a_sixth_waiting_test_event_is_refused_naming_the_command_that_shows_them(
    tmp_path: Path,
) -> None:
    """With no server sending them, five test events wait; `webhook test` for a sixth exits 1
    with one `error:` saying why and the command that shows the delivery log, which works
    as printed. Nothing more is queued."""
    data = BerthServer(tmp_path / "data", extra_env={"BERTH_WEBHOOK_ALLOW_PRIVATE": "true"})
    in_process(data).cli("init")
    in_process(data).cli("project", "create", "clihooks10")
    only = data_dir_only(data)
    hook = str(
        in_process(data).cli_json("webhook", "create", "clihooks10", "http://127.0.0.1:9/hook")[
            "id"
        ]
    )
    for _ in range(5):
        only.berth("webhook", "test", "clihooks10", hook)
    refused = only.berth("webhook", "test", "clihooks10", hook, check=False)
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.startswith(
        f"error: webhook {hook} has 5 test events waiting to be sent, the most it may have"
    ), refused.stderr
    assert refused.stderr.count("error:") == 1
    printed = line_after(refused.stderr, refused.stderr.splitlines()[-2])
    assert printed.split()[-4:] == ["webhook", "deliveries", "clihooks10", hook], printed
    shown = only.paste(printed).stdout
    assert shown.count("webhook.test") == shown.count("pending") == 5, shown
