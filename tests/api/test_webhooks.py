"""Webhooks over HTTP against a running server (SQLite and PostgreSQL), delivering to a real
HTTP endpoint on loopback (so the server allows private addresses, as an operator may)."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from berth.domain.events import EVENT_TYPES
from tests.api.conftest import Team, assert_problem, new_team, ok, push_image, until
from tests.clients.machine import HOSTS_FILE, HostsEntries
from tests.metrics import moved, scrape
from tests.oci import Blob, image_index, linux_index, manifest_path, push_manifest
from tests.servers import BACKENDS, BerthServer, server_fixture
from tests.webhook_receiver import Receiver, receiving

server = server_fixture(
    "webhooks",
    backends=BACKENDS,
    env={
        "BERTH_WEBHOOK_ALLOW_PRIVATE": "true",
        "BERTH_WEBHOOK_RETRY_BASE": "0.3",
        "BERTH_WEBHOOK_TIMEOUT": "2",
        "BERTH_MAX_IMAGES_PER_REPOSITORY": "12",
        # Untagged images are judged by retention at once (not left an hour to settle).
        "BERTH_GC_GRACE_PERIOD": "0",
    },
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def add_webhook(team: Team, url: str, **fields: object) -> dict[str, object]:
    created: dict[str, object] = ok(
        team["project-admin"].post(team.url("/webhooks"), json={"url": url, **fields}), 201
    )
    return created


def test_push_sends_one_signed_event(team: Team, receiver: Receiver) -> None:
    created = add_webhook(team, receiver.url)
    secret = created["secret"]
    assert isinstance(secret, str) and len(secret) >= 32
    with team.registry() as registry:
        manifest = push_image(registry, team.oci_name(), "v1")
        (received,) = receiver.wait_for(1)
        # A marker event: a second event of the push would have come before it.
        marker = registry.delete(f"/v2/{team.oci_name()}/manifests/v1")
        assert marker.status_code == 202, marker.text
    assert deleted_before_marker(receiver) == [received.event]
    assert received.signed_with(secret)
    assert received.headers["content-type"].startswith("application/cloudevents+json")
    event = received.event
    assert event["specversion"] == "1.0" and event["type"] == "io.berth.image.pushed"
    assert event["source"] == f"/projects/{team.project}"
    assert event["subject"] == f"{team.repository}:v1"
    assert received.headers["ce-id"] == event["id"]
    data = event["data"]
    assert data["project"] == team.project and data["repository"] == team.repository
    assert data["tag"] == "v1" and data["digest"] == manifest.digest
    assert data["size"] == manifest.size
    assert data["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert data["actor"] == "admin"


def test_retries_in_order(team: Team, receiver: Receiver) -> None:
    """500 twice, then 200: the first event arrives three times, and the next one after it."""
    receiver.statuses = [500, 500]
    before = scrape(team.server)
    created = add_webhook(team, receiver.url, event_types=["io.berth.tag.deleted"])
    admin = team["project-admin"]
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "one")
        push_image(registry, team.oci_name(), "two")
        for tag in ("one", "two"):
            response = registry.delete(f"/v2/{team.oci_name()}/manifests/{tag}")
            assert response.status_code == 202, response.text
    received = receiver.wait_for(4)
    assert [r.event["data"]["tag"] for r in received] == ["one", "one", "one", "two"]
    assert [r.event["type"] for r in received] == ["io.berth.tag.deleted"] * 4
    log = ok(admin.get(team.url(f"/webhooks/{created['id']}/deliveries")))
    assert log["total"] == 2
    first = log["items"][1]
    assert first["state"] == "delivered" and first["attempts"] == 3
    assert [a["status_code"] for a in first["attempt_log"]] == [200, 500, 500]
    assert first["attempt_log"][1]["next_attempt_at"] is not None
    assert first["event"]["data"]["tag"] == "one"
    after = scrape(team.server)
    counter = "berth_webhook_deliveries_total"
    assert moved(before, after, counter, outcome="delivered") == 2
    assert moved(before, after, counter, outcome="retry") >= 2


def test_every_event_type(team: Team, receiver: Receiver) -> None:
    """Image delete, tag delete and restore, a GC run, and the two refusals each send theirs."""
    add_webhook(team, receiver.url)
    admin = team["project-admin"]
    name = team.oci_name()
    with team.registry() as registry:
        kept = push_image(registry, name, "kept")
        gone = push_image(registry, name, "gone")
        response = registry.delete(f"/v2/{name}/manifests/{gone.digest}")
        assert response.status_code == 202, response.text
        assert registry.delete(f"/v2/{name}/manifests/kept").status_code == 202
    restore = {"image": "", "tag": "kept"}
    ok(admin.post(team.repo_url("/tags/restore"), json=restore))
    ok(admin.post(team.url("/gc"), json={"dry_run": True}), 202)
    ok(team.admin.put(team.url("/quota"), json={"repository_quota": 1}))  # a server admin
    refused = admin.post(team.url("/repositories"), json={"name": "second"})
    assert_problem(refused, 403, code="QUOTA_EXCEEDED")
    with team.registry() as registry:
        for n in range(11):  # with `kept`, the repository's limit of 12
            push_image(registry, name, f"n{n}")
        with pytest.raises(AssertionError, match="limit of 12 images"):
            push_image(registry, name, "over")
    received = receiver.wait_for(19, timeout=30)
    events: dict[str, dict[str, Any]] = {}
    for r in received:
        events.setdefault(r.event["type"], r.event)
    assert events["io.berth.image.deleted"]["data"]["digest"] == gone.digest
    assert events["io.berth.image.deleted"]["data"]["tags"] == ["gone"]
    assert events["io.berth.tag.deleted"]["data"]["digest"] == kept.digest
    assert events["io.berth.tag.restored"]["subject"] == f"{team.repository}:kept"
    run = events["io.berth.gc.finished"]["data"]["gc_run"]
    assert run["state"] == "succeeded" and run["dry_run"] is True
    quota = events["io.berth.quota.refused"]["data"]
    assert quota["repository"] == "second" and quota["limit"] == 1
    limit = events["io.berth.image_limit.refused"]["data"]
    assert limit["tag"] == "over" and limit["limit"] == 12 and "12 images" in limit["message"]
    assert events["io.berth.image_limit.refused"]["data"]["actor"] == "admin"


DELETES = ["io.berth.image.deleted", "io.berth.tag.deleted"]
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def deleted_before_marker(receiver: Receiver) -> list[dict[str, Any]]:
    """The events received before the `io.berth.tag.deleted` a test sends last as a marker:
    an endpoint gets its events in order, so none queued before the marker is still to come."""

    def marker_came() -> bool:
        return any(event["type"] == DELETES[1] for event in receiver.events())

    assert until(marker_came, timeout=20), receiver.events()
    events = receiver.events()
    return events[: [event["type"] for event in events].index(DELETES[1])]


def push_platforms(registry: httpx.Client, name: str) -> tuple[Blob, Blob]:
    """An amd64 and an arm64 image, pushed by digest, for an index to list."""
    amd64 = push_image(registry, name, None, architecture="amd64")
    return amd64, push_image(registry, name, None, architecture="arm64")


def image_deletes_audited(team: Team) -> dict[str, Any]:
    """The project's `image.delete` audit entries: their detail by target."""

    def audited() -> list[dict[str, Any]]:
        entries = ok(team["project-admin"].get(team.url("/audit"), params={"per_page": 100}))
        return [e for e in entries["items"] if e["action"] == "image.delete"]

    return {e["target"]: e["detail"] for e in until(audited)}


