"""What a notebook user reaches for: progress bars, the fabric's display, a
future's repr, ``await fut`` and ``async for`` over a map (here in a plain
asyncio loop; tests/integration/test_notebooks.py runs them in a Jupyter kernel)."""

from __future__ import annotations

import asyncio
import importlib.util
import operator
import sys
import threading

import pytest
from helpers import gated, square, wait_for

import fabric

needs_tqdm = pytest.mark.skipif(importlib.util.find_spec("tqdm") is None,
                                reason="progress bars need tqdm (pip install '.[test]')")

BACKSTOP_S = 20.0  # a blocked event loop never opens its gate: the test then fails instead of hanging


def final_bar(stderr: str) -> str:
    """The last state tqdm drew on a terminal (it redraws with carriage returns)."""
    return stderr.replace("\r", "\n").strip().splitlines()[-1]


# -- progress bars -------------------------------------------------------------------


@needs_tqdm
def test_map_progress_counts_every_item_against_the_input_length(fx, capsys):
    assert sum(fx.map(square, range(5_000), progress="squares")) == sum(x * x for x in range(5_000))
    bar = final_bar(capsys.readouterr().err)
    assert bar.startswith("squares: 100%") and "5000/5000" in bar, bar


@needs_tqdm
def test_map_progress_over_a_generator_counts_without_a_total(fx, capsys):
    assert len(list(fx.map(square, (x for x in range(3_000)), progress=True, ordered=False))) == 3_000
    bar = final_bar(capsys.readouterr().err)
    assert "3000task" in bar and "%" not in bar, bar  # no length: a counter, not a percentage


@needs_tqdm
def test_map_reduce_progress_counts_items_mapped_with_and_without_combine(fx, capsys):
    for combine in (False, True):
        total = fx.map_reduce(square, operator.add, range(4_000), initial=0, combine=combine, progress=True)
        assert total == sum(x * x for x in range(4_000))
        bar = final_bar(capsys.readouterr().err)
        assert "100%" in bar and "4000/4000" in bar, (combine, bar)


@needs_tqdm
def test_a_failed_map_leaves_its_bar_where_it_stopped(fx, capsys):
    with pytest.raises(ZeroDivisionError):
        list(fx.map(operator.truediv, [1] * 10, [1] * 5 + [0] * 5, chunksize=5, progress=True))
    bar = final_bar(capsys.readouterr().err)
    assert "5/10" in bar, bar


@needs_tqdm
def test_fabric_progress_waits_for_futures_and_returns_them_in_order(fx, capsys):
    futures = [fx.submit(square, x) for x in range(40)]
    assert [f.result() for f in fabric.progress(futures, label="submitted")] == [x * x for x in range(40)]
    bar = final_bar(capsys.readouterr().err)
    assert bar.startswith("submitted: 100%") and "40/40" in bar, bar
    assert fabric.progress([]) == []


@needs_tqdm
def test_fabric_progress_timeout_names_what_is_pending(fx, gate, capsys):
    futures = [fx.submit(square, 3), fx.submit(gated, gate.path, 1)]
    assert futures[0].result(timeout=10) == 9  # one done, one held at its gate
    try:
        with pytest.raises(TimeoutError, match="1 of 2 futures not done"):
            fabric.progress(futures, timeout=0.3)
    finally:
        gate.open()
    assert futures[1].result(timeout=10) == 1
    assert "1/2" in final_bar(capsys.readouterr().err)


