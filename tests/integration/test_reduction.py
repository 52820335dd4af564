"""map_reduce with combine=: each batch folded on its worker, partials folded in the client.

Every result is compared with the serial reduction; batches are kept small
(``chunksize``) so every call folds many partials.
"""

from __future__ import annotations

import operator
import threading
from collections import Counter

import pytest
from helpers import square

import fabric

WORDS = [f"w{i}" for i in range(50)]


def words_of(line_number: int) -> Counter:
    return Counter(WORDS[(line_number * k) % len(WORDS)] for k in range(1, 8))


def merge_counts(total: Counter, counts: Counter) -> Counter:
    total.update(counts)  # in place: each batch must start from its own copy of the initial value
    return total


def serial_count(n: int) -> Counter:
    total: Counter = Counter()
    for line_number in range(n):
        total.update(words_of(line_number))
    return total


def fails_at_777(x: int) -> int:
    if x == 777:
        raise KeyError(f"item {x}")
    return x


@pytest.mark.parametrize("chunksize", [None, 10])
def test_a_word_count_folded_on_the_workers_matches_the_serial_count(fx, chunksize):
    total = fx.map_reduce(words_of, merge_counts, range(5000), initial=Counter(), combine=True, chunksize=chunksize)
    assert total == serial_count(5000)


def add_residue(residues: frozenset, x: int) -> frozenset:
    return residues | {x % 97}


def test_a_separate_combine_function_folds_the_partials(fx):
    # the reducer takes (set, int), so the partial sets need their own combine: union
    residues = fx.map_reduce(square, add_residue, range(3000), initial=frozenset(), combine=operator.or_,
                             chunksize=100)
    assert residues == {x * x % 97 for x in range(3000)}


def test_without_an_initial_value_the_first_result_starts_each_fold(fx):
    assert fx.map_reduce(square, operator.add, range(10_000), combine=True) == sum(x * x for x in range(10_000))


def test_ordered_folds_the_partials_in_input_order(fx):
    # concatenation is associative but does not commute: only input order gives this string
    folded = fx.map_reduce(str, operator.add, range(5000), initial="", combine=True, ordered=True, chunksize=7)
    assert folded == "".join(map(str, range(5000)))


def test_a_mappers_exception_is_raised_with_its_type_and_the_fabric_goes_on(fx):
    with pytest.raises(KeyError, match="item 777") as raised:
        fx.map_reduce(fails_at_777, operator.add, range(2000), combine=True, chunksize=100)
    assert isinstance(raised.value.__cause__, fabric.RemoteTraceback)
    assert fx.map_reduce(square, operator.add, range(100), combine=True) == sum(x * x for x in range(100))


def test_an_empty_input_gives_the_initial_value(fx):
    assert fx.map_reduce(square, operator.add, [], initial=0, combine=True) == 0
    with pytest.raises(TypeError):  # as functools.reduce of an empty sequence
        fx.map_reduce(square, operator.add, [], combine=True)


def test_bad_arguments_are_refused_at_the_call(fx):
    with pytest.raises(TypeError, match="combine must be True or a function"):
        fx.map_reduce(square, operator.add, range(10), combine="yes")
    with pytest.raises(TypeError, match="reducer must be a function"):
        fx.map_reduce(square, 42, range(10), combine=True)
    with pytest.raises(fabric.SerializationError, match="initial value"):
        fx.map_reduce(square, operator.add, range(10), initial=threading.Lock(), combine=True)


def test_the_result_cache_cannot_store_folded_batches(fx):
    with pytest.raises(ValueError, match="without combine"):
        fx.map_reduce(square, operator.add, range(10), combine=True, cache=True)
    with pytest.raises(ValueError, match="without combine"):
        fx.map_reduce(fabric.cached(lambda x: x * x), operator.add, range(10), combine=True)  # not square: marking
        # it would make every later test's square a cached function
