"""The run as a table on stdout, JSON with machine facts, and a Markdown report."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata
from typing import Any

from .measure import Figure, Figures


def machine() -> dict[str, Any]:
    versions = {}
    for package in ("pyzmq", "msgpack", "cloudpickle", "psutil", "uhashring", "zmq-fabric", "loky", "joblib", "dask",
                    "distributed", "ray", "ipyparallel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": versions,
    }


def _cell(figure: Figure | None, fabric_figure: Figure | None) -> str:
    if figure is None:
        return ""
    text = f"{_number(figure.median)} ({_number(min(figure.values))}–{_number(max(figure.values))})"
    if fabric_figure is not None and figure is not fabric_figure and figure.median:
        ratio = fabric_figure.median / figure.median
        text += f" ×{ratio:.2f}" if figure.higher_is_better else f" ×{1 / ratio:.2f}"
    return text


def _number(x: float) -> str:
    if x != x:
        return "–"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def rows(figures: Figures, systems: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (workload, metric); cells 'median (min–max) ×fabric/peer'."""
    header = ["workload", "metric", *systems, "target", "met"]
    keys = dict.fromkeys((w, m) for (w, m, _) in figures.items)
    table = []
    for workload, metric in keys:
        fab = figures.get(workload, metric, "fabric")
        cells = [_cell(figures.get(workload, metric, s), fab) for s in systems]
        verdict = "" if fab is None or fab.met is None else ("met" if fab.met else "MISSED")
        table.append([workload, metric, *cells, fab.target if fab else "", verdict])
    return header, table


def text_table(header: list[str], table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *table])


def markdown(header: list[str], table: list[list[str]], facts: dict[str, Any], command: str, notes: list[str]) -> str:
    lines = [
        "# Benchmark results", "",
        f"Run on {facts['date']}: {facts['cpus']} CPUs, Python {facts['python']}, {facts['platform']}.",
        f"Command: `{command}`", "",
        "Each cell: median of the repetitions (min–max); for peers, ×r is fabric's advantage"
        " (r > 1: fabric better). Start-up is excluded from every throughput.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
        *("| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table), "",
    ]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def write_json(path: str, figures: Figures, facts: dict[str, Any], skipped: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as out:
        json.dump({"machine": facts, "skipped": skipped, "figures": [f.as_dict() for f in figures.items.values()]},
                  out, indent=2)
