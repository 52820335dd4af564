"""Workers die under load: every result still arrives exactly once, a task that
kills its worker every time fails alone, and the node restores the worker count.

Each test gets a fabric of its own (2 workers).  Crashes are injected the ways
dask's ``chaos.py`` does: SIGKILL from outside, ``os._exit``, SIGKILL of itself
and a segmentation fault (``ctypes.string_at(0)``).
"""

from __future__ import annotations

import collections
import functools
import operator
import os
import signal

import pytest
from helpers import (
    crash_always,
    crash_once,
    gone,
    pid_after,
    spin_square,
    square,
    wait_for,
    wait_resolved,
    wait_workers,
    worker_pids,
)

import fabric

WORKERS = 2
RESPAWN_TIMEOUT_S = 10.0
STALL_S = 5.0  # a worker respawns in well under a second: this long without a result is a hang


def assert_same_results(got, items, ordered):
    expected = [x * x for x in items]
    if ordered:
        assert got == expected
    else:
        assert collections.Counter(got) == collections.Counter(expected)


def assert_serves_with_every_worker(fx):
    """The fabric is whole again: as many live workers as asked for, and every
    one of them runs tasks for this client."""
    pids = wait_workers(fx, WORKERS, RESPAWN_TIMEOUT_S)
    wait_for(
        lambda: set(fx.map(pid_after, range(8 * WORKERS), chunksize=1)) == pids,
        RESPAWN_TIMEOUT_S,
        f"tasks to run on every worker of {pids}",
    )
    assert list(fx.map(square, range(1000))) == [x * x for x in range(1000)]


@pytest.mark.parametrize("ordered", [True, False])
def test_sigkill_a_worker_while_20000_tasks_are_in_flight(fresh_fx, ordered):
    victim = min(wait_workers(fresh_fx, WORKERS))
    n = 20_000
    got = []
    for value in fresh_fx.map(spin_square, range(n), ordered=ordered):
        got.append(value)
        if len(got) == n // 10:
            os.kill(victim, signal.SIGKILL)
    assert len(got) == n
    assert_same_results(got, range(n), ordered)
    assert gone(victim)
    assert_serves_with_every_worker(fresh_fx)


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_a_worker_that_dies_mid_batch_once_loses_no_result(fresh_fx, tmp_path, how):
    marker = tmp_path / "crashed"
    task = functools.partial(crash_once, at=2500, how=how, marker=str(marker))
    got = list(fresh_fx.map(task, range(5000)))
    assert marker.exists(), "the task never crashed its worker"
    assert_same_results(got, range(5000), ordered=True)
    assert_serves_with_every_worker(fresh_fx)


def test_a_worker_that_dies_mid_fold_loses_and_duplicates_no_item(fresh_fx, tmp_path):
    """With combine=, a lost batch's items must be folded exactly once: its halves are
    re-run, and the partial it was building dies with it."""
    marker = tmp_path / "crashed"
    task = functools.partial(crash_once, at=2500, how="sigkill", marker=str(marker))
    total = fresh_fx.map_reduce(task, operator.add, range(5000), combine=True)
    assert marker.exists(), "the task never crashed its worker"
    assert total == sum(x * x for x in range(5000))
    assert_serves_with_every_worker(fresh_fx)


def test_a_poison_task_among_10000_fails_alone(fresh_fx):
    n, poison = 10_000, 1234
    futures = [fresh_fx.submit(crash_always, x, poison, "exit") for x in range(n)]
    wait_resolved(futures, STALL_S)
    failed = {i: f.exception() for i, f in enumerate(futures) if f.exception() is not None}
    assert list(failed) == [poison]
    assert isinstance(failed[poison], fabric.WorkerCrashedError)
    assert "exited with code 3" in str(failed[poison])
    assert [f.result() for i, f in enumerate(futures) if i != poison] == [x * x for x in range(n) if x != poison]
    assert_serves_with_every_worker(fresh_fx)


def test_a_poison_item_in_a_map_raises_worker_crashed_error(fresh_fx):
    task = functools.partial(crash_always, at=0, how="exit")
    results = fresh_fx.map(task, range(1000))
    with pytest.raises(fabric.WorkerCrashedError, match="exited with code 3"):
        next(results)
    assert_serves_with_every_worker(fresh_fx)


def test_a_task_prefetched_behind_a_poison_task_does_not_fail_with_it(make_fabric):
    fx = make_fabric(workers=1)
    wait_workers(fx, 1)
    poison = fx.submit(crash_always, 0, 0, "exit")
    innocent = fx.submit(square, 7)  # the only worker holds it in its prefetch slot, behind the poison
    with pytest.raises(fabric.WorkerCrashedError):
        poison.result(timeout=60)
    assert innocent.result(timeout=60) == 49


def test_a_segfaulting_task_fails_with_worker_crashed_error(fresh_fx):
    future = fresh_fx.submit(crash_always, 0, 0, "segfault")
    with pytest.raises(fabric.WorkerCrashedError, match="SIGSEGV") as info:
        future.result(timeout=60)
    assert isinstance(info.value, fabric.WorkerLostError) and isinstance(info.value, fabric.FabricError)
    assert fresh_fx.submit(square, 9).result(timeout=30) == 81
    assert_serves_with_every_worker(fresh_fx)


def test_a_killed_worker_is_replaced(fresh_fx):
    before = wait_workers(fresh_fx, WORKERS)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced():
        pids = worker_pids(fresh_fx)
        return pids if len(pids) == WORKERS and victim not in pids else None

    after = wait_for(replaced, RESPAWN_TIMEOUT_S, "the node to replace the killed worker")
    assert gone(victim)
    assert before - {victim} < after
    assert_serves_with_every_worker(fresh_fx)


def crash_once_keyed(x: int, marker: str) -> list[tuple[int, int]]:
    return [(x % 31, crash_once(x, at=2500, how="sigkill", marker=marker))]


def test_a_worker_that_dies_mid_fold_by_key_loses_and_duplicates_no_item(fresh_fx, tmp_path):
    """With by_key=True a lost batch's partials die with it and its halves are re-run:
    each item is counted in exactly one partial."""
    marker = tmp_path / "crashed"
    task = functools.partial(crash_once_keyed, marker=str(marker))
    totals = fresh_fx.map_reduce(task, operator.add, range(5000), by_key=True, chunksize=200)
    assert marker.exists(), "the task never crashed its worker"
    assert totals == {r: sum(x * x for x in range(r, 5000, 31)) for r in range(31)}
    assert_serves_with_every_worker(fresh_fx)
