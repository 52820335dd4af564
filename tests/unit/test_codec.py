"""Payload codecs round-trip exactly; functions are pickled once and re-shipped when they change."""

import functools
import pickle
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from notebook_cells import cell

from fabric.client.shipping import BindingCache, FunctionCache
from fabric.errors import RemoteError, RemoteTraceback, SerializationError
from fabric.wire import codec

PLAIN = [list(range(100)), [str(i) * 5 for i in range(100)], [{"a": 1, 2: [b"x", None, 1.5, True]}]]
RICH = [[(1, 2), (3, 4)], [1 << 80], [np.float64(1.5)], [{1, 2}], [b"x" * 10]]


@pytest.mark.parametrize("value", PLAIN + RICH)
def test_round_trip_is_exact(value):
    codec_id, frames = codec.PayloadEncoder().encode(value)
    back = codec.decode(codec_id, frames)
    assert back == value
    assert [type(v) for v in back] == [type(v) for v in value]


def timed_as(monkeypatch, *ticks):
    """The codec's clock reads ``ticks`` in turn: (msgpack start, msgpack end = pickle start, pickle end)."""
    clock = iter(ticks)
    monkeypatch.setattr(codec, "time", SimpleNamespace(perf_counter=lambda: next(clock)))


@pytest.mark.parametrize(("ticks", "chosen"), [((0.0, 1.0, 3.0), codec.MSGPACK), ((0.0, 2.0, 3.0), codec.PICKLE)])
def test_the_first_batch_is_encoded_both_ways_and_the_faster_codec_kept(monkeypatch, ticks, chosen):
    timed_as(monkeypatch, *ticks)
    encoder = codec.PayloadEncoder()
    strings = [str(i) * 20 for i in range(100)]
    for _ in range(3):  # measured once: the clock has no tick left for a second measurement
        codec_id, frames = encoder.encode(strings)
        assert codec_id == chosen and codec.decode(codec_id, frames) == strings


def test_msgpack_is_abandoned_for_the_stream_at_the_first_data_it_would_not_keep_exact(monkeypatch):
    timed_as(monkeypatch, 0.0, 1.0, 3.0)  # msgpack measured faster
    encoder = codec.PayloadEncoder()
    assert encoder.encode(["a"])[0] == codec.MSGPACK
    codec_id, frames = encoder.encode([(1, 2)])  # msgpack would turn the tuple into a list
    assert codec_id == codec.PICKLE and codec.decode(codec_id, frames) == [(1, 2)]
    assert encoder.encode(["a"])[0] == codec.PICKLE  # for the rest of the stream


def test_large_buffers_travel_out_of_band_and_arrive_writable():
    array = np.arange(1_000_000, dtype=np.float64)
    frames = codec.pickle_frames([array])
    assert len(frames) == 2 and len(frames[0]) < 1000
    [back] = codec.decode(codec.PICKLE, frames)
    assert np.array_equal(back, array)
    back[0] = 42.0


def test_lambdas_in_data_use_cloudpickle():
    frames = codec.pickle_frames([lambda x: x + 1])
    [fn] = codec.decode(codec.PICKLE, frames)
    assert fn(1) == 2


def test_unserializable_names_the_object():
    with pytest.raises(SerializationError, match="lock"):
        codec.pickle_frames(threading.Lock())


def test_garbage_payload_raises_serialization_error():
    with pytest.raises(SerializationError):
        codec.decode(codec.PICKLE, [b"garbage"])
    with pytest.raises(SerializationError):
        codec.decode(7, [b""])


def test_function_cache_reuses_and_notices_rebinding():
    namespace = cell("K = 3\ndef reads_k(x):\n    return x + K\nfn = lambda x: reads_k(x)\n")
    cache = FunctionCache()
    first = cache.get(namespace["fn"])
    assert cache.get(namespace["fn"])[1] is first[1]  # not pickled again
    namespace["K"] = 5  # re-running a cell that rebinds a global read two calls deep
    second = cache.get(namespace["fn"])
    assert second[0] != first[0]
    assert pickle.loads(second[1])(1) == 6
    assert pickle.loads(first[1])(1) == 4


def test_distinct_functions_have_distinct_digests():
    cache = FunctionCache()
    assert cache.get(lambda x: x + 1)[0] != cache.get(lambda x: x + 2)[0]
    assert cache.get(len)[0] == cache.get(len)[0]


