"""What the benches that compare Berth servers side by side share: a server on a fresh data
directory with the bench project and repository, the 4 KiB blob and manifest they read, and
wrk rounds alternating between the servers (the order flips every round, so drift in the
machine's load falls on both alike), summed up as medians and the median of paired ratios."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import method
import regbench  # the team's registry-neutral benchmark
from run import BERTH, PROJECT, REPOSITORY, Server, free_port, log_in_berth, spawn, wait_ready

SMALL_BLOB = 4096
FIGURES = {"manifest_rps": "manifest GET by tag (wrk)", "small_blob_rps": "4 KiB blob GET (wrk)"}
Rounds = dict[str, list[dict[str, float]]]


def launch(
    work: Path, name: str, settings: dict[str, str] | None = None, serve: Sequence[str] = ()
) -> Server:
    """A Berth on `work` (created) with the bench project and repository, ready and logged in:
    SQLite, one worker, one-hour tokens, and `settings` (BERTH_* variables) on top; `serve` is
    the command that serves it (default: `berth serve`)."""
    work.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {
        "BERTH_CONFIG": os.devnull,
        "BERTH_DATA_DIR": str(work / "berth-data"),
        "BERTH_LISTEN": f"127.0.0.1:{port}",
        "BERTH_WORKERS": "1",
        "BERTH_TOKEN_TTL": "3600",
        **(settings or {}),
    }
    for argv in (
        [str(BERTH), "init"],  # admin verbs work only on data that exists
        [str(BERTH), "project", "create", PROJECT],
        [str(BERTH), "repo", "create", f"{PROJECT}/{REPOSITORY}"],
    ):
        subprocess.run(argv, env=env, cwd=work, check=True, capture_output=True)
    server = spawn(name, list(serve) or [str(BERTH), "serve"], env, work / "berth.log", port)
    wait_ready(server)
    log_in_berth(server)
    return server


def prepare(server: Server) -> tuple[regbench.Target, str]:
    """Push the 4 KiB blob and a manifest tagged `bench`; returns the target and the blob."""
    target = regbench.Target(
        server.url, f"{PROJECT}/{REPOSITORY}/img", server.user, server.password
    )
    regbench.authenticate(target)
    small = regbench.push_blob_bytes(target, os.urandom(SMALL_BLOB))
    regbench.put_manifest(target, small, SMALL_BLOB, "bench")
    return target, small


def alternate(
    targets: dict[str, tuple[regbench.Target, str]],
    rounds: int,
    seconds: int,
    connections: int,
    what: str,
) -> Rounds:
    """wrk's manifest GET and 4 KiB blob GET rates of each target, `rounds` times, the order of
    the targets flipping every round; progress on standard error."""

    def rates(index: int, side: str) -> dict[str, float]:
        target, small = targets[side]
        manifest_rps, _ = regbench.wrk(
            target, "manifests/bench", seconds, connections, regbench.MANIFEST_TYPE
        )
        blob_rps, _ = regbench.wrk(target, f"blobs/{small}", seconds, connections, None)
        print(
            f"round {index + 1} {what} {side:3}: manifest {manifest_rps:9,.0f} req/s, "
            f"4 KiB blob {blob_rps:9,.0f} req/s",
            file=sys.stderr,
            flush=True,
        )
        return {"manifest_rps": manifest_rps, "small_blob_rps": blob_rps}

    return method.alternate_rounds(list(targets), rounds, rates)


def medians(found: Rounds) -> dict[str, dict[str, float]]:
    return {
        side: {k: statistics.median(r[k] for r in runs) for k in FIGURES}
        for side, runs in found.items()
    }


def paired_ratios(found: Rounds, top: str, bottom: str) -> dict[str, float]:
    """The median over rounds of top / bottom, each round's pair run back to back."""
    return {
        k: statistics.median(a[k] / b[k] for a, b in zip(found[top], found[bottom], strict=True))
        for k in FIGURES
    }


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def stop_servers_on_sigterm() -> None:
    """A SIGTERM unwinds like an exception, so the `finally` that stops the servers runs."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def on_off_rows(figures: dict[str, Any], on: str, off: str, target: float) -> list[str]:
    """A markdown table of the wrk figures of an on/off pair (`figures["on"]`, `["off"]` and
    `["ratio_on_over_off"]`, as `medians` and `paired_ratios` give them), the ratio against
    `target`; `on` and `off` head the columns."""
    rows = [
        f"| figure | {on} | {off} | on / off | target | met |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for key, label in FIGURES.items():
        ratio = figures["ratio_on_over_off"][key]
        met = "yes" if ratio >= target else "**no**"
        rows.append(
            f"| {label} | {figures['on'][key]:,.0f} req/s | {figures['off'][key]:,.0f} req/s "
            f"| {ratio:.3f} | ≥ {target} | {met} |"
        )
    return rows


def run_on_off_bench(
    doc: str | None,
    name: str,
    rounds: int,
    measure: Callable[[argparse.Namespace, Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> None:
    """The command line of an on/off wrk bench: `--rounds` (default `rounds`), `--wrk-seconds`,
    `--connections`, `--json`; `measure(args, work)` on a temporary directory, then its figures
    as JSON or as `report` words them. The description is the first line of `doc`."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--wrk-seconds", type=int, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    stop_servers_on_sigterm()
    with tempfile.TemporaryDirectory(prefix=f"berth-{name}-") as tmp:
        figures = measure(args, Path(tmp))
    print(json.dumps(figures, indent=2) if args.json else report(figures))