def test_deleting_an_index_sends_one_event_listing_its_platform_manifests(
    team: Team, receiver: Receiver
) -> None:
    """An index with the platform manifests it lists is one image: deleting it through the
    API sends one image.deleted, which names them so a mirror can drop them too."""
    add_webhook(team, receiver.url, event_types=DELETES)
    name = team.oci_name()
    with team.registry("member") as registry:
        push_image(registry, name, "marker")
        amd64, arm64 = push_platforms(registry, name)
        index = linux_index((amd64, "amd64"), (arm64, "arm64"))
        push_manifest(registry, name, "v1", index)
        ok(team["member"].delete(team.repo_url(f"/images/{index.digest}")), 204)
        assert registry.delete(manifest_path(name, "marker")).status_code == 202

    (deleted,) = deleted_before_marker(receiver)
    assert deleted["type"] == "io.berth.image.deleted"
    assert deleted["subject"] == f"{team.repository}@{index.digest}"
    data = deleted["data"]
    assert (data["digest"], data["tags"]) == (index.digest, ["v1"])
    assert data["platform_manifests"] == sorted([amd64.digest, arm64.digest])
    # The history stays per manifest.
    history = ok(team["reader"].get(team.repo_url("/history")))["items"]
    deletes = {e["old_digest"] for e in history if e["action"] == "delete"}
    assert deletes == {index.digest, amd64.digest, arm64.digest}


def test_a_retention_run_sends_one_event_per_image_it_deleted(
    team: Team, receiver: Receiver
) -> None:
    """A run deleting an index (with its two platform manifests) and an untagged image sends
    two image.deleted, as many as its `images_deleted`, and audits two image deletes."""
    admin = team["project-admin"]
    add_webhook(team, receiver.url, event_types=DELETES)
    name = team.oci_name()
    with team.registry("member") as registry:
        amd64, arm64 = push_platforms(registry, name)
        index = linux_index((amd64, "amd64"), (arm64, "arm64"))
        push_manifest(registry, name, "v1", index)
        untagged = push_image(registry, name, None)
        push_image(registry, name, "marker")  # the newest: kept
    ok(admin.put(team.url("/retention"), json={"rules": [{"keep": "last", "count": 1}]}))
    run = ok(admin.post(team.url("/retention/runs")))
    assert run["images_deleted"] == 2
    assert {i["digest"] for i in run["images"]} == {index.digest, untagged.digest}
    with team.registry("member") as registry:
        assert registry.delete(manifest_path(name, "marker")).status_code == 202

    events = deleted_before_marker(receiver)
    assert len(events) == run["images_deleted"]
    by_digest = {e["data"]["digest"]: e["data"] for e in events}
    assert set(by_digest) == {index.digest, untagged.digest}
    assert by_digest[index.digest]["tags"] == ["v1"]
    assert by_digest[index.digest]["platform_manifests"] == sorted([amd64.digest, arm64.digest])
    assert by_digest[untagged.digest]["tags"] == []
    assert by_digest[untagged.digest]["platform_manifests"] == []
    history = ok(team["reader"].get(team.repo_url("/history")))["items"]
    deletes = {e["old_digest"] for e in history if e["action"] == "delete"}
    assert deletes == {index.digest, amd64.digest, arm64.digest, untagged.digest}

    assert image_deletes_audited(team) == {
        f"{team.repository}@{index.digest}": {"platform_manifest_count": 2},
        f"{team.repository}@{untagged.digest}": None,
    }


def cosign_tag(subject: Blob) -> str:
    """The tag cosign gives the signature of `subject`."""
    return subject.digest.replace(":", "-") + ".sig"


def referrer_entries(*referrers: tuple[Blob, list[str]]) -> list[dict[str, Any]]:
    """`data.referrers` of an image.deleted: each referrer's digest and tags, by digest."""
    return sorted(
        ({"digest": r.digest, "tags": t} for r, t in referrers), key=lambda e: e["digest"]
    )


