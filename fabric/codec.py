"""Payload serialization: data, functions and exceptions, as bytes frames.

Used on both ends of the data plane: the client encodes task batches and
decodes result batches, the worker does the opposite.  Headers never come here
(they are msgpack, see :mod:`fabric.protocol`).

- Data goes as msgpack where it is plain and msgpack measures faster for the
  stream (strings, mostly), otherwise as pickle protocol 5 with out-of-band
  buffers as extra frames (numpy arrays and other large buffers are not copied
  into the pickle), and cloudpickle only when plain pickle refuses (a lambda
  passed as an argument).  :class:`PayloadEncoder` makes that choice once per
  stream by timing both on its first batch.
- Functions go as cloudpickle once per worker, named by a content digest.
- Exceptions go as a record of type name, message and traceback text, plus
  the pickled exception when it round-trips, so the caller can re-raise the
  original type with the remote traceback as its cause.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import time
import traceback
import types
import weakref
from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import msgpack

from .errors import RemoteError, RemoteTraceback, SerializationError

PICKLE = 0
MSGPACK = 1

Frames = list[Any]


def _refuse(obj: object) -> object:
    raise TypeError(f"not plain data: {type(obj).__name__}")


def _msgpack_packer() -> msgpack.Packer:
    """strict_types sends tuples, subclasses and numpy scalars to pickle instead of
    silently turning them into lists or ints, so a msgpack round trip is exact."""
    return msgpack.Packer(use_bin_type=True, strict_types=True, datetime=False, default=_refuse)


def _refuse_file(obj: object) -> object:
    raise pickle.PicklingError(f"cannot send an open file ({getattr(obj, 'name', '?')!r}); send its path or contents")


class _DataPickler(cloudpickle.Pickler):
    """cloudpickle for data, except that open files are refused: cloudpickle would
    send a snapshot of a file's contents, and the task's writes would be lost."""

    dispatch_table = ChainMap(
        {t: _refuse_file for t in (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom,
                                   io.FileIO)},
        cloudpickle.Pickler.dispatch_table,
    )


def pickle_frames(obj: object) -> Frames:
    """Pickle protocol 5; large buffers travel as extra frames without copying."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception:
        buffers.clear()
        try:
            stream = io.BytesIO()
            _DataPickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
            data = stream.getvalue()
        except Exception as exc:
            raise SerializationError(f"cannot serialize {_describe(obj)}: {exc}") from exc
    return [data, *(b.raw() for b in buffers)]


def _describe(obj: object) -> str:
    text = repr(obj)
    return f"{type(obj).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


class PayloadEncoder:
    """Encodes one stream's payloads, choosing msgpack or pickle by measurement.

    The first batch is encoded both ways and the faster codec is kept; msgpack
    is abandoned for the stream the first time the data is not plain.
    """

    __slots__ = ("_codec", "_packer")

    def __init__(self) -> None:
        self._codec: int | None = None
        self._packer = _msgpack_packer()

    def encode(self, obj: object) -> tuple[int, Frames]:
        if self._codec == PICKLE:
            return PICKLE, pickle_frames(obj)
        if self._codec == MSGPACK:
            packed = self._try_msgpack(obj)
            if packed is not None:
                return MSGPACK, [packed]
            self._codec = PICKLE
            return PICKLE, pickle_frames(obj)
        return self._measure(obj)

    def _measure(self, obj: object) -> tuple[int, Frames]:
        t0 = time.perf_counter()
        packed = self._try_msgpack(obj)
        t1 = time.perf_counter()
        frames = pickle_frames(obj)
        t2 = time.perf_counter()
        if packed is not None and t1 - t0 < t2 - t1:
            self._codec = MSGPACK
            return MSGPACK, [packed]
        self._codec = PICKLE
        return PICKLE, frames

    def _try_msgpack(self, obj: object) -> bytes | None:
        try:
            return self._packer.pack(obj)
        except (TypeError, ValueError, OverflowError):
            self._packer = _msgpack_packer()  # a failed pack can leave the buffer dirty
            return None


