"""Stable cache keys: a digest of a function's identity and of a call's arguments.

cloudpickle bytes are not stable across processes, so keys come from a
deterministic, type-tagged encoding instead:

- A function pickled by value (defined in ``__main__`` or a notebook cell, a
  lambda, a closure) is identified by its code (bytecode, constants, names,
  argument layout, recursively through nested code), its defaults, its
  closure values and the values of the module globals its code reads,
  recursively through the by-value functions among them.  Editing the body, a
  default, a closure value or a global (``K = 3`` -> ``K = 5``), or changing one
  in place (``CFG["k"] = 5``, ``DATA[:] = 7``), changes the key; the same source
  in a new process gives the same key.  The digest is kept per function while
  its exact :func:`~fabric.client.shipping.binding_guard` holds (identities and
  full content digests of what it reads, taken at each call: a numpy array of
  ``LARGE_BUFFER_BYTES`` or more is hashed in place with sha256, ~0.14 s per
  200 MB, so once per ``map`` call and per cached ``submit``, never per item).
- A function of the user's own module (``mymod.py`` beside the script or
  notebook, not an installed distribution: :func:`~fabric.client.shipping.user_module`)
  goes by value and is identified by its code as above, so editing and
  reloading the module gives new keys, and the same source in a new process
  the same keys.  Such a module read as a global (``import mymod``) is
  identified by the code of its functions and classes.
- A function of an installed package or the standard library is identified
  by module, qualified name and the version of the distribution that provides it.
- Arguments are encoded by exact type (``1``, ``1.0`` and ``True`` differ;
  dict and set order does not matter; a large numpy array by the sha256 of its
  bytes, read in place).  Anything without a stable encoding (an
  open file, a lock, a generator) raises :class:`~fabric.CacheKeyError`
  naming the argument.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import hashlib
import importlib.metadata
import math
import pathlib
import struct
import sys
import types
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CacheKeyError
from ..wire.codec import function_name
from .shipping import (
    LARGE_BUFFER_BYTES,
    BindingCache,
    buffer_digest,
    cell_is_set,
    global_names,
    installed_distributions,
    pickled_by_value,
    user_module,
)

MAX_DEPTH = 64
_NAN = struct.pack(">d", math.nan)


class _Unstable(Exception):
    """Raised inside the encoder; turned into CacheKeyError with context."""


class Encoder:
    """Writes a deterministic byte encoding of values into one bytearray.

    ``enclosing`` are the ids of the by-value classes and user modules whose
    identity is being encoded around this encoder: one met again is written by
    name only.
    ``identities`` keeps the identities of the classes met at the top, so a map
    chunk of notebook dataclass instances identifies their class once."""

    def __init__(self, enclosing: frozenset[int] = frozenset()) -> None:
        self.out = bytearray()
        self.stack: set[int] = set()  # ids of the values being encoded (see _guarded)
        self.enclosing = enclosing
        self.identities: dict[int, bytes] = {}

    def value(self, obj: Any) -> None:
        writer = _WRITERS.get(type(obj))
        if writer is not None:
            writer(self, obj)
            return
        _encode_other(self, obj)

    def tag(self, tag: bytes, text: str = "") -> None:
        data = text.encode("utf-8", "surrogatepass")
        self.out += tag + len(data).to_bytes(4, "big") + data

    def unordered(self, tag: bytes, encodings: list[bytes]) -> None:
        """Sets and dicts: their parts sorted by encoding, so order does not matter."""
        self.out += tag + len(encodings).to_bytes(8, "big")
        for encoding in sorted(encodings):
            self.out += len(encoding).to_bytes(8, "big") + encoding

    def sub(self, obj: Any) -> bytes:
        """The encoding of ``obj`` alone, sharing the cycle guard."""
        outer, self.out = self.out, bytearray()
        try:
            self.value(obj)
            return bytes(self.out)
        finally:
            self.out = outer


Writer = Callable[[Encoder, Any], object]


def _guarded(write: Writer) -> Writer:
    """``write`` for values that may contain themselves: one met again inside
    itself (a cycle), or nested deeper than MAX_DEPTH, has no encoding."""

    def guarded(e: Encoder, obj: Any) -> None:
        if id(obj) in e.stack:
            raise _Unstable(f"a {type(obj).__name__} that contains itself")
        if len(e.stack) > MAX_DEPTH:
            raise _Unstable(f"a {type(obj).__name__} nested more than {MAX_DEPTH} levels deep")
        e.stack.add(id(obj))
        try:
            write(e, obj)
        finally:
            e.stack.discard(id(obj))

    return guarded


def _sequence(tag: bytes) -> Writer:
    """The writer of a tuple or list: ``tag``, length, then each item."""

    @_guarded
    def write(e: Encoder, items: Sequence[Any]) -> None:
        e.out += tag + len(items).to_bytes(8, "big")
        for item in items:
            e.value(item)

    return write


def _float(e: Encoder, x: float) -> None:
    e.out += b"f" + (_NAN if x != x else struct.pack(">d", x))


def _complex(e: Encoder, x: complex) -> None:
    e.out += b"j"  # tagged: untagged, [1+2j, 3.0] and [1.0, 2+3j] encoded alike
    _float(e, x.real)
    _float(e, x.imag)


def _slice(e: Encoder, x: slice) -> None:
    e.out += b":"
    e.value((x.start, x.stop, x.step))


@_guarded
def _dict(e: Encoder, d: dict[Any, Any]) -> None:
    e.unordered(b"{", [e.sub(k) + e.sub(v) for k, v in d.items()])


_WRITERS: dict[type, Writer] = {
    type(None): lambda e, x: e.out.extend(b"N"),
    bool: lambda e, x: e.out.extend(b"T" if x else b"F"),
    int: lambda e, x: e.out.extend(b"i%d;" % x),
    float: _float,
    complex: _complex,
    str: lambda e, x: e.tag(b"s", x),
    bytes: lambda e, x: e.out.extend(b"b" + len(x).to_bytes(8, "big") + x),
    bytearray: lambda e, x: e.out.extend(b"B" + len(x).to_bytes(8, "big") + x),
    tuple: _sequence(b"("),
    list: _sequence(b"["),
    dict: _dict,
    set: lambda e, x: e.unordered(b"<", [e.sub(i) for i in x]),
    frozenset: lambda e, x: e.unordered(b">", [e.sub(i) for i in x]),
    range: lambda e, x: e.tag(b"r", f"{x.start},{x.stop},{x.step}"),
    slice: _slice,
    type(Ellipsis): lambda e, x: e.out.extend(b"E"),
    datetime.datetime: lambda e, x: e.tag(b"Dt", x.isoformat()),
    datetime.date: lambda e, x: e.tag(b"Dd", x.isoformat()),
    datetime.time: lambda e, x: e.tag(b"Dh", x.isoformat()),
    datetime.timedelta: lambda e, x: e.tag(b"Dl", f"{x.days},{x.seconds},{x.microseconds}"),
    decimal.Decimal: lambda e, x: e.tag(b"d", str(x)),
    fractions.Fraction: lambda e, x: e.tag(b"q", f"{x.numerator}/{x.denominator}"),
    uuid.UUID: lambda e, x: e.out.extend(b"u" + x.bytes),
}


@_guarded
def _encode_other(e: Encoder, obj: Any) -> None:
    """Values without an exact-type writer: numpy, enums, paths, dataclasses,
    functions, classes, modules, plain objects."""
    cls = type(obj)
    if cls.__module__ == "numpy":
        _numpy(e, obj)
    elif isinstance(obj, enum.Enum):
        e.out += b"e" + _class_identity(cls, e)
        e.value(obj.value)
    elif isinstance(obj, pathlib.PurePath):
        e.tag(b"p", f"{cls.__name__}:{obj}")
    elif isinstance(obj, types.ModuleType) and user_module(obj.__name__):
        _user_module(e, obj)
    elif isinstance(obj, types.ModuleType):
        e.tag(b"m", f"{obj.__name__}=={_version(obj.__name__)}")
    elif isinstance(obj, type):
        e.out += b"c" + _class_identity(obj, e)
    elif callable(obj) and not dataclasses.is_dataclass(obj) and _is_function_like(obj):
        e.out += b"x" + function_digest(obj)
    elif dataclasses.is_dataclass(obj):
        e.out += b"@" + _class_identity(cls, e)
        e.value(tuple(getattr(obj, f.name) for f in dataclasses.fields(obj)))
    elif isinstance(obj, (int, float, str, bytes, tuple, list, dict, set, frozenset)):
        e.out += b"^" + _class_identity(cls, e)  # a subclass of a plain type: its class, then its plain value
        _WRITERS[next(t for t in cls.__mro__ if t in _WRITERS)](e, obj)
    elif _plain_object(obj):
        _instance(e, obj)
    else:
        raise _Unstable(f"no stable cache key for an object of type {cls.__qualname__}")


def _numpy(e: Encoder, obj: Any) -> None:
    import numpy

    if isinstance(obj, numpy.ndarray):
        if obj.dtype.hasobject:
            e.tag(b"A", f"{obj.dtype.str}{obj.shape}")
            e.value(obj.tolist())
            return
        e.tag(b"a", f"{obj.dtype.str}{obj.shape}")
        contiguous = numpy.ascontiguousarray(obj)
        e.out += buffer_digest(contiguous) if contiguous.nbytes >= LARGE_BUFFER_BYTES else contiguous.tobytes()
    elif isinstance(obj, numpy.generic):
        e.tag(b"g", obj.dtype.str)
        e.out += obj.tobytes()
    else:
        raise _Unstable(f"no stable cache key for an object of type numpy.{type(obj).__qualname__}")


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python, not in C


def _plain_object(obj: Any) -> bool:
    """An instance of a Python class whose state is just its ``__dict__`` (no
    slots, no custom pickling); C types such as files never are."""
    cls = type(obj)
    return (
        bool(cls.__flags__ & _HEAP_TYPE)
        and all(base.__flags__ & _HEAP_TYPE or base is object for base in cls.__mro__)
        and hasattr(obj, "__dict__")
        and not hasattr(cls, "__slots__")
        and cls.__reduce_ex__ is object.__reduce_ex__
        and getattr(cls, "__getstate__", object.__getstate__) is object.__getstate__
    )


def _instance(e: Encoder, obj: Any) -> None:
    """A plain object by its class and attributes, as an argument or as a callable."""
    e.out += b"o" + _class_identity(type(obj), e)
    _dict(e, vars(obj))


def _user_module(e: Encoder, module: types.ModuleType) -> None:
    """A module of the user's own, read as a global (``import mymod``), by the
    code of the functions and classes defined in it, so a reload gives new keys;
    the other values it holds are not keyed (read them as globals of your own
    function, or pass them).  Met again inside itself: by name only."""
    if id(module) in e.enclosing:
        e.tag(b"u", module.__name__)
        return
    outer, e.enclosing = e.enclosing, e.enclosing | {id(module)}
    try:
        e.tag(b"U", module.__name__)
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, (types.FunctionType, type)) and value.__module__ == module.__name__:
                e.tag(b"k", attr)
                _function(e, value, set())
    finally:
        e.enclosing = outer


def _is_function_like(obj: Any) -> bool:
    return isinstance(
        obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)
    ) or hasattr(obj, "__wrapped__")


# -- functions ---------------------------------------------------------------------------

def function_digest(fn: Callable[..., Any]) -> bytes:
    """16-byte digest of a function's identity (see the module docstring)."""
    return _digests.get(fn, exact=True)  # never the sampled check of large arrays


