"""The usage endpoints: traffic series, monthly totals, change and charge; deduplicated storage;
scheduled collection (one sample per interval with two workers); the management summary; who
may read them; the `berth usage` CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import time
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from berth.jobs import Job, Scheduler
from berth.jobs.leases import Leases
from berth.metadata.tables import project_settings, repositories, traffic_daily, utcnow
from berth.services.usage import Usage
from berth.state import Services
from tests.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Blob,
    image_index,
    image_manifest,
    push_bytes,
    push_manifest,
)
from tests.servers import BerthServer, eventually
from tests.usage.conftest import (
    COLLECT_SECONDS,
    CURRENCY,
    FREE_GB,
    PRICE_PER_GB,
    Project,
    new_project,
)

GB = 10**9


def month_start(day: dt.date, back: int) -> dt.date:
    index = day.year * 12 + day.month - 1 - back
    return dt.date(index // 12, index % 12 + 1, 1)


def insert_traffic(
    server: BerthServer, project: Project, rows: list[tuple[str, dt.date, int]]
) -> None:
    """Rows of (repository, day, bytes) written straight into traffic_daily (one request each)."""

    async def write(services: Services) -> None:
        project_id = await services.repositories.project_id(project.name)
        async with services.db.write() as conn:
            ids = dict(
                (
                    await conn.execute(
                        select(repositories.c.name, repositories.c.id).where(
                            repositories.c.project_id == project_id
                        )
                    )
                ).all()
            )
            await conn.execute(
                traffic_daily.insert(),
                [
                    {
                        "project_id": project_id,
                        "repository_id": ids[name],
                        "day": day,
                        "bytes": size,
                        "requests": 1,
                    }
                    for name, day, size in rows
                ],
            )

    server._services(write)


def charge(month_bytes: int) -> float:
    return round(max(month_bytes - FREE_GB * GB, 0) / GB * PRICE_PER_GB, 2)


# ---------------------------------------------------------------- traffic


def test_traffic_series_months_change_and_charge(metered: BerthServer) -> None:
    project = new_project(metered)
    web, db = project.repository("web" + uuid.uuid4().hex[:6]), project.repository()
    today = dt.date.fromisoformat(project.traffic(days=1)["last_day"])
    m0, m1, m2, m3 = (month_start(today, back) for back in range(4))
    rows = [
        (web, today, int(2.5 * GB)),
        (db, today, int(0.5 * GB)),  # this month: 3 GB, 2 of them past the free GB
        (web, m1, 1 * GB),  # last month: 1 GB, all free
        (web, m2, 4 * GB),
        (web, m3, 2 * GB),  # only for the change of m2 over m3
        (web, today - dt.timedelta(days=200), 7 * GB),  # past everything shown
    ]
    insert_traffic(metered, project, rows)

    found = project.traffic()
    first = today - dt.timedelta(days=91)
    assert found["first_day"] == first.isoformat()
    days = found["daily"]
    assert len(days) == 92
    assert [d["day"] for d in days] == [
        (first + dt.timedelta(days=i)).isoformat() for i in range(92)
    ]
    by_day = {d["day"]: d["bytes"] for d in days if d["bytes"]}
    expected_days: dict[str, int] = {}
    for _name, day, size in rows:
        if day >= first:
            expected_days[day.isoformat()] = expected_days.get(day.isoformat(), 0) + size
    assert by_day == expected_days
    assert found["total_bytes"] == sum(expected_days.values())

    months = found["months"]
    assert [m["month"] for m in months] == [m.strftime("%Y-%m") for m in (m2, m1, m0)]
    assert [m["bytes"] for m in months] == [4 * GB, 1 * GB, 3 * GB]
    assert [m["change_bytes"] for m in months] == [2 * GB, -3 * GB, 2 * GB]
    assert [m["change_percent"] for m in months] == [100.0, -75.0, 200.0]
    assert [m["estimated_charge"] for m in months] == [charge(4 * GB), 0.0, charge(3 * GB)]
    assert found["this_month"] == months[-1]
    assert found["this_month"]["estimated_charge"] == 1.0  # (3 - 1 free) GB at 0.5
    assert found["pricing"] == {
        "price_per_gb": PRICE_PER_GB,
        "free_gb_per_month": FREE_GB,
        "gb": GB,
        "currency": CURRENCY,  # the currency setting
    }
    assert {m["currency"] for m in months} == {CURRENCY}
    in_window = {
        name: sum(size for n, day, size in rows if n == name and day >= first) for name in (web, db)
    }
    assert [(r["repository"], r["bytes"]) for r in found["repositories"]] == [
        (web, in_window[web]),
        (db, in_window[db]),
    ]

    # One repository: its own bytes and change, and its share of the project's charge.
    narrowed = project.traffic(repository=web)
    assert narrowed["repository"] == web and narrowed["repositories"] is None
    this_month = narrowed["this_month"]
    assert this_month["bytes"] == int(2.5 * GB)
    assert this_month["change_bytes"] == int(1.5 * GB)
    assert this_month["change_percent"] == 150.0
    assert this_month["estimated_charge"] == round(1.0 * 2.5 / 3, 2)
    assert narrowed["months"][0]["estimated_charge"] == charge(4 * GB)  # it was all of m2
    other = project.traffic(repository=db)["this_month"]
    assert other["estimated_charge"] == round(1.0 * 0.5 / 3, 2)
    assert other["change_percent"] is None  # nothing the month before

    # The window's edges: the series covers exactly `days` days, today included.
    edge = new_project(metered)
    repo = edge.repository()
    insert_traffic(
        metered,
        edge,
        [(repo, today - dt.timedelta(days=29), 5), (repo, today - dt.timedelta(days=30), 7)],
    )
    short = edge.traffic(days=30)
    assert len(short["daily"]) == 30 and short["daily"][0] == {
        "day": (today - dt.timedelta(days=29)).isoformat(),
        "bytes": 5,
        "requests": 1,
    }
    assert short["total_bytes"] == 5


def test_traffic_request_errors(metered: BerthServer) -> None:
    project = new_project(metered)
    base = f"/api/v1/projects/{project.name}/traffic"
    too_long = project.client.get(base, params={"days": 1000})
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "query.days"
    assert project.client.get(base, params={"days": 0}).status_code == 422
    missing = project.client.get(base, params={"repository": "nothing-here"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    assert project.client.get(base, params={"repository": "Bad Name"}).status_code == 422


def test_old_traffic_is_pruned_after_the_retention(metered: BerthServer) -> None:
    project = new_project(metered)
    repo = project.repository()
    today = utcnow().date()
    ages = (0, 92, 124, 125, 400)
    insert_traffic(metered, project, [(repo, today - dt.timedelta(days=age), 1) for age in ages])

    async def prune_and_read(services: Services) -> list[int]:
        await Usage(services.db, traffic_retention_days=124).prune(today)
        project_id = await services.repositories.project_id(project.name)
        async with services.db.read() as conn:
            days = (
                await conn.execute(
                    select(traffic_daily.c.day).where(traffic_daily.c.project_id == project_id)
                )
            ).scalars()
            return sorted((today - day).days for day in days)

    kept: list[int] = metered._services(prune_and_read)
    assert kept == [0, 92, 124]


# ---------------------------------------------------------------- storage


def push_image(client: httpx.Client, name: str, tag: str, blobs: list[Blob]) -> Blob:
    """Push config + layers (blobs[0] is the config) and a manifest tagged `tag`."""
    for blob in blobs:
        push_bytes(client, name, blob.data)
    manifest = image_manifest(blobs[0].descriptor(), [b.descriptor() for b in blobs[1:]])
    push_manifest(client, name, tag, manifest)
    return manifest


def figures(sample: dict[str, Any]) -> tuple[int, int, int]:
    return sample["bytes"], sample["blobs"], sample["images"]


def when(sample: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(sample["collected_at"])


def test_storage_is_deduplicated_within_a_project(metered: BerthServer) -> None:
    project, neighbour = new_project(metered), new_project(metered)
    config = Blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
    layer = Blob(os.urandom(300_000), OCI_LAYER)
    own_layer = Blob(os.urandom(1000), OCI_LAYER)
    first, second, third = (project.repository() for _ in range(3))
    manifest = push_image(project.client, f"{project.name}/{first}", "v1", [config, layer])
    push_image(project.client, f"{project.name}/{second}", "v1", [config, layer])  # same again
    # An index over two platform images: one image; the blobs are the same ones again.
    name = f"{project.name}/{third}"
    children = [
        push_image(project.client, name, f"p{i}", [config, layer, *([own_layer] if i else [])])
        for i in range(2)
    ]
    index = image_index([c.descriptor() for c in children])
    push_manifest(project.client, name, "multi", index)
    # The neighbour's copy of the same layer, and a blob of its own, are its own.
    push_image(
        neighbour.client, f"{neighbour.name}/{neighbour.repository()}", "v1", [config, layer]
    )
    push_bytes(neighbour.client, f"{neighbour.name}/{neighbour.repository()}", os.urandom(5000))

    sample = project.api("POST", "storage/collect")
    manifests_bytes = manifest.size + children[1].size + index.size  # children[0] == manifest
    assert children[0].digest == manifest.digest
    assert sample["bytes"] == config.size + layer.size + own_layer.size + manifests_bytes
    assert sample["blobs"] == 3
    assert sample["images"] == 3  # v1 in two repositories, and the index (not its children)
    series = project.api("GET", "storage")
    assert sample in series["samples"]
    # The schedule (every second here) may have collected again since: the same figures.
    assert series["last"] == series["samples"][-1]
    assert series["collected_at"] == series["last"]["collected_at"]
    assert when(series["last"]) >= when(sample)
    assert figures(series["last"]) == figures(sample)
    theirs = neighbour.api("POST", "storage/collect")
    assert theirs["bytes"] == config.size + layer.size + manifest.size + 5000
    assert theirs["blobs"] == 3 and theirs["images"] == 1


def test_scheduled_collection_takes_one_sample_per_interval(metered: BerthServer) -> None:
    """Two workers run the scheduler; the lease lets one of them collect each interval."""
    project = new_project(metered)
    wanted = 6
    found = eventually(
        lambda: project.api("GET", "storage"),
        lambda storage: len(storage["samples"]) >= wanted + 1,
        timeout=wanted * COLLECT_SECONDS + 10,
    )
    # The first look took a sample of its own (so Management and Monitoring show one sample,
    # tests/api/test_usage_views.py); the schedule's are the rest.
    times = [dt.datetime.fromisoformat(s["collected_at"]) for s in found["samples"]][1:]
    assert len(times) >= wanted
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    # Two collectors would leave gaps near zero, or twice the samples in the same time.
    assert min(gaps) > 0.8 * COLLECT_SECONDS, gaps
    span = (times[-1] - times[0]).total_seconds()
    assert len(times) <= span / COLLECT_SECONDS + 1.5, (len(times), span, gaps)
    assert found["collect_interval_seconds"] == COLLECT_SECONDS
    assert found["collected_at"] == found["samples"][-1]["collected_at"]


def test_two_schedulers_share_a_job(metered: BerthServer) -> None:
    """Two schedulers (as two nodes would) run one job: once per interval between them."""
    interval = 0.5
    wanted = 6

    async def race(services: Services) -> list[tuple[str, float]]:
        runs: list[tuple[str, float]] = []
        name = "test-" + uuid.uuid4().hex[:8]

        def job(holder: str) -> Job:
            async def run() -> None:
                runs.append((holder, time.monotonic()))

            return Job(name, interval, run)

        nodes = [Scheduler(services.db, [job(h)], holder=h) for h in ("node-a", "node-b")]
        for node in nodes:
            node.start()
        # Until `wanted` runs (a loaded machine runs late: a generous deadline), not a fixed
        # ten intervals: the gaps and the count over the span they cover say the same.
        deadline = time.monotonic() + 20 * wanted * interval
        while len(runs) < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for node in nodes:
            await node.stop()
        return runs

    runs = metered._services(race)
    times = sorted(at for _holder, at in runs)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= wanted, runs
    # Never two runs at once: two schedulers each running the job would leave gaps near zero,
    # or twice the runs in the span.
    assert min(gaps) > 0.8 * interval, gaps
    assert len(times) <= (times[-1] - times[0]) / interval + 1.5, (len(times), gaps)


def test_a_lease_goes_to_one_holder_at_a_time(metered: BerthServer) -> None:
    async def contend(services: Services) -> list[bool]:
        name = "test-" + uuid.uuid4().hex[:8]
        first, second = Leases(services.db, "node-a"), Leases(services.db, "node-b")
        await first.ensure(name)
        await second.ensure(name)  # idempotent
        results = [await first.claim(name, 60), await second.claim(name, 60)]
        results.append(await second.release(name))  # not the holder's: refused
        results.append(await first.release(name))  # released: due now
        results.append(await second.claim(name, 60))
        results.append(await first.claim(name, 60))
        return results

    assert metered._services(contend) == [True, False, False, True, True, False]


# ---------------------------------------------------------------- summary and access


def test_summary_numbers(metered: BerthServer) -> None:
    project = new_project(metered)
    metered._services(lambda s: s.repositories.set_quota(project.name, 7, actor="test"))
    app, empty = project.repository(), project.repository()
    name = f"{project.name}/{app}"
    config = Blob(b'{"architecture":"arm64","os":"linux"}', OCI_CONFIG)
    layer = Blob(os.urandom(50_000), OCI_LAYER)
    first = push_image(project.client, name, "v1", [config, layer])
    second = push_image(project.client, name, "v2", [config, Blob(os.urandom(10), OCI_LAYER)])
    pulled = project.client.get(f"/v2/{name}/blobs/{layer.digest}")
    assert pulled.status_code == 200
    manifest = project.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    sent = len(pulled.content) + len(manifest.content)

    fresh = project.api("GET", "summary")
    assert fresh["repositories"] == {"stored": 2, "maximum": 7}
    assert fresh["images"] == {"stored": 2, "limit_per_repository": 10_000}
    stored = config.size + layer.size + 10 + first.size + second.size
    assert fresh["storage"]["collected_at"]  # a recorded sample (tests/api/test_usage_views.py)
    assert fresh["last_gc_at"] is None

    gc_time = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    async def record_gc(services: Services) -> None:
        project_id = await services.repositories.project_id(project.name)
        async with services.db.write() as conn:
            await conn.execute(
                project_settings.update()
                .where(project_settings.c.project_id == project_id)
                .values(last_gc_at=gc_time)
            )

    metered._services(record_gc)
    collected = project.api("POST", "storage/collect")
    summary = eventually(
        lambda: project.api("GET", "summary"),
        lambda found: found["traffic_this_month"]["bytes"] >= sent,
    )
    assert when(summary["storage"]) >= when(collected)
    assert figures(summary["storage"]) == figures(collected)
    assert summary["storage"]["bytes"] == stored
    assert summary["storage"]["blobs"] == 3 and summary["storage"]["images"] == 2
    assert dt.datetime.fromisoformat(summary["last_gc_at"]) == gc_time
    month = summary["traffic_this_month"]
    assert month["bytes"] == sent and month["requests"] == 2
    assert month["month"] == utcnow().strftime("%Y-%m")
    assert month["estimated_charge"] == 0.0  # well inside the free GB
    assert summary["storage_collect_interval_seconds"] == COLLECT_SECONDS
    assert empty  # an empty repository counts as stored


def test_readers_may_read_usage_and_outsiders_may_not(metered: BerthServer) -> None:
    project = new_project(metered)
    reader = "reader" + uuid.uuid4().hex[:6]
    metered.create_user(reader, "reader-password-123")
    metered.add_member(project.name, reader, "reader")
    as_reader = httpx.Client(
        base_url=f"{metered.url}/api/v1/projects/{project.name}",
        auth=metered.access_key(project.name, reader),
    )
    for path in ("summary", "traffic", "storage"):
        assert as_reader.get(path).status_code == 200, path
    assert as_reader.post("storage/collect").status_code == 201

    outsider = "outsider" + uuid.uuid4().hex[:6]
    metered.create_user(outsider, "outsider-password-123")
    with httpx.Client(base_url=f"{metered.url}/api/v1/projects/{project.name}") as anonymous:
        for path in ("summary", "traffic", "storage"):
            assert anonymous.get(path).status_code == 401
            refused = anonymous.get(path, auth=(outsider, "outsider-password-123"))
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
        assert anonymous.post("storage/collect").status_code == 401


def test_berth_usage_cli(metered: BerthServer) -> None:
    project = new_project(metered)
    repo = project.repository()
    today = utcnow().date()
    insert_traffic(metered, project, [(repo, today, 3 * GB)])
    found = json.loads(metered.cli("usage", project.name, "--collect", "--json").stdout)
    assert set(found) == {"summary", "storage", "traffic"}
    assert found["summary"]["repositories"]["stored"] == 1
    # One sample, even when the server's scheduled collection lands between the CLI's reads.
    assert found["summary"]["storage"] == found["storage"]["last"]
    assert found["storage"]["samples"]
    assert found["traffic"]["this_month"]["bytes"] == 3 * GB
    assert len(found["traffic"]["daily"]) == 14
    # Every day of traffic the server keeps (traffic_retention_days, 124), as the API gives it:
    # the CLI once cut the series at 92 days, dropping the oldest month it still had.
    insert_traffic(metered, project, [(repo, today - dt.timedelta(days=110), 2 * GB)])
    kept = json.loads(metered.cli("usage", project.name, "--days", "200", "--json").stdout)
    assert len(kept["traffic"]["daily"]) == 124
    assert kept["traffic"]["daily"][124 - 111] == {
        "day": (today - dt.timedelta(days=110)).isoformat(),
        "bytes": 2 * GB,
        "requests": 1,
    }
    table = metered.cli("usage", project.name, "--days", "3").stdout
    assert "Repositories" in table and "1 / 100" in table
    assert "3.00 GB" in table and "Outbound traffic by month" in table
    assert f"1.00 {CURRENCY}" in table  # (3 - 1 free) GB at 0.5, in the server's currency
    missing = metered.cli("usage", "no-such-project", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
