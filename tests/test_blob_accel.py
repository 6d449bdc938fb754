"""`blob_redirect = "accel"`: Debian's nginx, configured with deploy/nginx-accel.conf, in front of
one `berth serve`. Clients pull through nginx and get the right bytes (a Range too), while Berth
sends no blob body: it answers with X-Accel-Redirect and counts the bytes as outbound traffic."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from berth.storage.filesystem import MODES_SET
from tests.clients.commands import ContainersConfig
from tests.clients.layouts import OciLayout, layer_files, umoci_image
from tests.clients.tools import require_binary, run
from tests.metrics import moved, scrape
from tests.nginx import running_nginx
from tests.oci import (
    RANGE_ANSWERS,
    RANGED_SIZE,
    blob_path,
    check_range_answer,
    describe,
    digest_of,
    location,
    patch_upload,
    push_bytes,
    put_upload,
    start_upload,
)
from tests.servers import ROOT, BerthServer, eventually, free_port, running_server
from tests.storage.test_s3_registry import sha256
from tests.usage.conftest import traffic

BLOB_ROUTE = "/v2/{name:path}/blobs/{digest}"
SENT = "berth_http_sent_bytes_total"
SNIPPET = ROOT / "deploy" / "nginx-accel.conf"


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@pytest.fixture(scope="module")
def berth(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    env = {
        "BERTH_BLOB_REDIRECT": "accel",
        "BERTH_TRAFFIC_FLUSH_INTERVAL": "0.2",
        "BERTH_MAX_REQUESTS_PER_CLIENT": "0",  # behind a proxy (docs/deployment.md)
    }
    with running_server(request, "accel", extra_env=env) as server:
        yield server


@pytest.fixture(scope="module")
def nginx(berth: BerthServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    directory = tmp_path_factory.mktemp("nginx")
    blobs = (berth.data_dir / "blobs").resolve()
    # The deployed snippet as shipped, pointed at this server's blob directory.
    snippet = SNIPPET.read_text().replace("alias /var/lib/berth/blobs/;", f"alias {blobs}/;")
    assert f"alias {blobs}/;" in snippet
    (directory / "berth-accel.conf").write_text(snippet)
    port = free_port()
    server_block = f"""
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Connection "";
        location /v2/ {{
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_pass http://{berth.address};
        }}
        location / {{
            proxy_pass http://{berth.address};
        }}
        include {directory}/berth-accel.conf;
    }}