def _digest(fn: Callable[..., Any]) -> bytes:
    encoder = Encoder()
    try:
        _function(encoder, fn, set())
    except _Unstable as exc:
        raise CacheKeyError(f"cannot derive a cache key for {function_name(fn)}: {exc}") from None
    return hashlib.blake2b(bytes(encoder.out), digest_size=16).digest()


_digests = BindingCache(_digest, max_entries=4096)


def _function(e: Encoder, fn: Any, seen: set[int]) -> None:
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None and not isinstance(fn, types.FunctionType):
        _function(e, wrapped, seen)  # fabric's Guarded: options do not change results
    elif isinstance(fn, functools.partial):
        e.out += b"P"
        _function(e, fn.func, seen)
        e.value((fn.args, fn.keywords))
    elif isinstance(fn, types.MethodType):
        e.out += b"M"
        _function(e, fn.__func__, seen)
        e.value(fn.__self__)
    elif isinstance(fn, types.FunctionType) and pickled_by_value(fn):
        _by_value(e, fn, seen)
    elif isinstance(fn, type):
        e.out += b"c" + _class_identity(fn, e)
    elif isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)) or hasattr(fn, "__qualname__"):
        module = getattr(fn, "__module__", None) or ""
        e.tag(b"R", f"{module}:{fn.__qualname__}=={_version(module)}")
    elif callable(fn) and _plain_object(fn):  # an instance with __call__
        _instance(e, fn)
    else:
        raise _Unstable(f"no stable identity for a callable of type {type(fn).__qualname__}")


