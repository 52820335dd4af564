"""Thirty-two loopback nodes of one worker each on a 2-core machine: CPU-starved
nodes must not be taken for dead ones, and nodes that die or stop must cost no
task its retry budget.

While 4 nodes are SIGKILLed and 4 others (with their workers) SIGSTOPped for
5 s, maps of 200,000 empty tasks and of 2,000 tasks of 1 ms each complete
exactly, again and again, none failing; the stopped nodes are reinstated when
they speak again.  Default heartbeats (1 s) and liveness (3 s): the settings a
user runs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import psutil
from helpers import spin_square, wait_for

import fabric
from benchmarks.scale import low_port_addresses

NODES = 32
KILLED = 4
STOPPED = 4
STOP_S = 5.0  # how long the stopped nodes stay stopped (the fault, not a synchronisation)
EMPTY_TASKS = 200_000
MS_TASKS = 2_000


def echo(x: int) -> int:
    return x


def family(node: psutil.Process) -> list[psutil.Process]:
    """A node process and its workers, workers first (they are continued first, so
    the node never sees its worker stopped after it resumes)."""
    return [*node.children(), node]


def chaos(nodes: list[psutil.Process], started: threading.Event, done: threading.Event) -> None:
    """Once the maps run: SIGKILL some nodes, SIGSTOP others for STOP_S, continue them."""
    killed, stopped = nodes[:KILLED], nodes[KILLED:KILLED + STOPPED]
    started.wait()
    stopped_family = [p for node in stopped for p in family(node)]
    try:
        for node in killed:
            node.kill()
        for process in stopped_family:
            process.suspend()
        time.sleep(STOP_S)  # this sleep is the fault itself: how long the nodes stay stopped
    finally:
        for process in stopped_family:
            process.resume()
        done.set()


def test_32_nodes_lose_no_task_while_nodes_are_killed_and_stopped(start_node, caplog):
    caplog.set_level(logging.INFO, logger="fabric.client.io_loop")
    addresses = low_port_addresses(NODES)
    procs = [start_node(address, join=addresses[0] if i else None, heartbeat_interval_s=1.0, liveness_s=3.0)
             for i, address in enumerate(addresses)]
    with fabric.connect(addresses[0]) as fx:
        wait_for(lambda: len(fx.nodes()) == NODES and fx.statistics().workers == NODES, 90, "every node and worker")
        victims = [psutil.Process(p.pid) for p in procs[1:1 + KILLED + STOPPED]]  # not the seed the client named
        started, done = threading.Event(), threading.Event()
        thread = threading.Thread(target=chaos, args=(victims, started, done), daemon=True)
        thread.start()
        rounds = 0
        while not done.is_set() or rounds < 2:
            assert list(fx.map(echo, range(EMPTY_TASKS))) == list(range(EMPTY_TASKS))
            started.set()
            assert list(fx.map(spin_square, range(MS_TASKS), [0.001] * MS_TASKS)) == [x * x for x in range(MS_TASKS)]
            rounds += 1
        thread.join()
        # the stopped nodes speak again and are reinstated; the killed ones stay gone
        alive = {a for a, p in zip(addresses, procs) if p.poll() is None}
        wait_for(lambda: {n.control for n in fx.nodes()} == alive, 30, "the stopped nodes reinstated")
        assert len(alive) == NODES - KILLED
        assert list(fx.map(echo, range(EMPTY_TASKS))) == list(range(EMPTY_TASKS))
    assert {p.returncode for p in procs[1:1 + KILLED]} == {-signal.SIGKILL}
    victim_names = {a.removeprefix("tcp://") for a in addresses[1:1 + KILLED + STOPPED]}
    declared = {m.split()[2] for m in caplog.messages if "declared dead" in m}
    assert declared <= victim_names, f"live nodes declared dead: {declared - victim_names}"