"""
    with running_nginx(
        directory,
        server_block,
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
    ) as process:
        yield Nginx(port, process, directory)


def test_skopeo_pulls_through_nginx_while_berth_sends_no_blob_bytes(
    berth: BerthServer, nginx: Nginx, tmp_path: Path
) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    layers = [
        {"big.bin": os.urandom(5 * 1024 * 1024)},
        {"more.bin": os.urandom(2 * 1024 * 1024), "hello.txt": b"sent by nginx\n"},
    ]
    image = umoci_image(tmp_path / "layout", "v1", layers[0])
    second = tmp_path / "second"
    for file_name, content in layers[1].items():
        (second / file_name).parent.mkdir(parents=True, exist_ok=True)
        (second / file_name).write_bytes(content)
    run(["umoci", "insert", "--image", f"{image.layout.path}:v1", second, "/"])
    assert len(image.layer_digests) == 2
    berth.create_repository("accel", "app")
    key_id, secret = berth.access_key("accel")
    config = ContainersConfig.create(tmp_path / "containers")
    skopeo = ["skopeo", "--policy", str(config.policy), "copy"]
    remote = f"docker://{nginx.address}/accel/app:v1"
    run([*skopeo, "--dest-tls-verify=false", f"--dest-creds={key_id}:{secret}", image.oci_ref,
         remote], config.env)  # fmt: skip
    before = scrape(berth)
    pulled = OciLayout(tmp_path / "pulled")
    run([*skopeo, "--src-tls-verify=false", f"--src-creds={key_id}:{secret}", remote,
         f"oci:{pulled.path}:v1"], config.env)  # fmt: skip
    after = scrape(berth)

    assert pulled.manifest("v1") == image.manifest
    blobs = [image.config_digest, *image.layer_digests]
    for digest in blobs:
        assert sha256(pulled.blob(digest)) == digest
    assert [layer_files(pulled.blob(d)) for d in image.layer_digests] == layers
    blob_bytes = sum(len(image.layout.blob(digest)) for digest in blobs)
    # Berth answered every blob GET without a body: nginx sent the bytes.
    labels = {"surface": "registry", "route": BLOB_ROUTE, "method": "GET"}
    assert moved(before, after, SENT, **labels) == 0
    # ... and counted them, with the manifest, as outbound traffic.
    expected = image.manifest_descriptor["size"] + blob_bytes
    counted = eventually(lambda: traffic(berth, "accel", days=1)["total_bytes"],
                         lambda n: n >= expected)  # fmt: skip
    assert counted == expected


def test_ranges_headers_and_the_internal_location(berth: BerthServer, nginx: Nginx) -> None:
    # A project of its own: the traffic of the tests before it may still be on its way.
    berth.create_repository("ranges", "raw")
    name = "ranges/raw"
    data = os.urandom(3 * 1024 * 1024 + 5)
    auth = berth.access_key("ranges")
    before = traffic(berth, "ranges", days=1)["total_bytes"]
    with httpx.Client(base_url=nginx.url, auth=auth, timeout=60) as through_nginx:
        digest = push_bytes(through_nginx, name, data)
        hex_digest = digest.split(":", 1)[1]

        whole = through_nginx.get(blob_path(name, digest))
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["docker-content-digest"] == digest
        assert whole.headers["etag"] == f'"{digest}"'
        assert whole.headers["content-type"] == "application/octet-stream"

        ranged = through_nginx.get(blob_path(name, digest), headers={"Range": "bytes=10-1000009"})
        assert ranged.status_code == 206 and ranged.content == data[10:1000010]
        assert ranged.headers["content-range"] == f"bytes 10-1000009/{len(data)}"
        tail = through_nginx.get(blob_path(name, digest), headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == data[-7:]
        beyond = through_nginx.get(
            blob_path(name, digest), headers={"Range": f"bytes={len(data)}-"}
        )
        assert beyond.status_code == 416
        # An inverted range among others: refused by Berth, as alone (nginx sent the valid one).
        inverted = through_nginx.get(blob_path(name, digest), headers={"Range": "bytes=0-1,5-2"})
        assert inverted.status_code == 416

        head = through_nginx.head(blob_path(name, digest))  # answered by Berth
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        held = {"If-None-Match": f'"{digest}"'}
        for method in ("GET", "HEAD"):  # answered by Berth, no redirect: nothing sent
            unchanged = through_nginx.request(method, blob_path(name, digest), headers=held)
            assert unchanged.status_code == 304 and unchanged.content == b""
            assert unchanged.headers["etag"] == f'"{digest}"'

        # Asked for directly, the internal location does not exist.
        direct = through_nginx.get(f"/_berth_blobs/sha256/{hex_digest[:2]}/{hex_digest}")
        assert direct.status_code == 404

    # What Berth itself answers: the redirect, no body, the client's headers to keep.
    with httpx.Client(base_url=berth.url, auth=auth, timeout=60) as to_berth:
        answer = to_berth.get(blob_path(name, digest))
        assert answer.status_code == 200 and answer.content == b""
        assert answer.headers["x-accel-redirect"] == (
            f"/_berth_blobs/sha256/{hex_digest[:2]}/{hex_digest}"
        )
        assert answer.headers["docker-content-digest"] == digest
        other = to_berth.get(blob_path(name, "sha256:" + "0" * 64))
        assert other.status_code == 404 and "x-accel-redirect" not in other.headers

    # Two whole downloads (one of them Berth's bare answer) and the two ranges; the HEAD, the
    # 304s, the 416 and the unknown blob count nothing.
    expected = before + 2 * len(data) + 1000000 + 7
    counted = eventually(lambda: traffic(berth, "ranges", days=1)["total_bytes"],
                         lambda n: n >= expected)  # fmt: skip
    assert counted == expected


def test_nginx_answers_every_range_as_berth_does_without_it(
    berth: BerthServer, nginx: Nginx
) -> None:
    """Through nginx, a GET gets the answer Berth gives on its own (`RANGE_ANSWERS`): several
    ranges the whole blob (nginx sent a multipart 206), a `bytes=` value that is no byte range
    set or a number past 2**63 - 1 Berth's 416 in the OCI error format (Berth redirected the
    first, sent whole, and nginx answered its own HTML 416; the second Berth redirected as
    the whole blob)."""
    berth.create_repository("accel", "ranges")
    name = "accel/ranges"
    data = os.urandom(RANGED_SIZE)
    with httpx.Client(base_url=nginx.url, auth=berth.access_key("accel"), timeout=60) as client:
        digest = push_bytes(client, name, data)
        for header, status, part in RANGE_ANSWERS:
            answer = client.get(blob_path(name, digest), headers={"Range": header})
            check_range_answer(answer, data, header, status, part)


def test_a_range_whose_if_range_nginx_ignores_is_counted_whole(
    berth: BerthServer, nginx: Nginx
) -> None:
    """nginx sends the whole file for a Range whose If-Range names anything but the blob's
    ETag: counted as the whole blob, not as the one byte the Range asks for (else any blob
    could be pulled for a byte of outbound traffic each time)."""
    berth.create_repository("ifrange", "blobs")  # a project of its own, as above
    name = "ifrange/blobs"
    data = os.urandom(1024 * 1024)
    with httpx.Client(base_url=nginx.url, auth=berth.access_key("ifrange"), timeout=60) as client:
        digest = push_bytes(client, name, data)
        before = traffic(berth, "ifrange", days=1)["total_bytes"]
        whole = client.get(blob_path(name, digest), headers={"Range": "bytes=0-0",
                                                             "If-Range": '"another"'})  # fmt: skip
        assert whole.status_code == 200 and whole.content == data
        dated = client.get(blob_path(name, digest), headers={
            "Range": "bytes=0-0", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"})  # fmt: skip
        assert dated.status_code == 200 and dated.content == data
        # An If-Range naming the blob keeps the Range, counted as the range.
        ranged = client.get(blob_path(name, digest), headers={"Range": "bytes=0-0",
                                                              "If-Range": f'"{digest}"'})  # fmt: skip
        assert ranged.status_code == 206 and ranged.content == data[:1]
    expected = before + 2 * len(data) + 1
    counted = eventually(lambda: traffic(berth, "ifrange", days=1)["total_bytes"],
                         lambda n: n >= expected)  # fmt: skip
    assert counted == expected


@pytest.fixture
def served_as_debian_does(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory nginx's www-data worker can pass through (as /var/lib), outside pytest's
    root-only temporary directories; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("nginx's worker drops to www-data only when started as root")
    try:
        grp.getgrnam("www-data")
    except KeyError:
        pytest.skip("no www-data group (Debian's nginx package makes it)")
    base = Path(tempfile.mkdtemp(prefix="berth-accel-"))
    try:
        base.chmod(0o711)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def nginx_error_log(base: Path) -> str:
    return (base / "nginx" / "error.log").read_text()


def readable_by_www_data(path: Path) -> bool:
    """Whether nginx's worker (www-data, in its own group only) can read `path`."""
    command = ["ls"] if path.is_dir() else ["head", "-c", "1"]
    read = subprocess.run(
        [*command, str(path)], user="www-data", group="www-data", extra_groups=[],
        capture_output=True, check=False,
    )  # fmt: skip
    return read.returncode == 0


