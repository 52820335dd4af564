"""Function shipping: each function cloudpickled once and named by a content digest.

Runs in the client: ``submit``/``map`` ask :class:`FunctionCache` for the
function's ``(digest, payload)``; the ventilator sends the payload once per
worker link and the digest afterwards (workers unpickle it with
:func:`fabric.wire.codec.loads_function`).  The code introspection here (which
globals a function reads, whether it goes by value) is shared with the cache
keys of :mod:`fabric.client.cache_key`.

A function goes by value (its code) when defined in ``__main__`` or a notebook,
as a lambda or closure, or in a module of the user's own (:func:`user_module`:
``mymod.py`` beside the script, which every worker would otherwise import for
itself, old or new, after an edit); functions of installed packages and the
standard library go by reference.

What a by-value function reads is checked on every call, by identity and, for
mutable values, by content, so ``CFG["scale"] = 100`` or ``DATA[:] = 7`` ships
the new value on the next call, as rebinding does.  The rule and its cost
(timeit on the 2-core development machine):

- Values immutable by type (numbers, strings, bytes, functions, classes,
  modules) go by identity: nothing added to a submit.
- Any other value (dicts, lists, sets, small arrays, objects) is cloudpickled
  and digested (sha256, out-of-band buffers included) on every call: +~5 us
  per submit for ``{"scale": 1}`` (``FunctionCache.get`` 3-5 -> 7-9 us; with
  small immutable globals, by reference and builtins it is unchanged, 5-13,
  0.5-1 and 0.4-0.8 us).
- A C-contiguous numpy array of ``LARGE_BUFFER_BYTES`` or more, bound directly
  to a global, closure cell or default, is digested in full (sha256, ~1.4
  GB/s: 0.14-0.18 s for 200 MB) on every ``map``/``map_reduce`` call and
  cached call, never per item (a cached map digests it twice, for the shipped
  function and for the key's, three times when it changed).  A ``submit``
  burst re-digests it only when its last digest is older than
  ``RECHECK_FACTOR`` times that digest's cost (so digesting takes at most ~1/11
  of the burst: 30-40 us per submit on average over a 4 s burst on a 200 MB
  global); in between it compares a strided sample of ``SAMPLE_BYTES``
  (15-30 us), which sees bulk
  rewrites (``DATA[:] = 7``, ``DATA *= 2``) but may miss a sparse edit
  (``DATA[5] = 1``) made within that window: rebind the global, or pass the
  array as an argument, to be certain.  Cached calls (``exact=True``) never use
  the window, so the result cache is keyed on full content and never serves a
  result computed from another value.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import io
import site
import sys
import sysconfig
import time
import types
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import cloudpickle

from ..errors import SerializationError
from ..wire.codec import describe, function_name

T = TypeVar("T")
LARGE_BUFFER_BYTES = 64 * 1024  # from here an array digest costs over ~45 us, and is worth sampling between
RECHECK_FACTOR = 10  # a submit burst spends at most ~1/(1 + RECHECK_FACTOR) of its time digesting large arrays
SAMPLE_BYTES = 4096  # bytes of a large array compared on each submit between full digests


class BindingCache(Generic[T]):
    """A value computed from a function, kept per function object for as long as
    the module globals, closure cells and defaults a by-value function reads are
    still bound to the same objects with the same contents (its
    :func:`binding_guard`): re-running a notebook cell that sets ``K = 5``, or
    ``CFG["k"] = 5``, computes it again.

    Keyed by ``id``, checked against a weak reference (a strong one for what
    cannot be weakly referenced, such as builtins), so a new function that
    reuses a dead one's id is never served the dead one's value.
    """

    def __init__(self, compute: Callable[[Callable[..., Any]], T], max_entries: int) -> None:
        self._compute = compute
        self._entries: dict[int, tuple[Callable[[], object], tuple[object, ...], T]] = {}
        self._max_entries = max_entries

    def get(self, fn: Callable[..., Any], exact: bool = False) -> T:
        """The value for ``fn``; ``exact`` checks large arrays in full (see the module docstring)."""
        entry = self._entries.get(id(fn))
        if entry is not None and entry[1] is _BY_REFERENCE and entry[0]() is fn:
            return entry[2]  # an importable function reads nothing that could change: no guard to check
        guard = binding_guard(fn, exact) or _BY_REFERENCE
        if entry is not None and entry[0]() is fn and entry[1] == guard:
            return entry[2]
        value = self._compute(fn)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[id(fn)] = (_reference(fn), guard, value)
        return value


_BY_REFERENCE: tuple[object, ...] = ()  # the guard of a function pickled by reference, never rechecked


def _reference(obj: object) -> Callable[[], object]:
    try:
        return weakref.ref(obj)
    except TypeError:  # builtins cannot be weakly referenced; they never change
        return lambda: obj


class FunctionCache(BindingCache[tuple[bytes, bytes]]):
    """``(digest, payload)`` per function, so a function is cloudpickled once,
    not once per task, and shipped again when what it reads is rebound or
    changed in place."""

    def __init__(self, max_entries: int = 1024) -> None:
        super().__init__(shipped, max_entries)


def shipped(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """``(digest, payload)``: the cloudpickle bytes of ``fn`` and their digest."""
    payload = dumps_function(fn)
    return hashlib.blake2b(payload, digest_size=16).digest(), payload


def dumps_function(fn: Callable[..., Any]) -> bytes:
    if not callable(fn):
        raise SerializationError(f"{describe(fn)} is not callable")
    for name in list(sys.modules):  # what fn reaches, however deep, of the user's modules goes by value
        user_module(name)
    buffer = io.BytesIO()
    try:
        _FunctionPickler(buffer, protocol=5).dump(fn)
    except Exception as exc:
        raise SerializationError(f"cannot serialize function {function_name(fn)}: {exc}") from exc
    return buffer.getvalue()


_reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_keeping_its_file(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    constructor, args = _reduce_code(code)
    return constructor, tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)


class _FunctionPickler(cloudpickle.Pickler):
    """cloudpickle, except that code shipped by value keeps its file name
    (cloudpickle writes ``<dynamic-code>``), so a worker's traceback of a
    function from the user's script or module shows its source lines."""

    dispatch_table = ChainMap({types.CodeType: _code_keeping_its_file}, cloudpickle.Pickler.dispatch_table)


