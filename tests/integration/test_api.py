"""The public API against a real embedded fabric (a node and 2 worker processes).

Behaviour tests share the module's ``fx``; tests that block, cancel or shut a
fabric down get one of their own (``fresh_fx``).  Every result is compared with
the serial computation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import importlib
import itertools
import operator
import sys
import threading
import uuid
import zlib

import pytest
from helpers import gated, spin_square, square, wait_for, wait_workers

import fabric

THREADS = 8
MB = 2**20


# -- tasks (imported by reference on the workers) --------------------------------


def echo(*args, **kwargs):
    return args, kwargs


def square_after_gate_at_0(x, gate_path):
    return gated(gate_path, 0) if x == 0 else x * x


def fail_with_value_error(x):
    raise ValueError(f"bad item {x}")


def fail_at_1234(x):
    if x == 1234:
        fail_with_value_error(x)
    return x * x


class CustomError(Exception):
    """A task's own exception type, picklable by reference."""


def raise_custom(code):
    raise CustomError(f"custom {code}")


class LockHoldingError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgumentError(Exception):
    """Pickles, but cannot be unpickled: its __init__ wants two arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def raise_lock_holding():
    raise LockHoldingError("holds a lock")


def raise_two_argument():
    raise TwoArgumentError("this", "that")


def make_lock(_=None):
    return threading.Lock()


def lock_at_3(x):
    return threading.Lock() if x == 3 else x * x


class LockedCallable:
    """A callable that cannot be serialized."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, x):
        return x


def length_and_crc(data):
    return len(data), zlib.crc32(data)


def length_and_sum(array):
    return len(array), int(array.sum())


def add_one_in_place(array):
    writable = array.flags.writeable
    array += 1
    return writable, array


def collect(iterator):
    """Drain ``iterator``; return the values it yielded and what it raised."""
    got = []
    try:
        for value in iterator:
            got.append(value)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return got, exc
    return got, None


@pytest.fixture
def np():
    return pytest.importorskip("numpy")


# -- the Executor ------------------------------------------------------------------


def test_is_a_concurrent_futures_executor(fx):
    assert isinstance(fx, concurrent.futures.Executor)
    future = fx.submit(pow, 2, 10)
    assert isinstance(future, fabric.Future)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == 1024


def test_submit_passes_every_keyword_to_the_function(fx):
    future = fx.submit(echo, 1, "two", timeout=5, fn="not fabric's", chunksize=3, ordered=False)
    kwargs = {"timeout": 5, "fn": "not fabric's", "chunksize": 3, "ordered": False}
    assert future.result(timeout=30) == ((1, "two"), kwargs)


# -- map -----------------------------------------------------------------------------


@pytest.mark.parametrize("items", [[], iter([]), range(0)], ids=["list", "iterator", "range"])
@pytest.mark.parametrize("ordered", [True, False])
def test_map_of_empty_input_is_empty(fx, items, ordered):
    assert list(fx.map(square, items, ordered=ordered)) == []


def test_map_of_one_item(fx):
    assert list(fx.map(square, [7])) == [49]


def test_map_of_a_million_items_equals_the_serial_result(fx):
    n = 10**6
    assert list(fx.map(lambda x: x * x, range(n))) == [x * x for x in range(n)]


def test_map_reads_a_generator(fx):
    assert list(fx.map(lambda x: x + 1, (x for x in range(10_000)))) == list(range(1, 10_001))


@pytest.mark.parametrize(
    "make_iterables",
    [
        lambda: (range(1000), range(1000, 2000)),
        lambda: (range(1000), range(10, 17)),
        lambda: (iter(range(500)), "abcdefghij" * 10, range(10**9)),
        lambda: ((x for x in range(300)), itertools.count()),
    ],
    ids=["equal", "shorter-second", "three", "endless-second"],
)
def test_map_of_several_iterables_zips_them(fx, make_iterables):
    expected = list(zip(*make_iterables(), strict=False))  # stops at the shortest
    assert list(fx.map(lambda *items: items, *make_iterables())) == expected


@pytest.mark.parametrize("chunksize", [None, 1, 100])
def test_map_ordered_gives_input_order(fx, chunksize):
    items = range(3000)
    assert list(fx.map(spin_square, items, chunksize=chunksize)) == [x * x for x in items]


@pytest.mark.parametrize("chunksize", [None, 1, 100])
def test_map_unordered_gives_the_same_multiset(fx, chunksize):
    items = [x % 97 for x in range(3000)]
    got = fx.map(spin_square, items, ordered=False, chunksize=chunksize)
    assert collections.Counter(got) == collections.Counter(x * x for x in items)


