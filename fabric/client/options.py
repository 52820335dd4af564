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
- ``keep``: leave each result in the object store of the node that computed it;
  ``submit``'s future resolves to a :class:`~fabric.Ref`, ``map`` yields Refs.

``retry_on`` and ``task_timeout`` are applied by :class:`Guarded`, a callable
wrapped around the user's function and shipped in its place, so the worker's
hot loop is unchanged for calls without them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class TaskOptions:
    """How the tasks of one call run: what ``fx.options(...)`` sets and a
    :class:`~fabric.FabricView` carries (``None`` and ``()`` mean the
    fabric's defaults; see the module for each option)."""

    task_timeout: float | None = None
    retries: int | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    cache: bool = False
    keep: bool = False

    def merged(self, **changes: Any) -> TaskOptions:
        """These options with ``changes`` applied and checked (None keeps a value)."""
        unknown = set(changes) - {"task_timeout", "retries", "retry_on", "cache", "keep"}
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        options = replace(self, **{k: v for k, v in changes.items() if v is not None})
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

    def guards(self) -> bool:
        """Whether the function must be wrapped (in :class:`Guarded`, :class:`Kept`)."""
        return bool(self.retry_on) or self.task_timeout is not None or self.keep

