"""`make bench`'s arithmetic (bench/method.py): ratios per run, their median and spread over
the runs, targets met in every run, and the warning when the machine was busy."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.servers import ROOT


def load_method() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_method", ROOT / "bench" / "method.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


method = load_method()


def test_each_run_gives_berth_over_distribution_per_figure() -> None:
    berth = {"pull_MiBps": 3000.0, "manifest_rps": 9000.0, "only_here": 1.0}
    distribution = {"pull_MiBps": 2000.0, "manifest_rps": 1500.0, "zero": 1.0}
    assert method.ratios(berth, distribution) == {"pull_MiBps": 1.5, "manifest_rps": 6.0}
    assert method.ratios({"x": 1.0}, {"x": 0.0}) == {}


def test_the_spread_of_the_runs_is_their_median_lowest_and_highest() -> None:
    runs = [{"manifest_rps": 4.0, "pull": 1.2}, {"manifest_rps": 6.0}, {"manifest_rps": 5.5}]
    assert method.spreads(runs) == {"manifest_rps": method.Spread(5.5, 4.0, 6.0)}
    assert method.spreads([{"a": 2.0}, {"a": 3.0}]) == {"a": method.Spread(2.5, 2.0, 3.0)}
    assert method.spreads([]) == {}
    with pytest.raises(ValueError):
        method.Spread.of([])


def test_a_target_counts_the_runs_that_met_it() -> None:
    assert method.met_in([5.2, 4.9, 5.0], 5.0, at_least=True) == 2
    assert method.met_in([0.9, 1.0, 1.1], 1.0, at_least=False) == 2


def test_a_busy_machine_is_named_in_a_warning_and_a_quiet_one_is_not() -> None:
    quiet = ["0.20 0.30 0.40 1/300 100", "1.00 0.80 0.70 2/300 101"]
    assert method.load_one_minute(quiet[1]) == 1.0
    assert method.load_warning(quiet, cores=2) is None  # at most 0.5 per core
    busy = ["0.20 0.30 0.40 1/300 100", "1.01 0.80 0.70 2/300 101", "4.52 3.0 2.0 1/300 1"]
    warning = method.load_warning(busy, cores=2)
    assert warning is not None
    assert "not quiet" in warning
    assert "run 2 at 1.01, run 3 at 4.52" in warning and "run 1" not in warning
    assert "above 1.00" in warning and "2 cores" in warning
    assert method.load_warning(["1.5 1 1 1/1 1"], cores=4) is None


def test_what_was_measured_by_hand_survives_the_next_make_bench() -> None:
    """`make bench` rewrites BENCHMARKS.md and appends bench/findings.md: a figure written by
    hand anywhere else in BENCHMARKS.md would be lost at its next run."""
    findings = (ROOT / "bench" / "findings.md").read_text()
    assert "(measured by hand)" in findings
    assert (ROOT / "BENCHMARKS.md").read_text().endswith(findings)
