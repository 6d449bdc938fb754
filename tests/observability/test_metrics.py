"""/metrics after real pushes, pulls, sign-ins and a GC run: the counters move by exactly what
was done, summed over both worker processes; label sets stay bounded; who may scrape."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from berth.server import SHARED_MEMORY, metrics_directory
from tests.gc.conftest import GcProject, age_past_grace
from tests.metrics import moved, parse, scrape, value
from tests.oci import blob_path, diff_id, image_config, image_manifest, layer, uploads_path
from tests.servers import ADMIN_PASSWORD, BerthServer, free_port, running_server

MANIFEST_ROUTE = "/v2/{name:path}/manifests/{reference}"
BLOB_ROUTE = "/v2/{name:path}/blobs/{digest}"


def registry(route: str, method: str, status: str = "") -> dict[str, str]:
    labels = {"surface": "registry", "route": route, "method": method}
    return {**labels, "status": status} if status else labels


def test_pushes_and_pulls_are_counted_with_their_bytes(
    observed: BerthServer, project: GcProject
) -> None:
    blob = layer({"hello.txt": b"hello metrics"})
    config = image_config(diff_ids=[diff_id(blob)])
    manifest = image_manifest(config.descriptor(), [blob.descriptor()])
    before = scrape(observed)
    project.push(config)
    project.push(blob)
    assert project.put_manifest(manifest, "v1").status_code == 201
    for _ in range(3):
        pulled = project.registry.get(
            f"/v2/{project.name()}/manifests/v1", headers={"Accept": manifest.media_type}
        )
        assert pulled.status_code == 200
    for _ in range(2):
        assert project.registry.get(blob_path(project.name(), blob.digest)).status_code == 200
    missing = project.registry.get(f"/v2/{project.name()}/manifests/nope")
    assert missing.status_code == 404
    after = scrape(observed)

    requests = "berth_http_requests_total"
    assert moved(before, after, requests, **registry(MANIFEST_ROUTE, "GET", "200")) == 3
    assert moved(before, after, requests, **registry(MANIFEST_ROUTE, "GET", "404")) == 1
    assert moved(before, after, requests, **registry(MANIFEST_ROUTE, "PUT", "201")) == 1
    assert moved(before, after, requests, **registry(BLOB_ROUTE, "GET", "200")) == 2
    upload_route = registry("/v2/{name:path}/blobs/uploads/", "POST", "201")
    assert moved(before, after, requests, **upload_route) == 2
    sent = "berth_http_sent_bytes_total"
    received = "berth_http_received_bytes_total"
    assert moved(before, after, sent, **registry(BLOB_ROUTE, "GET")) == 2 * blob.size
    assert moved(before, after, sent, **registry(MANIFEST_ROUTE, "GET")) == (
        3 * manifest.size + len(missing.content)
    )
    assert moved(before, after, received, **registry(MANIFEST_ROUTE, "PUT")) == manifest.size
    upload_bytes = config.size + blob.size
    assert moved(before, after, received, **registry(upload_route["route"], "POST")) == upload_bytes
    durations = "berth_http_request_duration_seconds_count"
    assert moved(before, after, durations, **registry(MANIFEST_ROUTE, "GET")) == 4


def test_every_workers_counts_are_in_one_scrape(observed: BerthServer) -> None:
    """Forty requests on forty connections, which the kernel spreads over both workers
    (SO_REUSEPORT): each worker counts into files of its own, and one scrape sums them."""
    labels = {"surface": "other", "route": "/healthz", "method": "GET", "status": "200"}
    before, counted_before = scrape(observed), healthz_by_worker(observed)
    for _ in range(40):
        with httpx.Client(base_url=observed.url) as client:  # a new connection each time
            assert client.get("/healthz").status_code == 200
    after, counted_after = scrape(observed), healthz_by_worker(observed)
    assert moved(before, after, "berth_http_requests_total", **labels) == 40
    by_worker = {
        worker: count - counted_before.get(worker, 0)
        for worker, count in counted_after.items()
        if count > counted_before.get(worker, 0)
    }
    assert len(by_worker) == 2, by_worker  # both workers answered some
    assert sum(by_worker.values()) == 40


def healthz_by_worker(server: BerthServer) -> dict[str, float]:
    """The /healthz requests each worker has written to its own file of counters."""
    found: dict[str, float] = {}
    for path in metrics_directory(server.data_dir, server.port).glob("counter_*.db"):
        for key, count, *_ in MmapedDict.read_all_values_from_file(str(path)):
            name, _sample, labels, _help = json.loads(key)
            if name == "berth_http_requests" and labels.get("route") == "/healthz":
                found[path.stem] = found.get(path.stem, 0) + count
    return found


@pytest.mark.skipif(not SHARED_MEMORY.is_dir(), reason="no /dev/shm")
@pytest.mark.parametrize(("workers", "stop"), [(1, signal.SIGTERM), (2, signal.SIGINT)])
def test_a_server_stopping_removes_its_metric_files_and_no_one_elses(
    tmp_path: Path, workers: int, stop: signal.Signals
) -> None:
    """Its metric files are in /dev/shm, which nothing empties until the machine restarts:
    `berth serve` stopped by SIGTERM or SIGINT removes their directory once its workers
    have stopped. Another `berth serve` on the same data directory (on another port) has a
    directory of its own, which stays, and goes on counting."""
    data_dir = tmp_path / "data"
    stopping = BerthServer(data_dir, workers=workers)
    staying = BerthServer(data_dir, log_file=tmp_path / "staying.log")
    try:
        stopping.start()
        staying.start()
        directories = [metrics_directory(data_dir, s.port) for s in (stopping, staying)]
        assert directories[0] != directories[1]
        for directory in directories:
            assert directory.is_relative_to(SHARED_MEMORY) and directory.is_dir()
        assert httpx.get(f"{stopping.url}/healthz", timeout=10).status_code == 200
        assert list(directories[0].glob("*.db"))  # it counted there

        assert stopping.process is not None
        stopping.process.send_signal(stop)
        assert stopping.process.wait(timeout=30) == 0, stopping.log_tail()
        assert not directories[0].exists()

        labels = {"surface": "other", "route": "/healthz", "method": "GET", "status": "200"}
        before = scrape(staying)
        assert httpx.get(f"{staying.url}/healthz", timeout=10).status_code == 200
        assert moved(before, scrape(staying), "berth_http_requests_total", **labels) == 1
        assert directories[1].is_dir()
    finally:
        stopping.stop()
        staying.stop()


def test_metric_files_in_systemds_runtime_directory_are_left_to_systemd(tmp_path: Path) -> None:
    """systemd removes a unit's RuntimeDirectory= when it stops (or keeps it, by
    RuntimeDirectoryPreserve=): `berth serve` leaves it alone."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    server = BerthServer(tmp_path / "data", extra_env={"RUNTIME_DIRECTORY": str(runtime)})
    try:
        server.start()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert list((runtime / "metrics").glob("*.db"))
    finally:
        server.stop()


