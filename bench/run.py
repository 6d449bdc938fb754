"""`make bench`: Berth against Debian's docker-registry (CNCF Distribution) on this machine.

Starts both registries side by side on free ports of 127.0.0.1, each on a fresh temporary data
directory (Berth on its SQLite defaults; Distribution on filesystem storage with the in-memory
blob descriptor cache), runs the team's registry-neutral `regbench.py compare` (curl and wrk,
alternating the two) three times, reporting per figure the median ratio over the runs with its
spread, the load average around each run and the cores other work kept busy during it (warning
when the machine was busy before the bench or during a run; the bench's own processes do not
count). In each run it
also pulls the same blob through nginx from a second Berth with `blob_redirect = "accel"` and
from Distribution, alternating (issue 15's pull figure). Berth runs on its defaults, one worker
per usable core included. It samples Berth's server memory (PSS and RSS of the granian
supervisor and its workers, from /proc) throughout, measures how much one streamed 1 GiB blob
push raises the RSS,
times single-core SHA-256, and writes the figures, ratios and targets to BENCHMARKS.md. When
Berth asks for credentials, an access key of the administrator its first start created logs in.

Every process started here runs in its own session and is stopped on the way out, whatever
happens (errors, Ctrl-C, SIGTERM; if this process is SIGKILLed, PDEATHSIG still stops them).
`--quick` is a smoke test of the bench itself (`make bench BENCH_ARGS=--quick`).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import method  # how runs become figures (pure; unit-tested)
import regbench  # the team's registry-neutral benchmark, copied beside this file
from memory import PSS_SECONDS, SAMPLE_SECONDS, MemorySampler, process_tree

# The servers, here for the other benches too (`from run import Server, ...`).
from servers import (  # noqa: F401
    ACCEL_LOCATION,
    BERTH,
    DIRECT_LOCATION,
    DISTRIBUTION,
    IMAGE_NAME,
    NGINX,
    PROJECT,
    REPOSITORY,
    Server,
    free_port,
    launch_berth,
    log_in_berth,
    spawn,
    start_distribution,
    start_nginx_accel,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
REGBENCH = Path(__file__).resolve().parent / "regbench.py"
# Measurements made by hand (before/after comparisons, investigations), kept in BENCHMARKS.md.
FINDINGS = Path(__file__).resolve().parent / "findings.md"
MIB = 1 << 20
MB = 1_000_000

MEMORY_LIMIT_MB = 200
LARGE_PUSH_LIMIT_MB = 64
SHA_SHARE = 0.85


@dataclass(frozen=True)
class Target:
    """A bound on Berth / Distribution: met when the ratio is at least (or at most) `bound`."""

    bound: float
    at_least: bool

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound

    def __str__(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}x"


# The pull through nginx from a second Berth with blob_redirect = "accel" (nginx sends the file
# with sendfile), measured beside Distribution in each run's own alternating rounds.
ACCEL_PULL = "accel_pull_MiBps"
ACCEL_CPU = "accel_pull_cpu_s"  # CPU time of nginx and that Berth, against Distribution's
# The same blob file sent by the same nginx without Berth (servers.DIRECT_LOCATION), in the
# same rounds: what nginx alone does on this machine, to read the accel row by. Not a target.
DIRECT_PULL = "direct_pull_MiBps"

# regbench figure -> (label, unit, target); {size} is the blob size in MiB.
FIGURES: dict[str, tuple[str, str, Target | None]] = {
    "push_MiBps": ("blob push, {size} MiB, one PUT (curl)", "MiB/s", Target(1.5, True)),
    "pull_MiBps": ("blob pull, {size} MiB (curl)", "MiB/s", Target(1.5, True)),
    ACCEL_PULL: (
        "blob pull, {size} MiB, Berth behind nginx with blob_redirect = accel (curl)",
        "MiB/s",
        Target(1.5, True),
    ),
    DIRECT_PULL: (
        "blob pull, {size} MiB, the same nginx sending the same file without Berth (curl)",
        "MiB/s",
        None,
    ),
    ACCEL_CPU: (
        "server CPU per {size} MiB pull: nginx + Berth (accel), against Distribution",
        "s",
        Target(1.0, False),
    ),
    "manifest_rps": ("manifest GET by tag (wrk)", "req/s", Target(5.0, True)),
    "manifest_p99_ms": ("manifest GET p99", "ms", Target(1.0, False)),
    "small_blob_rps": ("4 KiB blob GET (wrk)", "req/s", Target(5.0, True)),
    "small_blob_p99_ms": ("4 KiB blob GET p99", "ms", Target(1.0, False)),
}


# ---------------------------------------------------------------- measurements


def sha256_mibps(size_mib: int = 256, repeats: int = 5) -> float:
    """Single-core hashlib SHA-256 over size_mib MiB in 4 MiB updates, best of `repeats`."""
    data = memoryview(bytearray(os.urandom(MIB)) * size_mib)
    step = 4 * MIB
    best = float("inf")
    for _ in range(repeats):
        hasher = hashlib.sha256()
        began = time.perf_counter()
        for offset in range(0, len(data), step):
            hasher.update(data[offset : offset + step])
        best = min(best, time.perf_counter() - began)
    return size_mib / best


@dataclass
class LargePush:
    size_mib: int
    seconds: float
    baseline: int
    peak: int

    @property
    def increase(self) -> int:
        return max(self.peak - self.baseline, 0)

    @property
    def mibps(self) -> float:
        return self.size_mib / self.seconds


def push_streamed(server: Server, sampler: MemorySampler, size_mib: int) -> LargePush:
    """POST, then one PUT streamed from disk by curl -T, watching the server's RSS."""
    path, digest = regbench.make_blob(size_mib, 0)
    target = regbench.Target(server.url, IMAGE_NAME, server.user, server.password)
    regbench.authenticate(target)
    status, headers, body = regbench._request(
        "POST", target.api("blobs/uploads/"), target.headers, b""
    )
    location = headers.get("location")
    if status != 202 or not location:
        raise RuntimeError(f"{server.name}: upload start answered HTTP {status} {body[:200]!r}")
    location = urllib.parse.urljoin(server.url, location)
    sep = "&" if "?" in location else "?"
    time.sleep(0.5)  # settle on the idle figure
    baseline = sampler.open_window()
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-T", path]
    curl += ["-H", "Expect:", "-H", "Content-Type: application/octet-stream"]
    curl += regbench.curl_header_args(target)
    curl.append(f"{location}{sep}digest={digest}")
    out = subprocess.run(curl, capture_output=True, text=True, check=True).stdout.split()
    time.sleep(3 * SAMPLE_SECONDS)
    peak = max(sampler.window_peak, sampler.current())
    if out[0] != "201":
        raise RuntimeError(f"{server.name}: streamed blob PUT answered HTTP {out[0]}")
    return LargePush(size_mib, float(out[1]), baseline, peak)


