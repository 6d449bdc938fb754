"""Berth on S3 against Debian's docker-registry (Distribution 2.8) with its `s3` driver, both on
one SeaweedFS (tests/s3.py's, on loopback), side by side (issue 11's S3 benchmark).

- Berth: one `berth serve` (one worker) on SQLite with `single_node = true` and
  `storage = "s3"`, blobs streamed through Berth (`blob_redirect = "off"`, the default).
- Distribution: the `s3` driver on the same bucket under its own root directory, with
  `storage.redirect.disable: true` (it streams blobs itself, as Berth does by default), the
  in-memory blob descriptor cache, no auth, access log off. AWS_CA_BUNDLE is unset in its
  environment: its Go S3 client refuses to start with it set.
- A second Berth, the same but for `blob_redirect = "presigned"`: a blob GET answers 307 to a
  presigned URL of the object and curl follows it to SeaweedFS.
- A third Berth, the same as the first but with a node-local cache (`s3_cache_dir`): pulled
  warm (its copy on the local disk, sent by pathsend) in rounds alternating with
  Distribution, and cold (its copy removed before each pull: streamed from SeaweedFS while
  the copy is written) in rounds alternating with single Distribution pulls.

The team's `regbench.py compare` (Berth as A) measures push, streamed pull, manifest GET and
4 KiB blob GET in alternating rounds; then the presigned Berth and Distribution pull the same
blob in rounds that alternate (regbench's pull: curl -L, best of two), then the cached Berth
warm, then cold; last, Berth and Distribution push new blobs the way docker, podman and
skopeo do (POST, the whole body in one PATCH, a PUT with the digest and no body), in rounds
that alternate. The load average is read before and after.

    .venv/bin/python bench/s3.py [--rounds 3] [--size-mib 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # tests.s3: the SeaweedFS the tests run
sys.path.insert(0, str(BENCH))

import method  # noqa: E402
import regbench  # noqa: E402
from run import (  # noqa: E402
    DISTRIBUTION,
    IMAGE_NAME,
    Server,
    free_port,
    launch_berth,
    loadavg,
    log_in_berth,
    pull_rounds,
    run_regbench,
    spawn,
    wait_ready,
)

from tests.s3 import BUCKET, SeaweedFS, seaweedfs_server  # noqa: E402

# regbench figure -> (label, unit, target as Berth / Distribution at least; None: none set)
FIGURES: dict[str, tuple[str, str, float | None]] = {
    "push_MiBps": ("blob push, {size} MiB, one PUT (curl)", "MiB/s", 1.5),
    "pull_MiBps": ("blob pull, {size} MiB, streamed (curl)", "MiB/s", 1.5),
    "presigned_pull_MiBps": (
        "blob pull, {size} MiB, Berth's 307 to a presigned URL (curl -L)",
        "MiB/s",
        None,
    ),
    "presigned_pull_cpu_s": (
        "CPU per presigned pull (Berth + SeaweedFS; Distribution streaming + SeaweedFS)",
        "s",
        None,
    ),
    "cached_pull_MiBps": (
        "blob pull, {size} MiB, streamed by Berth from its node cache, warm (curl)",
        "MiB/s",
        1.5,
    ),
    "cached_pull_cpu_s": (
        "CPU per warm cached pull (Berth + SeaweedFS; Distribution streaming + SeaweedFS)",
        "s",
        None,
    ),
    "cold_pull_MiBps": (
        "blob pull, {size} MiB, cache cold: streamed from S3 and kept (curl, one pull)",
        "MiB/s",
        None,
    ),
    "chunked_push_MiBps": (
        "blob push, {size} MiB, POST, one PATCH, empty PUT (docker, podman, skopeo)",
        "MiB/s",
        None,
    ),
    "manifest_rps": ("manifest GET by tag (wrk)", "req/s", 5.0),
    "manifest_p99_ms": ("manifest GET p99", "ms", None),
    "small_blob_rps": ("4 KiB blob GET (wrk)", "req/s", None),
}

DISTRIBUTION_S3_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: {key}
    secretkey: {secret}
    region: us-east-1
    regionendpoint: {endpoint}
    bucket: {bucket}
    rootdirectory: /distribution
    secure: false
    v4auth: true
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:{port}
"""


def start_distribution_s3(work: Path, seaweedfs: SeaweedFS) -> Server:
    port = free_port()
    config = work / "distribution-s3.yml"
    config.write_text(
        DISTRIBUTION_S3_CONFIG.format(
            key=seaweedfs.access_key_id,
            secret=seaweedfs.secret_access_key,
            endpoint=seaweedfs.endpoint,
            bucket=BUCKET,
            port=port,
        )
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REGISTRY_") and k != "AWS_CA_BUNDLE"
    }
    argv = [str(DISTRIBUTION), "serve", str(config)]
    server = spawn("Distribution (s3)", argv, env, work / "distribution.log", port)
    wait_ready(server)
    return server