def test_uploads_in_progress(observed: BerthServer, project: GcProject) -> None:
    before = value(scrape(observed), "berth_uploads_in_progress")
    started = project.registry.post(uploads_path(project.name()))
    assert started.status_code == 202
    assert value(scrape(observed), "berth_uploads_in_progress") == before + 1
    assert project.registry.delete(started.headers["location"]).status_code == 204
    assert value(scrape(observed), "berth_uploads_in_progress") == before


def test_tokens_and_login_failures(observed: BerthServer, project: GcProject) -> None:
    key_id, secret = observed.access_key(project.project)
    token_url = f"{observed.url}/auth/token"
    scope = {"scope": f"repository:{project.name()}:pull", "service": observed.address}
    before = scrape(observed)
    for _ in range(2):
        assert httpx.get(token_url, params=scope, auth=(key_id, secret)).status_code == 200
    assert httpx.get(token_url, params=scope, auth=(key_id, "wrong")).status_code == 401
    assert httpx.get(f"{observed.url}/api/v1/projects", auth=("admin", "wrong")).status_code == 401
    after = scrape(observed)
    assert moved(before, after, "berth_tokens_issued_total", kind="registry") == 2
    assert moved(before, after, "berth_login_failures_total", method="access_key") == 1
    assert moved(before, after, "berth_login_failures_total", method="password") == 1