def run_regbench(
    berth: Server, distribution: Server, args: argparse.Namespace, out: Path
) -> dict[str, dict[str, float]]:
    """regbench compare, Berth as A and Distribution as B; returns its --json figures."""
    argv = [sys.executable, str(REGBENCH), "compare"]
    argv += [berth.url, IMAGE_NAME, distribution.url, IMAGE_NAME]
    argv += ["--runs", str(args.rounds), "--wrk-seconds", str(args.wrk_seconds)]
    argv += ["--connections", str(args.connections), "--size-mib", str(args.size_mib)]
    argv += ["--json", str(out)]
    for side, server in (("a", berth), ("b", distribution)):
        if server.user is not None:
            # `=`: a secret may start with `-` (keys made before Berth stopped drawing those).
            argv += [f"--user-{side}={server.user}", f"--password-{side}={server.password or ''}"]
    subprocess.run(argv, check=True)
    result: dict[str, dict[str, float]] = json.loads(out.read_text())
    return result


def process_tree_cpu(pids: Sequence[int]) -> float:
    """User + system CPU seconds spent so far by these processes and their descendants (those
    still running), from /proc."""
    processes: dict[int, tuple[int, int]] = {}  # pid -> (parent, clock ticks)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        processes[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree = set(pids)
    while more := {pid for pid, (parent, _) in processes.items() if parent in tree} - tree:
        tree |= more
    ticks = sum(processes[pid][1] for pid in tree if pid in processes)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Pulls:
    """Two targets' pulls of one blob: each one's MiB/s and its servers' CPU seconds a pull."""

    first_mibps: float
    second_mibps: float
    first_cpu: float
    second_cpu: float