def test_without_tqdm_a_progress_bar_says_which_extra_to_install(fx, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # what "import tqdm.auto" meets when it is not installed
    with pytest.raises(ImportError, match=r"zmq-fabric\[notebook\]"):
        fx.map(square, range(3), progress=True)
    with pytest.raises(ImportError, match=r"zmq-fabric\[notebook\]"):
        fabric.progress([fx.submit(square, 2)])
    assert list(fx.map(square, range(3))) == [0, 1, 4]  # no bar asked: no tqdm needed


# -- display -------------------------------------------------------------------------


def test_repr_is_one_line_with_nodes_workers_and_tasks(fresh_fx):
    assert list(fresh_fx.map(square, range(100))) == [x * x for x in range(100)]
    wait_for(lambda: len(fresh_fx.nodes()) == 1, 10, "the node's first heartbeat")
    text = repr(fresh_fx)
    assert "\n" not in text and text.startswith(f"<fabric.Fabric {fresh_fx.address}: 1 node, 2 workers, ")
    assert "tasks done" in text and "tasks/s" in text, text
    fresh_fx.shutdown()
    assert repr(fresh_fx) == f"<fabric.Fabric {fresh_fx.address} (closed)>"


def test_html_display_shows_nodes_workers_tasks_and_cache(fx):
    page = fx._repr_html_()
    for part in ("<table", "Nodes", "Workers", "2 workers", "Tasks done", "Tasks/s", "Cache", "embedded",
                 "CPU %", fx.address):
        assert part in page, part


def test_a_future_repr_names_its_task_and_state(fx, gate):
    future = fx.submit(gated, gate.path, 7)
    assert repr(future).startswith("<fabric.Future gated at 0x") and "state=" in repr(future)
    gate.open()
    assert future.result(timeout=10) == 7
    assert repr(future).endswith("state=finished returned int>")
    failed = fx.submit(operator.truediv, 1, 0)
    failed.exception(timeout=10)
    assert repr(failed).endswith("state=finished raised ZeroDivisionError>")


# -- asyncio ---------------------------------------------------------------------------


def run_while_gated(gate, wait_on):
    """Run ``wait_on()`` (a coroutine function awaiting gated work) in an event loop
    alongside a coroutine that opens the gate once the loop runs it.  If awaiting
    blocked the loop, only the backstop thread opens the gate, and the test fails."""
    loop_opened = threading.Event()

    def backstop() -> None:
        if not loop_opened.wait(BACKSTOP_S):
            gate.open()

    async def main():
        guard = threading.Thread(target=backstop, daemon=True)
        guard.start()
        waiting = asyncio.ensure_future(wait_on())
        await asyncio.sleep(0)  # sleep(0): let it start awaiting first (a yield, not a wait)
        for _ in range(100):
            await asyncio.sleep(0)  # sleep(0): the loop keeps turning while the work is gated
        assert not waiting.done()
        loop_opened.set()
        gate.open()
        result = await waiting
        guard.join()
        return result

    return asyncio.run(main())


def test_await_a_future_does_not_block_the_event_loop(fx, gate):
    future = fx.submit(gated, gate.path, 11)
    assert run_while_gated(gate, lambda: _await(future)) == 11


async def _await(future):
    return await future


def test_await_a_failed_future_raises_its_exception(fx):
    async def main():
        return await fx.submit(operator.truediv, 1, 0)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(main())


def test_async_for_over_a_map_does_not_block_the_event_loop(fx, gate):
    async def collect():
        return [x async for x in fx.map(gated, [gate.path] * 6, range(6), chunksize=2)]

    assert run_while_gated(gate, collect) == list(range(6))


def test_async_for_yields_every_result_in_order_over_many_chunks(fx):
    async def collect():
        return [x async for x in fx.map(square, range(20_000))]

    assert asyncio.run(collect()) == [x * x for x in range(20_000)]


def test_async_for_raises_a_task_error_at_its_position(fx):
    seen = []

    async def collect():
        async for x in fx.map(operator.truediv, [1.0] * 6, [1, 1, 1, 0, 1, 1], chunksize=2):
            seen.append(x)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(collect())
    assert seen == [1.0, 1.0, 1.0]


def test_async_for_keeps_the_map_timeout(fx, gate):
    async def collect():
        return [x async for x in fx.map(gated, [gate.path] * 2, range(2), timeout=0.3)]

    try:
        with pytest.raises(TimeoutError):
            asyncio.run(collect())
    finally:
        gate.open()


@needs_tqdm
def test_async_for_unordered_with_a_bar_yields_every_result(fx, capsys):
    async def collect():
        return [x async for x in fx.map(square, range(5_000), ordered=False, progress=True)]

    assert sorted(asyncio.run(collect())) == [x * x for x in range(5_000)]
    assert "5000/5000" in final_bar(capsys.readouterr().err)
