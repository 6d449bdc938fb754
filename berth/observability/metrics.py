"""The server's Prometheus metrics, and the small functions the rest of Berth reports through.

Under `berth serve` every worker process writes its values to files in a directory of the data
directory (prometheus-client's multiprocess mode, chosen by `PROMETHEUS_MULTIPROC_DIR`, which
`server.py` sets and empties at start), and a scrape, answered by any one worker, sums them:
one scrape sees the whole server whichever worker answers it. Without that variable (admin
verbs, tests in-process) the values live in this process's memory.

Reporting is cheap (a dictionary lookup and an add on a memory-mapped file) and never raises.
`enabled` (the `metrics` setting) turns the per-request counting off, to measure its cost.
"""

from __future__ import annotations

import asyncio
import glob
import os
import weakref
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Literal, get_args

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Surfaces a request can go to, by the start of its path.
SURFACES = (("/v2", "registry"), ("/api/", "api"), ("/auth/", "auth"), ("/console", "console"))
UNMATCHED = "unmatched"  # the route label of every path no route matched

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
GC_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 7200)

REQUESTS = Counter(
    "berth_http_requests",
    "HTTP requests answered, by surface, route template, method and status",
    ["surface", "route", "method", "status"],
)
DURATION = Histogram(
    "berth_http_request_duration_seconds",
    "time from a request's arrival to the end of its response",
    ["surface", "route", "method"],
    buckets=DURATION_BUCKETS,
)
RECEIVED = Counter(
    "berth_http_received_bytes", "request body bytes received", ["surface", "route", "method"]
)
SENT = Counter(
    "berth_http_sent_bytes",
    "response body bytes sent (a blob file handed to the server counts its length)",
    ["surface", "route", "method"],
)
TOKENS = Counter(
    "berth_tokens_issued",
    "tokens issued: registry (docker login, pulls, pushes), refresh, api",
    ["kind"],
)
LOGIN_FAILURES = Counter(
    "berth_login_failures",
    "sign-ins refused for a wrong access key or password (access_key, password)",
    ["method"],
)
GC_RUNS = Counter(
    "berth_gc_runs",
    "garbage collection runs finished, by outcome (succeeded, failed, rolled_back, dry_run)",
    ["outcome"],
)
GC_DURATION = Histogram(
    "berth_gc_run_duration_seconds",
    "duration of finished garbage collection runs",
    buckets=GC_BUCKETS,
)
GC_RESTRICTED = Histogram(
    "berth_gc_restricted_seconds",
    "how long each run refused content-adding writes to its project",
    buckets=GC_BUCKETS,
)
GC_FREED = Counter(
    "berth_gc_freed_bytes", "what projects' storage use dropped by in garbage collection runs"
)
GC_STORAGE_FREED = Counter(
    "berth_gc_storage_freed_bytes", "bytes of blob files garbage collection removed from storage"
)
WEBHOOK_DELIVERIES = Counter(
    "berth_webhook_deliveries",
    "webhook delivery attempts, by outcome (delivered; retry: refused or unanswered, tried "
    "again later; failed: given up after a day)",
    ["outcome"],
)
S3_CACHE_PULLS = Counter(
    "berth_s3_cache_pulls",
    "blob GETs on S3 that looked for this node's copy (s3_cache_dir), by result: hit (sent "
    "from the copy) or miss (read from the bucket)",
    ["result"],
)
S3_CACHE_KEPT = Counter(
    "berth_s3_cache_kept_bytes", "bytes of the copies written (whole and matching) into the cache"
)
S3_CACHE_EVICTED = Counter(
    "berth_s3_cache_evicted_bytes", "bytes of the copies removed to keep within s3_cache_size"
)
S3_REQUESTS = Counter(
    "berth_s3_requests",
    "requests made to the S3 store, by operation and the store's HTTP status (none: no "
    "answer after the client's retries: refused connection, timeout)",
    ["operation", "status"],
)
S3_REQUEST_DURATION = Histogram(
    "berth_s3_request_duration_seconds",
    "time from sending a request to the S3 store to its answer's head (retries included; a "
    "GET's body streams after it)",
    ["operation"],
    buckets=DURATION_BUCKETS,
)
S3_RETRIES = Counter(
    "berth_s3_retries",
    "requests to the S3 store sent again by the client (throttled, 5xx, connection errors)",
    ["operation"],
)
POOL_IN_USE = Gauge(
    "berth_db_pool_connections_in_use",
    "database connections checked out of the pools, by pool (reader, writer)",
    ["pool"],
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "berth_db_pool_size",
    "connections the pools keep open at most without overflow, by pool",
    ["pool"],
    multiprocess_mode="livesum",
)

