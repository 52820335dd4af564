"""Objects on the fabric, on the embedded node: put/get, Refs and futures as arguments, keep=True."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from helpers import gated, square, store_figures, wait_for

import fabric
from fabric.wire.ref import Ref


def total(values, start=0, stop=None):
    return float(np.asarray(values)[start:stop].sum())


def describe(array):
    """What a task sees of an array argument: its sum, whether it may write to it, whether it owns its memory."""
    return float(array.sum()), bool(array.flags.writeable), array.base is None


def add(a, b):
    return a + b


def fail(x):
    raise ValueError(f"failed on {x}")


def nested_sum(arg):
    return sum(float(np.sum(v)) for v in arg["arrays"]) + sum(arg["more"][0])


@pytest.mark.parametrize("value", [
    b"\x00bytes" * 1000, {"a": [1, 2.5, "x"], "b": (None, True)}, np.arange(100_000, dtype=np.float64),
    np.arange(12, dtype=np.int32).reshape(3, 4)[:, 1:],
])
def test_put_get_round_trip(fx, value):
    ref = fx.put(value)
    assert isinstance(ref, Ref) and ref.size > 0
    back = fx.get(ref)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
        assert back.dtype == value.dtype
    else:
        assert back == value and type(back) is type(value)


def test_a_ref_pickles_small_and_arrives_in_tasks_as_its_value(fx):
    import pickle

    array = np.arange(1_000_000, dtype=np.float64)
    ref = fx.put(array)
    assert len(pickle.dumps(ref)) < 200
    assert fx.submit(total, ref).result() == array.sum()
    assert list(fx.map(total, [ref] * 4, [0, 10, 20, 30], [10, 20, 30, 40])) == [
        array[s : s + 10].sum() for s in (0, 10, 20, 30)
    ]


def test_workers_read_an_array_in_place_read_only(fx):
    array = np.arange(500_000, dtype=np.float64)
    ref = fx.put(array)
    value, writeable, owns = fx.submit(describe, ref).result()
    assert value == array.sum()
    assert not writeable and not owns  # a view of the node's one copy, not a copy of its own


def test_refs_nested_in_containers_arrive_as_values(fx):
    a, b = fx.put(np.ones(1000)), fx.put(np.full(10, 2.0))
    small = fx.put([1, 2, 3])
    arg = {"arrays": [a, (b,)[0]], "more": (small,)}
    assert fx.submit(nested_sum, arg).result() == 1000 + 20 + 6
    assert list(fx.map(nested_sum, [arg, arg])) == [1026.0, 1026.0]
    assert fx.get([a, small])[1] == [1, 2, 3]


def test_futures_as_arguments_wait_and_a_failed_one_fails_its_dependents_unrun(fx, tmp_path):
    f1 = fx.submit(square, 3)
    f2 = fx.submit(add, f1, 1)
    f3 = fx.submit(add, [f2][0], f1)
    assert f3.result(timeout=30) == 19
    bad = fx.submit(fail, 1)
    dependent = fx.submit(add, bad, 1)
    with pytest.raises(ValueError, match="failed on 1"):
        dependent.result(timeout=30)
    results = fx.map(add, [f1, bad, f2], [1, 1, 1])
    assert next(results) == 10
    with pytest.raises(ValueError, match="failed on 1"):
        next(results)


def test_a_pending_future_argument_does_not_block_the_caller(fx, gate):
    slow = fx.submit(gated, gate.path, 5)  # resolves only when the gate opens
    dependent = fx.submit(add, slow, 1)  # returns at once although its input is pending
    assert not dependent.done()
    gate.open()
    assert dependent.result(timeout=30) == 6


def test_keep_true_leaves_results_on_the_node_and_yields_refs(fx):
    kept = list(fx.map(square, range(6), keep=True))
    assert all(isinstance(r, Ref) for r in kept)
    assert fx.get(kept) == [x * x for x in range(6)]
    assert list(fx.map(add, kept, kept)) == [2 * x * x for x in range(6)]
    future = fx.options(keep=True).submit(square, 9)
    assert isinstance(future.result(), Ref)
    assert fx.get(future) == 81
    assert fx.submit(add, future, 1).result() == 82


def test_equal_puts_are_stored_once(fresh_fx):
    fx = fresh_fx
    data = os.urandom(200_000)
    first, second = fx.put(data), fx.put(bytes(data))
    assert first == second and first.key == second.key
    wait_for(lambda: store_figures(fx)["objects"] == 1, 10, "one object stored")


def test_free_and_garbage_collection_release_objects(fresh_fx):
    fx = fresh_fx
    ref = fx.put(os.urandom(100_000))
    other = fx.put(os.urandom(100_000))
    wait_for(lambda: store_figures(fx)["objects"] == 2, 10, "two objects stored")
    fx.free(ref)
    wait_for(lambda: store_figures(fx)["objects"] == 1, 10, "the freed object gone")
    del other
    gc.collect()
    wait_for(lambda: store_figures(fx)["objects"] == 0, 10, "the collected object gone")
    kept = fx.options(keep=True).submit(square, 4).result()
    wait_for(lambda: store_figures(fx)["objects"] == 1, 10, "the kept result stored")
    del kept
    gc.collect()
    wait_for(lambda: store_figures(fx)["objects"] == 0, 10, "the kept result released")


def test_a_forged_ref_raises_a_lookup_error_not_a_hang(fx):
    real = fx.put(b"real")
    forged = Ref(os.urandom(16), 10, real.holders, b"someone")
    with pytest.raises(LookupError):
        fx.get(forged)
    with pytest.raises(LookupError):
        fx.submit(len, forged).result(timeout=60)
    elsewhere = Ref(os.urandom(16), 10, ((b"n-nobody", "tcp://127.0.0.1:9"),))
    with pytest.raises(LookupError):
        fx.get(elsewhere)


def test_named_objects_are_listed_found_and_deleted(fx):
    ref = fx.put({"corpus": 1}, name="test-corpus")
    assert ref.name == "test-corpus"
    found = fx.ref("test-corpus")
    assert found == ref and fx.get(found) == {"corpus": 1}
    assert [o.name for o in fx.objects()] == ["test-corpus"]
    assert fx.delete("test-corpus")
    assert fx.objects() == []
    with pytest.raises(fabric.UnknownObjectError):
        fx.ref("test-corpus")


def test_a_ref_collected_after_its_object_was_freed_and_put_again_frees_nothing(fresh_fx):
    fx = fresh_fx
    data = os.urandom(300_000)
    old = fx.put(data)
    fx.free(old)
    new = fx.put(data)  # equal bytes, put again: the same key
    del old
    gc.collect()
    wait_for(lambda: store_figures(fx)["objects"] == 1, 10, "the object put again stored")
    fx.submit(len, b"").result()  # the I/O thread ticks: any free the collected Ref caused has been sent
    assert fx.get(new) == data


def test_a_free_the_io_thread_has_not_sent_yet_does_not_take_an_equal_put_made_after_it(fresh_fx):
    """fx.free, then a put of equal bytes (the same key) while the I/O thread is busy: the free
    is the old Ref's alone, so the object put again stays (CI once found it gone)."""
    fx = fresh_fx
    data = os.urandom(300_000)
    old = fx.put(data)
    busy, release = threading.Event(), threading.Event()
    fx._io.post(lambda: (busy.set(), release.wait(10)))  # the I/O thread, held as a loaded machine would
    try:
        assert busy.wait(10)
        fx.free(old)
        new = fx.put(data)  # over the object socket, from this thread
    finally:
        release.set()
    fx.submit(len, b"").result()  # the I/O thread ticks: the free has been sent
    wait_for(lambda: store_figures(fx)["objects"] == 1, 10, "the object put again stored")
    assert fx.get(new) == data


def test_a_future_pickled_outside_a_call_refuses_as_the_stdlibs_does(fx):
    import pickle

    future = fx.submit(square, 2)
    future.result()
    with pytest.raises(TypeError, match="pass it to submit/map"):
        pickle.dumps(future)


def test_a_map_over_pending_futures_returns_at_once_and_later_chunks_go_meanwhile(fx, gate):
    slow = fx.submit(gated, gate.path, 5)
    results = fx.map(add, [slow, 1, 2], [1, 1, 1], chunksize=1)  # returns although its first input is pending
    assert not slow.done()
    gate.open()
    assert list(results) == [6, 2, 3]
