"""Several fabric-node processes on loopback: discovery, spreading, joining, leaving,
dying, busy workers, load limits and the status command."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import free_address, spin_square, wait_for

import fabric

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}


def busy(seconds: float) -> float:
    """Hold the worker in user code, without a pause, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


def by_address(fx: fabric.Fabric) -> dict[str, fabric.NodeStats]:
    return {n.control: n for n in fx.nodes()}


def cluster(start_node, count: int, **options) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    addresses = [free_address() for _ in range(count)]
    procs = [start_node(address, join=addresses[0] if i else None, **options) for i, address in enumerate(addresses)]
    return addresses, procs


def test_connecting_to_one_node_discovers_the_others_and_a_map_spreads_over_all(start_node):
    addresses, _ = cluster(start_node, 3)
    with fabric.connect(addresses[0], **FAST) as fx:
        wait_for(lambda: fx.workers() == 3, 20, "the workers of all three nodes")
        assert list(fx.map(spin_square, range(30_000))) == [x * x for x in range(30_000)]
        wait_for(lambda: sum(n.done for n in fx.nodes()) >= 30_000, 10, "the counters to reach the map's size")
        assert {n.control for n in fx.nodes()} == set(addresses)
        assert all(n.done > 0 for n in fx.nodes())


def test_status_prints_every_node(start_node):
    addresses, _ = cluster(start_node, 2)
    with fabric.connect(addresses[0], **FAST) as fx:
        wait_for(lambda: len(fx.nodes()) == 2, 20, "both nodes")
        assert {n.name for n in fx.nodes()} == {a.removeprefix("tcp://") for a in addresses}  # unnamed: HOST:PORT
    run = [sys.executable, "-m", "fabric.cli", "status", addresses[1]]
    table = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert table.splitlines()[0].split()[:4] == ["name", "address", "workers", "busy"]
    assert all(address in table for address in addresses)
    listed = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, check=True).stdout)
    assert sorted(n["control"] for n in listed) == sorted(addresses)


def test_status_of_nobody_says_so():
    out = subprocess.run([sys.executable, "-m", "fabric.cli", "status", free_address()], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "no node answered" in out.stderr


def test_a_node_started_mid_map_gets_work(start_node):
    addresses, _ = cluster(start_node, 1)
    with fabric.connect(addresses[0], **FAST) as fx:
        wait_for(lambda: fx.workers() == 1, 20, "the first node")
        results = fx.map(spin_square, range(20_000))
        got = [next(results)]
        late = free_address()
        start_node(late, join=addresses[0])
        for value in results:
            got.append(value)
            if late in by_address(fx) and by_address(fx)[late].done > 0:
                break
        else:
            raise AssertionError("the late node got no work before the map ended")
        got += list(results)
        assert got == [x * x for x in range(20_000)]


def test_graceful_leave_and_sigkill_mid_map_lose_nothing(start_node):
    addresses, procs = cluster(start_node, 3)
    with fabric.connect(addresses[0], **FAST) as fx:
        wait_for(lambda: fx.workers() == 3, 20, "three workers")
        results = fx.map(spin_square, range(30_000), ordered=False)
        got = [next(results) for _ in range(2000)]
        procs[1].send_signal(signal.SIGTERM)  # graceful: hands its batches back
        got += [next(results) for _ in range(5000)]
        os.kill(procs[2].pid, signal.SIGKILL)  # vanishes: declared dead after the liveness timeout
        got += list(results)
        assert sorted(got) == [x * x for x in range(30_000)]
        assert procs[1].wait(10) == 0


def test_a_worker_busy_for_10_s_does_not_make_its_node_look_dead(start_node):
    addresses, _ = cluster(start_node, 1, heartbeat_interval_s=1.0, liveness_s=3.0)
    with fabric.connect(addresses[0], heartbeat_interval_s=1.0, liveness_s=3.0) as fx:
        wait_for(lambda: fx.workers() == 1, 20, "the node")
        future = fx.submit(busy, 10.0)
        while not future.done():
            assert addresses[0] in by_address(fx), "the busy node was declared dead"
            fabric.wait([future], timeout=0.2)
        assert future.result() == 10.0


def test_wait_for_workers_returns_once_a_node_started_later_has_attached(start_node):
    first = free_address()
    start_node(first)
    with fabric.connect(first, **FAST) as fx:
        assert fx.wait_for_workers(timeout=20) == 1
        with pytest.raises(TimeoutError, match="1 of the 2 workers"):
            fx.wait_for_workers(2, timeout=0.3)
        start_node(free_address(), join=first)
        assert fx.wait_for_workers(2, timeout=30) == 2
        assert fx.workers() == 2 and len(fx.nodes()) == 2
        with pytest.raises(ValueError, match="positive int"):
            fx.wait_for_workers(0)


def test_wait_for_workers_ends_with_a_closed_error_when_the_fabric_shuts_down(fresh_fx):
    with concurrent.futures.ThreadPoolExecutor(1) as waiter:
        waiting = waiter.submit(fresh_fx.wait_for_workers, 99)
        wait_for(lambda: fresh_fx._io._waiters, 10, "the wait to be registered")
        fresh_fx.shutdown()
        with pytest.raises(fabric.ClosedError):
            waiting.result(timeout=20)
    with pytest.raises(fabric.ClosedError):
        fresh_fx.wait_for_workers(1)


def test_a_node_over_its_load_limit_takes_no_batches(start_node):
    addresses = [free_address(), free_address()]
    start_node(addresses[0])
    start_node(addresses[1], join=addresses[0], max_load=0.0)
    with fabric.connect(addresses[0], **FAST) as fx:
        wait_for(lambda: fx.workers() == 2, 20, "both nodes' workers")
        wait_for(lambda: by_address(fx)[addresses[1]].accepting is False, 10, "the loaded node to pause")
        assert list(fx.map(spin_square, range(5000))) == [x * x for x in range(5000)]
        wait_for(lambda: by_address(fx)[addresses[0]].done >= 5000, 10, "the counters")
        assert by_address(fx)[addresses[1]].done == 0
    table = subprocess.run([sys.executable, "-m", "fabric.cli", "status", addresses[0]], capture_output=True,
                           text=True, check=True).stdout
    assert "paused>0%" in table


def test_cluster_file_connects_and_config_errors_are_clear(start_node, tmp_path):
    addresses, _ = cluster(start_node, 2)
    config = tmp_path / "cluster.toml"
    config.write_text("[cluster]\nheartbeat_interval_s = 0.2\nliveness_s = 1.0\n" + "".join(
        f'[[node]]\nname = "n{i}"\naddress = "{a}"\n' for i, a in enumerate(addresses)))
    with fabric.connect(config) as fx:
        wait_for(lambda: fx.workers() == 2, 20, "both nodes")
        assert fx.submit(spin_square, 3).result() == 9
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\nname = "a"\naddress = "127.0.0.1:7100"\n')
    out = subprocess.run([sys.executable, "-m", "fabric.cli", "start", "--config", str(bad), "--name", "a"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "bad.toml" in out.stderr and "node[0].address" in out.stderr