def test_referrers_deleted_with_their_image_are_part_of_its_event(
    team: Team, receiver: Receiver
) -> None:
    """A signature deleted with its subject is part of that image, like a platform manifest:
    the image's one image.deleted lists it in `referrers`, with the tags that went with it
    (cosign's `sha256-<hex>.sig`), which a mirror drops too. A referrer deleted on its own is
    an image deleted, with its own event."""
    add_webhook(team, receiver.url, event_types=DELETES)
    name = team.oci_name()
    with team.registry("member") as registry:
        push_image(registry, name, "marker")
        amd64 = push_image(registry, name, None, architecture="amd64")
        index = linux_index((amd64, "amd64"))
        push_manifest(registry, name, "v1", index)
        signature = push_image(
            registry, name, cosign_tag(index), subject=index, artifact_type=SIGNATURE
        )
        sbom = push_image(registry, name, None, subject=amd64, artifact_type=SIGNATURE)
        other = push_image(registry, name, "other")
        alone = push_image(
            registry, name, cosign_tag(other), subject=other, artifact_type=SIGNATURE
        )
        ok(team["member"].delete(team.repo_url(f"/images/{index.digest}")), 204)
        ok(team["member"].delete(team.repo_url(f"/images/{alone.digest}")), 204)
        assert registry.delete(manifest_path(name, "marker")).status_code == 202

    first, second = (event["data"] for event in deleted_before_marker(receiver))
    assert (first["digest"], first["tags"]) == (index.digest, ["v1"])
    assert first["platform_manifests"] == [amd64.digest]
    assert first["referrers"] == referrer_entries((signature, [cosign_tag(index)]), (sbom, []))
    assert (second["digest"], second["tags"], second["referrers"]) == (
        alone.digest,
        [cosign_tag(other)],
        [],
    )


def test_a_retention_run_counts_a_nested_index_with_its_referrers_as_one_image(
    team: Team, receiver: Receiver
) -> None:
    """index -> index -> image manifests, signed: a run deletes all of it as one image (its
    `images_deleted`, one event, one audit entry with counts) and leaves no stray image."""
    admin = team["project-admin"]
    add_webhook(team, receiver.url, event_types=DELETES)
    name = team.oci_name()
    with team.registry("member") as registry:
        amd64, arm64 = push_platforms(registry, name)
        inner = linux_index((amd64, "amd64"), (arm64, "arm64"))
        push_manifest(registry, name, inner.digest, inner)
        outer = image_index([inner.descriptor()])
        push_manifest(registry, name, "v1", outer)
        signature = push_image(
            registry, name, cosign_tag(outer), subject=outer, artifact_type=SIGNATURE
        )
        sbom = push_image(registry, name, None, subject=arm64, artifact_type=SIGNATURE)
        kept = push_image(registry, name, "kept")  # the newest: kept
    ok(admin.put(team.url("/retention"), json={"rules": [{"keep": "last", "count": 1}]}))
    run = ok(admin.post(team.url("/retention/runs")))
    assert run["images_deleted"] == 1
    [planned] = run["images"]
    assert (planned["digest"], planned["platform_manifests"], planned["referrers"]) == (
        outer.digest,
        3,
        2,
    )
    every = ok(team["reader"].get(team.repo_url("/images"), params={"referrers": "true"}))
    assert [i["digest"] for i in every["items"]] == [kept.digest]
    with team.registry("member") as registry:
        assert registry.delete(manifest_path(name, "kept")).status_code == 202

    [event] = deleted_before_marker(receiver)
    data = event["data"]
    assert (data["digest"], data["tags"]) == (outer.digest, ["v1"])
    assert data["platform_manifests"] == sorted([inner.digest, amd64.digest, arm64.digest])
    assert data["referrers"] == referrer_entries((signature, [cosign_tag(outer)]), (sbom, []))

    assert image_deletes_audited(team) == {
        f"{team.repository}@{outer.digest}": {"platform_manifest_count": 3, "referrer_count": 2}
    }


def run_retention(team: Team, rule: dict[str, Any]) -> dict[str, Any]:
    """A retention run of the project under `rule` alone: its result."""
    admin = team["project-admin"]
    ok(admin.put(team.url("/retention"), json={"rules": [rule]}))
    return ok(admin.post(team.url("/retention/runs")))  # type: ignore[no-any-return]


# Keeps the newer of the images whose every tag starts with `retention`, deletes the older.
RETENTION_ONLY = {"keep": "last", "count": 1, "tags": "retention*"}


def test_a_tagged_platform_manifest_stays_whichever_delete_takes_its_index(
    team: Team, receiver: Receiver
) -> None:
    """`docker manifest create` pushes each platform under a tag of its own: an image someone
    named. Deleting its index, through the API or by a retention run, deletes the untagged
    platform manifest with it and keeps the tagged one as an image of its own, tag and all;
    the index's event, audit entry and the run's result name only what went."""
    add_webhook(team, receiver.url, event_types=DELETES)
    name = team.oci_name()
    indexes, went, stayed = {}, {}, {}
    with team.registry("member") as registry:
        for how in ("api", "retention"):
            went[how] = push_image(registry, name, None, architecture="amd64")
            stayed[how] = push_image(registry, name, f"{how}-arm64", architecture="arm64")
            indexes[how] = linux_index((went[how], "amd64"), (stayed[how], "arm64"))
            push_manifest(registry, name, how, indexes[how])
        newest = push_image(registry, name, "retention-newest")
    ok(team["member"].delete(team.repo_url(f"/images/{indexes['api'].digest}")), 204)
    run = run_retention(team, RETENTION_ONLY)
    assert [(i["digest"], i["tags"], i["platform_manifests"]) for i in run["images"]] == [
        (indexes["retention"].digest, ["retention"], 1)
    ]

    listed = ok(team["reader"].get(team.repo_url("/images")))["items"]
    assert {i["digest"]: i["tags"] for i in listed} == {
        stayed["api"].digest: ["api-arm64"],
        stayed["retention"].digest: ["retention-arm64"],
        newest.digest: ["retention-newest"],
    }
    with team.registry("member") as registry:
        for how in ("api", "retention"):
            pulled = registry.get(manifest_path(name, f"{how}-arm64"))
            assert pulled.status_code == 200 and pulled.content == stayed[how].data
            for gone in (indexes[how], went[how]):
                assert registry.get(manifest_path(name, gone.digest)).status_code == 404
        assert registry.delete(manifest_path(name, "retention-newest")).status_code == 202

    events = {e["data"]["digest"]: e["data"] for e in deleted_before_marker(receiver)}
    assert {
        digest: (data["tags"], data["platform_manifests"]) for digest, data in events.items()
    } == {indexes[how].digest: ([how], [went[how].digest]) for how in ("api", "retention")}
    assert image_deletes_audited(team) == {
        f"{team.repository}@{indexes[how].digest}": {"platform_manifest_count": 1}
        for how in ("api", "retention")
    }