def start_berth_s3(
    work: Path,
    seaweedfs: SeaweedFS,
    prefix: str,
    redirect: str,
    extra: dict[str, str] | None = None,
) -> Server:
    settings = {
        **seaweedfs.settings_environ(prefix),
        "BERTH_BLOB_REDIRECT": redirect,
        **(extra or {}),
    }
    server = launch_berth(work / prefix, 1, settings, f"Berth (s3, {redirect}, {prefix})")
    wait_ready(server)
    log_in_berth(server)
    return server


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    servers: list[Server] = []
    # Room for every push of the runs (about 2x each blob: its upload's pieces stay until
    # the upload ends, and SeaweedFS reclaims deleted space only when vacuumed).
    with seaweedfs_server(work / "seaweedfs", volumes=256) as seaweedfs:
        try:
            berth = start_berth_s3(work, seaweedfs, "berth", "off")
            servers.append(berth)
            presigned = start_berth_s3(work, seaweedfs, "presigned", "presigned")
            servers.append(presigned)
            cache = work / "node-cache"
            cached = start_berth_s3(
                work, seaweedfs, "cached", "off", {"BERTH_S3_CACHE_DIR": str(cache)}
            )
            servers.append(cached)
            distribution = start_distribution_s3(work, seaweedfs)
            servers.append(distribution)
            before = loadavg()
            print(f"load average {before}", file=sys.stderr, flush=True)
            figures = run_regbench(berth, distribution, args, work / "regbench.json")
            path, digest = regbench.make_blob(args.size_mib, 0)  # Distribution holds it now
            redirected = regbench.Target(
                presigned.url, IMAGE_NAME, presigned.user, presigned.password
            )
            regbench.authenticate(redirected)
            regbench.push_blob(redirected, path, digest)
            plain = regbench.Target(distribution.url, IMAGE_NAME)
            assert seaweedfs.process is not None
            store = seaweedfs.process.pid
            pulls = pull_rounds(
                (redirected, [presigned.pid, store]),
                (plain, [distribution.pid, store]),
                digest,
                args.size_mib,
                args.rounds,
            )
            a, b = figures["a"], figures["b"]
            a["presigned_pull_MiBps"], b["presigned_pull_MiBps"] = (
                pulls.first_mibps,
                pulls.second_mibps,
            )
            a["presigned_pull_cpu_s"], b["presigned_pull_cpu_s"] = pulls.first_cpu, pulls.second_cpu
            from_cache = regbench.Target(cached.url, IMAGE_NAME, cached.user, cached.password)
            regbench.authenticate(from_cache)
            regbench.push_blob(from_cache, path, digest)
            regbench.pull_blob(from_cache, digest)  # the first pull keeps the copy
            copy = cached_copy(cache, digest)
            if not eventually_exists(copy):
                raise RuntimeError(f"the cached Berth kept no copy of {digest}")
            warm = pull_rounds(
                (from_cache, [cached.pid, store]),
                (plain, [distribution.pid, store]),
                digest,
                args.size_mib,
                args.rounds,
            )
            a["cached_pull_MiBps"], b["cached_pull_MiBps"] = warm.first_mibps, warm.second_mibps
            a["cached_pull_cpu_s"], b["cached_pull_cpu_s"] = warm.first_cpu, warm.second_cpu
            cold_rates = cold_rounds(from_cache, copy, plain, digest, args.size_mib, args.rounds)
            a["cold_pull_MiBps"], b["cold_pull_MiBps"] = cold_rates
            streamed = regbench.Target(berth.url, IMAGE_NAME, berth.user, berth.password)
            regbench.authenticate(streamed)
            chunked = chunked_push_rounds(streamed, plain, args.size_mib, args.rounds, work)
            a["chunked_push_MiBps"], b["chunked_push_MiBps"] = chunked
            after = loadavg()
            for server in servers:
                if server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited during the benchmark")
        except BaseException:
            for server in servers:
                print(f"--- {server.name} ---\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            for server in servers:
                server.stop()
    return {
        "berth": figures["a"],
        "distribution": figures["b"],
        "load_before": before,
        "load_after": after,
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "wrk_seconds": args.wrk_seconds,
        "connections": args.connections,
    }


def cached_copy(cache: Path, digest: str) -> Path:
    """Where a node cache in `cache` (`s3_cache_dir`) keeps its copy of `digest`."""
    return cache / "blobs" / digest.replace(":", "-")


def eventually_exists(path: Path, timeout: float = 30) -> bool:
    """Whether a node's cached copy is in place within `timeout`: the cache hashes a copy
    after the response's last byte and renames it into place then."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def cold_rounds(
    cached: regbench.Target,
    copy: Path,
    plain: regbench.Target,
    digest: str,
    size_mib: int,
    rounds: int,
) -> tuple[float, float]:
    """Median MiB/s of one pull from the cached Berth with its copy removed first (streamed
    from the store, the copy written on the way), and of one pull from Distribution, the
    order flipping every round (one pull each: a second from Berth would be warm)."""

    def pull(_: int, side: str) -> float:
        if side == "plain":
            return size_mib / regbench.pull_blob(plain, digest)
        copy.unlink(missing_ok=True)
        rate = size_mib / regbench.pull_blob(cached, digest)
        if not eventually_exists(copy):
            raise RuntimeError("a cold pull from the cached Berth kept no copy")
        return rate

    rates = method.alternate_rounds(("cached", "plain"), rounds, pull)
    return statistics.median(rates["cached"]), statistics.median(rates["plain"])


def push_in_one_patch(t: regbench.Target, path: str, digest: str, work: Path) -> float:
    """Seconds for a push as docker, podman and skopeo make it: POST, the whole body in one
    streamed PATCH (no digest yet), then a PUT with the digest and no body."""
    start = time.monotonic()
    status, headers, body = regbench._request("POST", t.api("blobs/uploads/"), t.headers, b"")
    if status != 202:
        raise RuntimeError(f"upload start answered HTTP {status} {body[:200]!r}")
    location = urllib.parse.urljoin(t.url, headers.get("location", ""))
    answer = work / "patch-headers.txt"
    code = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            str(answer),
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/octet-stream",
            *regbench.curl_header_args(t),
            "--data-binary",
            f"@{path}",
            location,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if code != "202":
        raise RuntimeError(f"PATCH answered HTTP {code}")
    for line in answer.read_text().splitlines():
        if line.lower().startswith("location:"):
            location = urllib.parse.urljoin(t.url, line.split(":", 1)[1].strip())
    separator = "&" if "?" in location else "?"
    status, _, body = regbench._request(
        "PUT", f"{location}{separator}digest={digest}", {**t.headers, "Content-Length": "0"}, b""
    )
    if status != 201:
        raise RuntimeError(f"closing PUT answered HTTP {status} {body[:200]!r}")
    return time.monotonic() - start


def chunked_push_rounds(
    berth: regbench.Target, plain: regbench.Target, size_mib: int, rounds: int, work: Path
) -> tuple[float, float]:
    """Median MiB/s of pushes in one PATCH to Berth and to Distribution, the order flipping
    every round; a new blob each round (one both already hold would not be stored again)."""

    def push(index: int, side: str) -> float:
        path, digest = regbench.make_blob(size_mib, 100 + index)
        target = berth if side == "berth" else plain
        return size_mib / push_in_one_patch(target, path, digest, work)

    rates = method.alternate_rounds(("berth", "plain"), rounds, push)
    return statistics.median(rates["berth"]), statistics.median(rates["plain"])


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def report(result: dict[str, Any]) -> str:
    berth, distribution = result["berth"], result["distribution"]
    rows = []
    for key, (label, unit, target) in FIGURES.items():
        ratio = berth[key] / distribution[key]
        met = "" if target is None else ("yes" if ratio >= target else "**no**")
        wanted = "" if target is None else f"≥ {target:g}x"
        rows.append(
            f"| {label.format(size=result['size_mib'])} | {_num(berth[key])} {unit} "
            f"| {_num(distribution[key])} {unit} | **{ratio:.2f}x** | {wanted} | {met} |"
        )
    return "\n".join(
        [
            "| figure | Berth on S3 | Distribution on S3 | Berth / Distribution | target | met |",
            "| --- | ---: | ---: | ---: | ---: | :---: |",
            *rows,
            "",
            f"Load average before / after: {result['load_before']} / {result['load_after']}; "
            f"{result['rounds']} rounds, wrk {result['wrk_seconds']} s with "
            f"{result['connections']} connections.",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="regbench rounds (alternating)")
    p.add_argument("--wrk-seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--json", action="store_true", help="the figures as JSON on standard output")
    args = p.parse_args()
    out = os.dup(1)
    os.dup2(2, 1)  # regbench's own table goes to standard error: standard output is ours
    try:
        with tempfile.TemporaryDirectory(prefix="berth-bench-s3-") as tmp:
            result = measure(args, Path(tmp))
    finally:
        sys.stdout.flush()
        os.dup2(out, 1)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
