"""Reading a server's /metrics page: every sample by name and labels, parsed by
prometheus_client's own text parser (the format Prometheus reads), not by pattern."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from berth.observability.metrics import FLUSH_SECONDS
from tests.servers import BerthServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: BerthServer, **options: Any) -> Samples:
    """Every sample of the server's /metrics by (name, labels) (`options` go to the GET: a
    caller's credentials). The worker that answers writes what it counted first; with more
    than one worker, the scrape waits until every other worker has written its count too
    (each adds requests up in memory and writes them every FLUSH_SECONDS)."""
    if not server.single_worker:
        time.sleep(FLUSH_SECONDS + 0.3)
    response = httpx.get(f"{server.url}/metrics", timeout=30, **options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when it was never counted."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def summed(samples: Samples, name: str, labels: Callable[[dict[str, str]], bool]) -> float:
    """The sum of the samples of `name` whose labels `labels` accepts."""
    return sum(
        count
        for (sample, labelled), count in samples.items()
        if sample == name and labels(dict(labelled))
    )


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