def test_a_referrer_an_index_that_stays_lists_stays_whichever_delete_takes_its_subject(
    team: Team, receiver: Receiver
) -> None:
    """A signature an index lists is still in use by that index: deleting its subject,
    through the API or by a retention run, leaves it (and its own referrers) with the index
    instead of deleting what the index lists; the subject's sibling SBOM goes with it."""
    add_webhook(team, receiver.url, event_types=DELETES)
    name = team.oci_name()
    subjects, kept, went = {}, {}, {}
    with team.registry("member") as registry:
        for how in ("api", "retention"):
            subjects[how] = push_image(registry, name, how)
            signature = push_image(
                registry,
                name,
                cosign_tag(subjects[how]),
                subject=subjects[how],
                artifact_type=SIGNATURE,
            )
            countersignature = push_image(
                registry, name, None, subject=signature, artifact_type=SIGNATURE
            )
            kept[how] = (signature, countersignature)
            went[how] = push_image(
                registry, name, None, subject=subjects[how], artifact_type="application/spdx+json"
            )
            holder = image_index([signature.descriptor()])
            push_manifest(registry, name, f"{how}-holder", holder)
        push_image(registry, name, "retention-newest")
    ok(team["member"].delete(team.repo_url(f"/images/{subjects['api'].digest}")), 204)
    run = run_retention(team, RETENTION_ONLY)
    assert [(i["digest"], i["referrers"]) for i in run["images"]] == [
        (subjects["retention"].digest, 1)
    ]

    with team.registry("member") as registry:
        for how in ("api", "retention"):
            for stays in kept[how]:
                assert registry.get(manifest_path(name, stays.digest)).status_code == 200
            assert registry.get(manifest_path(name, cosign_tag(subjects[how]))).status_code == 200
            for gone in (subjects[how], went[how]):
                assert registry.get(manifest_path(name, gone.digest)).status_code == 404
        assert registry.delete(manifest_path(name, "retention-newest")).status_code == 202

    events = {e["data"]["digest"]: e["data"] for e in deleted_before_marker(receiver)}
    assert {digest: data["referrers"] for digest, data in events.items()} == {
        subjects[how].digest: referrer_entries((went[how], [])) for how in ("api", "retention")
    }
    assert image_deletes_audited(team) == {
        f"{team.repository}@{subjects[how].digest}": {"referrer_count": 1}
        for how in ("api", "retention")
    }


def push_times(team: Team, images: int) -> list[float]:
    """Seconds each of `images` pushes took, one after another."""
    times = []
    with team.registry() as registry:
        for n in range(images):
            started = time.monotonic()
            push_image(registry, team.oci_name(), f"t{n}")
            times.append(time.monotonic() - started)
    return times


def test_dead_endpoint_does_not_slow_pushes(team: Team) -> None:
    """An endpoint that never answers: pushes made while its delivery hangs take as long as
    with no endpoint at all (a push waiting on it, or on a lock its attempt holds, would wait
    for most of the 2 s timeout)."""
    baseline = push_times(team, 5)
    for silent in receiving(silent=True):
        add_webhook(team, silent.url)
        with team.registry() as registry:
            push_image(registry, team.oci_name(), "first")
        # Its delivery hangs from now for the 2 s timeout (then again 0.3 s, 0.6 s, ... later):
        # the timed pushes start beside a hanging attempt.
        silent.wait_for(1)
        beside = push_times(team, 5)
    assert max(beside) < 1.2, (baseline, beside)
    assert sum(beside) < sum(baseline) * 2 + 1.0, (baseline, beside)


def test_a_hanging_endpoint_s_test_events_hold_up_no_other_project(
    team: Team, receiver: Receiver
) -> None:
    """A project's endpoint never answers, with as many test events waiting as it may have
    (5: each held for the 2 s timeout, 10 s in all); a push to another project, made while
    they hang, reaches that project's endpoint within seconds all the same."""
    other = new_team(team.server)
    add_webhook(other, receiver.url)
    try:
        for silent in receiving(silent=True):
            hanging = add_webhook(team, silent.url)
            test_path = team.url(f"/webhooks/{hanging['id']}/test")
            ok(team["project-admin"].post(test_path), 202)
            # The other four queued while the first hangs: a job that sends what it found
            # at a pass before it looks again would then be at the four for 8 s.
            silent.wait_for(1)
            for _ in range(4):
                ok(team["project-admin"].post(test_path), 202)
            silent.wait_for(2)
            started = time.monotonic()
            with other.registry() as registry:
                push_image(registry, other.oci_name(), "v1")
            (received,) = receiver.wait_for(1, timeout=30)
            took = time.monotonic() - started
        assert received.event["data"]["project"] == other.project
        assert took < 5.0, took
    finally:
        other.close()


