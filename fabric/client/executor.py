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
import functools
import itertools
import logging
import os
import socket
import threading
import types
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import zmq

from ..calls.registry import named_digest
from ..calls.setup import Setup
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
from ..wire import codec
from ..wire.ref import Ref
from ..wire.security import ClusterKey, Gatekeeper, gatekeeper
from . import display
from .cache import FabricCache
from .cluster_view import FIRST_CONTACT_S, ClusterView
from .embedded import EmbeddedNode
from .everywhere import pinned_call, setup_batches
from .futures import Future, FutureGroup
from .io_loop import IOLoop
from .objects import ObjectClient, ObjectInfo
from .options import TaskOptions
from .placement import Placement
from .shipping import ship_modules_by_value
from .sockets import io_threads
from .statistics import FabricStatistics
from .submission import FunctionShipper, Pipeline, TaskAPI

__all__ = ["Fabric", "connect"]

log = logging.getLogger(__name__)

_open_fabrics: weakref.WeakSet[Fabric] = weakref.WeakSet()
_connections = itertools.count()  # orders open fabrics for current_fabric()
CONTACT_SLACK_S = 1.0  # beyond first contact's timeout, for the I/O thread to say it failed
_open: set[_Lifecycle] = set()  # fabrics not shut down yet, closed at exit
_closing: set[threading.Thread] = set()  # shutdown(wait=False)s still finishing their work


def connect(
    address: str | os.PathLike[str] | int | None = None,
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
    forward_output: bool = True,
    placement: str | Placement | None = None,
    initializer: Callable[..., Any] | str | None = None,
    initargs: Iterable[Any] = (),
    ship_modules: bool | Iterable[str | types.ModuleType] = True,
) -> Fabric:
    """Start using a fabric.

    - ``connect()``: the embedded default, a local node with ``workers`` worker
      processes (default: one per core, each holding ``prefetch`` batches and
      killed and replaced above ``memory_limit_mb`` of RSS, 0 for no limit),
      stopped when the fabric shuts down or is garbage-collected.  It returns
      once the workers are ready.  ``connect(4)`` is ``connect(workers=4)``, as
      ``ProcessPoolExecutor(4)`` means four processes.
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
    What tasks print comes back with their results and is written by the thread
    that reads them, each line prefixed with where it ran; ``forward_output=False``
    leaves it in the nodes' log files instead (see :mod:`fabric.node.output`).

    ``placement`` is the default policy of every call (see
    :mod:`fabric.client.placement`); ``initializer(*initargs)`` runs once in
    each worker before its first task for this client, as in
    ``ProcessPoolExecutor``, and one that raises fails every call.
    ``ship_modules``: functions of the user's own modules (beside the script
    or notebook, not installed) go by value, with their module's code, so
    nodes need not have them; a list of modules (or names) forces those by
    value too, and ``False`` sends every module's functions by reference.
    """
    if isinstance(address, int):  # connect(4), as ProcessPoolExecutor(4)
        if isinstance(address, bool) or workers is not None:
            raise TypeError(f"connect({address!r}, workers={workers!r}): give the number of workers once, "
                            "as connect(N) or connect(workers=N)")
        address, workers = None, address
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
                        forward_output=forward_output, initializer=initializer, initargs=tuple(initargs))
        fabric._io.wait_workers(local.workers, config.connect_timeout_s)  # a notebook's next cell finds them ready
    else:
        controls = [node.address for node in config.nodes]
        bind_where = client_bind_host(controls[0], config.insecure or key is not None)
        fabric = Fabric(controls, bind_where, config, key, forward_output=forward_output, initializer=initializer,
                        initargs=tuple(initargs))
        # Until a node has said how many workers it has: fx.workers() then counts them,
        # never a bare 0.  Nothing answering costs first contact's timeout, after which
        # calls fail at once, as they would have then anyway.
        fabric._io.wait_contact(min(FIRST_CONTACT_S, config.connect_timeout_s) + CONTACT_SLACK_S)
    if placement is not None:
        fabric._task_options = fabric._task_options.merged(placement=placement)
    return fabric