def test_map_unordered_yields_results_as_they_finish(fx, gate):
    items = range(40)
    results = fx.map(square_after_gate_at_0, items, [gate.path] * len(items), ordered=False, chunksize=1)
    first = [next(results) for _ in range(20)]  # item 0 is still blocked: these finished before it
    assert 0 not in first
    gate.open()
    rest = list(results)
    assert 0 in rest
    assert collections.Counter(first + rest) == collections.Counter(x * x for x in items)


def test_map_timeout_raises_timeout_error_for_a_slow_task(fx, gate):
    results = fx.map(gated, [gate.path], ["never in time"], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    gate.open()
    assert fx.submit(square, 5).result(timeout=30) == 25


# -- map_reduce ------------------------------------------------------------------------


def test_map_reduce_without_initial(fx):
    assert fx.map_reduce(square, operator.add, range(10_000)) == sum(x * x for x in range(10_000))


def test_map_reduce_with_initial(fx):
    total = fx.map_reduce(square, operator.add, range(10_000), initial=1_000_000)
    assert total == 1_000_000 + sum(x * x for x in range(10_000))


def test_map_reduce_of_empty_input(fx):
    assert fx.map_reduce(square, operator.add, [], initial="nothing") == "nothing"
    with pytest.raises(TypeError):  # as functools.reduce of an empty sequence
        fx.map_reduce(square, operator.add, [])


def test_map_reduce_ordered_folds_in_input_order(fx):
    # string concatenation does not commute: only input order gives this string
    folded = fx.map_reduce(str, operator.add, range(5000), initial="", ordered=True, chunksize=7)
    assert folded == "".join(map(str, range(5000)))


# -- exceptions --------------------------------------------------------------------------


def assert_remote_cause(exc, function_name):
    assert isinstance(exc.__cause__, fabric.RemoteTraceback)
    assert function_name in exc.__cause__.tb
    assert "Traceback (most recent call last)" in exc.__cause__.tb


def test_submit_reraises_the_task_exception_with_its_remote_traceback(fx):
    future = fx.submit(fail_with_value_error, 7)
    with pytest.raises(ValueError) as info:
        future.result(timeout=30)
    assert type(info.value) is ValueError
    assert str(info.value) == "bad item 7"
    assert_remote_cause(info.value, "fail_with_value_error")
    assert "ValueError: bad item 7" in info.value.__cause__.tb


def test_a_custom_exception_keeps_its_type(fx):
    with pytest.raises(CustomError, match="^custom 3$") as info:
        fx.submit(raise_custom, 3).result(timeout=30)
    assert_remote_cause(info.value, "raise_custom")


@pytest.mark.parametrize(
    ("task", "type_name", "message"),
    [
        (raise_lock_holding, "LockHoldingError", "holds a lock"),
        (raise_two_argument, "TwoArgumentError", "this and that"),
    ],
    ids=["unpicklable", "not-unpicklable"],
)
def test_an_exception_that_cannot_travel_becomes_remote_error(fx, task, type_name, message):
    with pytest.raises(fabric.RemoteError) as info:
        fx.submit(task).result(timeout=30)
    assert info.value.type_name.endswith(type_name)
    assert info.value.message == message
    assert f"{type_name}: {message}" in str(info.value)
    assert_remote_cause(info.value, task.__name__)


@pytest.mark.parametrize("chunksize", [None, 1, 7, 5000])
@pytest.mark.parametrize("ordered", [True, False])
def test_map_yields_the_results_before_a_failing_item_then_raises(fx, chunksize, ordered):
    got, exc = collect(fx.map(fail_at_1234, range(3000), chunksize=chunksize, ordered=ordered))
    assert type(exc) is ValueError and str(exc) == "bad item 1234"
    assert_remote_cause(exc, "fail_at_1234")
    if ordered:
        assert got == [x * x for x in range(1234)]
    else:  # what came first were results, each at most once, and never the failed one
        assert collections.Counter(got) <= collections.Counter(x * x for x in range(3000) if x != 1234)


# -- serialization -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["args", "kwargs"])
@pytest.mark.parametrize(
    "kind",
    [
        "lock",
        "binary-file",
        "file-for-writing",
        pytest.param("file-for-reading"),
    ],
)
def test_an_unpicklable_argument_raises_at_submit(fx, tmp_path, where, kind):
    path = tmp_path / "data.txt"
    path.write_text("some text")
    mode = {"binary-file": "rb", "file-for-writing": "a", "file-for-reading": "r"}.get(kind, "r")
    with open(path, mode) as file:
        value, type_name = (threading.Lock(), "lock") if kind == "lock" else (file, type(file).__name__)
        args, kwargs = ((value,), {}) if where == "args" else ((), {"value": value})
        with pytest.raises(fabric.SerializationError, match=type_name) as info:
            fx.submit(echo, *args, **kwargs)
    assert isinstance(info.value, TypeError) and isinstance(info.value, fabric.FabricError)


def test_an_unpicklable_function_raises_at_submit_and_map(fx):
    with pytest.raises(fabric.SerializationError, match="LockedCallable"):
        fx.submit(LockedCallable(), 1)
    with pytest.raises(fabric.SerializationError, match="LockedCallable"):
        fx.map(LockedCallable(), range(3))


@pytest.mark.parametrize("position", [0, 3, 2500])
def test_an_unpicklable_map_item_raises_at_its_position(fx, position):
    items = (threading.Lock() if x == position else x for x in range(5000))
    got, exc = collect(fx.map(square, items))
    assert got == [x * x for x in range(position)]
    assert isinstance(exc, fabric.SerializationError)
    assert f"item {position}" in str(exc) and "lock" in str(exc)


def test_an_unpicklable_result_raises_from_result(fx):
    with pytest.raises(fabric.SerializationError, match="lock"):
        fx.submit(make_lock).result(timeout=30)
    got, exc = collect(fx.map(lock_at_3, range(10)))
    assert got == [0, 1, 4]
    assert isinstance(exc, fabric.SerializationError) and "lock" in str(exc)


def test_an_input_generator_that_raises_midway(fx):
    def items():
        yield from range(1000)
        raise ValueError("the input broke")

    got, exc = collect(fx.map(square, items()))
    assert got == [x * x for x in range(1000)]
    assert type(exc) is ValueError and str(exc) == "the input broke"


# -- large data ------------------------------------------------------------------------------


def test_a_100_mb_bytes_argument(fx):
    data = bytes(range(256)) * (100 * MB // 256) + b"tail"
    assert fx.submit(length_and_crc, data).result(timeout=60) == (len(data), zlib.crc32(data))


def test_a_100_mb_numpy_array_argument(fx, np):
    array = np.arange(100 * MB // 8, dtype=np.int64)
    n = len(array)
    assert fx.submit(length_and_sum, array).result(timeout=60) == (n, n * (n - 1) // 2)


def test_numpy_arrays_arrive_writable(fx, np):
    array = np.arange(1000, dtype=np.float64).reshape(10, 100)
    writable_on_worker, result = fx.submit(add_one_in_place, array).result(timeout=30)
    assert writable_on_worker
    assert np.array_equal(result, array + 1) and result.dtype == array.dtype and result.shape == array.shape
    result += 1  # writable here too
    assert np.array_equal(result, array + 2)
    mapped = list(fx.map(add_one_in_place, [array[0], array[1]]))
    assert [w for w, _ in mapped] == [True, True]
    assert all(np.array_equal(out, array[i] + 1) for i, (_, out) in enumerate(mapped))


# -- threads and futures -------------------------------------------------------------------------


def test_eight_threads_submit_and_map_at_once(fx):
    start = threading.Barrier(THREADS, timeout=30)

    def client(t):
        start.wait()
        futures = [fx.submit(operator.mul, t, i) for i in range(300)]
        mapped = list(fx.map(operator.mul, itertools.repeat(t), range(20_000), ordered=t % 2 == 0))
        total = fx.map_reduce(square, operator.add, range(t * 100 + 1))
        return [f.result(timeout=60) for f in futures], mapped, total

    with concurrent.futures.ThreadPoolExecutor(THREADS) as threads:
        outcomes = list(threads.map(client, range(THREADS)))
    for t, (submitted, mapped, total) in enumerate(outcomes):
        assert submitted == [t * i for i in range(300)]
        expected = [t * i for i in range(20_000)]
        assert (mapped if t % 2 == 0 else sorted(mapped)) == expected
        assert total == sum(x * x for x in range(t * 100 + 1))


def test_as_completed_and_wait_over_fabric_futures(fx):
    futures = [fx.submit(spin_square, i) for i in range(200)]
    finished = list(fabric.as_completed(futures, timeout=60))
    assert len(finished) == len(futures) and set(finished) == set(futures)
    done, not_done = fabric.wait(futures, timeout=60)
    assert done == set(futures) and not not_done
    assert [f.result() for f in futures] == [i * i for i in range(200)]


def test_wait_first_exception_returns_at_the_failure(fx, gate):
    failing = fx.submit(fail_with_value_error, 1)  # first: it may share a worker with the blocked one
    blocked = fx.submit(gated, gate.path, "late")
    done, not_done = fabric.wait([blocked, failing], timeout=30, return_when=fabric.FIRST_EXCEPTION)
    assert done == {failing} and not_done == {blocked}
    gate.open()
    assert blocked.result(timeout=30) == "late"


def occupy_every_credit(fx, gate):
    """Submit blocking tasks one at a time until every worker credit holds one,
    so that the next submit stays queued in the client."""
    wait_workers(fx, 2)
    blockers = []
    for i in range(fx._io.capacity()):
        blockers.append(fx.submit(gated, gate.path, i))
        wait_for(blockers[-1].running, 10, f"blocker {i} to be sent")
    return blockers


def test_a_quick_task_does_not_wait_behind_a_blocked_one_while_a_worker_is_idle(fresh_fx, gate):
    wait_workers(fresh_fx, 2)
    blocked = fresh_fx.submit(gated, gate.path, "blocked")
    wait_for(blocked.running, 10, "the blocked task to be sent")
    quick = fresh_fx.submit(square, 4)
    done, _ = fabric.wait([quick], timeout=3)  # milliseconds of work, on an idle worker
    assert quick in done and not blocked.done()
    assert quick.result() == 16


def test_cancel_a_queued_future(fresh_fx, gate, tmp_path):
    blockers = occupy_every_credit(fresh_fx, gate)
    marker = tmp_path / "ran"
    queued = fresh_fx.submit(marker.touch)
    assert queued.cancel()
    assert queued.cancelled()
    gate.open()
    assert [b.result(timeout=30) for b in blockers] == list(range(len(blockers)))
    assert fresh_fx.submit(square, 3).result(timeout=30) == 9
    fresh_fx.shutdown(wait=True)
    assert not marker.exists(), "the cancelled task ran"
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()


def test_shutdown_cancel_futures_cancels_the_queued_ones(fresh_fx, gate):
    blockers = occupy_every_credit(fresh_fx, gate)
    queued = [fresh_fx.submit(gated, gate.path, i) for i in range(200)]
    assert not any(f.running() or f.done() for f in queued)
    stopper = threading.Thread(target=fresh_fx.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    wait_for(lambda: all(f.cancelled() for f in queued), 10, "the queued futures to be cancelled")
    gate.open()  # the tasks already sent finish; shutdown waits for them
    stopper.join(30)
    assert not stopper.is_alive(), "shutdown(cancel_futures=True) hangs"
    assert [b.result(timeout=0) for b in blockers] == list(range(len(blockers)))
    assert all(f.done() for f in blockers + queued)


def test_submit_after_shutdown_raises_closed_error(fresh_fx):
    assert fresh_fx.submit(square, 2).result(timeout=30) == 4
    fresh_fx.shutdown()
    fresh_fx.shutdown()  # a second shutdown does nothing
    with pytest.raises(fabric.ClosedError):
        fresh_fx.submit(square, 2)
    with pytest.raises(fabric.ClosedError):
        fresh_fx.map(square, range(3))
    with pytest.raises(fabric.ClosedError):
        fresh_fx.map_reduce(square, operator.add, range(3))
    assert issubclass(fabric.ClosedError, fabric.FabricError)


# -- user code -----------------------------------------------------------------------------------


def test_a_function_from_a_module_on_sys_path_runs_on_the_workers(make_fabric, tmp_path, monkeypatch, request):
    name = f"user_module_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import os\n\ndef triple(x):\n    return 3 * x, __name__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(functools.partial(sys.modules.pop, name, None))
    module = importlib.import_module(name)
    fx = make_fabric()  # started after the sys.path change: its workers see the module
    assert list(fx.map(module.triple, range(1000))) == [(3 * x, name) for x in range(1000)]
    assert fx.submit(module.triple, 5).result(timeout=30) == (15, name)


@pytest.mark.parametrize("shape", [(3000,), (1000, 3)])
def test_map_over_a_numpy_array_gives_what_iterating_it_gives(fx, np, shape):
    array = np.arange(3000, dtype=np.int64).reshape(shape)
    got = [np.asarray(r).tolist() for r in fx.map(np.square, array)]
    assert got == [np.square(row).tolist() for row in array]


def test_map_over_a_range_with_a_step(fx):
    items = range(10**6, -5, -7)
    assert list(fx.map(square, items, chunksize=999)) == [x * x for x in items]