def test_gc_run_figures(observed: BerthServer, project: GcProject) -> None:
    garbage = b"unreferenced bytes for the collector" * 10
    project.push_blob(garbage)
    age_past_grace(project.server)
    before = scrape(observed)
    run = project.gc()
    after = scrape(observed)
    assert run["storage_bytes_freed"] == len(garbage)
    assert moved(before, after, "berth_gc_runs_total", outcome="succeeded") == 1
    assert moved(before, after, "berth_gc_run_duration_seconds_count") == 1
    assert moved(before, after, "berth_gc_restricted_seconds_count") == 1
    assert moved(before, after, "berth_gc_restricted_seconds_sum") == pytest.approx(
        run["restricted_seconds"], abs=0.001
    )
    assert moved(before, after, "berth_gc_freed_bytes_total") == run["bytes_freed"]
    assert moved(before, after, "berth_gc_storage_freed_bytes_total") == len(garbage)


def test_storage_per_project_from_the_latest_sample(
    observed: BerthServer, project: GcProject
) -> None:
    project.push_blob(b"stored bytes" * 100)
    sample = project.api.post(f"/projects/{project.project}/storage/collect")
    assert sample.status_code == 201
    stored = sample.json()["bytes"]
    assert stored > 0
    deadline = time.monotonic() + 15  # a scrape reads the samples at most every 10 s
    while value(scrape(observed), "berth_storage_bytes", project=project.project) != stored:
        assert time.monotonic() < deadline, "the new sample never showed"
        time.sleep(0.5)


def test_database_pools(observed: BerthServer) -> None:
    deadline = time.monotonic() + 30
    while value(samples := scrape(observed), "berth_db_pool_size", pool="writer") < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        time.sleep(0.2)
    assert value(samples, "berth_db_pool_size", pool="reader") == 2 * 16  # both workers
    assert value(samples, "berth_db_pool_size", pool="writer") == 2
    assert value(samples, "berth_db_pool_connections_in_use", pool="writer") >= 0


def test_counters_of_known_kinds_are_served_before_their_first_event(
    observed: BerthServer,
) -> None:
    """A counter by a known kind has each kind's series from the start (0 until it happens),
    so `rate()` and `absent()` alerts see it; once each, though every worker makes them."""
    deadline = time.monotonic() + 30
    while value(scrape(observed), "berth_db_pool_size", pool="writer") < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        time.sleep(0.2)
    text = httpx.get(f"{observed.url}/metrics", timeout=30).text
    known = {
        "berth_tokens_issued_total": ("kind", ("registry", "refresh", "api")),
        "berth_login_failures_total": ("method", ("access_key", "password")),
        "berth_gc_runs_total": ("outcome", ("succeeded", "failed", "rolled_back", "dry_run")),
        "berth_webhook_deliveries_total": ("outcome", ("delivered", "retry", "failed")),
    }
    for name, (label, values) in known.items():
        for label_value in values:
            series = f'{name}{{{label}="{label_value}"}} '
            assert text.count(series) == 1, series


def test_the_api_documentation_is_counted_by_its_routes(observed: BerthServer) -> None:
    paths = {
        "/api/v1/openapi.json": "/api/v1/openapi.json",
        "/api/v1/docs": "/api/v1/docs",
        "/api/v1/docs/static/swagger-ui.css": "/api/v1/docs/static/{path:path}",
    }
    before = scrape(observed)
    for path in paths:
        assert httpx.get(f"{observed.url}{path}").status_code == 200
    after = scrape(observed)
    requests = "berth_http_requests_total"
    for route in paths.values():
        labels = {"surface": "api", "route": route, "method": "GET", "status": "200"}
        assert moved(before, after, requests, **labels) == 1, route
    unmatched = {"surface": "api", "route": "unmatched", "method": "GET", "status": "200"}
    assert moved(before, after, requests, **unmatched) == 0