def current_fabric() -> Fabric | None:
    """The open fabric this process connected last, or None: what runs work
    handed over without naming a fabric (``fabric.joblib``'s backend)."""
    return max((fabric for fabric in list(_open_fabrics) if not fabric._closed),
               key=lambda fabric: fabric._connection, default=None)


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

    A fabric nothing refers to any more (a notebook cell that ran
    ``fx = fabric.connect()`` again) shuts down as ``shutdown(wait=False)``
    would, as ``ProcessPoolExecutor`` does: its views and unfinished maps keep
    it alive, and what was submitted still finishes.
    """

    def __init__(
        self, controls: list[str], bind_where: str, config: ClusterConfig, key: ClusterKey | None = None, *,
        embedded: EmbeddedNode | None = None, forward_output: bool = True,
        initializer: Callable[..., Any] | str | None = None, initargs: tuple[Any, ...] = (),
    ) -> None:
        self._task_options = TaskOptions()
        self._embedded = embedded
        self._context = zmq.Context(io_threads=io_threads(key))
        self.address = controls[0]
        gate: Gatekeeper | None = None
        try:
            gate = gatekeeper(self._context, key)
            self._io = IOLoop(
                self._context, f"c-{uuid.uuid4().hex[:12]}".encode(), bind_where, retries=config.retries,
                heartbeat_interval_s=config.heartbeat_interval_s, liveness_s=config.liveness_s,
                connect_timeout_s=config.connect_timeout_s, max_message_bytes=config.max_message_bytes,
                cache_replicas=config.cache.replicas, key=key, forward_output=forward_output,
                locality_wait_s=config.store.locality_wait_s,
            )
            self._lifecycle = _Lifecycle(self._io, embedded, self._context, gate)
            self._pipeline = Pipeline(
                self._io.post_batch, self._io.capacity, self._io.workers, self._lifecycle.check_open,
                FunctionShipper(config.retries), self._io.cache, config.max_message_bytes, self._io.interrupted,
                self._io.objects, functools.partial(_live_node_ids, self._io.view), config.store.locality_bytes,
                self._io.tasks,
            )
            self._objects = ObjectClient(
                self._context, self._io.objects, self._io.view.live_nodes, self._io.post, config.cache.replicas,
                key, config.connect_timeout_s,
            )
            if initializer is not None:  # its failure reaches the I/O loop, never the fabric, which may be collected
                self._io.ventilator.setup = setup_batches(
                    (named_digest(initializer), b"") if isinstance(initializer, str)
                    else self._pipeline.shipper.pickles.get(Setup(initializer)), _name(initializer), initargs,
                    self._io.fail_all,
                )
            self.cache = FabricCache(self._io.cache, self._io.statistics)
            for control in controls:
                self._io.add_node(control, embedded.sentinel() if embedded else None)
            self._io.start()
            _open.add(self._lifecycle)
        except BaseException:
            if embedded is not None:
                embedded.stop()
            if gate is not None:
                gate.stop()
            self._context.term()
            raise
        self._connection = next(_connections)
        _open_fabrics.add(self)
        # On the pipeline, which the fabric, its views and its map streams share: the
        # last of them to go shuts the fabric down.  Nothing of ours refers back to the
        # fabric, so that is as soon as the user lets go of it, not at a later collection.
        finalizer = weakref.finalize(self._pipeline, self._lifecycle.close, wait=False)
        finalizer.atexit = False  # _finish_at_exit waits for everything instead

    @property
    def _closed(self) -> bool:
        return self._lifecycle.closed

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work and, with ``cancel_futures``, cancel what has not
        started.  The rest runs to completion, as with the stdlib executors:
        ``wait=True`` returns once it has, the nodes have taken every cache
        write-back (at most the cache's timeout) and the embedded node has
        stopped; ``wait=False`` at once, the rest finishing in the background;
        the interpreter waits for it at exit."""
        self._lifecycle.close(wait, cancel_futures)

    # -- objects ---------------------------------------------------------------------

    def put(self, obj: Any, *, name: str | None = None) -> Ref:
        """Store ``obj`` on the cluster once and return a small :class:`~fabric.Ref` to it.

        Pass the Ref to ``submit``/``map`` (at any depth of the arguments) and
        each task receives the value, read from its node's copy; equal objects
        are stored once.  Unnamed, the object lives while this client holds a
        Ref to it (until :meth:`free`, or the client closes); with ``name`` it is
        stored on the name's ring owner (and replica) and outlives the client
        (:meth:`ref`, :meth:`objects`, :meth:`delete`).
        """
        self._lifecycle.check_open()
        return self._objects.put(obj, name or "")

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        """The value of a :class:`~fabric.Ref` (or of each in a list), fetched from
        a node holding it; a future is waited for first.  Raises
        :class:`~fabric.ObjectLostError` when every copy is gone (a kept result
        whose ``submit`` or ``map`` this client holds is computed again instead) and
        :class:`~fabric.UnknownObjectError` for a Ref the cluster does not know."""
        if isinstance(refs, (list, tuple)):
            return [self.get(ref, timeout) for ref in refs]
        if isinstance(refs, concurrent.futures.Future):
            refs = refs.result(timeout)
        if not isinstance(refs, Ref):
            raise TypeError(f"get() takes a fabric.Ref, a future or a list of them, got {type(refs).__name__}")
        return self._objects.get(refs, timeout)

    def free(self, ref: Ref) -> None:
        """Release the object now (its Refs become dangling); otherwise it goes
        when its last Ref here is garbage-collected, or when the fabric closes."""
        if ref.owner == self._io.client_id:
            self._io.objects.free(ref)  # forgotten now: a put of equal bytes next is its own
            self._io.post(self._io.objects.flush)

    def ref(self, name: str) -> Ref:
        """A Ref to the named object (put by any client); UnknownObjectError if none."""
        return self._objects.ref(name)

    def objects(self) -> list[ObjectInfo]:
        """The named objects on the cluster: name, size and the nodes holding each."""
        return self._objects.objects()

    def delete(self, name: str) -> bool:
        """Remove the named object from every node; False if there was none."""
        return self._objects.delete(name)

    # -- statistics ------------------------------------------------------------------

    def statistics(self) -> FabricStatistics:
        """What this client knows of the fabric, as one frozen record: the live
        nodes (their latest heartbeats), the workers serving this client, the
        result cache's figures and this client's counters.  No round trip."""
        return self._io.statistics()

    def workers(self) -> int:
        """``statistics().workers``: worker processes serving this client."""
        return self.statistics().workers

    def wait_for_workers(self, n: int = 1, timeout: float | None = None) -> int:
        """Block until at least ``n`` worker processes serve this client and return
        how many do, as Dask's ``Client.wait_for_workers``: for nodes still
        starting, or joining later (a cluster grows while the client runs).

        Raises :class:`TimeoutError` after ``timeout`` seconds (None: no limit),
        :class:`~fabric.NoNodesError` when no node answers first contact, and
        :class:`~fabric.ClosedError` when the fabric shuts down meanwhile.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"wait_for_workers(n): n must be a positive int, got {n!r:.80}")
        self._lifecycle.check_open()
        attached = self._io.wait_workers(n, timeout)
        self._lifecycle.check_open()
        failed = self._io.broken or self._io.view.unreachable
        if failed is not None:
            raise failed
        if not attached:
            raise TimeoutError(f"{self.workers()} of the {n} workers waited for serve this client after {timeout} s")
        return self.workers()

    def nodes(self) -> tuple[NodeStats, ...]:
        """``statistics().nodes``: the live nodes, as their latest heartbeats describe them."""
        return self.statistics().nodes

    def tasks(self) -> dict[str, list[str]]:
        """The tasks the live nodes define (``@fabric.task``): name -> names of
        the nodes defining it.  Waits for the first node to answer, a few seconds
        at most."""
        return self._io.tasks()

    def run(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)`` once on every live worker (warm a cache,
        load a model, read the environment); returns ``{worker id: its result,
        or the exception it raised}``.  A task called by name runs on the
        workers of the nodes defining it.  Waits for the workers the nodes
        report to attach (up to ``connect_timeout_s``)."""
        self._lifecycle.check_open()
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
        """Until every worker the nodes report has attached to this client or,
        after first contact's time, at least one has (none: NoNodesError)."""
        io, view = self._io, self._io.view
        if not io.wait_all_attached(view.first_contact_s):
            io.wait_workers(1, max(0.0, view.connect_timeout_s - view.first_contact_s))
        if io.broken is not None:
            raise io.broken
        if not io.ventilator.workers:
            raise NoNodesError(f"no worker attached within {view.connect_timeout_s:g} s to run on")

    def __enter__(self) -> Fabric:
        return self

    def __repr__(self) -> str:
        return display.one_line(self.address, self._displayed())

    def _repr_html_(self) -> str:
        """Jupyter's display of a cell ending in ``fx``: nodes, workers, load, tasks, cache."""
        return display.html_table(self.address, self._displayed())

    def _displayed(self) -> FabricStatistics | None:
        """What the displays show: the statistics, or None once closed (or never fully opened)."""
        return None if self._closed or not hasattr(self, "_io") else self.statistics()


