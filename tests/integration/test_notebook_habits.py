"""What a notebook does to a fabric: cells run again without shutdown(), the next
cell right after connect(), ``connect(4)``, and functions whose source only the
notebook has."""

from __future__ import annotations

import linecache
import traceback

import pytest
from helpers import all_gone, fabric_pids, free_address, node_pid, node_status, wait_for

import fabric

NODE_START_S = 30.0  # a daemon and its workers starting on a loaded machine


def test_connecting_again_without_shutdown_stops_the_fabric_let_go_of(no_leaked_processes):
    """A notebook cell ``fx = fabric.connect()`` run three times used to leave three
    nodes and their workers running until the kernel exited."""
    fx = fabric.connect(workers=1)
    first = fabric_pids(fx)
    fx = fabric.connect(workers=1)
    second = fabric_pids(fx)
    fx = fabric.connect(workers=1)
    assert len(first) == len(second) == len(fabric_pids(fx)) == 2  # node and worker
    wait_for(lambda: all_gone(first | second), 10, "the fabrics let go of to stop their nodes and workers")
    assert fx.submit(pow, 2, 10).result(timeout=30) == 1024
    fx.shutdown()


def test_a_fabric_let_go_of_still_finishes_its_map_and_its_futures(no_leaked_processes):
    fx = fabric.connect(workers=1)
    pids = fabric_pids(fx)
    results = fx.map(abs, range(-3000, 0), chunksize=100)  # lazy: most of it not yet sent
    future = fx.submit(pow, 3, 3)
    del fx
    assert sum(results) == sum(range(1, 3001))
    assert future.result(timeout=30) == 27
    del results
    wait_for(lambda: all_gone(pids), 10, "the fabric to stop once its map is done")


def test_connect_returns_with_its_workers_ready(no_leaked_processes):
    with fabric.connect(2) as fx:
        assert fx.workers() == 2  # at once, not after a while
        assert "2 workers" in repr(fx)
        assert len(fabric_pids(fx) - {node_pid(fx)}) == 2


def test_connecting_to_a_node_returns_knowing_its_workers(start_node):
    """Not a bare 0 before the node's report, nor one of two between their READYs.  The
    node is up with both workers first: it reports the workers up, so one still
    starting would make connect() return with the other alone."""
    address = free_address()
    start_node(address, workers=2)
    wait_for(lambda: [n.workers for n in node_status(address)] == [2], NODE_START_S, "the node's 2 workers")
    with fabric.connect(address, heartbeat_interval_s=0.2, liveness_s=1.0) as fx:
        assert fx.workers() == 2  # reported by the node, or attached: never a bare 0


def test_a_number_of_workers_given_twice_is_refused():
    with pytest.raises(TypeError, match="once"):
        fabric.connect(2, workers=3)


CELL = '''
def helper(x):
    return 1 / x

def boom(x):
    y = x - x
    return helper(y)
'''


def test_a_remote_traceback_shows_the_source_only_the_caller_has(fx):
    """IPython compiles each cell under a file name that exists only in the
    kernel's linecache; the worker has no source to show for it."""
    filename = "<notebook-cell-7f1c>"
    linecache.cache[filename] = (len(CELL), None, CELL.splitlines(keepends=True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(CELL, filename, "exec"), namespace)
    try:
        with pytest.raises(ZeroDivisionError) as caught:
            fx.submit(namespace["boom"], 5).result(timeout=30)
    finally:
        del linecache.cache[filename]
    remote = caught.value.__cause__.tb
    assert f'File "{filename}", line 7, in boom\n    return helper(y)\n' in remote
    assert f'File "{filename}", line 3, in helper\n    return 1 / x\n' in remote
    shown = "".join(traceback.format_exception(caught.value))
    assert "return helper(y)" in shown


def test_a_kept_result_held_does_not_keep_a_fabric_let_go_of_open(no_leaked_processes):
    """A kept result's lineage (how to compute it again) lives in the I/O thread; it
    must not hold the fabric, or holding the Ref would keep every process running."""
    fx = fabric.connect(workers=1)
    pids = fabric_pids(fx)
    kept = fx.options(keep=True).submit(pow, 2, 10).result(timeout=30)
    assert isinstance(kept, fabric.Ref)
    del fx
    wait_for(lambda: all_gone(pids), 10, "the fabric let go of to stop while its kept Ref is held")
    del kept
