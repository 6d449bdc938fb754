"""Three nodes behind nginx (deploy/): pushes and pulls through the balancer, an upload whose
PATCHes land on different nodes, a node killed in the middle of a push, and traffic pulled
through every node counted once."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.commands import ContainersConfig, Podman, skopeo_round_trip
from tests.clients.layouts import OciLayout, TestImage
from tests.clients.tools import output, require_binary, run
from tests.multinode.conftest import Cluster
from tests.oci import (
    assert_one_patch_taken,
    assert_status,
    blob_path,
    location,
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
