"""Three nodes behind nginx (deploy/): pushes and pulls through the balancer, an upload whose
PATCHes land on different nodes, a node killed in the middle of a push, and traffic pulled
through every node counted once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import ssl
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event

import httpx
import pytest

from tests.clients.commands import ContainersConfig, Podman, skopeo_round_trip
from tests.clients.daemons import Containerd, Dockerd, running_dockerd
from tests.clients.layouts import OciLayout, TestImage, layer_files
from tests.clients.tools import output, require_binary, run
from tests.gc.conftest import age_past_grace
from tests.multinode.conftest import Cluster, haproxy_in_front
from tests.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    Blob,
    assert_one_patch_taken,
    assert_status,
    blob_path,
    describe,
    error_codes,
    image_manifest,
    location,
    manifest_path,
    patch_upload,
    race_patches,
    start_upload,
)
from tests.servers import BerthServer

pytestmark = pytest.mark.clients
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def project(cluster: Cluster, name: str) -> tuple[str, str]:
    """A project with the repository `app`, and an access key of the admin in it."""
    cluster.nodes[0].create_repository(name, "app")
    return cluster.nodes[0].access_key(name)


def two_layer_image(layout_dir: Path, files: list[dict[str, bytes]]) -> TestImage:
    run(["umoci", "init", "--layout", layout_dir])
    image = f"{layout_dir}:v1"
    run(["umoci", "new", "--image", image])
    for number, layer in enumerate(files):
        source = layout_dir.parent / f"layer{number}"
        for name, content in layer.items():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(content)
        run(["umoci", "insert", "--image", image, source, "/"])
    run(["umoci", "config", "--image", image, "--config.cmd", "/hello.txt"])
    run(["umoci", "gc", "--layout", layout_dir])
    return TestImage(
        OciLayout(layout_dir), "v1", {k: v for layer in files for k, v in layer.items()}
    )


def test_skopeo_pushes_and_pulls_a_multi_layer_image_through_the_balancer(
    cluster: Cluster, tmp_path: Path
) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    image = two_layer_image(
        tmp_path / "layout",
        [{"big.bin": os.urandom(12 * MiB)}, {"hello.txt": b"through nginx\n"}],
    )
    assert len(image.layer_digests) == 2
    key_id, secret = project(cluster, "skopeo")
    config = ContainersConfig.create(tmp_path / "containers")
    remote = f"docker://{cluster.balancer.address}/skopeo/app:v1"
    pulled = skopeo_round_trip(
        config, image.oci_ref, remote, f"{key_id}:{secret}", tmp_path / "pulled"
    )
    assert pulled.resolve("v1")["digest"] == image.manifest_digest
    for digest in [image.config_digest, *image.layer_digests]:
        assert sha256(pulled.blob(digest)) == digest


def test_podman_pushes_and_pulls_through_the_balancer(
    cluster: Cluster, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_binary("podman")
    require_binary("umoci")
    image = two_layer_image(
        tmp_path / "layout", [{"data.bin": os.urandom(6 * MiB)}, {"hello.txt": b"podman\n"}]
    )
    key_id, secret = project(cluster, "podman")
    config = ContainersConfig.create(tmp_path / "containers")
    storage = tmp_path_factory.mktemp("podman")
    podman = Podman("podman", storage, config, registry=None)  # type: ignore[arg-type]
    remote = ["--tls-verify=false", f"--creds={key_id}:{secret}"]
    reference = f"{cluster.balancer.address}/podman/app:v1"
    image_id = podman("pull", "--quiet", image.oci_ref).stdout.strip()
    podman("tag", image_id, reference)
    digest_file = tmp_path / "digest"
    pushed = podman("push", *remote, "--digestfile", digest_file, reference)
    assert "Writing manifest to image destination" in output(pushed)
    podman("rmi", "--force", reference, image_id)
    podman("pull", *remote, reference)
    pulled = json.loads(podman("image", "inspect", reference).stdout)[0]
    assert pulled["Digest"] == digest_file.read_text()
    assert pulled["RootFS"]["Layers"] == image.diff_ids
    podman("rmi", "--force", reference)


def test_containerd_pushes_a_large_layer_in_one_put_through_the_balancer(
    cluster: Cluster, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """containerd (and so BuildKit) sends each blob as a POST and one PUT with its whole
    body, which for a layer of 16 MiB or more Berth writes straight into a multipart upload
    of the blob's key (tests/storage/test_s3_registry.py shows the store's requests): the
    image comes back byte for byte through the balancer."""
    containerd, ctr = require_binary("containerd"), require_binary("ctr")
    require_binary("umoci")
    image = two_layer_image(
        tmp_path / "layout", [{"big.bin": os.urandom(20 * MiB)}, {"hello.txt": b"containerd\n"}]
    )
    key_id, secret = project(cluster, "containerd")
    repository = f"{cluster.balancer.address}/containerd/app"
    # A short directory: its sockets' paths must fit in 104 bytes.
    daemon = Containerd(tmp_path_factory.mktemp("ctrd"), binary=containerd, ctr=ctr)
    daemon.trust(cluster.balancer.address, cluster.balancer.directory / "tls" / "ca.crt")
    daemon.start()
    try:
        namespaced: list[str | Path] = [
            ctr,
            "--address",
            daemon.socket,
            "--namespace",
            "berth-tests",
        ]
        archive = image.layout.archive(tmp_path / "image.tar")
        run([*namespaced, "images", "import", "--base-name", repository, archive])
        run([*namespaced, "images", "push", f"--hosts-dir={daemon.hosts_dir}",
             f"--user={key_id}:{secret}", f"{repository}:v1"])  # fmt: skip
    finally:
        daemon.stop()
    with httpx.Client(
        base_url=cluster.balancer.url,
        auth=(key_id, secret),
        verify=ssl.create_default_context(cafile=cluster.balancer.directory / "tls" / "ca.crt"),
        timeout=60,
    ) as client:
        served = client.get(
            "/v2/containerd/app/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert served.headers["docker-content-digest"] == image.manifest_digest
        for digest in [image.config_digest, *image.layer_digests]:
            assert sha256(client.get(f"/v2/containerd/app/blobs/{digest}").content) == digest
    # What containerd sent: no PATCH, each blob in the PUT that closes its upload.
    sent = [
        line.split('"')[1]
        for line in cluster.balancer.access_log.read_text().splitlines()
        if "/v2/containerd/app/blobs/uploads/" in line
    ]
    assert not [request for request in sent if request.startswith("PATCH")], sent
    big = max(image.layer_digests, key=lambda digest: len(image.layout.blob(digest)))
    assert len(image.layout.blob(big)) >= 16 * MiB
    assert [request for request in sent if request.startswith("PUT") and big[7:] in request]


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """A dockerd of this module's own. It reaches the balancer at 127.0.0.1:PORT, which docker
    treats as an insecure registry (HTTPS without verifying the certificate): no /etc/hosts or
    /etc/docker/certs.d entry is needed."""
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as daemon:
        yield daemon


def saved_image_files(archive: Path) -> list[dict[str, bytes]]:
    """The files of each layer of the one image in a `docker save` archive, in order."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        return [
            layer_files(tar.extractfile(layer).read())  # type: ignore[union-attr]
            for layer in manifest[0]["Layers"]
        ]


