"""Ctrl-C in a caller: the call it interrupts stops (queued work dropped, running
tasks' workers recycled) and the fabric serves the next call, with every credit back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from helpers import Gate, all_gone, free_address, wait_for

TESTS_DIR = str(Path(__file__).resolve().parents[1])

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import fabric
    from helpers import fabric_pids, gated, wait_for

    gate, started = sys.argv[1:3]
    with fabric.connect(2) as fx:
        print(json.dumps(sorted(fabric_pids(fx))), flush=True)
        try:
            for _ in fx.map(gated, [gate] * 50, range(50), [started] * 50):
                pass
        except KeyboardInterrupt:
            print("map interrupted", flush=True)
        print("second map", sum(fx.map(abs, range(-100, 0))), flush=True)
        future = fx.submit(gated, gate, 1, started)
        try:
            future.result()
        except KeyboardInterrupt:
            print("wait interrupted", future.cancelled(), flush=True)
        print("next call", fx.submit(pow, 2, 5).result(timeout=30), flush=True)
        wait_for(lambda: fx.workers() == 2 and fx._io.capacity() == 4, 30, "both workers' credits back")
        print(json.dumps(sorted(fabric_pids(fx))), flush=True)
    """
)


@contextlib.contextmanager
def script_running(tmp_path: Path, text: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """The client script ``text`` running with ``args`` (the tests' helpers importable), its
    stdout a pipe; killed if still running when the block ends."""
    script = tmp_path / "interrupted.py"
    script.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def started_pids(started: Path) -> set[int]:
    return {int(p.name) for p in started.iterdir()}


def test_ctrl_c_stops_the_call_and_the_fabric_serves_the_next(tmp_path):
    gate = Gate(tmp_path / "gate")  # never opened: the tasks run until stopped
    started = tmp_path / "started"
    started.mkdir()
    try:
        with script_running(tmp_path, SCRIPT, gate.path, str(started)) as proc:
            seen = set(json.loads(proc.stdout.readline()))
            running = wait_for(lambda: len(started_pids(started)) == 2 and started_pids(started), 30,
                               "two tasks running")
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline() == "map interrupted\n"
            wait_for(lambda: all_gone(running), 10, "the workers running the map's tasks to be recycled")
            assert proc.stdout.readline() == "second map 5050\n"

            one = wait_for(lambda: started_pids(started) - running, 30, "the submitted task running")
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline() == "wait interrupted True\n"
            wait_for(lambda: all_gone(one), 10, "the worker running the interrupted task to be recycled")
            assert proc.stdout.readline() == "next call 32\n"
            seen |= set(json.loads(proc.stdout.readline()))
            assert proc.wait(60) == 0
    finally:
        gate.open()
    wait_for(lambda: all_gone(seen), 10, "no process of the fabric left")


BY_KEY_SCRIPT = textwrap.dedent(
    """
    import functools, operator, sys
    import fabric
    from helpers import gated, wait_for

    def pairs(x):
        return [(x % 7, x)]

    def gated_add(gate, started, a, b):
        return gated(gate, a + b, started)

    def stored(fx):
        return sum(store["objects"] for store in fx.statistics().store.values())

    seed, gate, started = sys.argv[1:4]
    with fabric.connect(seed, heartbeat_interval_s=0.2, liveness_s=1.0) as fx:
        fx.wait_for_workers(2, timeout=30)
        try:
            fx.map_reduce(pairs, operator.add, range(2000), by_key=True, chunksize=10,
                          combine=functools.partial(gated_add, gate, started))
        except KeyboardInterrupt:
            print("merges interrupted", flush=True)
        assert fx.map_reduce(pairs, operator.add, range(70), by_key=True) == {r: sum(range(r, 70, 7)) for r in range(7)}
        wait_for(lambda: stored(fx) == 0, 20, "every partial, and every copy a merge fetched, freed")
        print("stores empty", flush=True)
    """
)


def test_ctrl_c_during_a_by_key_calls_merges_leaves_no_partial_on_the_nodes(tmp_path, start_node):
    """The merges fetched partials to their nodes when the caller was interrupted: the client
    does not know which nodes, so it frees them everywhere, copies with originals."""
    seed = free_address()
    start_node(seed)
    start_node(free_address(), join=seed)
    gate = Gate(tmp_path / "gate")  # never opened: the merges block in their combine until recycled
    started = tmp_path / "started"
    started.mkdir()
    try:
        with script_running(tmp_path, BY_KEY_SCRIPT, seed, gate.path, str(started)) as proc:
            wait_for(lambda: any(started.iterdir()), 60, "a merge inside its combine")
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline() == "merges interrupted\n"
            assert proc.stdout.readline() == "stores empty\n"
            assert proc.wait(60) == 0
    finally:
        gate.open()
