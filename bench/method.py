"""How `make bench` turns several runs into figures: per run, the ratio Berth / Distribution
of each figure; over the runs, the median ratio and its spread (lowest to highest); whether a
target held in every run; and whether the machine was quiet enough to believe any of it.
Pure functions (no processes, no clock), so tests/unit/test_bench_method.py checks them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# A run is "not quiet" when the 1-minute load average before it was above this share of the
# cores: the servers, curl and wrk then share the cores with someone else's work.
QUIET_LOAD_PER_CORE = 0.5


@dataclass(frozen=True)
class Spread:
    """A figure over several runs: the median, the lowest and the highest."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(values), min(values), max(values))


def ratios(berth: dict[str, float], distribution: dict[str, float]) -> dict[str, float]:
    """Berth / Distribution for every figure both have (a zero below gives no ratio)."""
    return {
        key: berth[key] / distribution[key]
        for key in berth
        if key in distribution and distribution[key] != 0
    }


def spreads(runs: Sequence[dict[str, float]]) -> dict[str, Spread]:
    """Per figure, the spread of its values over the runs (figures every run has)."""
    if not runs:
        return {}
    keys = [key for key in runs[0] if all(key in run for run in runs)]
    return {key: Spread.of([run[key] for run in runs]) for key in keys}


def met_in(values: Sequence[float], bound: float, at_least: bool) -> int:
    """In how many of the runs the value met the bound."""
    return sum(1 for v in values if (v >= bound if at_least else v <= bound))


def load_one_minute(loadavg: str) -> float:
    """The 1-minute figure of /proc/loadavg's text (`0.52 0.58 0.59 1/389 12345`)."""
    return float(loadavg.split()[0])


def load_warning(load_before: Sequence[str], cores: int) -> str | None:
    """A warning naming the runs that began on a busy machine, or None when all were quiet."""
    limit = QUIET_LOAD_PER_CORE * cores
    busy = [
        (index + 1, load_one_minute(load))
        for index, load in enumerate(load_before)
        if load_one_minute(load) > limit
    ]
    if not busy:
        return None
    named = ", ".join(f"run {index} at {load:.2f}" for index, load in busy)
    return (
        f"**Warning: the machine was not quiet.** The 1-minute load average before {named} was "
        f"above {limit:.2f} ({QUIET_LOAD_PER_CORE:g} per core, {cores} cores): other work shared the "
        "cores with the servers and the clients, so these figures say little about either "
        "registry. Rerun `make bench` on a quiet machine before drawing conclusions."
    )
