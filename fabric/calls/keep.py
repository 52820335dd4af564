"""Kept: the user's function with ``keep=True`` applied.

Shipped in the function's place when a call keeps its results, as
:class:`~fabric.calls.guard.Guarded` is for timeouts: the worker runs it like
any function, and it stores the result in the worker's node's object store and
returns a :class:`~fabric.Ref` instead, so the worker's loop is unchanged and
only the Ref (a few dozen bytes) travels back to the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Kept:
    """``fn`` whose result stays on the node that computed it."""

    __slots__ = ("__wrapped__",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ..node import worker_objects  # only ever called in a worker

        return worker_objects.keep(self.__wrapped__(*args, **kwargs))