def test_not_callable():
    with pytest.raises(SerializationError, match="not callable"):
        FunctionCache().get(3)


def counting_cache(max_entries=100):
    """A BindingCache whose value is the function's name and how many values it computed so far."""
    computed = []

    def compute(fn):
        computed.append(fn)
        return codec.function_name(fn), len(computed)

    return BindingCache(compute, max_entries)


def test_binding_cache_computes_once_per_function_and_binding():
    namespace = cell("K = 3\ndef reads_k(x):\n    return x + K\n")
    cache = counting_cache()
    assert [cache.get(namespace["reads_k"]) for _ in range(3)] == [("reads_k", 1)] * 3
    assert [cache.get(len) for _ in range(2)] == [("len", 2)] * 2  # no weak reference to a builtin: kept strongly
    namespace["K"] = 5
    assert cache.get(namespace["reads_k"]) == ("reads_k", 3)


def importable(tag):
    """A function cloudpickle would ship by reference (its guard is empty), told apart by ``tag``."""

    def fn():
        pass

    fn.__module__, fn.__qualname__, fn.tag = "elsewhere", "fn", tag
    return fn


def test_binding_cache_never_serves_a_dead_functions_value_to_one_reusing_its_id():
    cache = BindingCache(lambda fn: fn.tag, max_entries=100)
    ids = []
    for tag in range(20):
        fn = importable(tag)
        assert cache.get(fn) == tag
        ids.append(id(fn))
        del fn
    assert len(set(ids)) < len(ids)  # ids were reused, so the check above was put to the test


def test_binding_cache_is_bounded():
    cache = counting_cache(max_entries=2)
    first, second, third = importable(1), importable(2), importable(3)
    assert [cache.get(fn)[1] for fn in (first, second, third, third, first)] == [1, 2, 3, 3, 4]


class Job:
    def __call__(self):
        pass

    def method(self):
        pass


def test_function_name_is_the_qualified_name_or_the_callables_type():
    assert codec.function_name(len) == "len"
    assert codec.function_name(Job.method) == "Job.method"
    assert codec.function_name(Job()) == "Job"
    assert codec.function_name(functools.partial(len)) == "partial"


def test_frames_size_counts_bytes_whatever_the_buffer():
    frames = [b"ab", bytearray(3), memoryview(np.zeros(2)), zmq.Frame(b"abcd")]
    assert codec.frames_size(frames) == 2 + 3 + 16 + 4


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def test_error_records_rebuild_the_original_type_with_traceback():
    try:
        raise KeyError("k")
    except KeyError as exc:
        record = codec.error_record(4, exc)
    rebuilt = codec.rebuild_error(record)
    assert type(rebuilt) is KeyError and rebuilt.args == ("k",)
    assert isinstance(rebuilt.__cause__, RemoteTraceback) and "raise KeyError" in rebuilt.__cause__.tb


def test_unpicklable_exception_becomes_remote_error():
    record = codec.error_record(0, Unpicklable("boom"))
    rebuilt = codec.rebuild_error(record)
    assert isinstance(rebuilt, RemoteError) and "Unpicklable" in rebuilt.type_name and "boom" in str(rebuilt)


def raises_here():
    raise ValueError("from this file")


def test_code_shipped_by_value_keeps_its_file_for_remote_tracebacks():
    digest, payload = FunctionCache().get(raises_here)  # this test module is the user's own: by value
    assert pickle.loads(payload).__code__.co_filename == raises_here.__code__.co_filename


def test_a_large_bytes_argument_travels_as_its_own_frame_without_a_copy():
    """Copying it into the pickle held the caller's GIL long enough to starve the
    I/O thread's heartbeats (~1 s per 512 MiB); now the frame is its own memory."""
    big = b"x" * codec.LARGE_BYTES
    frames = codec.pickle_call((big, 1), {"also": big, "small": b"y"})
    assert len(frames) == 3 and all(memoryview(f).obj is big for f in frames[1:])
    (args, kwargs) = codec.decode(codec.PICKLE, frames)
    assert args == (big, 1) and kwargs == {"also": big, "small": b"y"}
    assert type(args[0]) is bytes and type(kwargs["also"]) is bytes


def test_small_arguments_stay_in_one_frame():
    assert len(codec.pickle_call((b"x" * (codec.LARGE_BYTES - 1), [b"y" * codec.LARGE_BYTES]), {})) == 1