def pull_sides(
    sides: Sequence[tuple[Callable[[], float], Sequence[int]]], size_mib: int, rounds: int
) -> list[tuple[float, float]]:
    """Each side's pull (a call returning the seconds one pull took) in `rounds` rounds, best
    of two per round, the order flipping every round; per side the median MiB/s and the median
    CPU seconds per pull of the side's pids (their processes and descendants, over both pulls
    of a round, halved), less swayed by other work than MiB/s are."""

    def pull(_: int, side: int) -> tuple[float, float]:
        """MiB/s and CPU seconds per pull of `side`."""
        one_pull, pids = sides[side]
        began = process_tree_cpu(pids)
        seconds = min(one_pull() for _ in range(2))
        return size_mib / seconds, (process_tree_cpu(pids) - began) / 2

    indexes = range(len(sides))
    found = method.alternate_rounds(list(indexes), rounds, pull)
    return [
        (
            statistics.median(rate for rate, _ in found[side]),
            statistics.median(seconds for _, seconds in found[side]),
        )
        for side in indexes
    ]


def pull_rounds(
    first: tuple[regbench.Target, Sequence[int]],
    second: tuple[regbench.Target, Sequence[int]],
    digest: str,
    size_mib: int,
    rounds: int,
) -> Pulls:
    """Each target's pull rate of the blob `digest` (both hold it): regbench's pull (curl) by
    `pull_sides`."""
    (first_rate, first_cpu), (second_rate, second_cpu) = pull_sides(
        [
            (functools.partial(regbench.pull_blob, target, digest), pids)
            for target, pids in (first, second)
        ],
        size_mib,
        rounds,
    )
    return Pulls(first_rate, second_rate, first_cpu, second_cpu)


