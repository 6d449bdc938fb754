"""`make bench`'s arithmetic (bench/method.py): ratios per run, their median and spread over
the runs, targets met in every run, and the warning when the machine was busy."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
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
    assert method.load_one_minute("1.00 0.80 0.70 2/300 101") == 1.0
    # At most 0.5 per core before the bench, and during each run from others.
    assert method.load_warning("1.00 0.80 0.70 2/300 101", [0.2, 1.0, 0.0], cores=2) is None
    busy = method.load_warning("0.20 0.30 0.40 1/300 100", [0.2, 1.01, 4.52], cores=2)
    assert busy is not None and "not quiet" in busy
    assert "run 2 1.01, run 3 4.52" in busy and "run 1" not in busy
    assert "before the bench" not in busy
    assert "above 1.00" in busy and "2 cores" in busy
    assert method.load_warning("1.5 1 1 1/1 1", [1.9], cores=4) is None


def test_the_load_before_the_bench_is_judged_not_the_load_the_bench_itself_made() -> None:
    """Before runs 2 and 3 the 1-minute load average mostly measures run 1: a machine the bench
    alone kept busy is quiet; one that was busy before the bench began is not."""
    own_load_only = method.load_warning("0.30 0.20 0.10 1/300 1", [0.05, 0.10, 0.0], cores=2)
    assert own_load_only is None
    busy_before = method.load_warning("3.10 2.00 1.00 1/300 1", [0.0, 0.0, 0.0], cores=2)
    assert busy_before is not None
    assert "The 1-minute load average before the bench was 3.10" in busy_before
    assert "run 1" not in busy_before


def test_other_work_is_the_machines_busy_time_less_the_benchs_own() -> None:
    stat = "cpu  100 5 50 9000 40 7 30 20 0 0\ncpu0 50 2 25 4500 20 3 15 10 0 0\n"
    assert method.busy_ticks(stat) == 100 + 5 + 50 + 20  # user, nice, system, steal
    with pytest.raises(ValueError):
        method.busy_ticks("intr 1 2 3\n")
    before = method.CpuSample(seconds=10.0, machine_ticks=1_000, own_ticks=400)
    # 4 s later: the machine spent 600 ticks, the bench 200 of them: 400 / 100 Hz / 4 s.
    after = method.CpuSample(seconds=14.0, machine_ticks=1_600, own_ticks=600)
    assert method.other_work(before, after, ticks_per_second=100) == pytest.approx(1.0)
    alone = method.CpuSample(seconds=14.0, machine_ticks=1_600, own_ticks=1_050)
    assert method.other_work(before, alone, ticks_per_second=100) == 0.0  # never below zero
    assert method.other_work(before, before, ticks_per_second=100) == 0.0


def test_the_benchs_own_time_counts_its_processes_and_the_children_they_reaped() -> None:
    # pid 7 ("my (odd) name"), parent 1, state S, ... utime 11, stime 4, cutime 30, cstime 5
    stat = "7 (my (odd) name) S 1 7 7 0 -1 4194560 0 0 0 0 11 4 30 5 20 0 1 0 5 0 0"
    assert method.process_ticks(stat) == (7, 1, 11 + 4 + 30 + 5)
    processes = [(1, 0, 1_000), (7, 1, 50), (8, 7, 20), (9, 8, 5), (10, 1, 300)]
    assert method.tree_ticks(processes, 7) == 50 + 20 + 5  # not its parent or sibling
    assert method.tree_ticks(processes, 42) == 0


def test_a_finished_client_still_counts_as_the_benchs_own_time() -> None:
    """curl and wrk end between two samples: their CPU time moves to the process that waited
    for them, so it is not taken for other work."""

    def own() -> int:
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
        return int(method.process_ticks(stat)[2])

    before = own()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass",
        ],
        check=True,
    )
    spent = (own() - before) / os.sysconf("SC_CLK_TCK")
    assert spent >= 0.4


def test_what_was_measured_by_hand_survives_the_next_make_bench() -> None:
    """`make bench` rewrites BENCHMARKS.md and appends bench/findings.md: a figure written by
    hand anywhere else in BENCHMARKS.md would be lost at its next run."""
    findings = (ROOT / "bench" / "findings.md").read_text()
    assert "(measured by hand)" in findings
    assert (ROOT / "BENCHMARKS.md").read_text().endswith(findings)


def test_every_bench_script_imports() -> None:
    """Bench scripts run only by hand or in `make bench`: an import a change in berth/ broke
    (a renamed response class, say) shows here rather than at the next measurement."""
    code = (
        "import importlib.util, pathlib, sys\n"
        "bench = pathlib.Path(sys.argv[1])\n"
        "sys.path.insert(0, str(bench))\n"
        "for path in sorted(bench.glob('*.py')):\n"
        "    spec = importlib.util.spec_from_file_location('bench_' + path.stem, path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    sys.modules[spec.name] = module\n"
        "    spec.loader.exec_module(module)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "bench")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_rounds_alternate_which_side_goes_first_and_pair_up_by_round() -> None:
    """Every side-by-side bench measures in this order, so that drift in the machine's load
    falls on both sides alike; a side's figures stay in round order, paired across sides."""
    measured: list[tuple[int, str]] = []

    def measure(round_index: int, side: str) -> str:
        measured.append((round_index, side))
        return f"{side}{round_index}"

    found = method.alternate_rounds(("a", "b"), 3, measure)
    assert measured == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert found == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}
    assert method.alternate_rounds(("a", "b"), 0, measure) == {"a": [], "b": []}