def _by_value(e: Encoder, fn: types.FunctionType, seen: set[int]) -> None:
    if id(fn) in seen:  # recursion: the name is enough, the body is already encoded
        e.tag(b"@", fn.__qualname__)
        return
    seen.add(id(fn))
    e.tag(b"F", fn.__qualname__)
    _code(e, fn.__code__)
    e.value(fn.__defaults__)
    e.value(fn.__kwdefaults__)
    for cell in fn.__closure__ or ():
        _captured(e, cell.cell_contents if cell_is_set(cell) else None, seen, f"closure of {fn.__qualname__}")
    for name in sorted(set(global_names(fn.__code__))):
        if name in fn.__globals__:
            e.tag(b"G", name)
            _captured(e, fn.__globals__[name], seen, f"global {name!r} read by {fn.__qualname__}")


def _captured(e: Encoder, value: Any, seen: set[int], where: str) -> None:
    try:
        if isinstance(value, types.FunctionType) and pickled_by_value(value):
            _by_value(e, value, seen)
        elif callable(value) and _is_function_like(value) and not isinstance(value, type):
            _function(e, value, seen)
        else:
            e.value(value)
    except _Unstable as exc:
        raise _Unstable(f"{where}: {exc}") from None


def _code(e: Encoder, code: types.CodeType) -> None:
    e.out += b"C" + code.co_code
    e.value((code.co_names, code.co_varnames, code.co_argcount, code.co_posonlyargcount,
             code.co_kwonlyargcount, code.co_flags))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code(e, const)
        else:
            e.value(const)


