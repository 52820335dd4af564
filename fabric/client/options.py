"""Per-call task options, and how they are applied on the worker.

``submit`` passes every keyword to the user's function, as ``Executor.submit``
does, so options travel through a view: ``fx.options(task_timeout=5).submit(f, x)``
(``map`` and ``map_reduce`` also take them as keywords).

- ``retries``: attempts for a task whose worker dies (the ventilator counts them).
- ``retry_on``: exception types that are retried on the worker, up to ``retries``
  attempts; any other exception is the task's outcome at once.
- ``task_timeout``: seconds a task may run; past it, :class:`TaskTimeoutError` is
  raised inside the task (SIGALRM in the worker's main thread) and the worker is
  recycled after reporting, so no state of the interrupted task survives.
- ``cache``: reuse stored results of identical calls (the result cache).
- ``placement``: who picks the worker among those allowed: ``"least-loaded"``
  (the default), ``"round-robin"``, ``"pack"``, ``"spread"`` or a
  :class:`~fabric.Placement` (see :mod:`fabric.client.placement`).
- ``nodes``: names of the only nodes that may run the call.
- ``resources``: what each task holds while it runs, e.g. ``{"gpu": 1}``; a
  node runs at most as many such tasks at once as it declares.
- ``affinity``: a key; every call with an equal key runs on the key's owner
  node on the ring of the nodes able to run it.

``retry_on`` and ``task_timeout`` are applied by :class:`Guarded`, a callable
wrapped around the user's function and shipped in its place, so the worker's
hot loop is unchanged for calls without them.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .placement import Placement, is_default, key_digest, placement_of

OPTION_NAMES = frozenset({
    "task_timeout", "retries", "retry_on", "cache", "placement", "nodes", "resources", "affinity",
})
MAX_RESOURCE_UNITS = 1 << 31


@dataclass(frozen=True)
class TaskOptions:
    """How the tasks of one call run: what ``fx.options(...)`` sets and a
    :class:`~fabric.FabricView` carries (``None`` and ``()`` mean the
    fabric's defaults; see the module for each option)."""

    task_timeout: float | None = None
    retries: int | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    cache: bool = False
    placement: Placement | None = None
    nodes: frozenset[str] | None = None
    resources: tuple[tuple[str, int], ...] = ()
    affinity: Hashable | None = None

    def merged(self, **changes: Any) -> TaskOptions:
        """These options with ``changes`` applied and checked (None keeps a value)."""
        unknown = set(changes) - OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "placement" in changes:
            changes["placement"] = placement_of(changes["placement"])
        if "nodes" in changes:
            changes["nodes"] = _node_names(changes["nodes"])
        if "resources" in changes:
            changes["resources"] = _resources(changes["resources"])
        options = replace(self, **changes)
        options._check()
        return options

    def _check(self) -> None:
        if self.task_timeout is not None and not self.task_timeout > 0:
            raise ValueError(f"task_timeout must be > 0 seconds, got {self.task_timeout}")
        if self.retries is not None and self.retries < 1:
            raise ValueError(f"retries must be >= 1, got {self.retries}")
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise TypeError(f"retry_on must be exception types, got {self.retry_on!r}")

    @functools.cached_property
    def placed(self) -> bool:
        """Whether the call's batches need the placement path (any option besides the default);
        read on every submit, so worked out once per options object."""
        return not is_default(self.placement) or bool(self.nodes is not None or self.resources
                                                      or self.affinity is not None)

    def affinity_key(self) -> bytes | None:
        return None if self.affinity is None else key_digest(self.affinity)

    def guards(self) -> bool:
        """Whether the function must be wrapped in :class:`Guarded`."""
        return bool(self.retry_on) or self.task_timeout is not None



def _node_names(nodes: str | Iterable[str]) -> frozenset[str]:
    names = frozenset([nodes] if isinstance(nodes, str) else nodes)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"nodes must be node names (a non-empty list of strings), got {nodes!r:.80}")
    return names


def _resources(resources: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """``{"gpu": 1}`` as sorted pairs (hashable: options key the shipper's wrappers)."""
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a mapping such as {{'gpu': 1}}, got {resources!r:.80}")
    for name, units in resources.items():
        if not (isinstance(name, str) and name and type(units) is int and 0 < units < MAX_RESOURCE_UNITS):
            raise ValueError(f"resources: {name!r:.40} needs a positive whole number of units, got {units!r:.40}")
    return tuple(sorted(resources.items()))