class _Lifecycle:
    """Whether a fabric is open, and how it closes: what ``shutdown`` does, and
    what the fabric's finalizer does when it is garbage-collected.  It holds
    the fabric's parts, never the fabric, so that the fabric can be collected."""

    def __init__(self, io: IOLoop, embedded: EmbeddedNode | None, context: zmq.Context,
                 gate: Gatekeeper | None) -> None:
        self.io = io
        self.embedded = embedded
        self.context = context
        self.gate = gate
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("cannot schedule new work after shutdown()")

    def close(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        _open.discard(self)
        if cancel_futures:
            self.io.post(self.io.cancel_pending)
        if wait:
            self._finish()
            return
        closer = threading.Thread(target=self._finish, name="fabric-shutdown", daemon=True)
        _closing.add(closer)
        closer.start()

    def _finish(self) -> None:
        """Wait for what was submitted and for its cache write-backs, then release
        the sockets and the embedded node."""
        self.io.wait_idle()
        cache = self.io.cache
        if not cache.wait_stored(cache.timeout_s):
            log.warning("shutdown: some cache write-backs were not acknowledged within %.0f s; they may be lost",
                        cache.timeout_s)
        self.io.stop()
        if self.embedded is not None:
            self.embedded.stop()
        if self.gate is not None:
            self.gate.stop()
        self.context.term()
        _closing.discard(threading.current_thread())


def _live_node_ids(view: ClusterView) -> set[bytes]:
    """The ids of the live nodes (a function of the view, not of the fabric: the pipeline
    that holds it must not keep the fabric alive)."""
    return {node.node_id for node in list(view.live_nodes())}


@atexit.register
def _finish_at_exit() -> None:
    """Submitted work completes before the interpreter exits, as the stdlib
    executors promise (they join their threads at exit)."""
    for lifecycle in list(_open):
        lifecycle.close(wait=True)
    for closer in list(_closing):
        closer.join()


def _name(fn: Callable[..., Any] | str) -> str:
    return fn if isinstance(fn, str) else codec.function_name(fn)
