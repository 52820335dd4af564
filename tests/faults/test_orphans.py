"""No fabric process outlives its owner: not after a ``with`` block, not after
the client is SIGKILLed, not after the node is.

Workers of a dead node are reparented away from this process, so these tests
follow the pids they recorded (psutil) rather than this process's children.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import all_gone, fabric_pids, gated, node_pid, spin_square, square, wait_for, wait_workers

import fabric

ORPHAN_TIMEOUT_S = 5.0  # the promise: node and workers are gone this soon after their owner
START_TIMEOUT_S = 60.0
TESTS_DIR = str(Path(__file__).resolve().parents[1])

CLIENT = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path

    import fabric
    from helpers import fabric_pids, gated, wait_for, wait_workers

    mode, gate, started = sys.argv[1:4]
    fx = fabric.connect(workers=2)
    wait_workers(fx, 2)
    assert fx.submit(pow, 2, 5).result(timeout=30) == 32
    if mode == "busy":  # both workers inside a task that never ends by itself
        futures = [fx.submit(gated, gate, i, started) for i in range(4)]
        wait_for(lambda: len(list(Path(started).iterdir())) == 2, 30, "both workers inside a task")
    print(json.dumps(sorted(fabric_pids(fx))), flush=True)
    threading.Event().wait()  # until killed
    """
)


def kill_all(pids):
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def started_workers(started_dir):
    return {int(p.name) for p in started_dir.iterdir()}


@pytest.mark.parametrize("how", ["idle", "user-error-during-a-map", "shutdown-without-wait-while-a-task-runs"])
def test_no_process_is_left_after_the_with_block(no_leaked_processes, gate, tmp_path, how):
    started = tmp_path / "started"
    started.mkdir()
    with pytest.raises(RuntimeError) if how == "user-error-during-a-map" else contextlib.nullcontext():
        with fabric.connect(workers=2) as fx:
            wait_workers(fx, 2)
            pids = fabric_pids(fx)
            assert len(pids) == 3
            assert fx.submit(square, 3).result(timeout=30) == 9
            if how == "user-error-during-a-map":
                results = fx.map(spin_square, range(100_000))
                assert next(results) == 0
                raise RuntimeError("the user's code failed with a map in flight")
            if how == "shutdown-without-wait-while-a-task-runs":
                running = fx.submit(gated, gate.path, "finished", str(started))
                wait_for(lambda: started_workers(started), 10, "a worker inside the task")
                fx.shutdown(wait=False)  # returns at once; the running task is not lost
                assert not running.done()
                with pytest.raises(fabric.ClosedError):
                    fx.submit(square, 2)
                gate.open()
                assert running.result(timeout=30) == "finished"
                wait_for(lambda: all_gone(pids), 10, "the processes to exit once the work is done")
    # at once, no polling: leaving the block waits for the node, the node for its workers
    alive = {pid for pid in pids if not all_gone({pid})}
    assert not alive, f"still running after the with block: {alive}"


@pytest.mark.parametrize("mode", ["idle", "busy"])
def test_a_sigkilled_client_leaves_no_process(no_leaked_processes, gate, tmp_path, mode):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    started = tmp_path / "started"
    started.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))
    args = [sys.executable, str(script), mode, gate.path, str(started)]  # the gate opens only at teardown
    client = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    pids: set[int] = set()
    try:
        ready, _, _ = select.select([client.stdout], [], [], START_TIMEOUT_S)
        assert ready, "the client never printed its processes"
        pids = set(json.loads(client.stdout.readline()))
        assert len(pids) == 3, pids
        if mode == "busy":
            assert len(started_workers(started) & pids) == 2
        client.kill()
        client.wait(10)
        wait_for(lambda: all_gone(pids), ORPHAN_TIMEOUT_S, f"the node and workers {sorted(pids)} to exit")
    finally:
        kill_all(pids)
        client.kill()
        client.wait(10)
        client.stdout.close()


def test_a_killed_node_fails_pending_work_and_its_workers_exit(fresh_fx, gate, tmp_path):
    workers = wait_workers(fresh_fx, 2)
    started = tmp_path / "started"
    started.mkdir()
    pending = fresh_fx.submit(gated, gate.path, "never", str(started))
    wait_for(lambda: started_workers(started), 10, "a worker inside the task")
    os.kill(node_pid(fresh_fx), signal.SIGKILL)
    try:
        with pytest.raises(fabric.NoNodesError):
            pending.result(timeout=10)
        with pytest.raises(fabric.NoNodesError):
            fresh_fx.submit(square, 2).result(timeout=10)
        gate.open()  # the busy worker returns from its task, then sees its node is gone
        wait_for(lambda: all_gone(workers), ORPHAN_TIMEOUT_S, f"the workers {sorted(workers)} of the dead node to exit")
    finally:
        kill_all(workers)