def _class_identity(cls: type, outer: Encoder) -> bytes:
    """Importable classes by name and version; classes pickled by value (defined
    in ``__main__`` or in a function) by name, their functions and attributes.

    A class met again inside its own identity (an Enum's members, a method that
    names its class: ``outer.enclosing``) is written by name only, as
    :func:`_by_value` does for recursion."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not pickled_by_value(cls):
        return f"{name}=={_version(cls.__module__)}".encode()
    if id(cls) in outer.enclosing:
        return f"{name}@".encode()
    known = outer.identities.get(id(cls))
    if known is not None:
        return known
    encoder = Encoder(outer.enclosing | {id(cls)})
    encoder.tag(b"K", name)
    for attr, value in sorted(vars(cls).items()):
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, types.FunctionType):
            encoder.tag(b"k", attr)
            _function(encoder, value, set())  # inline, not function_digest: its own Encoder would forget `within`
        elif not attr.startswith("__") and not isinstance(value, (property, types.MemberDescriptorType)):
            encoder.tag(b"k", attr)
            encoder.value(value)
    identity = hashlib.blake2b(bytes(encoder.out), digest_size=16).digest()
    if not outer.enclosing:  # one found inside another class names that class only: not the same bytes
        outer.identities[id(cls)] = identity
    return identity


@functools.lru_cache(maxsize=1024)
def _version(module: str) -> str:
    """The version of the distribution that provides ``module``, else ''."""
    top = module.partition(".")[0]
    if not top or top == "__main__" or top in sys.builtin_module_names or top in sys.stdlib_module_names:
        return ""
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return version
    for dist in [top, *installed_distributions().get(top, ())]:  # the mapping is slow to build: try the name first
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""




# -- calls -------------------------------------------------------------------------------


def call_key(fn_digest: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """20-byte key of ``fn(*args, **kwargs)`` for the function with ``fn_digest``."""
    encoder = Encoder()
    for index, arg in enumerate(args):
        _argument(encoder, arg, f"argument {index}")
    for name in sorted(kwargs):
        encoder.tag(b"=", name)
        _argument(encoder, kwargs[name], f"argument {name!r}")
    return hashlib.blake2b(fn_digest + bytes(encoder.out), digest_size=20).digest()


def _argument(encoder: Encoder, value: Any, label: str) -> None:
    try:
        encoder.value(value)
    except _Unstable as exc:
        raise CacheKeyError(f"{label}: {exc}") from None


def _flat(obj: Any) -> bytes | None:
    """The encoding of an int, str or float, or a tuple of them, without an
    Encoder (the hot path of a cached map); None for anything else.  The bytes
    are the ones the Encoder writes."""
    kind = type(obj)
    if kind is int:
        return b"i%d;" % obj
    if kind is str:
        data = obj.encode("utf-8", "surrogatepass")
        return b"s" + len(data).to_bytes(4, "big") + data
    if kind is float:
        return b"f" + (_NAN if obj != obj else struct.pack(">d", obj))
    if kind is tuple:
        parts = [_flat(x) if type(x) is not tuple else None for x in obj]
        if None not in parts:
            return b"(" + len(obj).to_bytes(8, "big") + b"".join(parts)  # type: ignore[arg-type]
    return None


def _item_encoding(item: Any, star: bool, encoder: Encoder) -> bytes:
    flat = _flat(item)
    if flat is not None:
        return flat[9:] if star else flat  # star: the tuple's items, without its header
    encoder.out = bytearray()
    for arg in item if star else (item,):
        encoder.value(arg)
    return bytes(encoder.out)


def item_keys(fn_digest: bytes, items: Sequence[Any], star: bool) -> list[bytes]:
    """Keys of a map chunk: each item is the argument (or, ``star``, the arguments)."""
    base = hashlib.blake2b(fn_digest, digest_size=20)
    keys = []
    encoder = Encoder()
    for index, item in enumerate(items):
        try:
            data = _item_encoding(item, star, encoder)
        except _Unstable as exc:
            raise CacheKeyError(f"map item {index}: {exc}") from None
        h = base.copy()
        h.update(data)
        keys.append(h.digest())
    return keys
