"""Reading a scraped /metrics page: every sample by name and labels, parsed by
prometheus_client's own text parser (the format Prometheus reads), not by pattern."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


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
