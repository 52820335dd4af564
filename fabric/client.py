"""The public client: :func:`connect` and :class:`Fabric`, a concurrent.futures Executor.

User threads call ``submit``/``map``/``map_reduce`` here; they serialize in
the calling thread (so an unpicklable argument raises at the call) and hand
batches to the client's I/O thread (:mod:`fabric.io_loop`), which alone owns
the sockets::

    user threads ──submit/map──► Fabric ──Batch──► IOLoop ──► workers (on every node)
         ▲                                           │
         └──── Future.set_result / map stream ◄──────┘ results

Per-call options (timeouts, retries, cache) will come through a view,
``fx.options(...)``; ``submit`` passes every keyword to the function, exactly as
``Executor.submit`` does.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import os
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import zmq

from . import codec
from .batching import BatchSizer, balance_limit
from .embedded import EmbeddedNode
from .errors import ClosedError
from .futures import Future, FutureGroup
from .io_loop import IOLoop
from .mapping import MapStream, sized_length
from .protocol import Mode
from .ventilator import Batch, next_batch_id

__all__ = ["Fabric", "connect"]

T = TypeVar("T")
R = TypeVar("R")
_NO_INITIAL: Any = object()
DEFAULT_RETRIES = 3
DEFAULT_CREDITS = 2  # batches a worker holds: one running, one waiting in its socket
_open_fabrics: weakref.WeakSet[Fabric] = weakref.WeakSet()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def connect(
    address: str | None = None,
    *,
    workers: int | None = None,
    credits: int = DEFAULT_CREDITS,
    retries: int = DEFAULT_RETRIES,
) -> Fabric:
    """Start using a fabric.

    With no ``address``, start the embedded default: a local node with
    ``workers`` worker processes (default: one per core) that stops when the
    fabric is shut down.  With ``tcp://host:port``, register with a running
    node on this machine's loopback.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if credits < 1:
        raise ValueError(f"credits must be >= 1, got {credits}")
    if address is None:
        return Fabric(EmbeddedNode(workers or default_workers(), credits), retries=retries)
    return Fabric(RemoteNode(address), retries=retries)


class RemoteNode:
    """A node started elsewhere (``python -m fabric.node``); it outlives the client."""

    def __init__(self, endpoint: str) -> None:
        if not endpoint.startswith(("tcp://127.", "tcp://localhost:", "ipc://")):
            raise ValueError(f"connect({endpoint!r}): only loopback tcp or ipc node addresses are supported")
        self.endpoint = endpoint
        self.bind_where = "127.0.0.1"

    def sentinel(self) -> None:
        return None

    def stop(self) -> None:
        pass


class Fabric(concurrent.futures.Executor):
    """Runs functions on the workers of every node it is connected to.

    A :class:`concurrent.futures.Executor`: code written for
    ``ProcessPoolExecutor`` works unchanged.  Thread-safe.
    """

    def __init__(self, nodes: EmbeddedNode | RemoteNode, *, retries: int = DEFAULT_RETRIES) -> None:
        self._nodes = nodes
        self._functions = codec.FunctionCache()
        self._context = zmq.Context()
        self._closed = False
        try:
            self._io = IOLoop(self._context, f"c-{uuid.uuid4().hex[:12]}".encode(), nodes.bind_where, retries)
            self._io.add_node(nodes.endpoint, nodes.sentinel())
            self._io.start()
        except BaseException:
            nodes.stop()
            self._context.term()
            raise
        _open_fabrics.add(self)

    # -- Executor API ---------------------------------------------------------------

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; every keyword goes to ``fn``.

        Raises :class:`~fabric.SerializationError` here, in the caller, when the
        function or an argument cannot be serialized.
        """
        self._check_open()
        digest, fn_payload = self._functions.get(fn)
        payload = codec.pickle_frames((args, kwargs))
        future = Future()
        owner = FutureGroup([future])
        batch = Batch(next_batch_id(), digest, fn_payload, Mode.CALL, codec.PICKLE, [len(payload)], payload, 1, owner)
        self._io.post_batch(batch)
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> Iterator[R]:
        """Lazily apply ``fn`` to every item (``fn(*items)`` for several iterables).

        Results come in input order, or as they finish with ``ordered=False``.
        Work starts at once; input is read as results are consumed, with a
        bounded number of batches in flight.  ``chunksize`` fixes the batch
        size (default: adapted to a few ms of work per batch).  ``timeout``
        bounds the wait, from this call, as in ``Executor.map``.
        """
        self._check_open()
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        mode = Mode.MAP if len(iterables) == 1 else Mode.STARMAP
        items = iter(iterables[0]) if len(iterables) == 1 else zip(*iterables)
        limit = balance_limit(sized_length(iterables), self._io.workers() or default_workers())
        stream = MapStream(
            self._functions.get(fn),
            mode,
            items,
            post=self._io.post_batch,
            capacity=self._io.capacity,
            sizer=BatchSizer(chunksize, limit),
            ordered=ordered,
            deadline=None if timeout is None else time.monotonic() + timeout,
        )
        stream.start()
        return stream.results()

    def map_reduce(
        self,
        mapper: Callable[[T], R],
        reducer: Callable[[Any, R], Any],
        iterable: Iterable[T],
        *,
        initial: Any = _NO_INITIAL,
        ordered: bool = False,
        chunksize: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``reduce(reducer, map(mapper, iterable), initial)``, folding in the client.

        The mapper runs on the workers; the reducer folds each result into the
        accumulator as it arrives, so no list of all results is kept.  Results
        are folded in completion order (the reducer should be associative and
        commutative), or in input order with ``ordered=True``.
        """
        results = self.map(mapper, iterable, timeout=timeout, chunksize=chunksize, ordered=ordered)
        if initial is _NO_INITIAL:
            return functools.reduce(reducer, results)
        return functools.reduce(reducer, results, initial)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work, optionally cancel what has not started, and
        (with ``wait``) wait for the rest; then stop the embedded node."""
        if self._closed:
            return
        self._closed = True
        _open_fabrics.discard(self)
        if cancel_futures:
            self._io.post(self._io.cancel_pending)
        if wait:
            self._io.wait_idle()
        self._io.stop()
        self._nodes.stop()
        self._context.term()

    # -- helpers ---------------------------------------------------------------------

    def workers(self) -> int:
        """Worker processes currently serving this client."""
        return self._io.workers()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("cannot schedule new work after shutdown()")

    def __enter__(self) -> Fabric:
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.workers()} workers"
        return f"<fabric.Fabric {self._nodes.endpoint} ({state})>"


@atexit.register
def _shutdown_open_fabrics() -> None:
    for fabric in list(_open_fabrics):
        fabric.shutdown(wait=False)
