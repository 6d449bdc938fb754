"""How `make bench` turns several runs into figures: per run, the ratio Berth / Distribution
of each figure; over the runs, the median ratio and its spread (lowest to highest); whether a
target held in every run; and whether the machine was quiet enough to believe any of it.
Pure functions (no processes, no clock), so tests/unit/test_bench_method.py checks them; and
the order every side-by-side bench measures in (`alternate_rounds`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

# The machine is "not quiet" when the 1-minute load average before the bench, or the cores other
# work kept busy during a run, were above this share of the cores: the servers, curl and wrk
# then share the cores with someone else's work.
QUIET_LOAD_PER_CORE = 0.5

Side = TypeVar("Side")
Figures = TypeVar("Figures")


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


def busy_ticks(proc_stat: str) -> int:
    """The clock ticks all cores spent working (user, nice, system, and steal: time another
    guest of the host took), from the `cpu` line of /proc/stat's text. Idle and iowait are left
    out, and so are irq and softirq: on a bench machine they are mostly the bench's own
    loopback traffic, which its processes' times may not include."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, fields[1:9])
            return user + nice + system + steal
    raise ValueError("no cpu line in /proc/stat")


def process_ticks(stat: str) -> tuple[int, int, int]:
    """A process's pid, parent pid and clock ticks, from /proc/PID/stat's text: its own user and
    system time plus that of the children it has reaped (so a finished curl or wrk still counts,
    once, in whichever of the bench's processes waited for it)."""
    head, tail = stat.rsplit(")", 1)  # the command name may hold spaces and parentheses
    fields = tail.split()
    utime, stime, cutime, cstime = map(int, fields[11:15])
    return int(head.split()[0]), int(fields[1]), utime + stime + cutime + cstime


def tree_ticks(processes: Sequence[tuple[int, int, int]], root: int) -> int:
    """The ticks of `root` and every process descending from it, of `process_ticks` rows."""
    tree = {root}
    while more := {pid for pid, parent, _ in processes if parent in tree} - tree:
        tree |= more
    return sum(ticks for pid, _, ticks in processes if pid in tree)


@dataclass(frozen=True)
class CpuSample:
    """What the machine and the bench had spent at one moment: seconds of wall clock, and the
    busy ticks of all cores and of the bench's own processes (servers and clients included)."""

    seconds: float
    machine_ticks: int
    own_ticks: int


def other_work(before: CpuSample, after: CpuSample, ticks_per_second: float) -> float:
    """How many cores other work kept busy on average between two samples: the machine's busy
    time less the bench's own. The load average cannot tell them apart (the bench loads the
    machine itself, and its 1-minute figure before a run mostly measures the run before)."""
    seconds = after.seconds - before.seconds
    if seconds <= 0:
        return 0.0
    others = (after.machine_ticks - before.machine_ticks) - (after.own_ticks - before.own_ticks)
    return max(0.0, others / ticks_per_second / seconds)


def load_warning(load_at_start: str, others: Sequence[float], cores: int) -> str | None:
    """A warning when the machine was not quiet, or None: the 1-minute load average before the
    bench began (nothing of the bench's own in it yet) above QUIET_LOAD_PER_CORE per core, or a
    run during which other work (`other_work`, the bench's own CPU time left out) kept more
    cores than that busy."""
    limit = QUIET_LOAD_PER_CORE * cores
    named = []
    if (start := load_one_minute(load_at_start)) > limit:
        named.append(f"the 1-minute load average before the bench was {start:.2f}")
    busy = [
        (index + 1, cores_used) for index, cores_used in enumerate(others) if cores_used > limit
    ]
    if busy:
        runs = ", ".join(f"run {index} {used:.2f}" for index, used in busy)
        named.append(f"other work kept busy on average (cores): {runs}")
    if not named:
        return None
    found = "; ".join(named)
    return (
        f"**Warning: the machine was not quiet.** {found[0].upper()}{found[1:]}: above "
        f"{limit:.2f} ({QUIET_LOAD_PER_CORE:g} per core, {cores} cores), so other work shared the "
        "cores with the servers and the clients, and these figures say little about either "
        "registry. Rerun `make bench` on a quiet machine before drawing conclusions."
    )


def alternate_rounds(
    sides: Sequence[Side], rounds: int, measure: Callable[[int, Side], Figures]
) -> dict[Side, list[Figures]]:
    """`measure(round_index, side)` of every side, `rounds` times, the order of the sides
    flipping every round so that drift in the machine's load falls on all alike; each side's
    figures in round order (paired by index across sides)."""
    found: dict[Side, list[Figures]] = {side: [] for side in sides}
    for index in range(rounds):
        for side in sides if index % 2 == 0 else sides[::-1]:
            found[side].append(measure(index, side))
    return found