def test_docker_logs_in_pushes_and_pulls_a_multi_layer_image_through_the_balancer(
    cluster: Cluster, dockerd: Dockerd, tmp_path: Path
) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    layers = [
        {"big.bin": os.urandom(5 * MiB)},
        {"etc/motd": b"docker through nginx\n"},
        {"hello.txt": b"three nodes\n"},
    ]
    image = two_layer_image(tmp_path / "layout", layers)
    assert len(image.layer_digests) == 3
    cluster.nodes[0].create_repository("docker", "app")
    # `berth key create` on a node prints the balancer's address (public_url), not the node's.
    printed = cluster.nodes[1].cli("key", "create", "--user", "admin", "--project", "docker").stdout
    found = re.search(r"Access key ID: +(\S+)\n.*Secret access key: +(\S+)", printed, re.S)
    assert found, printed
    key_id, secret = found.groups()
    login = next(line.strip() for line in printed.splitlines() if "docker login" in line)
    assert f"docker login {cluster.balancer.address} " in login, login
    assert f"--docker-server={cluster.balancer.address} " in printed, printed
    reference = f"{cluster.balancer.address}/docker/app:v1"
    archive = tmp_path / "image.tar"
    run(
        ["skopeo", "copy", image.oci_ref, f"docker-archive:{archive}:{reference}"],
        ContainersConfig.create(tmp_path / "containers").env,
    )

    def docker(*args: str | Path, input: str | None = None) -> str:
        return output(run([dockerd.cli, *args], dockerd.env, input=input))

    bin_dir = tmp_path / "bin"  # the printed `docker` is the daemon's own CLI
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(dockerd.cli)
    signed_in = run(["bash", "-c", login], {**dockerd.env, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert "Login Succeeded" in signed_in.stdout
    docker("load", "--input", archive)
    diff_ids = json.loads(docker("image", "inspect", reference))[0]["RootFS"]["Layers"]
    assert diff_ids == image.diff_ids

    pushed = docker("push", reference)
    assert pushed.count("Pushed") == 3, pushed
    match = re.search(r"v1: digest: (sha256:[0-9a-f]{64}) size: (\d+)", pushed)
    assert match, pushed
    digest, size = match.group(1), int(match.group(2))
    with cluster.balancer.client((key_id, secret)) as client:
        served = client.get(
            "/v2/docker/app/manifests/v1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    assert_status(served, 200)
    assert served.headers["docker-content-digest"] == digest
    assert len(served.content) == size

    docker("rmi", reference)
    pulled = docker("pull", reference)
    assert f"Status: Downloaded newer image for {reference}" in pulled
    assert f"Digest: {digest}" in pulled
    inspected = json.loads(docker("image", "inspect", reference))[0]
    assert inspected["RootFS"]["Layers"] == image.diff_ids
    assert f"{cluster.balancer.address}/docker/app@{digest}" in inspected["RepoDigests"]
    docker("save", "--output", tmp_path / "saved.tar", reference)
    assert saved_image_files(tmp_path / "saved.tar") == layers
    docker("rmi", reference)


def test_an_upload_whose_patches_land_on_every_node_gives_the_right_digest(
    cluster: Cluster,
) -> None:
    cluster.wait_for_every_node()
    auth = project(cluster, "chunks")
    data = os.urandom(10 * MiB + 12345)
    digest = sha256(data)
    answered_by = []
    with cluster.balancer.client(auth) as client:
        upload = location(start_upload(client, "chunks/app"))
        for offset in range(0, len(data), MiB):
            chunk = data[offset : offset + MiB]
            patched = patch_upload(client, upload, chunk, f"{offset}-{offset + len(chunk) - 1}")
            assert_status(patched, 202)
            answered_by.append(patched.headers["x-berth-node"])
            upload = location(patched)
        status = client.get(upload)
        assert_status(status, 204)
        assert status.headers["range"] == f"0-{len(data) - 1}"
        closed = client.put(upload, params={"digest": digest})
        assert_status(closed, 201)
        assert closed.headers["docker-content-digest"] == digest
        assert client.get(blob_path("chunks/app", digest)).content == data
    assert set(answered_by) == {"node1", "node2", "node3"}, answered_by


def test_patches_racing_from_one_offset_on_different_nodes_store_one_body(
    cluster: Cluster,
) -> None:
    """The same chunk sent at once through the balancer (a client's retries landing on other
    nodes while the first try is still being stored): one is taken, the others are 416 with
    the range the upload holds, and the blob is exactly the bytes taken."""
    cluster.wait_for_every_node()
    auth = project(cluster, "racing")
    first = os.urandom(MiB)
    with cluster.balancer.client(auth) as client:
        upload = location(start_upload(client, "racing/app"))
        upload = location(patch_upload(client, upload, first, f"0-{MiB - 1}"))
        bodies = [bytes([n]) * 1000 + os.urandom(MiB - 1000) for n in range(6)]
        responses = race_patches(lambda: cluster.balancer.client(auth), upload, MiB, bodies)
        taken = assert_one_patch_taken(responses, f"0-{2 * MiB - 1}")
        assert len({r.headers["x-berth-node"] for r in responses}) > 1
        data = first + bodies[taken]
        closed = client.put(upload, params={"digest": sha256(data)})
        assert_status(closed, 201)
        assert client.get(blob_path("racing/app", sha256(data))).content == data


def test_traffic_pulled_through_every_node_is_counted_once(cluster: Cluster) -> None:
    cluster.wait_for_every_node()
    auth = project(cluster, "traffic")
    data = os.urandom(3 * MiB + 7)
    digest = sha256(data)
    with cluster.balancer.client(auth) as client:
        upload = location(start_upload(client, "traffic/app"))
        assert_status(client.put(upload, params={"digest": digest}, content=data), 201)
        served_by = set()
        for _ in range(6):
            pulled = client.get(blob_path("traffic/app", digest))
            assert pulled.content == data
            served_by.add(pulled.headers["x-berth-node"])
        assert served_by == {"node1", "node2", "node3"}
        expected = 6 * len(data)
        deadline = time.monotonic() + 15
        while True:
            found = client.get("/api/v1/projects/traffic/traffic", params={"days": 1}).json()
            if found["total_bytes"] >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(3 * 0.3)  # any late (double) count would be written by now
        found = client.get("/api/v1/projects/traffic/traffic", params={"days": 1}).json()
    assert found["total_bytes"] == expected


def kill_when(event: threading.Event, node: BerthServer) -> None:
    if event.wait(30):
        node.kill()  # SIGKILL to the node and its workers, as a machine crash would


class KillMidChunk:
    """A PATCH body that kills the node expected to receive it once half of it is sent."""

    def __init__(self, chunk: bytes, kill: threading.Event) -> None:
        self.chunk = chunk
        self.kill = kill

    def __iter__(self) -> Iterator[bytes]:
        half = len(self.chunk) // 2
        yield self.chunk[:half]
        self.kill.set()
        time.sleep(1.0)  # the node is gone meanwhile
        yield self.chunk[half:]


def test_a_node_killed_during_a_push_costs_one_retried_chunk(cluster: Cluster) -> None:
    """A client pushing a large layer in chunks: the node taking one PATCH is SIGKILLed half
    way through it. The client asks where the upload stands (another node answers), sends
    that chunk again, and the blob pulled afterwards is byte-identical."""
    auth = project(cluster, "killed")
    data = os.urandom(96 * MiB)
    digest = sha256(data)
    chunk_size = 8 * MiB
    order = [node.extra_env["BERTH_NODE_NAME"] for node in cluster.nodes]
    failed_patches = 0
    killed: str | None = None
    with cluster.balancer.client(auth) as client:
        upload = location(start_upload(client, "killed/app"))
        offset, last_node = 0, ""
        while offset < len(data):
            chunk = data[offset : offset + chunk_size]
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            }
            body: bytes | KillMidChunk = chunk
            kill = threading.Event()
            if killed is None and offset == 4 * chunk_size and last_node:
                # nginx's round-robin (one worker) sends this PATCH to the node after the last.
                killed = order[(order.index(last_node) + 1) % len(order)]
                threading.Thread(
                    target=kill_when, args=(kill, cluster.by_name(killed)), daemon=True
                ).start()
                body = KillMidChunk(chunk, kill)
            try:
                patched = client.patch(upload, content=body, headers=headers)
                ok = patched.status_code == 202
            except httpx.HTTPError:
                ok = False
            if ok:
                last_node = patched.headers["x-berth-node"]
                upload = location(patched)
                offset += len(chunk)
                continue
            failed_patches += 1
            status = client.get(upload)  # where does the upload stand? (another node answers)
            assert_status(status, 204)
            offset = int(status.headers["range"].rpartition("-")[2]) + 1
            assert offset == 4 * chunk_size  # the killed PATCH was not acknowledged
            upload = location(status)
        closed = client.put(upload, params={"digest": digest})
        assert_status(closed, 201)
        pulled = client.get(blob_path("killed/app", digest))
        assert pulled.status_code == 200
        assert pulled.content == data
    assert killed is not None and failed_patches == 1
    victim = cluster.by_name(killed)
    assert victim.process is not None and victim.process.poll() is not None
    victim.start()  # back for whatever runs next


GC_TEXT = "garbage collection in progress"


@dataclass
class PushLog:
    """What the pushing clients were told: the images pushed under a tag, the refusals."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pushed: dict[str, tuple[Blob, dict[str, bytes]]] = field(default_factory=dict)  # tag ->
    gc_refusals: int = 0  # refused with the GC text, then retried
    blob_unknown: int = 0  # a manifest whose reused layer GC took meanwhile, pushed again
    failures: list[str] = field(default_factory=list)


def refused_by_gc(response: httpx.Response) -> bool:
    """GC's write restriction, answered as the README documents it: 403 DENIED, in the OCI
    error format, saying what happens and to retry."""
    if response.status_code != 403:
        return False
    (error,) = response.json()["errors"]
    return error["code"] == "DENIED" and GC_TEXT in error["message"] and "Retry" in error["message"]


def push_until_accepted(log: PushLog, send: Callable[[], httpx.Response]) -> httpx.Response:
    """What a client does with GC's refusal: wait a moment and send it again."""
    for _ in range(300):
        response = send()
        if not refused_by_gc(response):
            return response
        with log.lock:
            log.gc_refusals += 1
        time.sleep(0.05)
    return response


def push_image(
    client: httpx.Client, log: PushLog, layers: list[Blob], tag: str | None
) -> Blob | None:
    """A client's push: each blob unless HEAD finds it already there, then the manifest (by
    tag, or untagged by digest); the manifest when the registry accepted it, else None."""
    config = Blob(
        json.dumps({"architecture": "amd64", "os": "linux", "id": os.urandom(8).hex()}).encode(),
        OCI_CONFIG,
    )
    for blob in (config, *layers):
        if client.head(blob_path("gcflow/app", blob.digest)).status_code == 200:
            continue
        stored = push_until_accepted(
            log,
            lambda blob=blob: client.post(  # type: ignore[misc]
                "/v2/gcflow/app/blobs/uploads/", params={"digest": blob.digest}, content=blob.data
            ),
        )
        if stored.status_code != 201:
            log.failures.append(f"blob: {describe(stored)}")
            return None
    manifest = image_manifest(config.descriptor(), [layer.descriptor() for layer in layers])
    put = push_until_accepted(
        log,
        lambda: client.put(
            manifest_path("gcflow/app", tag or manifest.digest),
            content=manifest.data,
            headers={"Content-Type": manifest.media_type},
        ),
    )
    if put.status_code == 201:
        return manifest
    if put.status_code == 400 and error_codes(put) == ["MANIFEST_BLOB_UNKNOWN"]:
        with log.lock:  # GC took a layer between the client's HEAD and its manifest: push again
            log.blob_unknown += 1
    else:
        log.failures.append(f"manifest: {describe(put)}")
    return None


def pusher(
    node: BerthServer, auth: tuple[str, str], shared: list[Blob], log: PushLog, stop: Event
) -> None:
    """Images pushed to one node until `stop`: each has a layer of its own and one of `shared`
    (layers of untagged images GC may be taking); every third push is untagged, for later runs
    to take."""
    name = node.extra_env["BERTH_NODE_NAME"]
    with httpx.Client(base_url=node.url, auth=auth, timeout=60) as client:
        step = 0
        while not stop.is_set() and not log.failures:
            step += 1
            own = Blob(os.urandom(2048 + step), OCI_LAYER)
            layers = [shared[step % len(shared)], own]
            tag = f"{name}-{step}" if step % 3 else None
            for _attempt in range(5):
                manifest = push_image(client, log, layers, tag)
                if manifest is not None:
                    break
            else:
                log.failures.append(f"{name}: push {step} never accepted")
                return
            if tag is not None:
                with log.lock:
                    log.pushed[tag] = (manifest, {b.digest: b.data for b in layers})


def wait_for_more_pushes(log: PushLog, count: int, timeout: float = 120) -> None:
    """Until the pushing clients have pushed `count` more tagged images (and an untagged one
    between every two), however slowly a loaded machine lets them."""
    wanted = len(log.pushed) + count
    deadline = time.monotonic() + timeout
    while len(log.pushed) < wanted and not log.failures:
        assert time.monotonic() < deadline, f"{len(log.pushed)} images pushed, not {wanted}"
        time.sleep(0.05)


def test_gc_on_one_node_while_pushes_flow_through_the_others_breaks_no_image(
    cluster: Cluster,
) -> None:
    """GC runs again and again on node 1 (with delete-untagged) while clients push small
    images to nodes 2 and 3, reusing layers of untagged images GC may be deleting right then.
    Pushes met by GC's write restriction are refused with the documented error and accepted
    when sent again; afterwards every image a client was told was pushed pulls complete."""
    auth = project(cluster, "gcflow")
    gc_node, *push_nodes = cluster.nodes
    log = PushLog()
    shared = [Blob(os.urandom(4096), OCI_LAYER) for _ in range(3)]
    with httpx.Client(base_url=gc_node.url, auth=auth, timeout=60) as node1:
        for layer in shared:  # untagged images holding the shared layers: GC can take them
            assert push_image(node1, log, [layer], tag=None) is not None
        stop = Event()
        threads = [
            threading.Thread(target=pusher, args=(node, auth, shared, log, stop))
            for node in push_nodes
        ]
        for thread in threads:
            thread.start()
        runs = []
        try:
            for _ in range(4):
                wait_for_more_pushes(log, 3)
                # Everything pushed so far is past the grace period, pushes still in flight
                # included: this run may take their untagged images and the layers of them.
                age_past_grace(gc_node)
                started = node1.post("/api/v1/projects/gcflow/gc", json={"delete_untagged": True})
                assert_status(started, 202)
                run_id = started.json()["id"]
                deadline = time.monotonic() + 60
                while node1.get("/api/v1/projects/gcflow/gc/current").json() is not None:
                    assert time.monotonic() < deadline, "GC run did not finish"
                    time.sleep(0.1)
                runs.append(node1.get(f"/api/v1/projects/gcflow/gc/runs/{run_id}").json())
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert not log.failures, log.failures
    assert [run["state"] for run in runs] == ["succeeded"] * 4, runs
    assert sum(run["images_deleted"] for run in runs) >= len(shared), runs
    assert log.gc_refusals > 0  # the pushes met the restriction, and were accepted when retried
    assert len(log.pushed) >= 10
    with cluster.balancer.client(auth) as client:
        broken = []
        for tag, (manifest, layers) in log.pushed.items():
            served = client.get(
                manifest_path("gcflow/app", tag), headers={"Accept": manifest.media_type}
            )
            if served.status_code != 200 or served.content != manifest.data:
                broken.append(f"{tag}: manifest {served.status_code}")
                continue
            for digest, data in layers.items():
                blob = client.get(blob_path("gcflow/app", digest))
                if blob.status_code != 200 or blob.content != data:
                    broken.append(f"{tag}: layer {digest} {blob.status_code}")
    assert broken == []


def logged(path: Path, text: str, timeout: float = 10) -> str:
    """The first line of the log at `path` holding `text`, once it is there (a node writes its
    log lines every few tenths of a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in path.read_text().splitlines() if text in line]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {text!r} in {path}"
        time.sleep(0.1)


def test_nginx_logs_which_node_answered_under_the_request_id_the_node_logs(
    cluster: Cluster,
) -> None:
    cluster.wait_for_every_node()
    with cluster.balancer.client() as client:
        answers = [client.get("/v2/") for _ in range(len(cluster.nodes))]
    assert {answer.headers["x-berth-node"] for answer in answers} == {"node1", "node2", "node3"}
    for answer in answers:
        request_id = answer.headers["x-request-id"]
        node = cluster.by_name(answer.headers["x-berth-node"])
        line = logged(cluster.balancer.access_log, f"id={request_id} ")
        assert f"node={node.address} node_status={answer.status_code} " in line, line
        logged(node.data_dir / "server.log", request_id)


def test_haproxy_of_deploy_takes_a_node_that_fails_its_readyz_check_out_and_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    """deploy/haproxy-berth.cfg in front of the nodes: round-robin over all three, logging
    which one answered under the request ID that node logs; a node that stops answering
    (SIGSTOP: it still accepts connections, as a hung process does) fails its /readyz check
    and gets no more requests, until it answers again."""
    cluster.wait_for_every_node()
    with (
        haproxy_in_front(cluster, tmp_path / "haproxy") as (url, log),
        httpx.Client(base_url=url, verify=False, timeout=30) as client,
    ):
        answers = [client.get("/v2/") for _ in range(len(cluster.nodes))]
        assert {answer.headers["x-berth-node"] for answer in answers} == {
            "node1",
            "node2",
            "node3",
        }
        for answer in answers:
            request_id = answer.headers["x-request-id"]
            name = answer.headers["x-berth-node"]
            line = logged(log, f"id={request_id}")
            assert f" berth_nodes/{name} " in line and f" {answer.status_code} " in line, line
            logged(cluster.by_name(name).data_dir / "server.log", request_id)
        hung = cluster.by_name("node3")
        logged(hung.data_dir / "server.log", "/readyz")  # what HAProxy's checks ask

        assert hung.process is not None
        os.killpg(hung.process.pid, signal.SIGSTOP)
        try:
            logged(log, "berth_nodes/node3 is DOWN", timeout=30)
            started = time.monotonic()
            served_by = {client.get("/v2/").headers["x-berth-node"] for _ in range(6)}
            assert served_by == {"node1", "node2"}
            assert time.monotonic() - started < 5  # none waited on the hung node
        finally:
            os.killpg(hung.process.pid, signal.SIGCONT)
        logged(log, "berth_nodes/node3 is UP", timeout=30)
        served_by = {client.get("/v2/").headers["x-berth-node"] for _ in range(6)}
        assert served_by == {"node1", "node2", "node3"}


BERTH_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[[A-Z]+\] berth\.[a-z_.]+: ")


def test_every_log_line_of_a_node_names_that_node(cluster: Cluster) -> None:
    """Each node's request lines and job lines (a GC run, taken by whichever node's scheduler
    gets it) end with `node=` and that node's node_name, so the nodes' logs gathered in one
    place tell which node did what."""
    auth = project(cluster, "lognodes")
    answered = {}
    for node in cluster.nodes:
        answer = httpx.get(f"{node.url}/v2/", timeout=30)
        answered[node.extra_env["BERTH_NODE_NAME"]] = answer.headers["x-request-id"]
    with httpx.Client(base_url=cluster.nodes[0].url, auth=auth, timeout=60) as client:
        started = client.post("/api/v1/projects/lognodes/gc", json={})
        assert_status(started, 202)
        run_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while client.get("/api/v1/projects/lognodes/gc/current").json() is not None:
            assert time.monotonic() < deadline, "GC run did not finish"
            time.sleep(0.1)
    gc_lines = []
    for node in cluster.nodes:
        name = node.extra_env["BERTH_NODE_NAME"]
        log = node.data_dir / "server.log"
        request_line = logged(log, answered[name])
        assert request_line.endswith(f" node={name}"), request_line
        lines = [line for line in log.read_text().splitlines() if BERTH_LINE.match(line)]
        assert [line for line in lines if not line.endswith(f" node={name}")] == []
        gc_lines += [line for line in lines if f"gc run {run_id}:" in line]
    assert gc_lines, "no node logged the GC run"