def pull_direct(url: str) -> float:
    """Seconds for curl to GET `url` (no credentials) to /dev/null, as regbench's pull does."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[0] != "200":
        raise RuntimeError(f"nginx answered HTTP {out[0]} for {url}")
    return float(out[1])


def direct_url(nginx: Server, accel_berth: Server, digest: str) -> str:
    """Where the bench's nginx sends the blob `digest` without Berth: the file Berth's own
    X-Accel-Redirect names (asked of that Berth directly), under servers.DIRECT_LOCATION."""
    asking = regbench.Target(accel_berth.url, IMAGE_NAME, accel_berth.user, accel_berth.password)
    regbench.authenticate(asking)
    status, headers, _ = regbench._request("GET", asking.api(f"blobs/{digest}"), asking.headers)
    redirect = headers.get("x-accel-redirect", "")
    if status != 200 or not redirect.startswith(ACCEL_LOCATION):
        raise RuntimeError(f"the accel Berth answered HTTP {status}, X-Accel-Redirect {redirect!r}")
    return nginx.url + DIRECT_LOCATION + redirect.removeprefix(ACCEL_LOCATION)


@dataclass
class Run:
    """One regbench comparison (its rounds alternate the servers) and the load around it."""

    figures: dict[str, dict[str, float]]  # regbench's "a", "b" and "ratio_a_over_b"
    load_before: str
    load_after: str
    others: float  # cores other work kept busy during the run (method.other_work)


def measure_runs(
    berth: Server,
    distribution: Server,
    accel: tuple[Server, Server] | None,
    args: argparse.Namespace,
    work: Path,
) -> list[Run]:
    """Each run: regbench's comparison of Berth and Distribution, then (with nginx) pulls of
    the same blob through nginx from the accel Berth and from Distribution, alternating."""
    runs = []
    if accel is not None:
        nginx, accel_berth = accel
        # regbench's first blob: Distribution has it from every run's first round.
        path, digest = regbench.make_blob(args.size_mib, 0)
        through_nginx = regbench.Target(nginx.url, IMAGE_NAME, nginx.user, nginx.password)
        regbench.authenticate(through_nginx)
        regbench.push_blob(through_nginx, path, digest)
        # curl's pull checks the status only: make sure nginx sends the blob's bytes.
        status, _, body = regbench._request(
            "GET", through_nginx.api(f"blobs/{digest}"), through_nginx.headers
        )
        if status != 200 or f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
            raise RuntimeError(f"nginx (accel) answered HTTP {status} with other bytes")
        del body
        plain = regbench.Target(distribution.url, IMAGE_NAME)
        regbench.authenticate(plain)
        direct = direct_url(nginx, accel_berth, digest)
        with urllib.request.urlopen(direct) as sent:
            if f"sha256:{hashlib.file_digest(sent, 'sha256').hexdigest()}" != digest:
                raise RuntimeError(f"nginx sent other bytes from {direct}")
    for index in range(args.runs):
        before = loadavg()
        print(f"run {index + 1} of {args.runs}: load average {before}", flush=True)
        began = cpu_sample()
        figures = run_regbench(berth, distribution, args, work / f"regbench-{index + 1}.json")
        if accel is not None:
            (accel_rate, accel_cpu), (dist_rate, dist_cpu), (direct_rate, _) = pull_sides(
                [
                    (
                        lambda: regbench.pull_blob(through_nginx, digest),
                        [nginx.pid, accel_berth.pid],
                    ),
                    (lambda: regbench.pull_blob(plain, digest), [distribution.pid]),
                    (lambda: pull_direct(direct), [nginx.pid]),
                ],
                args.size_mib,
                args.rounds,
            )
            a, b = figures["a"], figures["b"]
            a[ACCEL_PULL], b[ACCEL_PULL] = accel_rate, dist_rate
            a[ACCEL_CPU], b[ACCEL_CPU] = accel_cpu, dist_cpu
            a[DIRECT_PULL], b[DIRECT_PULL] = direct_rate, dist_rate
            print(
                f"  accel pull: nginx {accel_rate:,.0f} MiB/s ({accel_cpu:.2f} s CPU), "
                f"Distribution {dist_rate:,.0f} MiB/s ({dist_cpu:.2f} s CPU); nginx without "
                f"Berth {direct_rate:,.0f} MiB/s",
                flush=True,
            )
        others = method.other_work(began, cpu_sample(), os.sysconf("SC_CLK_TCK"))
        print(f"  other work during run {index + 1}: {others:.2f} cores busy", flush=True)
        runs.append(Run(figures, before, loadavg(), others))
    return runs


# ---------------------------------------------------------------- machine


def _search(path: str, pattern: str) -> str:
    try:
        match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return match.group(1).strip() if match else "unknown"


def _version(argv: list[str], index: int) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()
    except OSError:
        return "unknown"
    return out[index] if len(out) > index else "unknown"


def cpu_sample() -> method.CpuSample:
    """The machine's busy ticks and this bench's own (it, its servers and its clients)."""
    machine = method.busy_ticks(Path("/proc/stat").read_text())
    processes = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            processes.append(method.process_ticks(stat.read_text()))
        except OSError:
            continue  # gone meanwhile
    own = method.tree_ticks(processes, os.getpid())
    return method.CpuSample(time.monotonic(), machine, own)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, str]:
    mem_kib = _search("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "CPU": _search("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem_kib) / (1 << 20):.1f} GiB" if mem_kib.isdigit() else "unknown",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "granian": importlib.metadata.version("granian"),
        "Distribution": _version([str(DISTRIBUTION), "--version"], 2),
        "curl": _version(["curl", "--version"], 1),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load average at start": loadavg(),
    }


# ---------------------------------------------------------------- report


@dataclass
class Results:
    machine: dict[str, str]
    args: argparse.Namespace
    runs: list[Run]
    sha256: float
    berth_workers: int
    berth_idle: int
    berth_idle_pss: int
    berth_startup_peak: int
    berth_peak: int
    berth_peak_pss: int
    berth_hwm: int
    distribution_peak: int
    berth_push: LargePush
    distribution_push: LargePush
    seconds: float
    load_at_end: str
    berth_auth: bool


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _size(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def throughput_rows(runs: list[Run], size_mib: int) -> list[str]:
    """Per figure: each side's median over the runs, the ratio of every run, their median and
    spread, the target and in how many runs it was met."""
    a = method.spreads([run.figures["a"] for run in runs])
    b = method.spreads([run.figures["b"] for run in runs])
    per_run = [method.ratios(run.figures["a"], run.figures["b"]) for run in runs]
    ratio = method.spreads(per_run)
    rows = []
    for key, (label, unit, target) in FIGURES.items():
        if key not in ratio:
            continue  # not measured (nginx missing)
        values = [r[key] for r in per_run]
        spread = ratio[key]
        if target is None:
            target_cell, met_cell = "none (a reference)", "n/a"
        else:
            met = method.met_in(values, target.bound, target.at_least)
            target_cell = str(target)
            met_cell = f"{_met(met == len(values))} ({met} of {len(values)})"
        rows.append(
            f"| {label.format(size=size_mib)} | {_num(a[key].median)} {unit} "
            f"| {_num(b[key].median)} {unit} | {', '.join(f'{v:.2f}' for v in values)} "
            f"| **{spread.median:.2f}x** ({spread.low:.2f} to {spread.high:.2f}) "
            f"| {target_cell} | {met_cell} |"
        )
    return rows


def report(r: Results) -> str:
    a = {k: v.median for k, v in method.spreads([run.figures["a"] for run in r.runs]).items()}
    args = r.args
    rows = throughput_rows(r.runs, args.size_mib)
    warning = method.load_warning(
        r.machine["load average at start"], [run.others for run in r.runs], os.cpu_count() or 1
    )
    loads = [
        f"| load average before / after run {i}; cores other work kept busy during it "
        f"| {run.load_before} / {run.load_after}; {run.others:.2f} |"
        for i, run in enumerate(r.runs, 1)
    ]
    peak_mb, peak_pss_mb = r.berth_peak / MB, r.berth_peak_pss / MB
    push_mb = r.berth_push.increase / MB
    sha_share = a["push_MiBps"] / r.sha256
    large = _size(r.berth_push.size_mib)
    bp, dp = r.berth_push, r.distribution_push
    accel = (
        'The accel row: a second Berth, the same but for `blob_redirect = "accel"`, behind '
        "Debian's nginx (one worker) with `deploy/nginx-accel.conf` as shipped (its `alias` "
        "pointed at that Berth's blob directory): Berth authorises the GET and answers "
        "`X-Accel-Redirect`, nginx sends the file with sendfile. In every run, after "
        f"regbench, the same {args.size_mib} MiB blob is pulled through nginx and from "
        f"Distribution in {args.rounds} rounds alternating the two (curl, best of two "
        "pulls per round, regbench's pull); the run's figure is the median of its rounds. "
        "The row after it is a reference: in the same rounds, the same nginx sends the same "
        "file from a location open to clients, with the snippet's directives and no Berth in "
        "the way. Where the accel row is as fast, Berth's part of the accel pull (authorising "
        "it, naming the file) costs nothing measurable, and the accel row's ratio is nginx's "
        "own against Distribution on this machine. "
        "The CPU row is the user + system time the serving processes spent per pull (nginx "
        "and the accel Berth, against Distribution; from /proc): under load, MiB/s mostly "
        "measure who got the cores, CPU time what each way of sending costs."
        if ACCEL_PULL in a
        else 'nginx is not installed: Berth behind nginx with `blob_redirect = "accel"` '
        "was not measured."
    )
    workers_given = (
        "its default: one per usable core"
        if args.workers is None
        else f"`--workers {args.workers}`, not Berth's default"
    )
    auth = (
        "Berth requires authentication, so regbench logs in the way docker does (an access "
        "key of the administrator, exchanged for a Bearer token that every request carries and "
        "Berth verifies); Distribution runs without auth, as the reference setup prescribes."
        if r.berth_auth
        else "Neither registry asks for credentials."
    )
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/run.py`); rerun it rather than edit this file.",
        "",
        "Berth against Debian's `docker-registry` (CNCF Distribution), both on 127.0.0.1 of "
        "the same machine, each on a fresh data directory. Berth runs on its defaults (SQLite "
        f"metadata, filesystem blobs) with **{r.berth_workers} granian worker(s)** "
        f"({workers_given}); Distribution "
        "on filesystem storage with `storage.cache.blobdescriptor: inmemory`, delete enabled, "
        "no auth, access log off and log level `warn`. The team's `bench/regbench.py compare` "
        f"drives both with curl and wrk: **{args.runs} runs**, each of {args.rounds} rounds "
        "that alternate the two servers; a run's figure is the median of its rounds (pull: "
        "best of two per round). The table gives each registry's median over the runs, the "
        "ratio Berth / Distribution of every run, and the median ratio with its spread (lowest "
        "to highest); a target is met when it held in every run. Blobs are random bytes pushed "
        f"in one monolithic PUT; wrk runs {args.wrk_seconds} s with {args.connections} "
        "connections and 2 threads, on the same cores as the servers.",
        "",
        accel,
        "",
        *([warning, ""] if warning else []),
        auth,
        "",
        "## Throughput and latency",
        "",
        "| figure | Berth | Distribution | Berth / Distribution, per run | median (spread) "
        "| target | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
        *rows,
        "",
        "p99 rows are met when Berth's latency is no worse than Distribution's.",
        "",
        "## Memory and hashing",
        "",
        "| figure | Berth | target | met |",
        "| --- | ---: | ---: | :---: |",
        "| server memory, peak PSS through the benchmark (serving; summed RSS beside) "
        f"| {peak_pss_mb:.1f} MB (RSS {peak_mb:.1f} MB) | < {MEMORY_LIMIT_MB} MB "
        f"| {_met(peak_pss_mb < MEMORY_LIMIT_MB)} |",
        f"| RSS increase during one streamed {large} blob push | {push_mb:.1f} MB "
        f"| < {LARGE_PUSH_LIMIT_MB} MB | {_met(push_mb < LARGE_PUSH_LIMIT_MB)} |",
        f"| {args.size_mib} MiB push / single-core SHA-256 | {sha_share:.0%} "
        f"| ≥ {SHA_SHARE:.0%} | {_met(sha_share >= SHA_SHARE)} |",
        "",
        f"- Single-core SHA-256 here (hashlib, 256 MiB in 4 MiB updates, best of 5): "
        f"**{r.sha256:,.0f} MiB/s**. A push verifies the digest as it streams, so one core's "
        "hashing speed is its ceiling"
        + (
            "; here the core hashes several times faster than the push runs (SHA "
            "extensions), so the row's target, set for a core hashing near 380 MiB/s, does "
            "not measure the push: its figure against Distribution above does."
            if r.sha256 > 2 * a["push_MiBps"]
            else "."
        ),
        "- Server memory is the PSS (proportional set size: a page shared by several "
        "processes counts once, split between them) summed over the granian supervisor and "
        "its workers, from /proc/PID/smaps_rollup every "
        f"{PSS_SECONDS:g} s from the moment Berth answers to the end of the {large} push: the "
        "figure the target means, the memory the server takes from the machine. Beside it, "
        f"the summed RSS (/proc/PID/statm every {SAMPLE_SECONDS * 1000:.0f} ms), which counts "
        "each shared page once per process: the workers are forked from the supervisor "
        "(with two or more, after it loaded Berth's modules), so they share pages with it and "
        f"each other. Idle once ready: PSS {r.berth_idle_pss / MB:.1f} MB, RSS "
        f"{r.berth_idle / MB:.1f} MB. Start-up before that (a first start: migrations, "
        f"creating the administrator) peaked at RSS {r.berth_startup_peak / MB:.1f} MB; the "
        "sum of each process's own peak RSS "
        f"(VmHWM, start-up included) is {r.berth_hwm / MB:.1f} MB.",
        f"- The {large} push (POST, then one PUT streamed by `curl -T`): Berth "
        f"{bp.mibps:,.0f} MiB/s, RSS {bp.baseline / MB:.1f} → {bp.peak / MB:.1f} MB; "
        f"Distribution {dp.mibps:,.0f} MiB/s, RSS {dp.baseline / MB:.1f} → "
        f"{dp.peak / MB:.1f} MB. Distribution's RSS peak through the benchmark: "
        f"{r.distribution_peak / MB:.1f} MB.",
        "",
        "MB = 10⁶ bytes, MiB = 2²⁰ bytes.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in r.machine.items()),
        *loads,
        f"| load average at end | {r.load_at_end} |",
        f"| wall time of the run | {r.seconds:.0f} s |",
        "",
        "wrk, curl and both servers share the machine's cores and page cache, and anything "
        "else running skews every figure: read the ratios, and rerun on a quiet machine "
        "before drawing conclusions from small differences. Whether it was quiet is judged by "
        "the load average before the bench began and, during each run, by the cores other work "
        "kept busy (all cores' busy time from /proc/stat less that of the bench's own "
        "processes): the load average before a later run mostly measures the run before it.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def _check_tools() -> None:
    missing = [tool for tool in ("curl", "wrk") if shutil.which(tool) is None]
    missing += [str(p) for p in (DISTRIBUTION, BERTH) if not p.exists()]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (make bench installs them)")


def measure(args: argparse.Namespace, work: Path) -> Results:
    began = time.monotonic()
    info = machine()
    print(f"machine: {info['CPU']}, {info['cores']} cores, load {info['load average at start']}")
    sha = sha256_mibps()
    print(f"single-core SHA-256: {sha:,.0f} MiB/s")
    servers: list[Server] = []
    samplers: list[MemorySampler] = []
    try:
        berth = launch_berth(work, args.workers)  # None: Berth's default
        servers.append(berth)
        berth_mem = MemorySampler(berth.pid).start()
        samplers.append(berth_mem)
        wait_ready(berth)
        startup_peak, _ = berth_mem.restart_peak()  # PSS, read every 0.5 s, misses start-up
        idle, idle_pss = berth_mem.current(), berth_mem.current_pss()
        log_in_berth(berth)
        distribution = start_distribution(work)
        servers.append(distribution)
        dist_mem = MemorySampler(distribution.pid).start()
        samplers.append(dist_mem)
        print(f"Berth {berth.url}, Distribution {distribution.url}")
        accel: tuple[Server, Server] | None = None
        if NGINX.exists():
            accel_berth = launch_berth(
                work / "accel", args.workers, {"BERTH_BLOB_REDIRECT": "accel"}, "Berth (accel)"
            )
            servers.append(accel_berth)
            wait_ready(accel_berth)
            log_in_berth(accel_berth)
            nginx = start_nginx_accel(work / "nginx", accel_berth)
            servers.append(nginx)
            accel = (nginx, accel_berth)
            print(f"Berth (accel) behind nginx {nginx.url}")
        else:
            print(f"{NGINX} missing: no accel figure", file=sys.stderr)
        runs = measure_runs(berth, distribution, accel, args, work)
        print(f"one streamed {_size(args.large_mib)} push each, watching memory")
        berth_push = push_streamed(berth, berth_mem, args.large_mib)
        dist_push = push_streamed(distribution, dist_mem, args.large_mib)
        for sampler in samplers:
            sampler.stop()
        for server in servers:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited during the benchmark")
        return Results(
            machine=info,
            args=args,
            runs=runs,
            sha256=sha,
            # granian's supervisor, and the workers it forked
            berth_workers=len(process_tree(berth.pid)) - 1,
            berth_idle=idle,
            berth_idle_pss=idle_pss,
            berth_startup_peak=startup_peak,
            berth_peak=berth_mem.peak,
            berth_peak_pss=berth_mem.peak_pss,
            berth_hwm=berth_mem.summed_hwm(),
            distribution_peak=dist_mem.peak,
            berth_push=berth_push,
            distribution_push=dist_push,
            seconds=time.monotonic() - began,
            load_at_end=loadavg(),
            berth_auth=berth.user is not None,
        )
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        for server in servers:
            print(f"--- {server.name} log, last lines ---\n{server.log_tail()}", file=sys.stderr)
        sys.exit(f"bench failed: {exc}")
    finally:
        for sampler in samplers:
            sampler.stop()
        for server in servers:
            server.stop()


def token_report() -> str:
    """The token endpoint's rate (bench/tokens.py, its own server), as a section of the report."""
    run = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent / "tokens.py"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(run.stdout)
    rate = figures["tokens_per_second"]
    return "\n".join(
        [
            "",
            "## Token endpoint",
            "",
            "`bench/tokens.py`: wrk asks `GET /auth/token` for a `pull,push` token with an access "
            f"key's Basic credentials, {figures['connections']} connections, on a fresh Berth "
            f"({figures['database']}, {figures['workers']} worker); every token is a login and is "
            f"audited ({figures['logins_audited']:,} audited of {figures['requests']:,}).",
            "",
            "| figure | Berth | target | met |",
            "| --- | ---: | ---: | :---: |",
            f"| tokens issued per second | {rate:,.0f} | ≥ 1,000 | {'yes' if rate >= 1000 else '**no**'} |",
            f"| latency p50 / p99 | {figures['latency_p50_ms']:.1f} ms / "
            f"{figures['latency_p99_ms']:.1f} ms | | |",
            "",
        ]
    )