def binding_guard(fn: object, exact: bool = False, _seen: set[int] | None = None) -> tuple[object, ...]:
    """Identities of what a by-value function captures (the globals its code
    reads, its closure cells and defaults, recursively through the by-value
    functions among them), each mutable one followed by its content
    :func:`fingerprint`.  Functions pickled by reference (importable) have an
    empty guard.  Every submit of a by-value function computes it, so parts a
    function does not have cost no comprehension (each builds a function object
    in Python 3.11): that halved it for a function reading nothing (~0.5 us saved
    per submit, W2)."""
    if not isinstance(fn, types.FunctionType):
        wrapped = getattr(fn, "__wrapped__", None)
        return () if wrapped is None else binding_guard(wrapped, exact, _seen)
    if not pickled_by_value(fn):
        return ()
    if _seen is None:
        _seen = set()
    elif id(fn) in _seen:
        return ()
    _seen.add(id(fn))
    code = fn.__code__
    names = global_names(code)
    captured = [fn.__globals__.get(name) for name in names] if names else []
    if fn.__closure__:
        captured += [c.cell_contents for c in fn.__closure__ if cell_is_set(c)]
    if fn.__defaults__:
        captured += fn.__defaults__
    if fn.__kwdefaults__:
        captured += fn.__kwdefaults__.values()
    if not captured:
        return (id(code),)
    guard: list[object] = [id(code)]
    for value in captured:
        guard.append(id(value))
        if isinstance(value, types.ModuleType):
            if user_module(value.__name__):  # importlib.reload rebinds its functions in the same module
                guard.extend(map(id, vars(value).values()))
        elif type(value) not in _BY_IDENTITY and not isinstance(value, type):
            guard.append(fingerprint(value, exact))
    for value in captured:
        guard.extend(binding_guard(value, exact, _seen))
    return tuple(guard)


# Types whose instances cannot change (functions: what they read is guarded in turn).
_BY_IDENTITY = frozenset({
    type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis),
    types.FunctionType, types.BuiltinFunctionType,
})