enabled = True


def set_enabled(on: bool) -> None:
    global enabled
    enabled = on


def surface_of(path: str) -> str:
    for prefix, surface in SURFACES:
        if path.startswith(prefix):
            return surface
    return "other"


# Requests are added up here, in this process's memory (a few additions a request), and
# written to the metrics by `flush_requests`: every FLUSH_SECONDS, before this process answers
# a scrape, and when it stops. Writing each request (five values, each a locked write to a
# memory-mapped file) cost several times as much. A scrape may miss what another worker
# counted in the last FLUSH_SECONDS; a worker killed loses at most that much.
FLUSH_SECONDS = 1.0
_BOUNDS = (*DURATION_BUCKETS, float("inf"))
RequestKey = tuple[str, str, str, int]  # surface, route, method, status


class _Pending:
    __slots__ = ("buckets", "count", "received", "seconds", "sent")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * len(_BOUNDS)
        self.received = 0
        self.sent = 0


_pending: dict[RequestKey, _Pending] = {}


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_done(
    surface: str, route: str, method: str, status: int, seconds: float, received: int, sent: int
) -> None:
    """One request answered."""
    if not enabled:
        return
    # Any token is a method to HTTP/1.1: one label per name a client makes up would grow the
    # metrics without bound, so methods no route takes are counted together.
    if method not in _METHODS:
        method = "other"
    key = (surface, route, method, status)
    pending = _pending.get(key)
    if pending is None:
        pending = _pending[key] = _Pending()
    pending.count += 1
    pending.seconds += seconds
    pending.buckets[bisect_left(_BOUNDS, seconds)] += 1
    pending.received += received
    pending.sent += sent


def flush_requests() -> None:
    """Write the requests added up since the last flush to the metrics."""
    global _pending
    if not _pending:
        return
    pending, _pending = _pending, {}
    for (surface, route, method, status), found in pending.items():
        REQUESTS.labels(surface, route, method, str(status)).inc(found.count)
        duration = DURATION.labels(surface, route, method)
        # The histogram's own values, one add per bucket instead of one observe per request.
        duration._sum.inc(found.seconds)
        for index, hits in enumerate(found.buckets):
            if hits:
                duration._buckets[index].inc(hits)
        if found.received:
            RECEIVED.labels(surface, route, method).inc(found.received)
        if found.sent:
            SENT.labels(surface, route, method).inc(found.sent)


async def flush_periodically() -> None:
    """`flush_requests` and `sample_pools` every FLUSH_SECONDS, until cancelled (then the
    requests once more)."""
    try:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            flush_requests()
            sample_pools()
    finally:
        flush_requests()


# The kinds each counter counts by. Reporting functions take exactly these (mypy holds the
# callers to them), and each value's series is started at 0 when a worker starts
# (`start_known_series`), so it exists before the first event and `rate()`, `increase()` and
# `absent()` see 0 rather than nothing. Every worker starts them and a scrape sums the workers'
# files: each series appears once.
TokenKind = Literal["registry", "refresh", "api"]
LoginMethod = Literal["access_key", "password"]
GcOutcome = Literal["succeeded", "failed", "rolled_back", "dry_run"]
WebhookOutcome = Literal["delivered", "retry", "failed"]
KNOWN_LABEL_VALUES: tuple[tuple[Counter, tuple[str, ...]], ...] = (
    (TOKENS, get_args(TokenKind)),
    (LOGIN_FAILURES, get_args(LoginMethod)),
    (GC_RUNS, get_args(GcOutcome)),
    (WEBHOOK_DELIVERIES, get_args(WebhookOutcome)),
)
S3_CACHE_RESULTS = ("hit", "miss")


def start_known_series(*, s3_cache: bool) -> None:
    """Make this process's series of every known label value, at 0; `s3_cache`: the node
    keeps copies of S3 blobs (`s3_cache_dir`), whose hits and misses are counted."""
    for counter, values in KNOWN_LABEL_VALUES:
        for value in values:
            counter.labels(value)
    if s3_cache:
        for result in S3_CACHE_RESULTS:
            S3_CACHE_PULLS.labels(result)