def extra_report(script: str) -> str:
    """The section another benchmark in bench/ renders of itself (`--json`, then its report())."""
    path = Path(__file__).resolve().parent / script
    if not path.exists():
        return ""
    run = subprocess.run(
        [sys.executable, str(path), "--json"], capture_output=True, text=True, check=True
    )
    # Loaded by path under its own name: `gc` would otherwise be the standard library's.
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    section: str = module.report(json.loads(run.stdout))
    return "\n" + section


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Berth's granian workers (default: Berth's own, one per usable core)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs, each a regbench comparison")
    p.add_argument("--rounds", type=int, default=3, help="regbench rounds per run")
    p.add_argument("--wrk-seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--size-mib", type=int, default=256, help="regbench blob size")
    p.add_argument("--large-mib", type=int, default=1024, help="the memory-watched push")
    p.add_argument("--output", type=Path, default=None, help="default: BENCHMARKS.md")
    p.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the side-by-side runs and the memory figures, none of the other benches; "
        "written to a temporary file unless --output is given",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test (a minute or two): 2 short runs of 1 round, small blobs, none of "
        "the other benches; written to a temporary file unless --output is given",
    )
    args = p.parse_args()
    if args.quick:
        args.runs, args.rounds, args.wrk_seconds, args.connections = 2, 1, 1, 8
        args.size_mib, args.large_mib = 16, 64
    _check_tools()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        results = measure(args, Path(tmp))
        text = report(results)
        partial = args.quick or args.throughput_only
        if not partial:
            text += token_report() + extra_report("gc.py") + extra_report("metering.py")
            text += extra_report("metrics_cost.py") + extra_report("hardening.py")
            text += extra_report("manifest_profile.py") + FINDINGS.read_text()
        output = args.output
        if output is None:
            output = Path(tmp) / "BENCHMARKS.md" if partial else ROOT / "BENCHMARKS.md"
        output.write_text(text)
    print(text)
    print(f"wrote {output}" if not partial or args.output else "partial run: not kept")


if __name__ == "__main__":
    main()
