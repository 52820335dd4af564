"""W9, W10 and put/get bandwidth: data on the fabric (``python -m benchmarks.objects``).

- W9 broadcast: one float64 array read by many tasks, each summing one slice:
  ``fx.put`` once and pass the Ref, against passing the array with every task
  (measured on fewer tasks, since each carries the whole array: the figure is a
  rate per task), ``multiprocessing.Pool`` with the array set in an initializer
  (fork), ``ray.put`` and dask's ``scatter(broadcast=True)``.  Each figure
  includes storing the array (put, scatter, the pool's start).
- W10 pipeline: tasks making 1 MiB results, then tasks reading them: with
  ``keep=True`` (the intermediates stay on the nodes) against results through
  the client, dask futures and ray object refs.  Bytes through the client are
  the frames its data-plane sockets send and receive (counted by wrapping the
  I/O loop's send and receive) and the bytes of its object transfers.
- Bandwidth: put and get of one large array against a copy into memory
  already touched (``np.copyto``).

Repetitions are interleaved and figures are medians, as in the main harness;
ray and dask are started before and stopped after their own turn (their
daemons slow the others while idle), and their start is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np

import fabric
from fabric.client import io_loop
from fabric.wire import codec, transfer

_shared: np.ndarray | None = None


def slice_sum(array: np.ndarray, i: int, parts: int) -> float:
    step = len(array) // parts
    return float(array[i * step : (i + 1) * step].sum())


def _init(array: np.ndarray) -> None:
    global _shared
    _shared = array


def pool_slice_sum(args: tuple[int, int]) -> float:
    assert _shared is not None
    return slice_sum(_shared, *args)


def make_mb(i: int) -> np.ndarray:
    return np.full((1 << 20) // 8, float(i))


def first(array: np.ndarray) -> float:
    return float(array[0] + array[-1])


class ClientBytes:
    """Bytes the client's sockets move: data-plane frames and object transfers."""

    def __init__(self) -> None:
        self.sent = self.received = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[ClientBytes]:
        send, recv, link_send, link_recv = (io_loop.send_frames, io_loop.recv_frames, transfer.ObjectLink.send,
                                            transfer.ObjectLink.receive)

        def sending(sock, frames, copy=True):  # type: ignore[no-untyped-def]
            self.sent += codec.frames_size(frames[1:])
            return send(sock, frames, copy)

        def receiving(sock):  # type: ignore[no-untyped-def]
            frames = recv(sock)
            self.received += codec.frames_size(frames[1:])
            return frames

        def link_sending(link, msg):  # type: ignore[no-untyped-def]
            self.sent += codec.frames_size(msg.payload)
            return link_send(link, msg)

        def link_receiving(link, request_id):  # type: ignore[no-untyped-def]
            msg = link_recv(link, request_id)
            self.received += codec.frames_size(getattr(msg, "payload", ()))
            return msg

        io_loop.send_frames, io_loop.recv_frames = sending, receiving
        transfer.ObjectLink.send, transfer.ObjectLink.receive = link_sending, link_receiving  # type: ignore[method-assign]
        try:
            yield self
        finally:
            io_loop.send_frames, io_loop.recv_frames = send, recv
            transfer.ObjectLink.send, transfer.ObjectLink.receive = link_send, link_recv  # type: ignore[method-assign]


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def w9(fx: fabric.Fabric, mb: int, tasks: int, per_task_tasks: int, repeat: int, peers: list[str]
       ) -> dict[str, float]:
    array = np.random.default_rng(0).random(mb * (1 << 20) // 8)
    expected = sum(slice_sum(array, i, tasks) for i in range(tasks))
    figures: dict[str, list[float]] = {name: [] for name in ["put", "per_task", "mp.Pool", *peers]}
    counted = ClientBytes()
    for _ in range(repeat):
        def with_put() -> None:
            ref = fx.put(array)
            got = sum(fx.map(slice_sum, [ref] * tasks, range(tasks), [tasks] * tasks))
            assert abs(got - expected) < 1e-6 * abs(expected)
            fx.free(ref)

        with counted.counting():
            figures["put"].append(tasks / timed(with_put))
        figures["per_task"].append(per_task_tasks / timed(
            lambda: list(fx.map(slice_sum, [array] * per_task_tasks, range(per_task_tasks),
                                [tasks] * per_task_tasks, chunksize=1))))

        def pool() -> None:
            with multiprocessing.get_context("fork").Pool(fx.workers(), _init, (array,)) as p:
                p.map(pool_slice_sum, [(i, tasks) for i in range(tasks)])

        figures["mp.Pool"].append(tasks / timed(pool))
        for peer in peers:
            figures[peer].append(tasks / PEERS[peer](array, tasks, "w9"))
    rates = {name: statistics.median(values) for name, values in figures.items()}
    rates["client MB sent per put run"] = counted.sent / repeat / 1e6
    return rates


def w10(fx: fabric.Fabric, tasks: int, repeat: int, peers: list[str]) -> dict[str, float]:
    figures: dict[str, list[float]] = {name: [] for name in ["keep", "through client", *peers]}
    bytes_keep, bytes_through = ClientBytes(), ClientBytes()
    for _ in range(repeat):
        def keep() -> None:
            kept = list(fx.map(make_mb, range(tasks), keep=True))
            assert len(list(fx.map(first, kept))) == tasks

        def through() -> None:
            made = fx.map(make_mb, range(tasks))
            assert len(list(fx.map(first, made))) == tasks

        with bytes_keep.counting():
            figures["keep"].append(tasks / timed(keep))
        with bytes_through.counting():
            figures["through client"].append(tasks / timed(through))
        for peer in peers:
            figures[peer].append(tasks / PEERS[peer](None, tasks, "w10"))
    rates = {name: statistics.median(values) for name, values in figures.items()}
    rates["client MB keep"] = (bytes_keep.sent + bytes_keep.received) / repeat / 1e6
    rates["client MB through client"] = (bytes_through.sent + bytes_through.received) / repeat / 1e6
    return rates


def ray_run(array: np.ndarray | None, tasks: int, workload: str) -> float:
    """Seconds for the workload on ray (started before, stopped after, not counted)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote_sum, remote_make, remote_first = (ray.remote(f) for f in (slice_sum, make_mb, first))
        ray.get(remote_first.remote(np.zeros(2)))
        if workload == "w9":
            def run() -> None:
                ref = ray.put(array)
                ray.get([remote_sum.remote(ref, i, tasks) for i in range(tasks)])
        else:
            def run() -> None:
                made = [remote_make.remote(i) for i in range(tasks)]
                ray.get([remote_first.remote(m) for m in made])
        return timed(run)
    finally:
        ray.shutdown()


def dask_run(array: np.ndarray | None, tasks: int, workload: str) -> float:
    """Seconds for the workload on dask.distributed (cluster started before, stopped after)."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.submit(first, np.zeros(2)).result()
        if workload == "w9":
            def run() -> None:
                scattered = client.scatter(array, broadcast=True)
                client.gather(client.map(slice_sum, [scattered] * tasks, range(tasks), [tasks] * tasks))
        else:
            def run() -> None:
                made = client.map(make_mb, range(tasks))
                client.gather(client.map(first, made))
        return timed(run)


PEERS: dict[str, Callable[[np.ndarray | None, int, str], float]] = {"ray": ray_run, "dask": dask_run}


def bandwidth(fx: fabric.Fabric, mb: int, repeat: int) -> dict[str, float]:
    array = np.random.default_rng(1).random(mb * (1 << 20) // 8)
    figures: dict[str, list[float]] = {"put GB/s": [], "get GB/s": [], "memcpy GB/s": []}
    gigabytes = array.nbytes / 1e9
    target = np.empty_like(array)
    target[:] = 0.0  # touched: a copy into it is the machine's memory bandwidth, not page faults
    for _ in range(repeat):
        ref: list[fabric.Ref] = []
        figures["put GB/s"].append(gigabytes / timed(lambda: ref.append(fx.put(array))))
        figures["get GB/s"].append(gigabytes / timed(lambda: fx.get(ref[0])))
        fx.free(ref[0])
        figures["memcpy GB/s"].append(gigabytes / timed(lambda: np.copyto(target, array)))
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peers", default="ray,dask", help="comma-separated: ray, dask (those installed)")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p and _installed(p)]
    mb, tasks, w10_tasks, bw_mb = (40, 200, 100, 200) if args.quick else (200, 1000, 1000, 1024)
    with fabric.connect(workers=2) as fx:
        fx.submit(int).result()
        print("W9 tasks/s:", w9(fx, mb, tasks, 8 if args.quick else 20, args.repeat, peers))
        print("W10 tasks/s:", w10(fx, w10_tasks, args.repeat, peers))
        print("bandwidth:", bandwidth(fx, bw_mb, args.repeat))


def _installed(name: str) -> bool:
    try:
        __import__(name if name != "dask" else "dask.distributed")
    except ImportError:
        print(f"{name}: not installed, skipped")
        return False
    return True


if __name__ == "__main__":
    main()
