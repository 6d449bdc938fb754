"""One Berth node against three behind nginx (issue 11's multi-node benchmark), on the cluster
the multi-node tests run (tests/multinode/conftest.py): PostgreSQL, one SeaweedFS bucket, three
`berth serve` nodes of one worker each, and nginx with deploy/nginx-berth.conf (TLS,
round-robin, keep-alive to the nodes).

- **Manifest GET by tag and 4 KiB blob GET** (wrk, bench/pairs.py's alternating rounds) on three
  sides: node1 directly (plain HTTP), node1 alone behind that nginx (the deployed config with
  all three upstream lines naming node1), and the three nodes behind it. On a 2-core machine
  three nodes cannot serve more than one: this shows what the balancer and the extra processes
  cost, not how Berth scales.
- **An upload whose PATCHes alternate between nodes**: POST on node1, then `--chunks` PATCHes of
  `--chunk-mib` MiB sent directly to node1, node2, node3 in turn (by port), and the closing PUT
  to the next; against the same upload with every request to node1. Rounds alternate the two;
  each upload's bytes differ (no blob is stored twice). Throughput is the blob's size over the
  time from the POST to the PUT's 201.

    .venv/bin/python bench/nodes.py [--rounds 3] [--chunks 64] [--chunk-mib 4] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # the multi-node tests' cluster
sys.path.insert(0, str(BENCH))

import method  # noqa: E402
import pairs  # noqa: E402
import regbench  # noqa: E402
from run import IMAGE_NAME, PROJECT, REPOSITORY, loadavg  # noqa: E402

from tests.multinode.conftest import Balancer, started_nodes  # noqa: E402
from tests.s3 import seaweedfs_server  # noqa: E402
from tests.servers import BerthServer, PostgresCluster  # noqa: E402

MIB = 1 << 20
# A node's start waits 180 s, not the tests' 60 s: this machine's cores are often shared.
BerthServer.start.__defaults__ = (180.0,)
# nginx's certificate is the throwaway self-signed one of the test cluster, on loopback.
ssl._create_default_https_context = ssl._create_unverified_context


@contextlib.contextmanager
def cluster(base: Path) -> Iterator[tuple[list[BerthServer], Balancer, Balancer]]:
    """Three nodes, nginx in front of the three, and nginx in front of node1 alone."""
    postgres = PostgresCluster().start()
    try:
        url = postgres.create_database()
        with (
            seaweedfs_server(base / "seaweedfs") as seaweedfs,
            started_nodes(base, url, seaweedfs) as nodes,
        ):
            three = Balancer(base / "nginx-three", nodes).start()
            one = Balancer(base / "nginx-one", [nodes[0]] * len(nodes)).start()
            try:
                yield nodes, one, three
            finally:
                one.stop()
                three.stop()
    finally:
        postgres.stop()


def authenticated(url: str, user: str, password: str) -> regbench.Target:
    target = regbench.Target(url, IMAGE_NAME, user, password)
    regbench.authenticate(target)
    return target


# A node's client and its token: a token names the host that issued it, so each node gets its own.
Node = tuple[httpx.Client, dict[str, str]]


def upload(nodes: list[Node], data: bytes, chunk: int) -> float:
    """POST on nodes[0], PATCHes to the nodes in turn, PUT to the next; seconds taken."""
    digest = hashlib.sha256(data).hexdigest()
    began = time.perf_counter()
    started = nodes[0][0].post(f"/v2/{IMAGE_NAME}/blobs/uploads/", headers=nodes[0][1])
    if started.status_code != 202:
        raise RuntimeError(f"upload start: HTTP {started.status_code} {started.text[:200]}")
    location = started.headers["location"]
    index = 0
    for index, offset in enumerate(range(0, len(data), chunk)):
        piece = data[offset : offset + chunk]
        client, headers = nodes[index % len(nodes)]
        patched = client.patch(
            location,
            content=piece,
            headers={
                **headers,
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(piece) - 1}",
            },
        )
        if patched.status_code != 202:
            raise RuntimeError(f"PATCH {index}: HTTP {patched.status_code} {patched.text[:200]}")
        location = patched.headers["location"]
    client, headers = nodes[(index + 1) % len(nodes)]
    closed = client.put(location, params={"digest": f"sha256:{digest}"}, headers=headers)
    if closed.status_code != 201:
        raise RuntimeError(f"upload PUT: HTTP {closed.status_code} {closed.text[:200]}")
    return time.perf_counter() - began


def measure(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    with cluster(base) as (nodes, one, three):
        first = nodes[0]
        first.create_repository(PROJECT, REPOSITORY)
        user, password = first.access_key(PROJECT)
        direct = authenticated(first.url, user, password)
        small = regbench.push_blob_bytes(direct, os.urandom(pairs.SMALL_BLOB))
        regbench.put_manifest(direct, small, pairs.SMALL_BLOB, "bench")
        targets = {
            "node1": (direct, small),
            "nginx-1": (authenticated(one.url, user, password), small),
            "nginx-3": (authenticated(three.url, user, password), small),
        }
        load_before = loadavg()
        print(f"load average {load_before}", file=sys.stderr, flush=True)
        found = pairs.alternate(
            targets, args.rounds, args.wrk_seconds, args.connections, "manifest/4 KiB"
        )
        load_between = loadavg()

        size = args.chunks * args.chunk_mib * MIB
        data = bytearray(os.urandom(size))
        clients = [httpx.Client(base_url=node.url, timeout=300) for node in nodes]
        tokens = [authenticated(node.url, user, password).headers for node in nodes]
        each: list[Node] = list(zip(clients, tokens, strict=True))
        nodes_of = {"one node": each[:1], "three nodes": each}

        def upload_once(index: int, side: str) -> float:
            data[:16] = os.urandom(16)  # a blob of its own each time
            taken = upload(nodes_of[side], bytes(data), args.chunk_mib * MIB)
            print(
                f"round {index + 1} upload {side}: {size / MIB / taken:,.0f} MiB/s",
                file=sys.stderr,
                flush=True,
            )
            return taken

        try:
            seconds = method.alternate_rounds(list(nodes_of), args.rounds, upload_once)
        finally:
            for client in clients:
                client.close()
        load_after = loadavg()
    mibps = {side: [size / MIB / s for s in taken] for side, taken in seconds.items()}
    return {
        "get_medians": pairs.medians(found),
        "get_ratios": {
            "nginx-1 / node1": pairs.paired_ratios(found, "nginx-1", "node1"),
            "nginx-3 / node1": pairs.paired_ratios(found, "nginx-3", "node1"),
            "nginx-3 / nginx-1": pairs.paired_ratios(found, "nginx-3", "nginx-1"),
        },
        "upload_MiBps": {side: statistics.median(v) for side, v in mibps.items()},
        "upload_rounds_MiBps": mibps,
        "upload_ratio": statistics.median(
            t / o for t, o in zip(mibps["three nodes"], mibps["one node"], strict=True)
        ),
        "load_before": load_before,
        "load_between": load_between,
        "load_after": load_after,
        "rounds": args.rounds,
        "wrk_seconds": args.wrk_seconds,
        "connections": args.connections,
        "chunks": args.chunks,
        "chunk_mib": args.chunk_mib,
    }


def report(r: dict[str, Any]) -> str:
    med = r["get_medians"]
    lines = [
        "| wrk, median of the rounds | node1 direct | node1 behind nginx | three nodes behind "
        "nginx | three / one behind nginx (paired) | three behind nginx / node1 direct |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in pairs.FIGURES.items():
        lines.append(
            f"| {label} | {med['node1'][key]:,.0f} req/s | {med['nginx-1'][key]:,.0f} req/s "
            f"| {med['nginx-3'][key]:,.0f} req/s "
            f"| {r['get_ratios']['nginx-3 / nginx-1'][key]:.2f}x "
            f"| {r['get_ratios']['nginx-3 / node1'][key]:.2f}x |"
        )
    size = r["chunks"] * r["chunk_mib"]
    up = r["upload_MiBps"]
    lines += [
        "",
        f"| upload of {size} MiB in {r['chunks']} PATCHes of {r['chunk_mib']} MiB | one node "
        "| PATCHes alternating over three nodes | three / one (paired) |",
        "| --- | ---: | ---: | ---: |",
        f"| throughput, POST to the PUT's 201 | {up['one node']:,.0f} MiB/s "
        f"| {up['three nodes']:,.0f} MiB/s | {r['upload_ratio']:.2f}x |",
        "",
        f"Load average before the GETs / before the uploads / after: {r['load_before']} / "
        f"{r['load_between']} / {r['load_after']}; {r['rounds']} rounds, wrk "
        f"{r['wrk_seconds']} s with {r['connections']} connections.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wrk-seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--chunk-mib", type=int, default=4)
    p.add_argument("--json", action="store_true", help="the figures as JSON on standard output")
    args = p.parse_args()
    pairs.stop_servers_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="berth-bench-nodes-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