def test_secret_shown_once_and_changes_audited(team: Team, receiver: Receiver) -> None:
    admin = team["project-admin"]
    created = add_webhook(team, receiver.url, secret="my-own-secret-of-20", description="ci")
    assert created["secret"] == "my-own-secret-of-20" and created["signed"] is True
    path = team.url(f"/webhooks/{created['id']}")
    shown = ok(admin.get(path))
    listed = ok(admin.get(team.url("/webhooks")))
    assert "secret" not in shown and all("secret" not in w for w in listed)
    assert "my-own-secret-of-20" not in admin.get(team.url("/webhooks")).text
    renewed = ok(admin.post(f"{path}/secret"))["secret"]
    assert renewed != created["secret"] and len(renewed) >= 32
    ok(admin.post(f"{path}/test"), 202)
    (received,) = receiver.wait_for(1)
    assert received.signed_with(renewed) and not received.signed_with("my-own-secret-of-20")
    changed = ok(admin.patch(path, json={"enabled": False, "event_types": []}))
    assert changed["enabled"] is False
    assert_problem(admin.post(f"{path}/test"), 409)
    assert ok(admin.delete(path), 204) is None
    assert_problem(admin.get(path), 404)

    def actions() -> list[str]:
        entries = ok(admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
        return [e["action"] for e in entries if e["action"].startswith("webhook.")]

    expected = ["webhook.delete", "webhook.update", "webhook.secret", "webhook.create"]
    assert until(lambda: actions() == expected)
    audit_text = admin.get(team.url("/audit"), params={"per_page": 100}).text
    assert "my-own-secret-of-20" not in audit_text and renewed not in audit_text


def test_send_test_event(team: Team, receiver: Receiver) -> None:
    admin = team["project-admin"]
    created = add_webhook(team, receiver.url, event_types=["io.berth.gc.finished"])
    queued = ok(admin.post(team.url(f"/webhooks/{created['id']}/test")), 202)
    assert queued["state"] == "pending" and queued["event_type"] == "io.berth.webhook.test"
    (received,) = receiver.wait_for(1)
    assert received.event["type"] == "io.berth.webhook.test"
    assert received.signed_with(str(created["secret"]))

    def delivered() -> bool:
        log = ok(admin.get(team.url(f"/webhooks/{created['id']}/deliveries")))
        return bool(log["items"][0]["state"] == "delivered")

    assert until(delivered)


def test_a_test_event_is_sent_past_a_failing_delivery(team: Team, receiver: Receiver) -> None:
    """The endpoint refuses every event: a push's delivery is retried, the next waits behind
    it (saying which one it waits for, not a next attempt long past), and a test event is
    sent within seconds all the same, once, its refusal in the log. The endpoint back, the
    next test event is delivered, and the queue drains."""
    receiver.statuses = [500] * 1000
    admin = team["project-admin"]
    created = add_webhook(team, receiver.url, event_types=["io.berth.image.pushed"])
    log_path = team.url(f"/webhooks/{created['id']}/deliveries")
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "one")
        push_image(registry, team.oci_name(), "two")
    receiver.wait_for(1)

    tested = ok(admin.post(team.url(f"/webhooks/{created['id']}/test")), 202)

    def finished(delivery_id: int) -> dict[str, Any] | None:
        items = ok(admin.get(log_path))["items"]
        found: dict[str, Any] = next(d for d in items if d["id"] == delivery_id)
        return None if found["state"] == "pending" else found

    test = until(lambda: finished(tested["id"]), 10)
    assert test is not None, "the test event is still pending"
    assert test["state"] == "failed" and test["attempts"] == 1
    assert test["next_attempt_at"] is None and tested["waiting_for"] is None
    assert [(a["outcome"], a["status_code"]) for a in test["attempt_log"]] == [("failed", 500)]
    assert test["attempt_log"][0]["error"] == "the endpoint answered 500"
    items = ok(admin.get(log_path))["items"]
    two, one = (d for d in items if d["event_type"] == "io.berth.image.pushed")
    assert one["event"]["data"]["tag"] == "one" and two["event"]["data"]["tag"] == "two"
    assert one["state"] == "pending" and one["waiting_for"] is None
    assert one["next_attempt_at"] is not None and one["attempts"] >= 1
    assert two["state"] == "pending" and two["attempts"] == 0
    assert two["waiting_for"] == one["id"] and two["next_attempt_at"] is None
    tests_sent = [r for r in receiver.received if r.event["type"] == "io.berth.webhook.test"]
    assert len(tests_sent) == 1  # not retried

    receiver.statuses = []
    again = ok(admin.post(team.url(f"/webhooks/{created['id']}/test")), 202)
    accepted = until(lambda: finished(again["id"]), 10)
    assert accepted is not None and accepted["state"] == "delivered"
    drained = until(lambda: finished(two["id"]), 15)
    assert drained is not None and drained["state"] == "delivered"
    pushes = [r.event for r in receiver.received if r.event["type"] == "io.berth.image.pushed"]
    assert [e["data"]["tag"] for e in pushes][-2:] == ["one", "two"]


def test_only_project_admins(team: Team, receiver: Receiver) -> None:
    for actor in ("member", "reader"):
        assert_problem(team[actor].get(team.url("/webhooks")), 403)
        assert_problem(team[actor].post(team.url("/webhooks"), json={"url": receiver.url}), 403)
    with httpx.Client(base_url=f"{team.server.url}/api/v1") as anonymous:
        for method, path in (
            ("GET", ""),
            ("POST", ""),
            ("GET", "/1/deliveries"),
            ("POST", "/1/test"),
        ):
            response = anonymous.request(method, team.url(f"/webhooks{path}"), json={})
            assert_problem(response, 401, code="UNAUTHORIZED")
    schemas = ok(team.admin.get("/openapi.json"))["components"]["schemas"]
    assert {"CloudEvent", "EventData", "Delivery", "CreatedWebhook"} <= set(schemas)
    assert "secret" not in schemas["Webhook"]["properties"]
    types = ok(team["project-admin"].get(team.url("/webhooks/event-types")))
    assert "io.berth.image.pushed" in [t["type"] for t in types]


UNKNOWN_TYPE = "unknown event type {!r}; the types are " + ", ".join(EVENT_TYPES)


def test_bad_input(team: Team) -> None:
    admin = team["project-admin"]
    body = {"url": "http://127.0.0.1:9/", "event_types": ["io.berth.nothing"]}
    refused = assert_problem(admin.post(team.url("/webhooks"), json=body), 422)
    assert refused["errors"] == [
        {"field": "event_types", "message": UNKNOWN_TYPE.format("io.berth.nothing")}
    ]
    body = {"url": "file:///etc/passwd"}
    assert_problem(admin.post(team.url("/webhooks"), json=body), 422, fields=("url",))
    body = {"url": "http://127.0.0.1:9/", "secret": "short"}
    assert_problem(admin.post(team.url("/webhooks"), json=body), 422, fields=("secret",))


DESCRIPTION_RULE = (
    "a description is at most 100 characters, with no line breaks or control characters"
)