def token_issued(kind: TokenKind) -> None:
    TOKENS.labels(kind).inc()


def login_failed(method: LoginMethod) -> None:
    LOGIN_FAILURES.labels(method).inc()


def gc_run_finished(
    outcome: GcOutcome, seconds: float, restricted: float | None, freed: int, storage_freed: int
) -> None:
    GC_RUNS.labels(outcome).inc()
    GC_DURATION.observe(seconds)
    if outcome != "dry_run":
        if restricted is not None:
            GC_RESTRICTED.observe(restricted)
        GC_FREED.inc(freed)
        GC_STORAGE_FREED.inc(storage_freed)


def webhook_attempted(outcome: WebhookOutcome) -> None:
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def s3_cache_looked_up(hit: bool) -> None:
    if enabled:
        S3_CACHE_PULLS.labels("hit" if hit else "miss").inc()


def s3_cache_kept(size: int) -> None:
    S3_CACHE_KEPT.inc(size)


def s3_cache_evicted(size: int) -> None:
    S3_CACHE_EVICTED.inc(size)


def s3_request_done(operation: str, status: str, seconds: float, retries: int) -> None:
    if not enabled:
        return
    S3_REQUESTS.labels(operation, status).inc()
    S3_REQUEST_DURATION.labels(operation).observe(seconds)
    if retries:
        S3_RETRIES.labels(operation).inc(retries)


# The engines whose pools are watched in this process, with their pool's name and size. What is
# checked out is read from the pool itself (`sample_pools`) rather than counted by its checkout
# and checkin events: in an outage SQLAlchemy checks in a connection whose checkout failed (its
# ping, then its reconnection) without a checkout event, and such a count sank below zero.
# The sizes are summed from the engines watched now, not added up as engines are made: a
# process that opens its database again (an app started twice in one process, an admin verb's
# start-up checks) would otherwise report every pool it ever made. The engine, not its pool:
# `dispose` gives an engine a new pool. Forgotten when its database is disposed (`forget_pool`),
# and weak: an engine dropped without that leaves too.
_watched: list[tuple[weakref.ref[Any], str, int]] = []


def watch_pool(engine: Any, name: str, capacity: int) -> None:
    """Count the connections checked out of a SQLAlchemy engine's pool (a QueuePool), read by
    `sample_pools`, and its size, `capacity`, while it is watched."""
    _watched.append((weakref.ref(engine), name, capacity))
    sample_pools()


def forget_pool(engine: Any) -> None:
    """Stop counting an engine's pool (its database disposed): its size and connections leave
    the gauges."""
    gone = {name for ref, name, _ in _watched if ref() is engine}
    _watched[:] = [entry for entry in _watched if entry[0]() is not engine]
    sample_pools(also=gone)


def sample_pools(also: set[str] | frozenset[str] = frozenset()) -> None:
    """Set the connections in use and the sizes of this process's pools to what the pools
    watched now hold (every FLUSH_SECONDS, before this process answers a scrape, and when a
    pool is watched or forgotten); a name in `also` no pool has any more is set to 0."""
    in_use = dict.fromkeys(also, 0)
    size = dict.fromkeys(also, 0)
    for entry in list(_watched):
        engine_ref, name, capacity = entry
        in_use.setdefault(name, 0)
        size.setdefault(name, 0)
        engine = engine_ref()
        if engine is None:
            _watched.remove(entry)
            continue
        in_use[name] += engine.pool.checkedout()
        size[name] += capacity
    for name, count in in_use.items():
        POOL_IN_USE.labels(name).set(count)
        POOL_SIZE.labels(name).set(size[name])


# ------------------------------------------------------------------------------ exposition


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def forget_dead_processes() -> None:
    """Drop the live gauges of worker processes that are gone (a worker the server restarted):
    their connections in use are no longer in use. Counters stay: they are sums."""
    directory = multiprocess_dir()
    if directory is None:
        return
    pids: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        found = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if found.isdigit():
            pids.add(int(found))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition(extra: Callable[[CollectorRegistry], None] | None = None) -> bytes:
    """The text format of every process's metrics, and of what `extra` registers (figures
    read at scrape time). Reads every worker's files: call it off the event loop, after
    `flush_requests` on it."""
    directory = multiprocess_dir()
    if directory is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra is not None:
        scraped = CollectorRegistry()
        extra(scraped)
        text += generate_latest(scraped)
    return text