def berth_in_www_data_s_group(base: Path) -> BerthServer:
    """docs/blob-redirect.md's Berth: its data directory its service user's and group's, with
    nginx's user in that group. Berth runs as root here, in www-data's group (what `usermod -aG
    berth www-data` gives nginx is the same to the kernel), with a umask that lets no one
    else read what it makes."""
    data_dir = base / "berth"
    data_dir.mkdir(mode=0o700)  # as systemd's StateDirectory= makes it for User= and Group=
    os.chown(data_dir, 0, grp.getgrnam("www-data").gr_gid)
    return BerthServer(
        data_dir,
        extra_env={"BERTH_BLOB_REDIRECT": "accel", "BERTH_MAX_REQUESTS_PER_CLIENT": "0"},
        group="www-data",
        umask=0o077,
    )


@contextlib.contextmanager
def nginx_as_www_data(base: Path, berth: BerthServer) -> Iterator[str]:
    """Debian's nginx (`user www-data;`) with deploy/nginx-accel.conf in front of `berth`
    while in the block: its URL."""
    nginx_dir = base / "nginx"
    nginx_dir.mkdir(exist_ok=True)
    snippet = SNIPPET.read_text().replace(
        "alias /var/lib/berth/blobs/;", f"alias {berth.data_dir / 'blobs'}/;"
    )
    (nginx_dir / "berth-accel.conf").write_text(snippet)
    port = free_port()
    server_block = f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{berth.address};
        }}
        include {nginx_dir}/berth-accel.conf;
    }}