def test_every_bad_field_is_refused_at_once(team: Team) -> None:
    """A bad URL, description and secret are refused together, each at its field: fixing one
    does not reveal the next."""
    admin = team["project-admin"]
    rule = f"{DESCRIPTION_RULE}; this one has '\\x07'"
    secrets_are = "a secret is 16 to 128 printable characters"
    body = {
        "url": "file:///etc/passwd",
        "event_types": ["io.berth.image.pushed", "image.pushed"],
        "description": "ring \u0007",
        "secret": "short",
    }
    refused = assert_problem(admin.post(team.url("/webhooks"), json=body), 422)
    unknown = UNKNOWN_TYPE.format("image.pushed")
    assert refused["errors"] == [
        {"field": "url", "message": "the URL must start with http:// or https://"},
        {"field": "event_types", "message": unknown},
        {"field": "description", "message": rule},
        {"field": "secret", "message": secrets_are},
    ]
    assert refused["detail"] == (
        f"url: the URL must start with http:// or https://; event_types: {unknown}; "
        f"description: {rule}; secret: {secrets_are}"
    )
    # Lengths too: they were refused first, alone.
    body = {"url": "http://127.0.0.1:9/" + "x" * 2048, "description": "x" * 101}
    refused = assert_problem(admin.post(team.url("/webhooks"), json=body), 422)
    assert [e["field"] for e in refused["errors"]] == ["url", "description"]
    assert ok(admin.get(team.url("/webhooks"))) == []

    made = ok(admin.post(team.url("/webhooks"), json={"url": "http://127.0.0.1:9/"}), 201)
    path = team.url(f"/webhooks/{made['id']}")
    change = {"url": "ftp://127.0.0.1/", "description": "two\nlines", "enabled": False}
    refused = assert_problem(admin.patch(path, json=change), 422)
    assert [e["field"] for e in refused["errors"]] == ["url", "description"]
    unchanged = ok(admin.get(path))
    assert (unchanged["url"], unchanged["enabled"]) == ("http://127.0.0.1:9/", True)


def test_a_description_is_any_text_but_control_characters_as_a_repository_s(team: Team) -> None:
    """A webhook is described as a repository is: any text a person types (a non-breaking
    space, an em space, an emoji), never a control character or a line break, refused in the
    words a repository's description is."""
    admin = team["project-admin"]
    described = "CI\u00a0hook \N{WHALE}"
    made = add_webhook(team, "http://127.0.0.1:9/", description=described)
    assert made["description"] == described
    path = team.url(f"/webhooks/{made['id']}")
    assert ok(admin.patch(path, json={"description": "deploy\u2003bot"}))["description"] == (
        "deploy\u2003bot"
    )
    for refused, quoted in [
        ("ring \u0007", "'\\x07'"),
        ("a\u0085b", "'\\x85'"),
        ("a\u2028b", "'\\u2028'"),
        # A right-to-left override: "invoice \u202efdp.exe" shows as "invoice exe.pdf".
        ("invoice \u202efdp.exe", "'\\u202e'"),
    ]:
        as_webhook = admin.post(
            team.url("/webhooks"), json={"url": "http://127.0.0.1:9/", "description": refused}
        )
        as_change = admin.patch(path, json={"description": refused})
        as_repository = admin.patch(team.repo_url(), json={"description": refused})
        expected = [
            {"field": "description", "message": f"{DESCRIPTION_RULE}; this one has {quoted}"}
        ]
        for answer in (as_webhook, as_change, as_repository):
            assert assert_problem(answer, 422)["errors"] == expected
    assert ok(admin.get(path))["description"] == "deploy\u2003bot"


NOT_TEXT = (
    "not text: it holds a lone surrogate, which is no character (half of a UTF-16 pair, such "
    "as JSON's \\ud800, escaped alone; in a command's argument, a byte that is not UTF-8)"
)


def test_a_lone_surrogate_is_refused_in_any_field_the_api_stores(team: Team) -> None:
    """JSON may escape half a UTF-16 pair alone (`"\\ud800"`): no character, which no
    database stores. Every field refuses it (422) in one wording, rather than failing (500):
    descriptions and webhook URLs, which took it, as well as fields with a form of their own;
    nothing is stored or changed. A pair escaped in JSON is the character it encodes."""
    admin = team["project-admin"]

    def sent(method: str, path: str, body: str) -> httpx.Response:
        # Written by hand: a JSON encoder would not encode a lone surrogate.
        return admin.request(
            method, path, content=body.encode(), headers={"Content-Type": "application/json"}
        )

    made = add_webhook(team, "http://127.0.0.1:9/", description="ci")
    webhook = team.url(f"/webhooks/{made['id']}")
    for method, path, body, field in [
        ("POST", team.url("/webhooks"), '{"url": "http://127.0.0.1:9/\\ud800"}', "url"),
        ("PATCH", webhook, '{"url": "http://127.0.0.1:9/\\udfff"}', "url"),
        (
            "POST",
            team.url("/webhooks"),
            '{"url": "http://127.0.0.1:9/a", "description": "a\\ud800b"}',
            "description",
        ),
        ("PATCH", webhook, '{"description": "a\\ud800"}', "description"),
        (
            "POST",
            team.url("/repositories"),
            '{"name": "web", "description": "\\udc00"}',
            "description",
        ),
        ("PATCH", team.repo_url(), '{"description": "a\\ud800b"}', "description"),
        ("POST", team.url("/immutable-tag-rules"), '{"tag_pattern": "v\\ud800"}', "tag_pattern"),
        ("PUT", team.url("/retention"), '{"rules": [], "schedule": "\\ud800"}', "schedule"),
    ]:
        refused = assert_problem(sent(method, path, body), 422, code="VALIDATION_FAILED")
        assert refused["errors"] == [{"field": field, "message": NOT_TEXT}], (method, path)
    assert [w["url"] for w in ok(admin.get(team.url("/webhooks")))] == ["http://127.0.0.1:9/"]
    assert ok(admin.get(webhook))["description"] == "ci"
    assert [r["name"] for r in ok(admin.get(team.url("/repositories")))["items"]] == ["app"]
    assert ok(admin.get(team.repo_url()))["description"] == ""
    assert ok(admin.get(team.url("/immutable-tag-rules"))) == []

    whale = ok(sent("PATCH", webhook, '{"description": "\\ud83d\\udc33"}'))
    assert whale["description"] == "\N{SPOUTING WHALE}"


