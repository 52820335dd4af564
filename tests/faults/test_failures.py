"""Nothing lost: timeouts, retries, size limits, memory limits, hung workers and nodes,
dead clients, slow consumers, and a randomised soak.  Real processes, real signals."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import free_address, gone, spin_square, square, wait_for, wait_workers, worker_pids, worker_processes

import fabric

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}


def slow(seconds: float) -> float:
    time.sleep(seconds)  # this sleep is the task's own work, not synchronisation
    return seconds


def fail_until(marker: str, attempts: int) -> int:
    """Raise ConnectionError until called ``attempts`` times (counted in a file)."""
    path = Path(marker)
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count < attempts:
        raise ConnectionError(f"attempt {count}")
    return count


def hog(_: object) -> None:
    chunks = []
    while True:
        chunks.append(bytearray(20 << 20))


def blob(size: int) -> bytes:
    return b"x" * size


# -- options: timeouts, retries --------------------------------------------------------


def test_task_timeout_fails_the_task_and_recycles_its_worker(make_fabric):
    fx = make_fabric(workers=2)
    before = wait_workers(fx, 2)
    future = fx.options(task_timeout=0.3).submit(slow, 30)
    with pytest.raises(fabric.TaskTimeoutError, match="task_timeout of 0.3"):
        future.result(timeout=20)
    wait_for(lambda: len(worker_pids(fx) - before) == 1 and len(worker_pids(fx)) == 2, 10, "a recycled worker")
    assert list(fx.map(slow, [0.01, 0.02], task_timeout=5)) == [0.01, 0.02]


def test_retry_on_retries_only_the_named_exceptions(fx, tmp_path):
    marker = str(tmp_path / "count")
    assert fx.options(retry_on=(ConnectionError,), retries=3).submit(fail_until, marker, 3).result() == 3
    other = str(tmp_path / "other")
    with pytest.raises(ConnectionError, match="attempt 1"):
        fx.submit(fail_until, other, 3).result()  # not retried without retry_on
    with pytest.raises(ConnectionError, match="attempt 3"):
        fx.options(retry_on=ConnectionError, retries=2).submit(fail_until, other, 5).result()  # 2 more, then out


def test_bad_options_are_refused(fx):
    with pytest.raises(TypeError, match="unknown task option"):
        fx.options(timeot=1)
    with pytest.raises(ValueError):
        fx.options(task_timeout=0)
    with pytest.raises(TypeError, match="retry_on"):
        fx.options(retry_on=("ValueError",))


def test_no_nodes_fails_within_the_connect_timeout_instead_of_hanging():
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with fabric.connect(address, connect_timeout_s=0.5) as fx:
        with pytest.raises(fabric.NoNodesError, match=f"no node answered at {address}"):
            fx.submit(square, 2).result(timeout=10)
        with pytest.raises(fabric.NoNodesError):
            list(fx.map(square, range(10), timeout=10))


def test_oversized_arguments_and_results_fail_naming_the_limit(make_fabric):
    fx = make_fabric(workers=1, max_message_bytes=1_000_000)
    with pytest.raises(fabric.SerializationError, match="max_message_bytes=1,000,000"):
        fx.submit(len, b"x" * 2_000_000)
    with pytest.raises(fabric.SerializationError, match="max_message_bytes=1,000,000"):
        fx.submit(blob, 2_000_000).result(timeout=20)
    assert fx.submit(blob, 10).result() == b"x" * 10  # and the fabric is fine


# -- workers: memory, hangs ------------------------------------------------------------


def test_a_worker_over_its_memory_limit_is_replaced_and_the_task_fails_naming_memory(make_fabric):
    fx = make_fabric(workers=2, memory_limit_mb=150)
    wait_workers(fx, 2)
    others = fx.map(spin_square, range(200))
    with pytest.raises(fabric.WorkerCrashedError, match="memory limit of 150 MB"):
        fx.submit(hog, 0).result(timeout=60)
    assert list(others) == [x * x for x in range(200)]
    wait_workers(fx, 2)


def test_a_stopped_worker_is_replaced_and_its_tasks_run_elsewhere_once(make_fabric):
    fx = make_fabric(workers=2, **FAST)
    victim = min(wait_workers(fx, 2))
    results = fx.map(spin_square, range(3000), ordered=False)
    first = next(results)
    os.kill(victim, signal.SIGSTOP)
    try:
        rest = list(results)
        assert sorted([first, *rest]) == [x * x for x in range(3000)]
        wait_for(lambda: gone(victim), 10, "the stopped worker to be killed")  # gone(): it may vanish mid-check
    finally:
        if psutil.pid_exists(victim):
            os.kill(victim, signal.SIGCONT)


# -- daemon nodes ---------------------------------------------------------------------------


def node_stats(fx: fabric.Fabric) -> dict[str, fabric.NodeStats]:
    return {n.control: n for n in fx.nodes()}


def test_a_hung_node_loses_its_batches_then_rejoins(start_node):
    a, b = free_address(), free_address()
    node_a = start_node(a)
    start_node(b, join=a)
    with fabric.connect(a, **FAST) as fx:
        wait_for(lambda: fx.workers() == 2, 20, "both nodes' workers")
        results = fx.map(spin_square, range(4000), ordered=False)
        first = next(results)
        os.kill(node_a.pid, signal.SIGSTOP)  # the node hangs; its worker does not
        try:
            wait_for(lambda: a not in node_stats(fx), 10, "the hung node declared dead")
        finally:
            os.kill(node_a.pid, signal.SIGCONT)
        assert sorted([first, *results]) == [x * x for x in range(4000)]
        wait_for(lambda: a in node_stats(fx) and fx.workers() == 2, 10, "the node to rejoin")
        done_before = node_stats(fx)[a].done
        list(fx.map(spin_square, range(4000)))
        wait_for(lambda: node_stats(fx)[a].done > done_before, 10, "the rejoined node to work again")


CLIENT = """
import sys, fabric
from helpers import spin_square
fx = fabric.connect(sys.argv[1], heartbeat_interval_s=0.2, liveness_s=1.0)
results = fx.map(spin_square, range(10**7))
next(results)
print("mapping", flush=True)
for _ in results:
    pass