def test_labels_stay_bounded_over_distinct_paths(observed: BerthServer) -> None:
    kinds = ("/nothing-{}", "/api/v1/no-{}/x", "/v2/p/r/q{}", "/console/no-{}.js")
    paths = [kinds[i % 4].format(i) for i in range(1000)]
    before = scrape(observed)
    with httpx.Client(base_url=observed.url, timeout=30) as client:
        for path in paths:
            assert client.get(path).status_code in (401, 404)
    after = scrape(observed)
    routes = {dict(labels)["route"] for name, labels in after if name.startswith("berth_http")}
    assert len(routes) < 40, routes
    assert not any(marker in route for route in routes for marker in ("no-", "nothing-", "/q"))
    requests = "berth_http_requests_total"

    def count(surface: str, route: str) -> float:
        return sum(
            moved(before, after, requests, surface=surface, route=route, method="GET", status=s)
            for s in ("401", "404")
        )

    assert count("other", "unmatched") == 250
    assert count("api", "unmatched") == 250
    assert count("registry", "/v2/{path:path}") == 250  # the registry's catch-all route
    assert count("console", "/console/{path:path}") == 250
    assert len(after) - len(before) < 200


def test_methods_a_client_makes_up_are_counted_as_one(observed: BerthServer) -> None:
    """Any token is an HTTP/1.1 method: each made-up one is not a label set of its own."""
    made_up = [f"X{'Q' * 30}{n}" for n in range(50)]
    before = scrape(observed)
    with httpx.Client(base_url=observed.url, timeout=30) as client:
        for method in made_up:
            assert client.request(method, "/v2/").status_code in (401, 405)
    after = scrape(observed)
    methods = {dict(labels).get("method") for name, labels in after}
    assert not methods & set(made_up)
    requests = "berth_http_requests_total"
    counted = sum(
        moved(before, after, requests, surface="registry", route=route, method="other", status=s)
        for route in {dict(labels).get("route", "") for name, labels in after}
        for s in ("401", "405")
    )
    assert counted == len(made_up)


# ------------------------------------------------------------------ who may scrape

METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def guarded(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    """Loopback is not trusted (as behind a reverse proxy on the same host); a separate
    metrics address."""
    env = {"BERTH_METRICS_LOOPBACK": "false", "BERTH_METRICS_LISTEN": f"127.0.0.1:{METRICS_PORT}"}
    with running_server(request, "guarded", extra_env=env) as server:
        yield server


def test_metrics_only_for_administrators(guarded: BerthServer) -> None:
    url = f"{guarded.url}/metrics"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    assert "berth_" not in anonymous.text
    assert httpx.get(url, auth=("admin", "wrong-password")).status_code == 401
    guarded.create_project("watched")
    guarded.create_user("dev", "dev-password-123")
    guarded.add_member("watched", "dev", "admin")  # a project's admin is no server admin
    assert httpx.get(url, auth=guarded.access_key("watched", "dev")).status_code == 403
    assert httpx.get(url, auth=("dev", "dev-password-123")).status_code == 403
    by_key = httpx.get(url, auth=guarded.access_key("watched"))
    assert by_key.status_code == 200
    assert "berth_http_requests_total" in by_key.text
    assert httpx.get(url, auth=("admin", ADMIN_PASSWORD)).status_code == 200


def test_separate_metrics_address(guarded: BerthServer) -> None:
    listener = f"http://127.0.0.1:{METRICS_PORT}"
    scraped = httpx.get(f"{listener}/metrics")
    assert scraped.status_code == 200
    samples = parse(scraped.text)
    assert any(name == "berth_http_requests_total" for name, _ in samples)
    assert httpx.get(f"{listener}/v2/").status_code == 404
    assert httpx.get(f"{listener}/api/v1/projects").status_code == 404