def test_private_address_refused_by_default(sqlite_server: BerthServer) -> None:
    """The server without webhook_allow_private refuses loopback, link-local and metadata,
    however the address is written. A name (or a spelling only the resolver reads) that leads
    inside is refused in the words a name that does not resolve is: a project admin learns
    nothing of the server's network from the refusals."""
    sqlite_server.create_project("hooks")
    auth = sqlite_server.access_key("hooks")
    by_name = "does not resolve to public addresses only"
    with httpx.Client(base_url=f"{sqlite_server.url}/api/v1", auth=auth, timeout=30) as api:
        for url, why in (
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "metadata"),
            ("http://[fe80::1]/", "link-local"),
            ("http://localhost/", by_name),
            ("http://no-such-host.invalid/", by_name),
            ("http://bad\u009bhost/", by_name),  # no name: IDNA cannot encode it
            # The same places in other spellings: decimal, octal and hexadecimal IPv4, the
            # IPv6 forms that lead to an IPv4 address (mapped, NAT64, 6to4, SIIT,
            # IPv4-compatible), and the unspecified address, which connects to this host.
            ("http://2130706433/", by_name),
            ("http://0177.0.0.1/", by_name),
            ("http://0x7f000001/", by_name),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::1]/", "loopback"),
            ("http://0.0.0.0:8080/", "private"),
            ("http://[::]:8080/", "private"),
            ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data", "metadata"),
            ("http://[64:ff9b::a00:1]/", "private"),
            ("http://[2002:7f00:1::]/", "loopback"),
            ("http://[::ffff:0:7f00:1]/", "loopback"),
            ("http://[::127.0.0.1]/", "loopback"),
            ("http://192.0.0.8/", "not public"),
            ("http://224.0.0.1/", "not public"),
        ):
            response = api.post("/projects/hooks/webhooks", json={"url": url})
            problem = assert_problem(response, 422, fields=("url",))
            assert why in problem["detail"] and "webhook_allow_private" in problem["detail"]
            if why == by_name:
                assert "127.0.0.1" not in problem["detail"] and "loopback" not in problem["detail"]


