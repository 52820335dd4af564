"""Function shipping: each function cloudpickled once and named by a content digest.

Runs in the client: ``submit``/``map`` ask :class:`FunctionCache` for the
function's ``(digest, payload)``; the ventilator sends the payload once per
worker link and the digest afterwards (workers unpickle it with
:func:`fabric.wire.codec.loads_function`).  The code introspection here (which
globals a function reads, whether it goes by value) is shared with the cache
keys of :mod:`fabric.client.cache_key`.
"""

from __future__ import annotations

import functools
import hashlib
import types
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import cloudpickle

from ..errors import SerializationError
from ..wire.codec import describe, function_name

T = TypeVar("T")


class BindingCache(Generic[T]):
    """A value computed from a function, kept per function object for as long as
    the module globals, closure cells and defaults a by-value function reads are
    still bound to the same objects (its :func:`binding_guard`): re-running a
    notebook cell that sets ``K = 5`` computes it again.

    Keyed by ``id``, checked against a weak reference (a strong one for what
    cannot be weakly referenced, such as builtins), so a new function that
    reuses a dead one's id is never served the dead one's value.
    """

    def __init__(self, compute: Callable[[Callable[..., Any]], T], max_entries: int) -> None:
        self._compute = compute
        self._entries: dict[int, tuple[Callable[[], object], tuple[int, ...], T]] = {}
        self._max_entries = max_entries

    def get(self, fn: Callable[..., Any]) -> T:
        guard = binding_guard(fn)
        entry = self._entries.get(id(fn))
        if entry is not None and entry[0]() is fn and entry[1] == guard:
            return entry[2]
        value = self._compute(fn)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[id(fn)] = (_reference(fn), guard, value)
        return value


def _reference(obj: object) -> Callable[[], object]:
    try:
        return weakref.ref(obj)
    except TypeError:  # builtins cannot be weakly referenced; they never change
        return lambda: obj


class FunctionCache(BindingCache[tuple[bytes, bytes]]):
    """``(digest, payload)`` per function, so a function is cloudpickled once,
    not once per task, and shipped again when what it reads is rebound."""

    def __init__(self, max_entries: int = 1024) -> None:
        super().__init__(shipped, max_entries)


def shipped(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """``(digest, payload)``: the cloudpickle bytes of ``fn`` and their digest."""
    payload = dumps_function(fn)
    return hashlib.blake2b(payload, digest_size=16).digest(), payload


def dumps_function(fn: Callable[..., Any]) -> bytes:
    if not callable(fn):
        raise SerializationError(f"{describe(fn)} is not callable")
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot serialize function {function_name(fn)}: {exc}") from exc


def binding_guard(fn: object, _seen: set[int] | None = None) -> tuple[int, ...]:
    """Identities of what a by-value function captures: the globals its code
    reads, its closure cells and defaults, recursively through the by-value
    functions among them.  Functions pickled by reference (importable) have an
    empty guard."""
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None and not isinstance(fn, types.FunctionType):
        return binding_guard(wrapped, _seen)
    if not isinstance(fn, types.FunctionType) or not pickled_by_value(fn):
        return ()
    seen = _seen if _seen is not None else set()
    if id(fn) in seen:
        return ()
    seen.add(id(fn))
    captured = [fn.__globals__.get(name) for name in global_names(fn.__code__)]
    captured += [c.cell_contents for c in fn.__closure__ or () if cell_is_set(c)]
    captured += list(fn.__defaults__ or ()) + list((fn.__kwdefaults__ or {}).values())
    ids = [id(fn.__code__), *map(id, captured)]
    for value in captured:
        ids.extend(binding_guard(value, seen))
    return tuple(ids)


def pickled_by_value(obj: types.FunctionType | type) -> bool:
    """Whether cloudpickle ships a function or class by value (its code) rather
    than by reference (its importable name)."""
    return obj.__module__ == "__main__" or "<locals>" in obj.__qualname__ or obj.__name__ == "<lambda>"


@functools.lru_cache(maxsize=4096)
def global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object (and the code nested in it) may read as globals; cached,
    since every submit of a by-value function checks them (a profile showed 14 %)."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(global_names(const))
    return tuple(names)


def cell_is_set(cell: types.CellType) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True
