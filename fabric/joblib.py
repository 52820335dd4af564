"""joblib's ``"fabric"`` backend: ``joblib.Parallel``, and what is built on it
(scikit-learn's ``n_jobs``), run on a fabric's workers.

::

    import fabric.joblib  # registers the backend with joblib
    with joblib.parallel_config(backend="fabric"):  # or backend="fabric", fabric=fx
        joblib.Parallel(n_jobs=-1)(joblib.delayed(f)(x) for x in xs)
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

It runs on the fabric given as ``fabric=``, else on the open fabric this
process connected last (looked up at each ``Parallel`` call, so a notebook
that reconnects is followed), else it connects the embedded one (which then
stays open for later calls, and stops at exit like any other).

How a ``Parallel`` call travels, as dask.distributed's and ray's backends do
it, with joblib's own ``ParallelBackendBase`` and ``AutoBatchingMixin``::

    caller: Parallel cuts the calls into batches (auto-sized to 0.2-2 s of work)
            ─► FabricBackend.submit: cloudpickle the batch, fx.submit(call_pickled, bytes)
    worker: call_pickled(bytes) ─► the batch's list of results
    I/O thread: done callback ─► the backend's callback thread ─► joblib's callback
            (records the outcome, dispatches the next batch)

A batch is cloudpickled whole because its calls may hold functions of the
user's script or notebook.  joblib's callbacks run on a thread of the backend's
own, never on the fabric's I/O thread: they take joblib's lock and read the
caller's generator of calls.  Calls inside a batch that use joblib again run
sequentially on their worker: the workers are already one per core.
``n_jobs=-1`` is every worker of the fabric.  Unlike loky, large numpy
arguments are not memory-mapped: each batch carries its own copy.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import Any

try:
    from joblib.parallel import (
        AutoBatchingMixin,
        ParallelBackendBase,
        SequentialBackend,
        register_parallel_backend,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fabric.joblib needs joblib: pip install 'zmq-fabric[joblib]'") from exc

from .calls.pickled import call_pickled
from .client.executor import Fabric, connect, current_fabric
from .client.shipping import dumps_function

__all__ = ["FabricBackend"]

Callback = Callable[[concurrent.futures.Future], None]


class FabricBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """The ``"fabric"`` joblib backend; ``fabric=`` names the fabric to run on."""

    default_n_jobs = -1  # Parallel() without n_jobs: every worker
    supports_retrieve_callback = True  # results are read in the callback; timeouts and generators work
    uses_threads = False
    supports_sharedmem = False

    _connected: Fabric | None = None  # the embedded fabric a backend connected, kept for later calls

    def __init__(self, fabric: Fabric | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._given = fabric
        self._fabric: Fabric | None = None  # the one a Parallel call runs on, from configure to terminate
        self._pending: set[concurrent.futures.Future] = set()
        self._callbacks: concurrent.futures.ThreadPoolExecutor | None = None

    def fabric(self) -> Fabric:
        """The fabric to run on: the one given, else the open one connected last (so a
        notebook that reconnects is followed), else a new embedded one."""
        if self._fabric is not None:
            return self._fabric
        if self._given is not None:
            return self._given
        current = current_fabric()
        if current is None:
            current = FabricBackend._connected = connect()
        return current

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            # Before the first heartbeat nothing is known: guess a core count rather than
            # 1, with which joblib would keep only two batches in flight for the whole call.
            workers = self.fabric().workers() or os.cpu_count() or 1
            return max(workers + 1 + (n_jobs or -1), 1)  # joblib's convention: -1 all, -2 all but one
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **kwargs: Any) -> int:
        self.parallel = parallel
        self.terminate()
        self._fabric = self.fabric()
        self._callbacks = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fabric-joblib")
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callback | None = None) -> concurrent.futures.Future:
        future = self.fabric().submit(call_pickled, dumps_function(func))
        self._pending.add(future)
        future.add_done_callback(lambda done: self._done(done, callback))
        return future

    def _done(self, future: concurrent.futures.Future, callback: Callback | None) -> None:
        """On the I/O thread: hand joblib's callback to the backend's own thread."""
        self._pending.discard(future)
        callbacks = self._callbacks
        if callback is not None and callbacks is not None:
            try:
                callbacks.submit(callback, future)
            except RuntimeError:  # the call has ended (terminate): nobody waits for this outcome
                pass

    def retrieve_result_callback(self, future: concurrent.futures.Future) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: cancel its batches not yet started (those running finish, and are dropped)."""
        for future in list(self._pending):
            future.cancel()

    def terminate(self) -> None:
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=False)
            self._callbacks = None
        self._fabric = None
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """joblib calls inside a batch run sequentially on their worker (one per core already)."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


register_parallel_backend("fabric", FabricBackend)
