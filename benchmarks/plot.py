"""``--plot OUT.png``: the run's rates per core at a glance, one panel per workload that ran of W1, W3 and W8.

matplotlib is imported only here and only when asked, so the harness runs without it.
"""

from __future__ import annotations

import math
import re
import sys
from typing import TYPE_CHECKING

from .measure import Figure, Figures

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Point = tuple[float, float, float]  # median, min, max


def write(path: str, figures: Figures, systems: list[str], workers: int) -> None:
    """W1: each system's best map variant per core; W3: 1 ms tasks/s per core; W8: fabric over worker counts."""
    try:
        import matplotlib
    except ImportError:
        print("--plot skipped: matplotlib is not installed (pip install '.[bench]')", file=sys.stderr)
        return
    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    w1 = {s: _per(f, 1 if s == "serial" else workers) for s in systems
          if (f := figures.best("W1 empty map", "items/s", s))}
    w3 = {s: _per(f, 1) for s in systems if (f := figures.get("W3 1 ms tasks", "tasks/s per core", s))}
    w8 = _scaling(figures)
    panels = [p for p in (w1, w3, w8) if p]
    if not panels:
        print("--plot skipped: no W1, W3 or W8 figures in this run", file=sys.stderr)
        return
    colours = {s: f"C{i}" for i, s in enumerate(systems)}
    fig, axes = pyplot.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    panel = iter(axes[0])
    if w1:
        _bars(next(panel), w1, colours, "W1 empty map: best variant (serial: 1 core)", "items/s per core (log)",
              log=True)
    if w3:
        _bars(next(panel), w3, colours, "W3 1 ms tasks", "tasks/s per core", log=False)
    if w8:
        ax = next(panel)
        for label, points in w8.items():
            counts = sorted(points)
            medians, spread = _spread([points[n] for n in counts])
            ax.errorbar(counts, medians, yerr=spread, label=label, marker="o", capsize=3)
        ax.set(title="W8 fabric scaling", xlabel="workers", ylabel="per core, /s (log)", yscale="log",
               xticks=sorted({n for points in w8.values() for n in points}))
        ax.legend()
    fig.suptitle(f"Rates per core, {workers} workers: medians, whiskers min–max")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def _per(figure: Figure, cores: int) -> Point:
    return figure.median / cores, min(figure.values) / cores, max(figure.values) / cores


def _scaling(figures: Figures) -> dict[str, dict[int, Point]]:
    """fabric's W8 figures as {rate: {workers: point}}, from metrics named '<rate>, <n> workers'."""
    series: dict[str, dict[int, Point]] = {}
    for (workload, metric, _), figure in figures.items.items():
        if workload == "W8 scaling" and (match := re.fullmatch(r"(.+), (\d+) workers", metric)):
            series.setdefault(match[1], {})[int(match[2])] = _per(figure, 1)
    return series


def _bars(ax: Axes, points: dict[str, Point], colours: dict[str, str], title: str, xlabel: str, log: bool) -> None:
    names = list(points)
    medians, spread = _spread([points[s] for s in names])
    ax.barh(names, medians, xerr=spread, color=[colours[s] for s in names], capsize=3)
    ax.invert_yaxis()  # the start order, top down
    ax.set(title=title, xlabel=xlabel)
    if log:  # bars from a power of ten, so their lengths compare
        ax.set(xscale="log", xlim=(10 ** math.floor(math.log10(min(p[1] for p in points.values()))), None))


def _spread(points: list[Point]) -> tuple[list[float], list[list[float]]]:
    """Medians, and their distances down to the min and up to the max (errorbar's form)."""
    return [p[0] for p in points], [[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]]
