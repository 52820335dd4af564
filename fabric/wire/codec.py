"""Payload serialization: data, functions and exceptions, as bytes frames.

Used on both ends of the data plane: the client encodes task batches and
decodes result batches, the worker does the opposite.  Headers never come here
(they are msgpack, see :mod:`fabric.wire.protocol`).

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

import io
import linecache
import pickle
import re
import time
import traceback
from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import Any, SupportsIndex

import cloudpickle
import msgpack

from ..errors import RemoteError, RemoteTraceback, SerializationError

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
            raise SerializationError(f"cannot serialize {describe(obj)}: {exc}") from exc
    return [data, *(b.raw() for b in buffers)]


LARGE_BYTES = 1 << 20  # a bytes argument from this size travels as its own frame, not copied into the pickle


class _OutOfBand:
    """A large ``bytes`` argument on its way out: pickled as ``bytes(<buffer>)``
    with the buffer out of band, so it is sent from the caller's own memory.
    Copying it into the pickle held the caller's GIL ~1 s per 512 MiB (measured
    on the 2-vCPU reference machine), long enough to starve the I/O thread's
    heartbeats.  The receiver rebuilds plain ``bytes`` and never sees this class."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return bytes, (pickle.PickleBuffer(self.data),)


def _out_of_band(value: Any) -> Any:
    return _OutOfBand(value) if type(value) is bytes and len(value) >= LARGE_BYTES else value


def pickle_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frames:
    """The payload of one call, ``(args, kwargs)``; a large ``bytes`` argument
    travels as a frame of its own without a copy.  Decoded by :func:`decode`."""
    for value in (*args, *kwargs.values()) if kwargs else args:  # a plain loop: ~3x cheaper than any(<genexpr>)
        if type(value) is bytes and len(value) >= LARGE_BYTES:
            args = tuple(map(_out_of_band, args))
            kwargs = {name: _out_of_band(value) for name, value in kwargs.items()}
            break
    return pickle_frames((args, kwargs))


def describe(obj: object) -> str:
    text = repr(obj)
    return f"{type(obj).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def function_name(fn: object) -> str:
    """How messages name a task's function: its qualified name, or for a callable
    without one (a partial, an instance with ``__call__``) its type's."""
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def frames_size(frames: Sequence[Any]) -> int:
    """Bytes a payload takes on the wire, whatever buffer type each frame is;
    what ``max_message_bytes`` is compared with on both ends."""
    if len(frames) == 1 and type(frames[0]) is bytes:  # a submit's small payload: skip the memoryview
        return len(frames[0])
    return sum(memoryview(frame).nbytes for frame in frames)


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

def loads_function(payload: Any) -> Callable[..., Any]:
    return pickle.loads(payload)


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
    exc.__cause__ = RemoteTraceback(with_local_source(tb))
    return exc


_FRAME_LINE = re.compile(r'  File "(?P<file>[^"\n]+)", line (?P<line>\d+), in [^\n]*\n')


def with_local_source(tb: str) -> str:
    """A remote traceback with the source lines the worker could not show filled
    in from this process: a function defined in a notebook cell or a script that
    only the caller has (IPython registers cells with :mod:`linecache`; a worker
    on another machine lacks the script) is shown with its lines, as locally."""
    out: list[str] = []
    position = 0
    for match in _FRAME_LINE.finditer(tb):
        end = match.end()
        out.append(tb[position:end])
        position = end
        if tb.startswith("    ", end):  # the worker showed the line
            continue
        source = linecache.getline(match["file"], int(match["line"])).strip()
        if source:
            out.append(f"    {source}\n")
    out.append(tb[position:])
    return "".join(out)
