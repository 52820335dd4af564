"""How a fabric shows itself: ``repr(fx)`` on one line, and ``fx._repr_html_()``,
the table Jupyter displays for a cell ending in ``fx``.

Both are built from one :class:`~fabric.FabricStatistics` (``fx.statistics()``),
so they cost no round trip and are as fresh as the nodes' last heartbeats.
Node names and endpoints come off the wire: the HTML escapes every string.
"""

from __future__ import annotations

import html

from ..cluster.stats import NodeStats
from .statistics import FabricStatistics

__all__ = ["one_line", "html_table"]


def one_line(address: str, stats: FabricStatistics | None) -> str:
    """``<fabric.Fabric ADDRESS: 1 node, 2 workers, 0 busy, 1,200 tasks done, 310 tasks/s>``;
    ``stats`` None: closed."""
    if stats is None:
        return f"<fabric.Fabric {address} (closed)>"
    nodes = stats.nodes
    busy = sum(n.busy for n in nodes)
    return (
        f"<fabric.Fabric {address}: {_count(len(nodes), 'node')}, {_workers(stats)}, {busy} busy, "
        f"{sum(n.done for n in nodes):,} tasks done, {_rate(stats)} tasks/s>"
    )


def html_table(address: str, stats: FabricStatistics | None) -> str:
    """A summary and one row per node: workers, load, tasks, cache."""
    title = f"<strong>fabric</strong> <code>{html.escape(address)}</code>"
    if stats is None:
        return f"<div>{title} (closed)</div>"
    nodes = stats.nodes
    cache = stats.cache
    summary = {
        "Nodes": f"{len(nodes)}",
        "Workers": f"{_workers(stats)}, {sum(n.busy for n in nodes)} busy",
        "Tasks done": f"{sum(n.done for n in nodes):,} ({sum(n.failed for n in nodes):,} failed)",
        "Tasks/s": _rate(stats),
        "Cache": f"{cache.entries:,} entries, {_bytes(cache.bytes)}; this client: {cache.hits:,} hits, "
                 f"{cache.misses:,} misses",
    }
    head = "".join(f"<th style='text-align:right'>{h}</th>" for h in _NODE_COLUMNS)
    rows = "".join(_node_row(n) for n in nodes)
    return (
        f"<div>{title}<table>"
        + "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
                  for k, v in summary.items())
        + f"</table><details open><summary>Nodes</summary><table><tr>{head}</tr>{rows}</table></details></div>"
    )


_NODE_COLUMNS = ("node", "workers", "busy", "CPU %", "memory %", "tasks done", "tasks/s", "cache entries",
                 "cache size", "cache hits", "cache misses", "accepting")


def _node_row(node: NodeStats) -> str:
    cells = (
        html.escape(node.name), node.workers, node.busy, f"{node.cpu_percent:.0f}", f"{node.memory_percent:.0f}",
        f"{node.done:,}", f"{node.tasks_per_s:,.0f}", f"{node.cache_entries:,}", _bytes(node.cache_bytes),
        f"{node.cache_hits:,}", f"{node.cache_misses:,}", "yes" if node.accepting else "paused (load)",
    )
    return "<tr>" + "".join(f"<td style='text-align:right'>{c}</td>" for c in cells) + "</tr>"


def _workers(stats: FabricStatistics) -> str:
    """``2 workers``, or ``workers starting`` before any has attached: never a bare 0."""
    return _count(stats.workers, "worker") if stats.workers else "workers starting"


def _rate(stats: FabricStatistics) -> str:
    return f"{sum(n.tasks_per_s for n in stats.nodes):,.0f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:,.1f} {unit}"