def decode(codec: int, frames: Sequence[Any]) -> Any:
    """Inverse of :meth:`PayloadEncoder.encode`; raises SerializationError."""
    try:
        if codec == MSGPACK and len(frames) == 1:
            return msgpack.unpackb(frames[0], raw=False, strict_map_key=False, use_list=True)
        if codec == PICKLE and frames:
            # Out-of-band buffers are copied once into writable memory, so arrays
            # arrive writable as they would from ProcessPoolExecutor.
            return pickle.loads(frames[0], buffers=[bytearray(f) for f in frames[1:]])
    except Exception as exc:
        raise SerializationError(f"cannot deserialize payload: {type(exc).__name__}: {exc}") from exc
    raise SerializationError(f"unknown payload codec {codec} with {len(frames)} frames")


# -- functions -----------------------------------------------------------------


class FunctionCache:
    """cloudpickle bytes and digest per function object, so a function is pickled
    once, not once per task.

    An entry is reused only while the module globals, closure cells and
    defaults a by-value function reads are still bound to the same objects:
    re-running a notebook cell that sets ``K = 5`` ships the function again.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: dict[int, tuple[Any, tuple[int, ...], bytes, bytes]] = {}
        self._max_entries = max_entries

    def get(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        """Return ``(digest, payload)`` for ``fn``."""
        guard = binding_guard(fn)
        entry = self._entries.get(id(fn))
        if entry is not None and entry[0]() is fn and entry[1] == guard:
            return entry[2], entry[3]
        payload = dumps_function(fn)
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[id(fn)] = (_ref(fn), guard, digest, payload)
        return digest, payload


def _ref(obj: object) -> Callable[[], object]:
    try:
        return weakref.ref(obj)
    except TypeError:  # builtins cannot be weakly referenced; they never change
        return lambda: obj


def dumps_function(fn: Callable[..., Any]) -> bytes:
    if not callable(fn):
        raise SerializationError(f"{_describe(fn)} is not callable")
    try:
        return cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise SerializationError(f"cannot serialize function {name}: {exc}") from exc


def loads_function(payload: Any) -> Callable[..., Any]:
    return pickle.loads(payload)


def binding_guard(fn: object, _seen: set[int] | None = None) -> tuple[int, ...]:
    """Identities of what a by-value function captures: the globals its code
    reads, its closure cells and defaults, recursively through the by-value
    functions among them.  Functions pickled by reference (importable) have an
    empty guard."""
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None and not isinstance(fn, types.FunctionType):
        return binding_guard(wrapped, _seen)
    if not isinstance(fn, types.FunctionType) or not _pickled_by_value(fn):
        return ()
    seen = _seen if _seen is not None else set()
    if id(fn) in seen:
        return ()
    seen.add(id(fn))
    captured = [fn.__globals__.get(name) for name in _global_names(fn.__code__)]
    captured += [c.cell_contents for c in fn.__closure__ or () if _cell_is_set(c)]
    captured += list(fn.__defaults__ or ()) + list((fn.__kwdefaults__ or {}).values())
    ids = [id(fn.__code__), *map(id, captured)]
    for value in captured:
        ids.extend(binding_guard(value, seen))
    return tuple(ids)


def _pickled_by_value(fn: types.FunctionType) -> bool:
    return fn.__module__ == "__main__" or "<locals>" in fn.__qualname__ or fn.__name__ == "<lambda>"


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object (and the code nested in it) may read as globals; cached,
    since every submit of a by-value function checks them (a profile showed 14 %)."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return tuple(names)


def _cell_is_set(cell: types.CellType) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


# -- exceptions ----------------------------------------------------------------

ErrorRecord = list[Any]  # [index, type name, message, traceback text, pickled or None]


def error_record(index: int, exc: BaseException) -> ErrorRecord:
    """What a worker sends for a task that raised."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return [index, name, str(exc), tb, _pickled_exception(exc)]


def _pickled_exception(exc: BaseException) -> bytes | None:
    try:
        data = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(data)
    except Exception:
        return None
    return data


def rebuild_error(record: ErrorRecord) -> BaseException:
    """The original exception where it unpickles, else RemoteError; the remote
    traceback is attached as ``__cause__``."""
    _, name, message, tb, pickled = record
    exc: BaseException | None = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(name, message)
    exc.__cause__ = RemoteTraceback(tb)
    return exc
