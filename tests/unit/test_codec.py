"""Payload codecs round-trip exactly; functions are pickled once and re-shipped when they change."""

import pickle
import threading

import numpy as np
import pytest

from fabric.client.shipping import FunctionCache
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


def test_strings_choose_msgpack_and_tuples_fall_back_to_pickle():
    encoder = codec.PayloadEncoder()
    codecs = {encoder.encode([str(i) * 20 for i in range(2000)])[0] for _ in range(5)}
    assert codecs <= {codec.MSGPACK, codec.PICKLE}
    assert encoder.encode([(1, 2)])[0] == codec.PICKLE
    assert encoder.encode(["a"])[0] == codec.PICKLE  # msgpack abandoned for this stream


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


def notebook_cell(source):
    """Run source as a notebook cell would: in a namespace whose module is __main__."""
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def test_function_cache_reuses_and_notices_rebinding():
    cell = notebook_cell("K = 3\ndef reads_k(x):\n    return x + K\nfn = lambda x: reads_k(x)\n")
    cache = FunctionCache()
    first = cache.get(cell["fn"])
    assert cache.get(cell["fn"]) == first
    cell["K"] = 5  # re-running a cell that rebinds a global read two calls deep
    second = cache.get(cell["fn"])
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