"""


def test_a_killed_client_is_forgotten_and_a_new_client_gets_the_workers(start_node, tmp_path):
    address = free_address()
    start_node(address, workers=2)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    client = subprocess.Popen([sys.executable, str(script), address], stdout=subprocess.PIPE, env=env)
    assert client.stdout is not None and client.stdout.readline().strip() == b"mapping"
    client.kill()
    client.wait()
    with fabric.connect(address, **FAST) as fx:
        wait_for(lambda: node_stats(fx).get(address) and node_stats(fx)[address].clients == 1, 10,
                 "the node to forget the dead client")
        assert list(fx.map(square, range(20000))) == [x * x for x in range(20000)]
        assert fx.workers() == 2


# -- memory stays flat ------------------------------------------------------------------------


def endless():
    n = 0
    while True:
        yield n
        n += 1


def rss_mb(pids: list[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def test_an_endless_generator_read_slowly_keeps_memory_flat(make_fabric):
    fx = make_fabric(workers=2)
    results = fx.map(square, endless())
    pids = [os.getpid(), fx._embedded.process.pid]
    samples = []
    next_at = time.monotonic()
    for index, value in enumerate(results):
        assert value == index * index
        next_at += 0.001  # the consumer reads 1 item per ms
        time.sleep(max(0.0, next_at - time.monotonic()))  # this sleep is the slow reader under test
        if index % 2500 == 0:
            samples.append(rss_mb(pids))
        if index >= 30_000:  # 30 s: a map running ahead of its reader would hold ~1 M results by then
            break
    del results  # dropping the iterator ends the map
    assert max(samples) < 300, samples
    assert max(samples[2:]) - samples[2] < 20, samples  # flat after warm-up, however long it runs


# -- randomised soak -------------------------------------------------------------------------


def test_random_kills_during_random_maps_lose_and_duplicate_nothing(start_node):
    rng = random.Random(1234)
    seed = free_address()
    seed_node = start_node(seed, workers=2)
    other = start_node(free_address(), workers=1, join=seed)
    deadline = time.monotonic() + 25  # ~50 rounds here, a third with a node killed and a new one joining
    with fabric.connect(seed, **FAST) as fx:
        wait_for(lambda: fx.workers() == 3, 20, "three workers")
        rounds = 0
        while time.monotonic() < deadline:
            n = rng.randrange(500, 5000)
            results = fx.map(spin_square, range(n), ordered=rng.random() < 0.5)
            got = []
            for index, value in enumerate(results):
                got.append(value)
                if index == n // 3 and rounds % 3 == 2:  # a whole node dies, and a new one joins
                    other.kill()
                    other.wait()
                    other = start_node(free_address(), workers=1, join=seed)
                elif index == n // 3:
                    rng.choice(worker_processes({seed_node.pid, other.pid})).kill()
            assert sorted(got) == [x * x for x in range(n)]  # every task once, equal to the serial result
            rounds += 1
        assert rounds >= 3, rounds


def hold_the_gil(seconds: float) -> None:
    """Keep this process's GIL for about ``seconds`` in one C call: the client's I/O
    thread can neither say hello nor read, as when a long C extension call runs."""
    probe = 10**7
    started = time.perf_counter()
    sum(range(probe))
    sum(range(int(probe * seconds / (time.perf_counter() - started))))


def test_a_client_forgotten_while_its_thread_was_starved_gets_its_workers_back(make_fabric):
    fx = make_fabric(workers=2, **FAST)
    wait_workers(fx, 2)
    assert list(fx.map(square, range(1000))) == [x * x for x in range(1000)]
    hold_the_gil(2.5)  # past the liveness timeout: the node forgets us and detaches its workers
    assert list(fx.map(square, range(20_000), timeout=30)) == [x * x for x in range(20_000)]
    wait_for(lambda: fx.workers() == 2, 10, "both workers serving the client again")
