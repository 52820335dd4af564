"""Timing and statistics: medians of interleaved repetitions, never a single run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


@dataclass
class Figure:
    """One measured quantity of one system in one workload, over repetitions."""

    workload: str
    metric: str
    system: str
    unit: str
    higher_is_better: bool = True
    values: list[float] = field(default_factory=list)
    target: str = ""
    met: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload, "metric": self.metric, "system": self.system, "unit": self.unit,
            "higher_is_better": self.higher_is_better, "values": self.values, "median": self.median,
            "min": min(self.values, default=None), "max": max(self.values, default=None),
            "target": self.target, "met": self.met,
        }


class Figures:
    """All figures of a run, keyed by (workload, metric, system)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str, str], Figure] = {}

    def add(self, workload: str, metric: str, system: str, value: float, unit: str,
            higher_is_better: bool = True) -> None:
        key = (workload, metric, system)
        if key not in self.items:
            self.items[key] = Figure(workload, metric, system, unit, higher_is_better)
        self.items[key].values.append(value)

    def get(self, workload: str, metric: str, system: str) -> Figure | None:
        return self.items.get((workload, metric, system))

    def judge(self, workload: str, metric: str, target: str, met: bool) -> None:
        figure = self.get(workload, metric, "fabric")
        if figure is not None:
            figure.target, figure.met = target, met

    def best(self, workload: str, metric_prefix: str, system: str) -> Figure | None:
        """The system's best variant of a metric (its best knob)."""
        candidates = [f for (w, m, s), f in self.items.items()
                      if w == workload and s == system and m.startswith(metric_prefix)]
        if not candidates:
            return None
        pick = max if candidates[0].higher_is_better else min
        return pick(candidates, key=lambda f: f.median)