def fingerprint(value: object, exact: bool = False) -> object:
    """A digest of ``value``'s content, for what a by-value function reads
    (the rule and its cost are in the module docstring); None when it cannot be
    pickled, in which case shipping the function fails and says why."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and _large_array(value):
        return value.dtype.str, value.shape, _large_arrays.digest(value, exact)
    buffers: list[Any] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:
        return None
    digest = hashlib.sha256(data)
    for buffer in buffers:
        digest.update(buffer.raw())
    return digest.digest()


def _large_array(array: Any) -> bool:
    return bool(array.nbytes >= LARGE_BUFFER_BYTES and array.flags.c_contiguous and not array.dtype.hasobject)


def buffer_digest(array: Any) -> bytes:
    """sha256 of a C-contiguous array's bytes, read in place (1.4 GB/s here, against
    0.36 for blake2b, and no copy): shared by fingerprints and cache keys."""
    return hashlib.sha256(array.reshape(-1).view("u1")).digest()


class _Digested(NamedTuple):
    at: float  # time.monotonic() of the full digest
    cost_s: float
    sample: bytes
    digest: bytes


class LargeArrays:
    """Full digests of large arrays, and when each was taken, by the memory they
    occupy (address, size): a new array in the same memory is, to this, an
    in-place edit of the old one, and no array is kept alive."""

    def __init__(self, max_entries: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._digests: dict[tuple[int, int], _Digested] = {}
        self._max_entries = max_entries
        self._clock = clock

    def digest(self, array: Any, exact: bool) -> bytes:
        flat = array.reshape(-1).view("u1")
        block = max(8, flat.size // (SAMPLE_BYTES // 8))  # 8 bytes from each block: whole elements, not
        sample = flat[: flat.size // block * block].reshape(-1, block)[:, :8].tobytes()  # their low bytes only
        where = (array.__array_interface__["data"][0], flat.size)
        now = self._clock()
        last = self._digests.get(where)
        if not exact and last is not None and last.sample == sample and now - last.at < RECHECK_FACTOR * last.cost_s:
            return last.digest
        start = time.perf_counter()
        digest = buffer_digest(array)
        if len(self._digests) >= self._max_entries:
            self._digests.clear()
        self._digests[where] = _Digested(now, time.perf_counter() - start, sample, digest)
        return digest


_large_arrays = LargeArrays()


def pickled_by_value(obj: types.FunctionType | type) -> bool:
    """Whether cloudpickle ships a function or class by value (its code) rather
    than by reference (its importable name)."""
    return (obj.__module__ == "__main__" or "<locals>" in obj.__qualname__ or obj.__name__ == "<lambda>"
            or user_module(obj.__module__))


@functools.cache
def user_module(name: str) -> bool:
    """Whether module ``name`` is the user's own code (``mymod.py`` beside the
    script or notebook, a folder put on ``sys.path``): it has a file outside the
    standard library and site-packages, and no installed distribution provides
    it.  Such a module is registered with cloudpickle to go by value, so its
    functions ship, and are keyed, by their code as ``__main__``'s are: an
    edited, reloaded module gives new digests, and workers never import a copy
    of their own that may be older or newer than the client's.  Installed
    packages, editable installs included, go by reference (module, name and
    version), and so does fabric, which every worker runs, even when it is
    imported from a source tree.  Asked once per module name (~0.1 ms), then
    cached."""
    top = name.partition(".")[0]
    if top in _forced:
        return True
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if (not _automatic or not path or top == _FABRIC or _installed(path) or top in installed_distributions()
            or top not in sys.modules):
        return False
    cloudpickle.register_pickle_by_value(sys.modules[top])
    return True


_FABRIC = __name__.partition(".")[0]
_automatic = True  # the user's own modules go by value (connect(ship_modules=False) turns it off)
_forced: set[str] = set()  # top-level modules connect(ship_modules=[...]) sends by value


def ship_modules_by_value(modules: bool | Iterable[str | types.ModuleType]) -> None:
    """``connect(ship_modules=...)``: True finds the user's own modules (the
    default); False sends every module by reference (nodes import them); a list
    of modules or names sends those by value whether installed or not, besides
    the user's own.  Process-wide, as cloudpickle's registry is: a module once
    forced stays forced."""
    global _automatic
    _automatic = modules is not False
    if not isinstance(modules, bool):
        for module in modules:
            name = module if isinstance(module, str) else module.__name__
            top = name.partition(".")[0]
            if top == _FABRIC:
                raise ValueError("fabric itself runs on every node: it cannot be shipped by value")
            cloudpickle.register_pickle_by_value(sys.modules.get(top) or importlib.import_module(top))
            _forced.add(top)
    if not _automatic:
        for name in list(cloudpickle.list_registry_pickle_by_value()):
            if name not in _forced:
                cloudpickle.unregister_pickle_by_value(sys.modules.get(name) or types.ModuleType(name))
    user_module.cache_clear()


def _installed(path: str) -> bool:
    """Whether a module's file lies in the standard library or a site-packages
    (this environment's, or another one's put on ``sys.path``)."""
    resolved = Path(path).resolve()
    return "site-packages" in resolved.parts or "dist-packages" in resolved.parts or any(
        root in resolved.parents for root in _install_roots()
    )


@functools.cache
def _install_roots() -> frozenset[Path]:
    """The standard library's and site-packages' folders."""
    paths = sysconfig.get_paths()
    roots = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    roots += [*site.getsitepackages(), site.getusersitepackages()]
    return frozenset(Path(root).resolve() for root in roots)


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    """Top-level module names of the installed distributions (slow to build: once)."""
    return dict(importlib.metadata.packages_distributions())


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