"""
    with running_nginx(
        nginx_dir,
        server_block,
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
        user="www-data",
    ):
        yield f"http://127.0.0.1:{port}"


def test_nginx_running_as_www_data_sends_blobs_while_keys_and_database_stay_private(
    served_as_debian_does: Path,
) -> None:
    """Berth opens to the group only the way to the blobs, whatever its umask."""
    berth = berth_in_www_data_s_group(served_as_debian_does)
    data_dir = berth.data_dir
    berth.start()
    try:
        with nginx_as_www_data(served_as_debian_does, berth) as nginx:
            berth.create_repository("accel", "private")
            name = "accel/private"
            auth = berth.access_key("accel")
            monolithic, chunked = os.urandom(2 * 1024 * 1024 + 3), os.urandom(300_000)
            with httpx.Client(base_url=berth.url, auth=auth, timeout=60) as to_berth:
                pushed = [push_bytes(to_berth, name, monolithic)]
                started = start_upload(to_berth, name)
                upload = location(started)
                half = len(chunked) // 2
                patched = patch_upload(to_berth, upload, chunked[:half], f"0-{half - 1}")
                closed = put_upload(to_berth, location(patched), digest_of(chunked),
                                    chunked[half:])  # fmt: skip
                assert closed.status_code == 201, describe(closed)
                pushed.append(digest_of(chunked))
            with httpx.Client(base_url=nginx, auth=auth, timeout=60) as pull:
                for digest, data in zip(pushed, [monolithic, chunked], strict=True):
                    sent = pull.get(blob_path(name, digest))
                    assert sent.status_code == 200, nginx_error_log(served_as_debian_does)
                    assert sent.content == data
                    assert sent.headers["docker-content-digest"] == digest
    finally:
        berth.stop()

    modes = {
        str(path.relative_to(data_dir)): stat.S_IMODE(path.stat().st_mode)
        for path in data_dir.rglob("*")
    }
    blob_file = next(p for p in (data_dir / "blobs" / "sha256").rglob("*") if p.is_file())
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o750
    assert modes["blobs"] == modes["blobs/sha256"] == 0o750
    assert modes[str(blob_file.parent.relative_to(data_dir))] == 0o750
    assert modes[str(blob_file.relative_to(data_dir))] == 0o640
    assert readable_by_www_data(blob_file)
    private = ["keys", "keys/token-signing.pem", "keys/secret-hash.key", "berth.db"]
    for name in private:
        assert modes[name] in (0o700, 0o600), (name, oct(modes[name]))
        assert not readable_by_www_data(data_dir / name), name
    # Everything else it holds is owner-only too.
    opened = {name for name, mode in modes.items() if mode & 0o007 or (
        mode & 0o070 and not name.startswith("blobs"))}  # fmt: skip
    assert opened <= {"server.log", "berth.toml"}, opened  # the test's own files


def test_blobs_and_keys_an_older_berth_left_closed_to_nginx_are_opened_at_start_once(
    served_as_debian_does: Path,
) -> None:
    """A Berth from before blob modes were set whatever the umask made the blob tree 0700 and
    0600 under a umask of 077 (and keys/ 0755 under one of 022): nginx's worker was refused
    every blob it had stored. `berth serve` with accel gives them 0750 and 0640, saying so,
    once: a later start does not walk the tree again."""
    berth = berth_in_www_data_s_group(served_as_debian_does)
    blobs, keys = berth.data_dir / "blobs", berth.data_dir / "keys"
    name, data = "accel/private", os.urandom(300_000)
    berth.start()
    try:
        berth.create_repository("accel", "private")
        auth = berth.access_key("accel")
        with httpx.Client(base_url=berth.url, auth=auth, timeout=60) as to_berth:
            digest = push_bytes(to_berth, name, data)
    finally:
        berth.stop()
    (blobs / MODES_SET).unlink(missing_ok=True)  # as an older Berth left it: no record
    tree = [blobs, *blobs.rglob("*")]
    for path in tree:
        path.chmod(0o700 if path.is_dir() else 0o600)
    keys.chmod(0o755)
    blob_file = blobs / "sha256" / digest[7:9] / digest[7:]
    assert not readable_by_www_data(blob_file)

    berth.start()
    try:
        with (
            nginx_as_www_data(served_as_debian_does, berth) as nginx,
            httpx.Client(base_url=nginx, auth=auth, timeout=60) as pull,
        ):
            sent = pull.get(blob_path(name, digest))
            assert sent.status_code == 200, nginx_error_log(served_as_debian_does)
            assert sent.content == data
    finally:
        berth.stop()
    directories = sum(path.is_dir() for path in tree)
    said = " ".join(berth.log_tail(200).split())
    assert f"Made {keys} owner-only (0700; it was 0755)" in said
    assert (
        f"Gave {directories} directories mode 0750 and {len(tree) - directories} files mode "
        f"0640 in {blobs}, in "
    ) in said
    assert all(
        stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640) for path in tree
    )
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700 and not readable_by_www_data(keys)

    log = berth.data_dir / "server.log"
    before = len(log.read_text())
    berth.start()
    berth.stop()
    again = log.read_text()[before:]
    assert "Berth registry on" in again and "Checking that nginx's group" not in again, again
