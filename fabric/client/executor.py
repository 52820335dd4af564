"""The public client: :func:`connect` and :class:`Fabric`, a concurrent.futures Executor.

User threads call ``submit``/``map``/``map_reduce`` here; they serialize in
the calling thread (so an unpicklable argument raises at the call) and hand
batches to the client's I/O thread (:mod:`fabric.client.io_loop`), which alone owns
the sockets::

    user threads ──submit/map──► Fabric ──Batch──► IOLoop ──► workers (on every node)
         ▲                                           │
         └──── Future.set_result / map stream ◄──────┘ results

``submit`` passes every keyword to the function, exactly as
``Executor.submit`` does, so per-call options (timeouts, retries, cache) go
through a view: ``fx.options(task_timeout=5).submit(f, x)`` (a
:class:`~fabric.FabricView`).  ``fx.statistics()`` reports what the client
knows of the fabric as one frozen record.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import socket
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import zmq

from ..cluster.stats import NodeStats
from ..config import (
    ClusterConfig,
    NodeSettings,
    check_address,
    check_settings,
    is_loopback,
    load_config,
)
from ..errors import ClosedError, ConfigError, NoNodesError
from ..task.registry import named_digest
from ..task.setup import Setup
from ..wire import codec
from ..wire.security import ClusterKey, Gatekeeper, gatekeeper
from .cache import FabricCache
from .embedded import EmbeddedNode
from .everywhere import pinned_call, setup_batches
from .futures import Future, FutureGroup
from .io_loop import IOLoop, io_threads
from .options import TaskOptions
from .placement import Placement
from .placing import known_tasks
from .shipping import ship_modules_by_value
from .statistics import FabricStatistics
from .submission import FunctionShipper, Pipeline, TaskAPI

__all__ = ["Fabric", "connect"]

log = logging.getLogger(__name__)

WORKERS_POLL_S = 0.01  # fx.run's wait for the workers the nodes report to attach
_open_fabrics: weakref.WeakSet[Fabric] = weakref.WeakSet()
_closing: set[threading.Thread] = set()  # shutdown(wait=False)s still finishing their work


def connect(
    address: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    prefetch: int | None = None,
    memory_limit_mb: int = 0,
    retries: int | None = None,
    heartbeat_interval_s: float | None = None,
    liveness_s: float | None = None,
    connect_timeout_s: float | None = None,
    max_message_bytes: int | None = None,
    insecure: bool | None = None,
    key_file: str | os.PathLike[str] | None = None,
    placement: str | Placement | None = None,
    initializer: Callable[..., Any] | str | None = None,
    initargs: Iterable[Any] = (),
    ship_modules: bool | Iterable[str | types.ModuleType] = True,
) -> Fabric:
    """Start using a fabric.

    - ``connect()``: the embedded default, a local node with ``workers`` worker
      processes (default: one per core, each holding ``prefetch`` batches and
      killed and replaced above ``memory_limit_mb`` of RSS, 0 for no limit),
      stopped when the fabric shuts down.
    - ``connect("cluster.toml")``: the nodes a cluster file names.
    - ``connect("tcp://host:port")``: one running node; the others are learned
      from its heartbeats.

    Keywords override the cluster file's settings (see :mod:`fabric.config`):
    ``connect_timeout_s`` is how long queued work waits for any worker before
    failing with :class:`~fabric.NoNodesError` once some node has answered (before
    that, calls fail after a few seconds without any answer, and at once with
    :class:`~fabric.AuthenticationError` when every node refuses the key);
    ``max_message_bytes`` caps one
    serialized batch of arguments or results; ``key_file`` is the cluster's
    key, which authenticates and encrypts every connection (see
    :mod:`fabric.wire.security`; default: the cluster file's, or ``$FABRIC_KEY_FILE``).

    ``placement`` is the default policy of every call (see
    :mod:`fabric.client.placement`); ``initializer(*initargs)`` runs once in
    each worker before its first task for this client, as in
    ``ProcessPoolExecutor``, and one that raises fails every call.
    ``ship_modules``: functions of the user's own modules (beside the script
    or notebook, not installed) go by value, with their module's code, so
    nodes need not have them; a list of modules (or names) forces those by
    value too, and ``False`` sends every module's functions by reference.
    """
    ship_modules_by_value(ship_modules)
    config = _cluster_config(address)
    overrides: dict[str, Any] = {
        "heartbeat_interval_s": heartbeat_interval_s, "liveness_s": liveness_s, "retries": retries,
        "connect_timeout_s": connect_timeout_s, "max_message_bytes": max_message_bytes, "insecure": insecure,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    check_settings(config, "connect()")
    node_values = {"workers": workers, "prefetch": prefetch, "memory_limit_mb": memory_limit_mb}
    local = config.node_settings(**{k: v for k, v in node_values.items() if v is not None})  # the embedded node's
    check_settings(local, "connect()")
    key = ClusterKey.find(key_file or config.key_file)
    if address is None:
        embedded = EmbeddedNode(replace(local, key_file=key.path if key is not None else ""))
        fabric = Fabric([embedded.endpoint], embedded.bind_where, config, key, embedded=embedded,
                        initializer=initializer, initargs=tuple(initargs))
    else:
        controls = [node.address for node in config.nodes]
        fabric = Fabric(controls, client_bind_host(controls[0], config.insecure or key is not None), config, key,
                        initializer=initializer, initargs=tuple(initargs))
    if placement is not None:
        fabric._task_options = fabric._task_options.merged(placement=placement)
    return fabric


def _cluster_config(address: str | os.PathLike[str] | None) -> ClusterConfig:
    if address is None:
        return ClusterConfig()
    text = os.fspath(address)
    if text.startswith(("tcp://", "ipc://")):
        if text.startswith("tcp://"):
            check_address(text, "connect()")
        return ClusterConfig(nodes=(NodeSettings(name=text, address=text),), source="connect()")
    config = load_config(text)
    if not config.nodes:
        raise ConfigError(f"{text}: names no [[node]] to connect to")
    return config


def client_bind_host(control: str, reachable: bool) -> str:
    """Where the client binds its ventilator and sink so that nodes reach them:
    loopback for loopback nodes, else this host's address on the route to the
    node (``reachable``: allowed, with a cluster key or ``insecure``)."""
    if control.startswith("ipc://"):
        return "127.0.0.1"
    host, port = check_address(control, "connect()")
    if is_loopback(host):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host.strip("[]"), port))  # a UDP connect sends nothing; it only picks the route
        local = probe.getsockname()[0]
    if not reachable:
        raise ConfigError(
            f"nodes at {control} must reach this client at {local}, which is not loopback: fabric runs code sent "
            "to its sockets; give the cluster a key (fabric-node keygen, then key_file= or key_file in "
            "cluster.toml), or pass insecure=True (insecure = true) on a network you trust"
        )
    return local


class Fabric(TaskAPI, concurrent.futures.Executor):
    """Runs functions on the workers of every node it is connected to.

    A :class:`concurrent.futures.Executor`: code written for
    ``ProcessPoolExecutor`` works unchanged.  Thread-safe.  ``submit``,
    ``map``, ``map_reduce`` and ``options`` come from
    :class:`~fabric.client.submission.TaskAPI`; ``cache`` is the result
    cache (a :class:`~fabric.FabricCache`).
    """

    def __init__(
        self, controls: list[str], bind_where: str, config: ClusterConfig, key: ClusterKey | None = None, *,
        embedded: EmbeddedNode | None = None, initializer: Callable[..., Any] | str | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._task_options = TaskOptions()
        self._embedded = embedded
        self._context = zmq.Context(io_threads=io_threads(key))
        self._closed = False
        self.address = controls[0]
        self._gatekeeper: Gatekeeper | None = None
        try:
            self._gatekeeper = gatekeeper(self._context, key)
            self._io = IOLoop(
                self._context, f"c-{uuid.uuid4().hex[:12]}".encode(), bind_where, retries=config.retries,
                heartbeat_interval_s=config.heartbeat_interval_s, liveness_s=config.liveness_s,
                connect_timeout_s=config.connect_timeout_s, max_message_bytes=config.max_message_bytes,
                cache_replicas=config.cache.replicas, key=key,
            )
            self._pipeline = Pipeline(
                self._io.post_batch, self._io.capacity, self._io.workers, self._check_open,
                FunctionShipper(config.retries), self._io.cache, config.max_message_bytes, self.tasks,
            )
            if initializer is not None:
                self._io.ventilator.setup = setup_batches(
                    (named_digest(initializer), b"") if isinstance(initializer, str)
                    else self._pipeline.shipper.pickles.get(Setup(initializer)), _name(initializer), initargs,
                    self._broken,
                )
            self.cache = FabricCache(self._io.cache, self.statistics)
            for control in controls:
                self._io.add_node(control, embedded.sentinel() if embedded else None)
            self._io.start()
        except BaseException:
            self._stop_embedded()
            self._release_context()
            raise
        _open_fabrics.add(self)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work and, with ``cancel_futures``, cancel what has not
        started.  The rest runs to completion, as with the stdlib executors:
        ``wait=True`` returns once it has, the nodes have taken every cache
        write-back (at most the cache's timeout) and the embedded node has
        stopped; ``wait=False`` at once, the rest finishing in the background;
        the interpreter waits for it at exit."""
        if self._closed:
            return
        self._closed = True
        _open_fabrics.discard(self)
        if cancel_futures:
            self._io.post(self._io.cancel_pending)
        if wait:
            self._finish()
            return
        closer = threading.Thread(target=self._finish, name="fabric-shutdown", daemon=True)
        _closing.add(closer)
        closer.start()

    def _finish(self) -> None:
        """Wait for what was submitted and for its cache write-backs, then release
        the sockets and the embedded node."""
        self._io.wait_idle()
        cache = self._io.cache
        if not cache.wait_stored(cache.timeout_s):
            log.warning("shutdown: some cache write-backs were not acknowledged within %.0f s; they may be lost",
                        cache.timeout_s)
        self._io.stop()
        self._stop_embedded()
        self._release_context()
        _closing.discard(threading.current_thread())

    def _stop_embedded(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()

    def _release_context(self) -> None:
        if self._gatekeeper is not None:
            self._gatekeeper.stop()
        self._context.term()

    # -- statistics ------------------------------------------------------------------

    def statistics(self) -> FabricStatistics:
        """What this client knows of the fabric, as one frozen record: the live
        nodes (their latest heartbeats), the workers serving this client, the
        result cache's figures and this client's counters.  No round trip."""
        return self._io.statistics()

    def workers(self) -> int:
        """``statistics().workers``: worker processes serving this client."""
        return self.statistics().workers

    def nodes(self) -> tuple[NodeStats, ...]:
        """``statistics().nodes``: the live nodes, as their latest heartbeats describe them."""
        return self.statistics().nodes

    def _broken(self, exc: BaseException) -> None:
        """The initializer failed: every call of this client fails with ``exc``, in the I/O thread."""
        self._io.post(lambda: self._io.fail_all(exc))

    def tasks(self) -> dict[str, list[str]]:
        """The tasks the live nodes define (``@fabric.task``): name -> names of
        the nodes defining it.  Waits for the first node to answer, a few seconds
        at most."""
        self._io.heard.wait(self._io.view.first_contact_s)
        return known_tasks(self.nodes())

    def run(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)`` once on every live worker (warm a cache,
        load a model, read the environment); returns ``{worker id: its result,
        or the exception it raised}``.  A task called by name runs on the
        workers of the nodes defining it.  Waits for the workers the nodes
        report to attach (up to ``connect_timeout_s``)."""
        self._check_open()
        shipped = self._shipped(fn, self._task_options, exact=False)
        payload = codec.pickle_call(args, kwargs)
        self._wait_for_workers()
        futures: dict[str, Future] = {}
        posted = threading.Event()

        def make(worker_id: bytes) -> Any:
            if isinstance(fn, str) and not self._io.defines(worker_id, fn):
                return None
            future = futures[worker_id.decode(errors="replace")] = Future(_name(fn))
            return pinned_call(shipped, payload, FutureGroup([future]), worker_id)

        if not self._io.post(lambda: self._io.on_every_worker(make, lambda _: posted.set())):
            raise ClosedError("the fabric was shut down")
        posted.wait()
        concurrent.futures.wait(list(futures.values()))
        return {worker: f.exception() or f.result() for worker, f in futures.items()}

    def _wait_for_workers(self) -> None:
        """Until every worker the nodes report has attached to this client (some must)."""
        deadline = time.monotonic() + self._io.view.connect_timeout_s
        settle = time.monotonic() + self._io.view.first_contact_s
        while True:
            attached, reported = self._io.attached()
            now = time.monotonic()
            if attached and (attached >= reported or now > settle):
                return
            if now > deadline or self._io.broken is not None:
                raise self._io.broken or NoNodesError(
                    f"no worker attached within {self._io.view.connect_timeout_s:g} s to run on")
            time.sleep(WORKERS_POLL_S)  # the I/O thread's counters, read racily: no event to wait on

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("cannot schedule new work after shutdown()")

    def __enter__(self) -> Fabric:
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.workers()} workers"
        return f"<fabric.Fabric {self.address} ({state})>"


@atexit.register
def _finish_at_exit() -> None:
    """Submitted work completes before the interpreter exits, as the stdlib
    executors promise (they join their threads at exit)."""
    for fabric in list(_open_fabrics):
        fabric.shutdown(wait=True)
    for closer in list(_closing):
        closer.join()


def _name(fn: Callable[..., Any] | str) -> str:
    return fn if isinstance(fn, str) else codec.function_name(fn)
