"""What a by-value function reads is checked by content: an in-place edit ships
the new value and changes the cache key, as rebinding does."""

import pickle

import numpy as np
import pytest
from notebook_cells import cell

from fabric.client.cache_key import function_digest
from fabric.client.shipping import LARGE_BUFFER_BYTES, FunctionCache, LargeArrays

READS_CFG = "CFG = {'scale': 1}\ndef scaled(i):\n    return i * CFG['scale']\n"


def test_a_global_mutated_in_place_ships_its_new_value_and_changes_the_key():
    scaled = cell(READS_CFG)["scaled"]
    cache = FunctionCache()
    before, key_before = cache.get(scaled), function_digest(scaled)
    scaled.__globals__["CFG"]["scale"] = 100
    after = cache.get(scaled)
    assert after[0] != before[0] and pickle.loads(after[1])(2) == 200
    assert function_digest(scaled) != key_before
    assert cache.get(scaled)[1] is after[1]  # unchanged since: not pickled again


@pytest.mark.parametrize("source", [
    "def make(cfg):\n    return lambda i: i * cfg['scale']\nfn = make({'scale': 1})\n",
    "def fn(i, cfg={'scale': 1}):\n    return i * cfg['scale']\n",
    "CFG = {'scale': 1}\ndef inner(i):\n    return i * CFG['scale']\nfn = lambda i: inner(i)\n",
])
def test_closure_cells_defaults_and_globals_two_calls_deep_are_checked_by_content(source):
    fn = cell(source)["fn"]
    cache = FunctionCache()
    before, key_before = cache.get(fn)[0], function_digest(fn)
    cfg = (fn.__closure__[0].cell_contents if fn.__closure__ and "make" in source
           else fn.__defaults__[0] if fn.__defaults__ else fn.__globals__["CFG"])
    cfg["scale"] = 100
    assert cache.get(fn)[0] != before and function_digest(fn) != key_before
    assert pickle.loads(cache.get(fn)[1])(2) == 200


def large(fill=1.0):
    return np.full(LARGE_BUFFER_BYTES // 8 * 4, fill)


def test_a_large_global_array_rewritten_in_place_ships_and_keys_its_new_content():
    namespace = cell("def total():\n    return float(DATA.sum())\n")
    namespace["DATA"] = large()
    total, cache = namespace["total"], FunctionCache()
    before, key_before = cache.get(total), function_digest(total)
    namespace["DATA"][:] = 7
    after = cache.get(total)  # a submit: the sample sees a bulk rewrite
    assert pickle.loads(after[1])() == 7 * namespace["DATA"].size
    assert after[0] != before[0] and function_digest(total) != key_before


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_sparse_edit_is_seen_exactly_always_and_by_a_submit_once_its_window_passed():
    clock = Clock()
    arrays, array = LargeArrays(clock=clock), large()
    first = arrays.digest(array, exact=False)
    array[5] = 2.0  # not in the strided sample
    assert arrays.digest(array, exact=False) == first  # within the documented window: missed
    assert arrays.digest(array, exact=True) != first  # a map, or a cached call: always seen
    array[5] = 3.0
    clock.now += 1000.0  # past RECHECK_FACTOR times the digest's cost
    assert arrays.digest(array, exact=False) not in (first, arrays.digest(large(), exact=True))


def test_a_new_array_in_freed_memory_is_no_stale_exact_digest():
    arrays = LargeArrays()
    digests = set()
    for fill in range(5):
        digests.add(arrays.digest(large(fill), exact=True))
    assert len(digests) == 5


def test_immutable_globals_add_nothing_but_their_identity():
    namespace = cell("K = 3\nNAME = 'x'\ndef f(x):\n    return x + K + len(NAME)\n")
    cache = FunctionCache()
    first = cache.get(namespace["f"])
    namespace["K"] = 4
    assert cache.get(namespace["f"])[0] != first[0]
