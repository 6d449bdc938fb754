#!/usr/bin/env python3
"""regbench: measure any OCI registry over HTTP with neutral C clients (curl, wrk).

One target:   regbench.py run URL NAME [--user U --password P] [...]
Side by side: regbench.py compare URL_A NAME_A URL_B NAME_B [--user-a ... --user-b ...] [...]

URL is the registry root (http://127.0.0.1:5000); NAME is an OCI repository name the
credentials may push to. Figures: monolithic blob push and blob pull throughput (MiB/s,
median of --runs), manifest GET and small-blob GET requests per second and latency (wrk).
`compare` alternates A and B run by run and prints the ratio A/B of the medians, so machine
drift hits both alike. Needs curl and wrk (Debian packages curl, wrk); stdlib Python only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

WORK = os.path.join(tempfile.gettempdir(), "regbench")
MIB = 1 << 20
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Target:
    url: str
    name: str
    user: str | None = None
    password: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def api(self, path: str) -> str:
        return f"{self.url.rstrip('/')}/v2/{self.name}/{path}"


def _request(
    method: str, url: str, headers: dict[str, str], data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, _lower(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, _lower(err.headers.items()), err.read()


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header names are case-insensitive; some servers (granian) send them in lower case."""
    return {k.lower(): v for k, v in items}


def authenticate(t: Target) -> None:
    """Fill t.headers from the registry's challenge: Bearer token, Basic, or nothing."""
    status, headers, _ = _request("GET", f"{t.url.rstrip('/')}/v2/", {})
    if status != 401:
        return
    challenge = headers.get("www-authenticate", "")
    basic = {}
    if t.user is not None:
        pair = base64.b64encode(f"{t.user}:{t.password or ''}".encode()).decode()
        basic = {"Authorization": f"Basic {pair}"}
    if challenge.lower().startswith("basic"):
        t.headers = basic
        return
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    query = {"service": params.get("service", ""), "scope": f"repository:{t.name}:pull,push"}
    status, _, body = _request("GET", params["realm"] + "?" + urllib.parse.urlencode(query), basic)
    if status != 200:
        sys.exit(f"token request failed: HTTP {status} {body[:200]!r}")
    doc = json.loads(body)
    t.headers = {"Authorization": f"Bearer {doc.get('token') or doc.get('access_token')}"}


def curl_header_args(t: Target) -> list[str]:
    return [arg for k, v in t.headers.items() for arg in ("-H", f"{k}: {v}")]


