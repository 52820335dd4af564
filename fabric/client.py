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
import socket
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import zmq

from . import codec
from .batching import BatchSizer, balance_limit
from .config import (
    DEFAULT_PREFETCH,
    ClusterConfig,
    ConfigError,
    NodeConfig,
    check_address,
    default_workers,
    is_loopback,
    load_config,
)
from .embedded import EmbeddedNode
from .errors import ClosedError
from .heartbeat import NodeStats
from .futures import Future, FutureGroup
from .io_loop import IOLoop
from .mapping import MapStream, sized_length
from .protocol import Mode
from .ventilator import Batch, next_batch_id

__all__ = ["Fabric", "connect"]

T = TypeVar("T")
R = TypeVar("R")
_NO_INITIAL: Any = object()
_open_fabrics: weakref.WeakSet[Fabric] = weakref.WeakSet()


def connect(
    address: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    prefetch: int | None = None,
    retries: int | None = None,
    heartbeat_interval_s: float | None = None,
    liveness_s: float | None = None,
    insecure: bool | None = None,
) -> Fabric:
    """Start using a fabric.

    - ``connect()``: the embedded default, a local node with ``workers`` worker
      processes (default: one per core), stopped when the fabric shuts down.
    - ``connect("cluster.toml")``: the nodes a cluster file names.
    - ``connect("tcp://host:port")``: one running node; the others are learned
      from its heartbeats.

    Keywords override the cluster file's settings.
    """
    for name, value in (("workers", workers), ("prefetch", prefetch), ("retries", retries)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    config = _cluster_config(address)
    overrides = {"heartbeat_interval_s": heartbeat_interval_s, "liveness_s": liveness_s, "retries": retries,
                 "insecure": insecure}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if address is None:
        embedded = EmbeddedNode(
            workers or default_workers(), prefetch or DEFAULT_PREFETCH, config.heartbeat_interval_s, config.liveness_s
        )
        return Fabric([embedded.endpoint], embedded.bind_where, config, embedded=embedded)
    controls = [node.address for node in config.nodes]
    return Fabric(controls, client_bind_host(controls[0], config.insecure), config)


def _cluster_config(address: str | os.PathLike[str] | None) -> ClusterConfig:
    if address is None:
        return ClusterConfig()
    text = os.fspath(address)
    if text.startswith(("tcp://", "ipc://")):
        if text.startswith("tcp://"):
            check_address(text, "connect()")
        return ClusterConfig(nodes=(NodeConfig(name=text, address=text),), source="connect()")
    config = load_config(text)
    if not config.nodes:
        raise ConfigError(f"{text}: names no [[node]] to connect to")
    return config


def client_bind_host(control: str, insecure: bool) -> str:
    """Where the client binds its ventilator and sink so that nodes reach them:
    loopback for loopback nodes, else this host's address on the route to the
    node (which needs ``insecure`` until authentication exists)."""
    if control.startswith("ipc://"):
        return "127.0.0.1"
    host, port = check_address(control, "connect()")
    if is_loopback(host):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host.strip("[]"), port))  # a UDP connect sends nothing; it only picks the route
        local = probe.getsockname()[0]
    if not insecure:
        raise ConfigError(
            f"nodes at {control} must reach this client at {local}, which is not loopback: fabric runs code sent "
            "to its sockets and has no authentication yet; pass insecure=True (or insecure = true in cluster.toml) "
            "on a network you trust"
        )
    return local


class Fabric(concurrent.futures.Executor):
    """Runs functions on the workers of every node it is connected to.

    A :class:`concurrent.futures.Executor`: code written for
    ``ProcessPoolExecutor`` works unchanged.  Thread-safe.
    """

    def __init__(
        self, controls: list[str], bind_where: str, config: ClusterConfig, *, embedded: EmbeddedNode | None = None
    ) -> None:
        self._embedded = embedded
        self._functions = codec.FunctionCache()
        self._context = zmq.Context()
        self._closed = False
        self.address = controls[0]
        try:
            self._io = IOLoop(
                self._context, f"c-{uuid.uuid4().hex[:12]}".encode(), bind_where, retries=config.retries,
                heartbeat_interval_s=config.heartbeat_interval_s, liveness_s=config.liveness_s,
            )
            for control in controls:
                self._io.add_node(control, embedded.sentinel() if embedded else None)
            self._io.start()
        except BaseException:
            self._stop_embedded()
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
        self._stop_embedded()
        self._context.term()

    def _stop_embedded(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()

    # -- helpers ---------------------------------------------------------------------

    def workers(self) -> int:
        """Worker processes currently serving this client."""
        return self._io.workers()

    def nodes(self) -> list[NodeStats]:
        """The live nodes with their latest statistics (from their heartbeats)."""
        return self._io.nodes()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("cannot schedule new work after shutdown()")

    def __enter__(self) -> Fabric:
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.workers()} workers"
        return f"<fabric.Fabric {self.address} ({state})>"


@atexit.register
def _shutdown_open_fabrics() -> None:
    for fabric in list(_open_fabrics):
        fabric.shutdown(wait=False)