def _nulls(value: Any, path: str = "") -> list[str]:
    """The paths of the nulls in a JSON value."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _nulls(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for item in value for p in _nulls(item, path)]
    return [path] if value is None else []


def test_redeliver_a_delivery(team: Team, receiver: Receiver) -> None:
    """A delivered push sent again: the same body (and event id) to the receiver once more,
    signed with the secret the endpoint has now; the new delivery names the one it re-sends,
    and the redelivery is audited. A pending delivery, another endpoint's, and anyone but a
    project admin are refused."""
    admin = team["project-admin"]
    created = add_webhook(team, receiver.url, event_types=["io.berth.image.pushed"])
    hooks = team.url(f"/webhooks/{created['id']}")
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "v1")
    (first,) = receiver.wait_for(1)
    until(lambda: ok(admin.get(f"{hooks}/deliveries"))["items"][0]["state"] == "delivered")
    (pushed,) = ok(admin.get(f"{hooks}/deliveries"))["items"]
    renewed = ok(admin.post(f"{hooks}/secret"))["secret"]
    redeliver = f"{hooks}/deliveries/{pushed['id']}/redeliver"
    for actor in ("member", "reader"):
        assert_problem(team[actor].post(redeliver), 403)

    queued = ok(admin.post(redeliver), 202)
    assert queued["redelivery_of"] == pushed["id"] and queued["id"] != pushed["id"]
    assert queued["state"] == "pending" and queued["event"] == pushed["event"]
    again = receiver.wait_for(2)[1]
    assert again.body == first.body and again.headers["ce-id"] == pushed["event_id"]
    assert again.signed_with(renewed) and not again.signed_with(str(created["secret"]))

    def redelivered() -> dict[str, Any] | None:
        newest = ok(admin.get(f"{hooks}/deliveries"))["items"][0]
        return newest if newest["state"] == "delivered" else None

    done = until(redelivered)
    assert done is not None and done["id"] == queued["id"]
    assert done["redelivery_of"] == pushed["id"]

    def audited() -> list[dict[str, Any]]:
        entries = ok(admin.get(team.url("/audit"), params={"per_page": 100}))["items"]
        return [e for e in entries if e["action"] == "webhook.redeliver"]

    (entry,) = until(audited)
    assert entry["actor"].startswith("project-admin") and entry["target"] == receiver.url
    assert entry["detail"]["delivery"] == pushed["id"]
    assert entry["detail"]["redelivery"] == queued["id"]

    # Pending (refused until it is answered): it is being sent already.
    receiver.statuses = [500] * 1000
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "v2")
    receiver.wait_for(3)
    pending = ok(admin.get(f"{hooks}/deliveries"))["items"][0]
    assert pending["state"] == "pending"
    refused = assert_problem(
        admin.post(f"{hooks}/deliveries/{pending['id']}/redeliver"), 409, code="CONFLICT"
    )
    assert "still pending" in refused["detail"]
    other = add_webhook(team, receiver.url + "/other")
    assert_problem(
        admin.post(team.url(f"/webhooks/{other['id']}/deliveries/{pushed['id']}/redeliver")), 404
    )
    paths = ok(team.admin.get("/openapi.json"))["paths"]
    documented = paths[
        "/projects/{project}/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
    ]["post"]
    assert {"202", "403", "404", "409"} <= set(documented["responses"])


def test_the_delivery_log_shows_no_nulls_for_what_the_body_leaves_out(
    team: Team, receiver: Receiver
) -> None:
    """A push and a test event: each delivery's `event` is the body the receiver got, with
    no `null` for a field it does not carry; the schema says such fields are optional, not
    nullable."""
    admin = team["project-admin"]
    created = add_webhook(team, receiver.url)
    hooks = team.url(f"/webhooks/{created['id']}")
    with team.registry() as registry:
        push_image(registry, team.oci_name(), "v1")
    receiver.wait_for(1)
    ok(admin.post(f"{hooks}/test"), 202)
    received = {r.event["id"]: r.event for r in receiver.wait_for(2)}

    def finished() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = ok(admin.get(f"{hooks}/deliveries"))["items"]
        return items if all(d["state"] != "pending" for d in items) else None

    log = until(finished)
    assert log is not None and len(log) == 2
    for delivery in log:
        assert delivery["event"] == received[delivery["event_id"]]
        assert _nulls(delivery["event"]) == []
    schemas = ok(team.admin.get("/openapi.json"))["components"]["schemas"]
    for schema, field in (("EventData", "tag"), ("EventData", "gc_run"), ("CloudEvent", "subject")):
        shown = schemas[schema]["properties"][field]
        assert field not in schemas[schema].get("required", [])
        assert "null" not in str(shown), shown


def test_one_url_is_one_webhook_per_project(team: Team) -> None:
    """A second webhook of a URL the project has (its host in another case, its default port
    written) is refused with 409, and so is moving another webhook to it; a trailing slash
    makes another URL. The refusal names the `url` field, so a client tells it there."""
    admin = team["project-admin"]
    first = add_webhook(team, "http://127.0.0.1:9/hook")
    for url in ("http://127.0.0.1:9/hook", "HTTP://127.0.0.1:9/hook"):
        refused = assert_problem(
            admin.post(team.url("/webhooks"), json={"url": url}), 409, code="CONFLICT"
        )
        assert refused["detail"].startswith(
            f"project '{team.project}' has a webhook to this URL already: webhook {first['id']}"
        )
        assert refused["errors"] == [{"field": "url", "message": refused["detail"]}]
    slash = add_webhook(team, "http://127.0.0.1:9/hook/")
    moved = admin.patch(
        team.url(f"/webhooks/{slash['id']}"), json={"url": "http://127.0.0.1:9/hook"}
    )
    assert_problem(moved, 409, fields=("url",), code="CONFLICT")
    assert [w["url"] for w in ok(admin.get(team.url("/webhooks")))] == [
        "http://127.0.0.1:9/hook",
        "http://127.0.0.1:9/hook/",
    ]


# Each pair addresses one endpoint: percent-escapes in either case, an unreserved character
# escaped or not, `.` and `..` segments (resolved before sending), an IPv6 address written
# long, the host in capitals, a default port written, an empty path.
SAME_ENDPOINT = (
    ("http://127.0.0.1:9/a%2fb?q=%2a", "http://127.0.0.1:9/a%2Fb?q=%2A"),
    ("http://127.0.0.1:9/%7euser/%41", "http://127.0.0.1:9/~user/A"),
    ("http://127.0.0.1:9/x/./y/../z", "http://127.0.0.1:9/x/z"),
    ("http://[::1]:9/v6", "http://[0:0::0:1]:9/v6"),
    ("http://LocalHost/named", "http://localhost:80/named"),
    ("https://localhost", "https://localhost:443/"),
)


def test_urls_addressing_one_endpoint_are_one_webhook(team: Team) -> None:
    """Each second spelling of an endpoint's URL is refused (409 at `url`), both when added
    and when another webhook is moved to it; the webhooks keep the URLs as given. An escaped
    `/` is not a `/`: that is another URL."""
    admin = team["project-admin"]
    made = [add_webhook(team, first) for first, _ in SAME_ENDPOINT]
    spare = add_webhook(team, "http://127.0.0.1:9/spare")
    for (_, second), first in zip(SAME_ENDPOINT, made, strict=True):
        refused = assert_problem(
            admin.post(team.url("/webhooks"), json={"url": second}),
            409,
            fields=("url",),
            code="CONFLICT",
        )
        assert f"already: webhook {first['id']} ({first['url']})" in refused["detail"], second
        moved = admin.patch(team.url(f"/webhooks/{spare['id']}"), json={"url": second})
        assert_problem(moved, 409, fields=("url",), code="CONFLICT")
    add_webhook(team, "http://127.0.0.1:9/a/b?q=%2a")
    assert [w["url"] for w in ok(admin.get(team.url("/webhooks")))] == [
        *(first for first, _ in SAME_ENDPOINT),
        "http://127.0.0.1:9/spare",
        "http://127.0.0.1:9/a/b?q=%2a",
    ]


def test_a_host_with_the_root_s_dot_is_the_host_without(team: Team) -> None:
    """`hooks.example.` is the fully written `hooks.example`: one endpoint, one webhook
    (both names resolve, as DNS resolves them; here through /etc/hosts)."""
    if not os.access(HOSTS_FILE, os.W_OK):
        pytest.skip("/etc/hosts is not writable here")
    name = f"hooks-{uuid.uuid4().hex[:8]}.test"
    entry = HostsEntries([name, f"{name}."])
    entry.add()
    try:
        admin = team["project-admin"]
        made = add_webhook(team, f"http://{name}./hook")
        refused = admin.post(team.url("/webhooks"), json={"url": f"http://{name.upper()}/hook"})
        assert_problem(refused, 409, fields=("url",), code="CONFLICT")
        assert f"webhook {made['id']} (http://{name}./hook)" in refused.json()["detail"]
    finally:
        entry.remove()


def test_one_url_added_twice_at_once_is_made_once(team: Team) -> None:
    """Two admins adding the same URL at the same moment: one is made, the other refused
    (on PostgreSQL both transactions would otherwise find the URL free)."""
    admin = team["project-admin"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for n in range(6):
            body = {"url": f"http://127.0.0.1:9/at-once-{n}"}
            answers = list(
                pool.map(functools.partial(admin.post, json=body), [team.url("/webhooks")] * 2)
            )
            assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
            refused = next(a for a in answers if a.status_code == 409)
            assert_problem(refused, 409, fields=("url",), code="CONFLICT")
    assert len(ok(admin.get(team.url("/webhooks")))) == 6