def make_blob(size_mib: int, index: int) -> tuple[str, str]:
    """A random file of size_mib MiB (kept between calls) and its digest."""
    os.makedirs(WORK, exist_ok=True)
    path = os.path.join(WORK, f"blob-{size_mib}m-{index}.bin")
    if not os.path.exists(path):
        with open(path + ".tmp", "wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(MIB))
        os.rename(path + ".tmp", path)
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(8 * MIB):
            digest.update(chunk)
    return path, "sha256:" + digest.hexdigest()


def push_blob(t: Target, path: str, digest: str) -> float:
    """POST then one streaming PUT; returns seconds for the PUT (the data transfer)."""
    status, headers, body = _request("POST", t.api("blobs/uploads/"), t.headers, b"")
    if status != 202:
        sys.exit(f"upload start failed: HTTP {status} {body[:200]!r}")
    location = headers.get("location", "")
    location = urllib.parse.urljoin(t.url, location)
    sep = "&" if "?" in location else "?"
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            *curl_header_args(t),
            "--data-binary",
            f"@{path}",
            f"{location}{sep}digest={digest}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[0] != "201":
        sys.exit(f"blob PUT answered HTTP {out[0]}")
    return float(out[1])


def push_blob_bytes(t: Target, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, body = _request("POST", t.api("blobs/uploads/"), t.headers, b"")
    location = urllib.parse.urljoin(t.url, headers.get("location", ""))
    sep = "&" if "?" in location else "?"
    hdrs = {**t.headers, "Content-Type": "application/octet-stream"}
    status, _, body = _request("PUT", f"{location}{sep}digest={digest}", hdrs, data)
    if status != 201:
        sys.exit(f"small blob PUT answered HTTP {status} {body[:200]!r}")
    return digest


def pull_blob(t: Target, digest: str) -> float:
    """Seconds to GET the blob to /dev/null (redirects followed)."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-L",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
            *curl_header_args(t),
            t.api(f"blobs/{digest}"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[0] != "200":
        sys.exit(f"blob GET answered HTTP {out[0]}")
    return float(out[1])


def put_manifest(t: Target, layer_digest: str, layer_size: int, tag: str) -> None:
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    config_digest = push_blob_bytes(t, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
    ).encode()
    status, _, body = _request(
        "PUT", t.api(f"manifests/{tag}"), {**t.headers, "Content-Type": MANIFEST_TYPE}, manifest
    )
    if status != 201:
        sys.exit(f"manifest PUT answered HTTP {status} {body[:300]!r}")


def wrk(
    t: Target, path: str, seconds: int, connections: int, accept: str | None
) -> tuple[float, float]:
    """Requests per second and p99 latency in ms for GETs of path."""
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in t.headers.items():
        args += ["-H", f"{k}: {v}"]
    if accept:
        args += ["-H", f"Accept: {accept}"]
    out = subprocess.run([*args, t.api(path)], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw non-2xx answers for {path}:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    if rate is None or p99 is None:
        sys.exit(f"unexpected wrk output for {path}:\n{out}")
    rps = float(rate.group(1))
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def measure(
    t: Target, args: argparse.Namespace, run_index: int, prepared: dict[str, str]
) -> dict[str, float]:
    """One round of every figure on target t."""
    size = args.size_mib
    path, digest = make_blob(size, run_index % 3)
    figures: dict[str, float] = {}
    secs = push_blob(t, path, digest)
    figures["push_MiBps"] = size / secs
    figures["pull_MiBps"] = size / min(pull_blob(t, digest) for _ in range(2))  # best of two
    if "small" not in prepared:
        small = os.urandom(4096)
        prepared["small"] = push_blob_bytes(t, small)
        put_manifest(t, digest, size * MIB, "bench")
    rps, p99 = wrk(t, "manifests/bench", args.wrk_seconds, args.connections, MANIFEST_TYPE)
    figures["manifest_rps"], figures["manifest_p99_ms"] = rps, p99
    rps, p99 = wrk(t, f"blobs/{prepared['small']}", args.wrk_seconds, args.connections, None)
    figures["small_blob_rps"], figures["small_blob_p99_ms"] = rps, p99
    return figures


def summarize(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("run")
    one.add_argument("url")
    one.add_argument("name")
    one.add_argument("--user")
    one.add_argument("--password")
    two = sub.add_parser("compare")
    for side in ("a", "b"):
        two.add_argument(f"url_{side}")
        two.add_argument(f"name_{side}")
    for side in ("a", "b"):
        two.add_argument(f"--user-{side}")
        two.add_argument(f"--password-{side}")
    for q in (one, two):
        q.add_argument("--size-mib", type=int, default=256)
        q.add_argument("--runs", type=int, default=3)
        q.add_argument("--wrk-seconds", type=int, default=5)
        q.add_argument("--connections", type=int, default=32)
        q.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()

    if args.cmd == "run":
        t = Target(args.url, args.name, args.user, args.password)
        authenticate(t)
        prepared: dict[str, str] = {}
        rounds = [measure(t, args, i, prepared) for i in range(args.runs)]
        result = {"target": summarize(rounds)}
        for k, v in result["target"].items():
            print(f"{k:18} {v:12.1f}")
    else:
        a = Target(args.url_a, args.name_a, args.user_a, args.password_a)
        b = Target(args.url_b, args.name_b, args.user_b, args.password_b)
        authenticate(a)
        authenticate(b)
        prep_a: dict[str, str] = {}
        prep_b: dict[str, str] = {}
        ra: list[dict[str, float]] = []
        rb: list[dict[str, float]] = []
        for i in range(args.runs):
            # Odd rounds measure B first, so neither server always meets the page cache, the
            # CPU frequency or the other's leftover load in the same state.
            if i % 2:
                rb.append(measure(b, args, i, prep_b))
                ra.append(measure(a, args, i, prep_a))
            else:
                ra.append(measure(a, args, i, prep_a))
                rb.append(measure(b, args, i, prep_b))
        sa, sb = summarize(ra), summarize(rb)
        result = {"a": sa, "b": sb, "ratio_a_over_b": {k: sa[k] / sb[k] for k in sa}}
        print(f"{'figure':18} {'A':>12} {'B':>12} {'A/B':>8}")
        for k in sa:
            print(f"{k:18} {sa[k]:12.1f} {sb[k]:12.1f} {sa[k] / sb[k]:8.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
