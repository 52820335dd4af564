"""The client's initializer on the worker, and the module globals it sets.

``connect(initializer=load_model)`` with ``load_model`` doing ``global MODEL;
MODEL = ...``: with ``ProcessPoolExecutor`` the tasks read that ``MODEL``, since
both functions share their module's globals in the worker.  A function shipped
by value (``__main__``, a notebook, the user's own modules) arrives instead
with its own copy of the globals it reads, taken in the client, where ``MODEL``
is still ``None``.  So the initializer is shipped wrapped in :class:`Setup`,
which records the globals it assigns, and each function unpickled later in the
worker from the same module gets them (:func:`with_setup_globals`), once, when
it is unpickled: the hot loop is unchanged.  Per worker process, as an
initializer's effects are.
"""

from __future__ import annotations

import dis
import sys
import types
from collections.abc import Callable
from typing import Any

SETUP_GLOBALS: dict[str, dict[str, Any]] = {}  # module name -> the globals the initializer assigned


class Setup:
    """The initializer, run once per worker before its first task for the client."""

    __slots__ = ("__wrapped__",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__(*args, **kwargs)
        fn = self.__wrapped__
        namespace = getattr(fn, "__globals__", None)
        if namespace is not None:
            assigned = {name: namespace[name] for name in stored_globals(fn.__code__) if name in namespace}
            SETUP_GLOBALS.setdefault(namespace.get("__name__", ""), {}).update(assigned)
        return result


def stored_globals(code: types.CodeType) -> set[str]:
    """Names the code (and code nested in it) assigns as globals (``global x; x = ...``)."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= stored_globals(const)
    return names


def with_setup_globals(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, its globals updated with what the initializer set in its module
    (a function shipped by value has a copy of its own; one by reference shares
    the module's, which already holds them)."""
    if not SETUP_GLOBALS:
        return fn
    target = getattr(fn, "__wrapped__", fn)
    namespace = getattr(target, "__globals__", None)
    if namespace is None:
        return fn
    name = namespace.get("__name__", "")
    module = sys.modules.get(name)
    values = SETUP_GLOBALS.get(name)
    if values and (module is None or vars(module) is not namespace):
        namespace.update(values)
    return fn
