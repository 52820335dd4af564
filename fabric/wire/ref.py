"""``fabric.Ref``: a small, picklable handle on an object held by the fabric's nodes.

A Ref names its object by key (a content digest for ``put``, a random id for a
kept result), says how large it is, which nodes hold it (node id and the
endpoint of the node's object socket) and which client owns it (``b""`` for a
named object, which the nodes own)::

    client: fx.put(x) ─► Ref(key, size, holders, owner) ──pickled in a task's args──► worker
    worker: unpickling calls load_ref() ─► the resolver set while a batch is decoded
            returns the value (from its node's store, fetched from a holder first if needed)
    client: unpickling calls load_ref() ─► the Ref, counted by its owner's object table

Unpickling is the hook, so a Ref nested anywhere in a task's arguments arrives
as its value and plain arguments cost nothing: no argument is inspected.
Pickling a Ref while a collector is active (:func:`collecting`) also notes it,
which is how the client learns, in the same pass that encodes a batch, which
objects the batch needs and so where it should run.

A fabric ``Future`` given as an argument pickles through :func:`value_of`
(its result inline) or, when it failed, through :func:`failed_argument`: the
worker then fails the items that hold one without running them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import UnknownObjectError
from . import codec
from .endpoint import is_endpoint

KEY_BYTES = 16  # sha256 truncated: content keys of puts, random ids of kept results
MAX_HOLDERS = 16  # holders one Ref may name; more is forged
MAX_NAME_CHARS = 256

Holder = tuple[bytes, str]  # (node id, object endpoint)

_collect = threading.local()  # .refs: the list a batch being encoded collects its Refs into
_resolver: Callable[[Ref], Any] | None = None  # a worker's, while it decodes a batch
_tables: dict[bytes, Callable[[Ref], object]] = {}  # client id -> its object table's adopt (client processes)
_redirects: dict[bytes, Ref] = {}  # key of a kept result whose nodes died -> the Ref of its recomputation
_failed_seen = threading.local()  # .flag: a failed argument was decoded (worker)


class Ref:
    """A handle on an object stored on the cluster (see :meth:`fabric.Fabric.put`).

    Passed to ``submit``/``map`` (at any depth of the arguments) it arrives in
    the task as the object's value; ``fx.get(ref)`` fetches it.  Equal Refs
    name the same object.  The object lives while its owner client holds a Ref
    to it (or until ``fx.free``); a named one until ``fx.delete``.
    """

    __slots__ = ("key", "size", "holders", "owner", "name", "_release", "__weakref__")

    def __init__(self, key: bytes, size: int, holders: tuple[Holder, ...], owner: bytes = b"", name: str = "") -> None:
        self.key = key
        self.size = size
        self.holders = holders
        self.owner = owner
        self.name = name
        self._release: Callable[[bytes], None] | None = None  # set by the owning client's table

    def __reduce__(self) -> tuple[Any, ...]:
        now = current(self) if _redirects else self  # a lost kept result, computed again
        refs = getattr(_collect, "refs", None)
        if refs is not None:
            refs.append(now)
        return load_ref, (now.key, now.size, [list(h) for h in now.holders], now.owner, now.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        what = f"name={self.name!r} " if self.name else ""
        return f"<fabric.Ref {what}{self.key.hex()[:12]} {self.size:,} bytes on {len(self.holders)} node(s)>"

    def __del__(self) -> None:
        release = self._release
        if release is not None:
            release(self.key)

    @property
    def node_ids(self) -> tuple[bytes, ...]:
        return tuple(node_id for node_id, _ in self.holders)


def load_ref(key: Any, size: Any, holders: Any, owner: Any, name: Any) -> Any:
    """Unpickle a Ref: its value inside a worker decoding a batch, else the Ref
    (counted by its owner's table when that client lives in this process)."""
    ref = Ref(*checked(key, size, holders, owner, name))
    if _resolver is not None:
        return _resolver(ref)
    adopt = _tables.get(ref.owner)
    if adopt is not None:
        adopt(ref)
    return ref


def checked(key: Any, size: Any, holders: Any, owner: Any, name: Any) -> tuple[Any, ...]:
    """A Ref's fields as they arrived, checked: a forged one is refused here."""
    if type(key) is not bytes or len(key) != KEY_BYTES or type(size) is not int or size < 0:
        raise UnknownObjectError(f"not a fabric Ref: key {key!r:.40}, size {size!r:.20}")
    if type(owner) is not bytes or len(owner) > 255 or type(name) is not str or len(name) > MAX_NAME_CHARS:
        raise UnknownObjectError(f"not a fabric Ref: owner {owner!r:.40}, name {name!r:.40}")
    if type(holders) not in (list, tuple) or len(holders) > MAX_HOLDERS:
        raise UnknownObjectError("not a fabric Ref: bad holder list")
    out = []
    for holder in holders:
        if not (type(holder) in (list, tuple) and len(holder) == 2 and type(holder[0]) is bytes
                and type(holder[1]) is str and is_endpoint(holder[1])):
            raise UnknownObjectError(f"not a fabric Ref: bad holder {holder!r:.80}")
        out.append((holder[0], holder[1]))
    return key, size, tuple(out), owner, name


def start_collecting() -> list[Ref]:
    """Note every Ref this thread pickles from now until :func:`stop_collecting`, in
    the list returned (a batch's encoding; two calls, not a context manager, which
    cost W2's submit path ~2 us)."""
    refs: list[Ref] = []
    _collect.refs = refs
    return refs


def stop_collecting() -> None:
    _collect.refs = None


def encoding_a_batch() -> bool:
    """This thread is encoding a batch (between start_ and stop_collecting)."""
    return getattr(_collect, "refs", None) is not None


class resolving:  # noqa: N801 - used as a context manager, named like one
    """Refs unpickled inside the block become ``resolver(ref)`` (a worker decoding a
    batch).  A class, not a generator: it is entered once per batch on the worker."""

    __slots__ = ("resolver", "outer")

    def __init__(self, resolver: Callable[[Ref], Any]) -> None:
        self.resolver = resolver

    def __enter__(self) -> None:
        global _resolver
        self.outer, _resolver = _resolver, self.resolver
        _failed_seen.flag = False

    def __exit__(self, *exc: object) -> None:
        global _resolver
        _resolver = self.outer


def redirect(old_key: bytes, new: Ref | None) -> None:
    """Pickle Refs to ``old_key`` as ``new`` from now on (None: no more)."""
    if new is None:
        _redirects.pop(old_key, None)
    else:
        _redirects[old_key] = new


def current(ref: Ref) -> Ref:
    """``ref``, or the Ref of its newest recomputation: one lost in turn was computed
    again, and Refs to the first key go to the last (each hop's Ref held by the one before)."""
    while (newer := _redirects.get(ref.key)) is not None:
        ref = newer
    return ref


def register_table(owner: bytes, adopt: Callable[[Ref], object]) -> None:
    _tables[owner] = adopt


def unregister_table(owner: bytes) -> None:
    _tables.pop(owner, None)


# -- futures as arguments ---------------------------------------------------------------


def value_of(value: Any) -> Any:
    """What a finished future argument unpickles to: its result."""
    return value


class FailedArgument:
    """A failed future's place in a task's arguments: the worker raises its
    exception for the item instead of running it."""

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception


def failed_argument(record: list[Any]) -> FailedArgument:
    """What a failed future argument unpickles to (``record``: its error, as a worker sends one)."""
    _failed_seen.flag = True
    return FailedArgument(codec.rebuild_error(record))


def saw_failed_argument() -> bool:
    """A :class:`FailedArgument` was unpickled since the last :func:`resolving` began."""
    return getattr(_failed_seen, "flag", False)


def first_failure(args: Any) -> BaseException | None:
    """The exception of the first failed argument in ``args`` (top level or one
    container deep), or None."""
    for value in args if isinstance(args, (list, tuple)) else (args,):
        if isinstance(value, FailedArgument):
            return value.exception
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
        for item in inner:
            if isinstance(item, FailedArgument):
                return item.exception
    return None
