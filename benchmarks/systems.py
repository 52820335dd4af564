"""One small adapter per system, each used idiomatically with its batching knobs.

Every adapter runs the same top-level functions (``workloads.py``) on the same
number of worker processes.  ``maps`` lists the bulk-map variants of a system
(its knobs); the harness reports each and takes the best as the system's
figure.  ``caps`` bounds the items a slow system gets in a workload, so a full
run stays short.  A system whose package is missing is skipped with a printed
reason.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import Any

import fabric

from . import workloads as wl

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]]
ReduceFn = Callable[[Callable[[Any], Any], Callable[[Any, Any], Any], Iterable[Any], Any], Any]


class System:
    """Start/stop plus the operations the workloads need."""

    name = "?"
    requires: str | None = None  # an importable module, or None
    daemons = False
    """It keeps scheduler or worker daemons busy even when idle (heartbeats, polling): started for its own turn
    only, so it does not load the machine while the others are measured (it cost fabric's W4 ~40 %)."""
    caps: dict[str, float] = {}
    """Share of a workload's items this system gets ("W1", "W2", "W4", "W5", "W6"; "W1 <variant>" for one map
    variant), so that a slow system's turn stays within ~2–3 s in any mode.  Figures are rates (items / elapsed),
    so fewer items are fine."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    @classmethod
    def missing(cls) -> str | None:
        if cls.requires and importlib.util.find_spec(cls.requires) is None:
            return f"{cls.requires} is not installed (pip install '.[bench]')"
        return None

    def cap(self, n: int, workload: str, variant: str = "") -> int:
        """Of ``n`` items, how many this system runs (at least one)."""
        share = min(self.caps.get(workload, 1.0), self.caps.get(f"{workload} {variant}", 1.0))
        return max(1, round(n * share))

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def maps(self) -> dict[str, MapFn]:
        raise NotImplementedError

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def balanced(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """A map of tasks of some cost, with the knob a user would pick for it."""
        return next(iter(self.maps().values()))(fn, items)

    def round_trip(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return self.submit_all(fn, [arg])[0]

    def reduce(self, mapper: Callable[[Any], Any], reducer: Callable[[Any, Any], Any], items: Iterable[Any],
               initial: Any) -> Any:
        """Map on the workers, fold every result in this process."""
        return functools.reduce(reducer, self.maps()[self.reduce_map](mapper, items), initial)

    reduce_map = ""

    def reduces(self) -> dict[str, ReduceFn]:
        """The map-reduce variants: "" folds in this process; "combine" (where the system has
        one) also folds each batch or partition where it ran, as MapReduce's combiner."""
        return {"": self.reduce}


class Serial(System):
    """The per-core ceiling: a plain loop in this process."""

    name = "serial"

    def maps(self) -> dict[str, MapFn]:
        return {"map": lambda fn, items: list(map(fn, items))}

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [fn(x) for x in items]

    def reduce(self, mapper, reducer, items, initial):
        return functools.reduce(reducer, map(mapper, items), initial)  # lazily: no list of all results

    def reduces(self) -> dict[str, ReduceFn]:
        return {"": self.reduce, "combine": self.reduce}  # the baseline of both rows


class Fabric(System):
    name = "fabric"

    def start(self) -> None:
        self.fx = fabric.connect(workers=self.workers)
        self.fx.submit(abs, 1).result()
        fabric.wait([self.fx.submit(abs, 1) for _ in range(self.workers * 4)])

    def stop(self) -> None:
        self.fx.shutdown()

    def maps(self) -> dict[str, MapFn]:
        maps: dict[str, MapFn] = {"map": lambda fn, items: list(self.fx.map(fn, items))}  # default settings: no knob
        if importlib.util.find_spec("tqdm") is not None:  # what a progress bar costs (the bound: 2 %)
            maps["map progress"] = lambda fn, items: list(self.fx.map(fn, items, progress=True))
        return maps

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        futures = [self.fx.submit(fn, x) for x in items]
        return [f.result() for f in futures]

    def round_trip(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return self.fx.submit(fn, arg).result()

    def reduce(self, mapper, reducer, items, initial):
        return self.fx.map_reduce(mapper, reducer, items, initial=initial)

    def reduces(self) -> dict[str, ReduceFn]:
        return {"": self.reduce, "combine": self._combined}

    def _combined(self, mapper, reducer, items, initial):
        return self.fx.map_reduce(mapper, reducer, items, initial=initial, combine=True)


class Pool(System):
    name = "mp.Pool"
    reduce_chunksize = 256

    def start(self) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        self.pool.map(abs, range(self.workers * 4))

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def maps(self) -> dict[str, MapFn]:
        return {
            "map": lambda fn, items: self.pool.map(fn, items),
            "imap c=10000": lambda fn, items: list(self.pool.imap(fn, items, chunksize=10_000)),
        }

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        pending = [self.pool.apply_async(fn, (x,)) for x in items]
        return [p.get() for p in pending]

    def reduce(self, mapper, reducer, items, initial):
        return functools.reduce(reducer, self.pool.imap_unordered(mapper, items, chunksize=self.reduce_chunksize),
                                initial)


class FuturesExecutor(System):
    """A concurrent.futures executor, with its chunksize knob."""

    chunksizes: tuple[int, ...] = (1000, 10_000)

    def new_executor(self) -> concurrent.futures.Executor:
        raise NotImplementedError

    def start(self) -> None:
        self.executor = self.new_executor()
        list(self.executor.map(abs, range(self.workers * 4)))

    def stop(self) -> None:
        self.executor.shutdown()

    def maps(self) -> dict[str, MapFn]:
        return {f"map c={c}": functools.partial(self._map, chunksize=c) for c in self.chunksizes}

    def _map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int) -> list[Any]:
        return list(self.executor.map(fn, items, chunksize=chunksize))

    def balanced(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self._map(fn, items, chunksize=max(1, len(items) // (4 * self.workers)))

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        futures = [self.executor.submit(fn, x) for x in items]
        return [f.result() for f in futures]

    @property
    def reduce_map(self) -> str:  # type: ignore[override]
        return f"map c={self.chunksizes[0]}"


class ProcessPool(FuturesExecutor):
    name = "PPE"
    chunksizes = (1000, 10_000, 1)  # 1: the map's default, one task per item
    caps = {"W1 map c=1": 0.005}  # at 10 k items/s

    def new_executor(self) -> concurrent.futures.Executor:
        return concurrent.futures.ProcessPoolExecutor(self.workers)


class Loky(FuturesExecutor):
    name = "loky"
    requires = "loky"
    caps = {"W2": 0.2}  # at 6 k tasks/s
    chunksizes = (10_000,)

    def new_executor(self) -> concurrent.futures.Executor:
        import loky

        return loky.get_reusable_executor(max_workers=self.workers)


class Dask(System):
    name = "dask"
    requires = "distributed"
    daemons = True
    # at 29 k items/s, 480 tasks/s, 10.5 ms a round trip, 33 MB/s, 18 k lines/s
    caps = {"W1": 0.005, "W2": 0.02, "W4": 0.1, "W5": 0.4, "W6": 0.2}

    def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()

    def maps(self) -> dict[str, MapFn]:
        return {"bag": self._bag}

    def _bag(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        import dask.bag

        data = list(items)
        return dask.bag.from_sequence(data, npartitions=self.workers * 4).map(fn).compute()

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return self.client.gather([self.client.submit(fn, x, pure=False) for x in items])

    reduce_map = "bag"

    def reduces(self) -> dict[str, ReduceFn]:
        return {"": self.reduce, "combine": self._fold}

    def _fold(self, mapper, reducer, items, initial):
        """Bag.fold: the reducer within each partition, then across partitions."""
        import dask.bag

        data = list(items)
        return dask.bag.from_sequence(data, npartitions=self.workers * 4).map(mapper).fold(
            reducer, initial=initial).compute()


class Ray(Pool):
    """ray.util.multiprocessing.Pool keeps multiprocessing.Pool's API (hence mp.Pool's reduce); tasks are ray.remote."""

    name = "ray"
    requires = "ray"
    daemons = True
    reduce_chunksize = 1000  # a chunk is an actor call: ~1 ms
    # at 230 k items/s, 1.5 k tasks/s, 1.3 ms a round trip, 60 k lines/s
    caps = {"W1": 0.0625, "W2": 0.06, "W4": 0.5, "W6": 0.5}

    def start(self) -> None:
        import ray
        from ray.util.multiprocessing import Pool as RayPool

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 _node_ip_address="127.0.0.1")
        self.remote = functools.cache(ray.remote)  # one remote function per task function, as a user keeps it
        self.pool = RayPool(self.workers)  # actors of 0 CPU: the tasks of submit_all still get both CPUs
        warm = list(range(self.workers * 4))
        self.pool.map(wl.identity, warm)
        self.submit_all(wl.identity, warm)  # ray.remote takes Python functions, not builtins such as abs

    def stop(self) -> None:
        import ray

        super().stop()
        ray.shutdown()

    def maps(self) -> dict[str, MapFn]:
        return {
            "map": self.pool.map,  # chunks of n / (4 × workers)
            "map c=10000": functools.partial(self.pool.map, chunksize=10_000),
        }

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        import ray

        remote = self.remote(fn)
        return ray.get([remote.remote(x) for x in items])


class IPyParallel(System):
    """A controller and engines on loopback: a DirectView splits a map evenly, a LoadBalancedView deals chunks."""

    name = "ipyparallel"
    requires = "ipyparallel"
    daemons = True
    caps = {"W2": 0.015, "W4": 0.25}  # at 340 tasks/s, 2.8 ms a round trip

    def start(self) -> None:
        import ipyparallel

        self.cluster = ipyparallel.Cluster(n=self.workers, controller_ip="127.0.0.1")
        self.client = self.cluster.start_and_connect_sync()
        self.dview, self.lview = self.client[:], self.client.load_balanced_view()
        self.dview.map_sync(abs, range(self.workers * 4))

    def stop(self) -> None:
        self.client.close()
        self.cluster.stop_engines_sync()  # before the controller: each engine's nanny unregisters, then exits
        self.cluster.stop_controller_sync()

    def maps(self) -> dict[str, MapFn]:
        return {
            "dview map": self.dview.map_sync,
            "lview map c=10000": functools.partial(self.lview.map_sync, chunksize=10_000),
        }

    def submit_all(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        pending = [self.lview.apply_async(fn, x) for x in items]
        return [p.get() for p in pending]

    reduce_map = "dview map"


# Fork-based pools start before fabric, dask, ray and ipyparallel start their threads.
SYSTEMS: dict[str, type[System]] = {
    cls.name: cls for cls in (Serial, Pool, ProcessPool, Loky, Fabric, Dask, Ray, IPyParallel)
}
PEERS = [name for name in SYSTEMS if name not in ("fabric", "serial")]
