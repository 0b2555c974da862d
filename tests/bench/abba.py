"""Side-by-side timing for the benchmarks: ABBA order, ratios pair by pair, min and median.

Each round runs both sides once, A then B in even rounds and B then A in odd ones, so that a
drift of the machine's speed (other work on a shared machine, a warming cache) weighs on both
sides alike.  A ratio is taken within each round (A_i / B_i) and reported as min and median
over the rounds, beside each side's own min and median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    label: str
    a_name: str
    b_name: str
    a: tuple[float, ...]  # seconds per round
    b: tuple[float, ...]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b, strict=True)]

    @property
    def ratio_median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_min(self) -> float:
        return min(self.ratios)

    def lines(self) -> list[str]:
        def figures(values: tuple[float, ...]) -> str:
            low, middle = min(values) * 1000, statistics.median(values) * 1000
            return f"min {low:8.1f} ms, median {middle:8.1f} ms"

        width = max(len(self.a_name), len(self.b_name))
        return [
            f"{self.label} ({len(self.a)} rounds, ABBA):",
            f"  A {self.a_name:{width}}  {figures(self.a)}",
            f"  B {self.b_name:{width}}  {figures(self.b)}",
            f"  A/B: min {self.ratio_min:.3f}, median {self.ratio_median:.3f}",
        ]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


Side = tuple[str, Callable[[], object]]  # (name, action)


def abba(
    label: str, a: Side, b: Side, *, rounds: int, before: Callable[[], object] | None = None
) -> Row:
    """Time sides ``a`` and ``b`` in ABBA order over ``rounds`` rounds; ``before`` runs
    untimed ahead of every run of either side (removing the previous side's output, say)."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    for index in range(rounds):
        order = (("a", a[1]), ("b", b[1])) if index % 2 == 0 else (("b", b[1]), ("a", a[1]))
        for side, action in order:
            if before is not None:
                before()
            times[side].append(timed(action))
    return Row(label, a[0], b[0], tuple(times["a"]), tuple(times["b"]))


class Goals:
    """Goals judged on the median ratio; every miss is printed and makes the exit status 1."""

    def __init__(self) -> None:
        self.missed: list[str] = []

    def at_most(self, row: Row, limit: float) -> None:
        verdict = "met" if row.ratio_median <= limit else "MISSED"
        print(f"  goal A/B <= {limit}: {verdict} (median {row.ratio_median:.3f})")
        if row.ratio_median > limit:
            self.missed.append(f"{row.label}: A/B median {row.ratio_median:.3f} > {limit}")

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            print(f"  GOAL MISSED: {what}")
            self.missed.append(what)

    def exit_status(self) -> int:
        for miss in self.missed:
            print(f"GOAL MISSED: {miss}")
        print("all goals met" if not self.missed else f"{len(self.missed)} goal(s) missed")
        return 1 if self.missed else 0
