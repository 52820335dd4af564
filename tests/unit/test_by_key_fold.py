"""The worker's side of map_reduce(..., by_key=True) and the client's merge, without a cluster.

FoldByKey folds a batch's pairs per key and splits them into partitions by a
hash that must agree between processes and between equal keys; merge_by_key
folds a partition's partials into one dict.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import fractions
import operator
import pathlib
import pickle
import subprocess
import sys
import uuid
from collections import Counter, namedtuple

import pytest

import fabric
from fabric.calls.by_key import FoldByKey, PartitionMerge, merge_by_key, pickled_partial
from fabric.calls.fold import NO_INITIAL
from fabric.calls.key_hash import key_hash, partition_of, split


def words(line: str):
    return ((w, 1) for w in line.split())


LINES = ["a b a c", "b b d", "", "a é \ud800"]


def folded(fold: FoldByKey, items) -> list[dict]:
    """A batch's partials, one dict per partition, as the worker keeps them (after a pickle round trip)."""
    return pickle.loads(pickle.dumps(fold.fold(items)))


def test_pairs_are_folded_per_key_and_split_into_disjoint_partitions():
    parts = folded(FoldByKey(words, operator.add, NO_INITIAL, 4), LINES)
    assert len(parts) == 4
    merged = {k: v for part in parts for k, v in part.items()}
    assert sum(map(len, parts)) == len(merged)  # disjoint
    assert merged == Counter(w for line in LINES for w in line.split())
    for index, part in enumerate(parts):
        assert all(partition_of(key, 4) == index for key in part)


def test_a_generic_reducer_folds_from_the_first_value():
    parts = folded(FoldByKey(lambda x: [(x % 3, x)], max, NO_INITIAL, 1), range(10))
    assert parts == [{0: 9, 1: 7, 2: 8}]


def test_a_mutable_initial_starts_every_key_afresh():
    def append(acc: list, x: int) -> list:
        acc.append(x)
        return acc

    [groups] = folded(FoldByKey(lambda x: [(x % 2, x)], append, [], 1), range(6))
    assert groups == {0: [0, 2, 4], 1: [1, 3, 5]}
    [sums] = folded(FoldByKey(lambda x: [(x % 2, x)], operator.add, 100, 1), range(6))
    assert sums == {0: 106, 1: 109}


def test_a_fold_survives_pickling_as_it_is_shipped():
    fold = pickle.loads(pickle.dumps(FoldByKey(operator.methodcaller("items"), operator.add, 0, 3)))
    assert {k: v for part in folded(fold, [{"x": 1}, {"x": 2, "y": 5}]) for k, v in part.items()} == {"x": 3, "y": 5}


def test_bad_arguments_are_refused_when_built():
    with pytest.raises(TypeError, match="reducer must be a function"):
        FoldByKey(words, 3, NO_INITIAL, 2)
    for bad in (0, -1, 2.0, True, 1 << 17):
        with pytest.raises(ValueError, match="partitions must be an int from 1 to 65536"):
            FoldByKey(words, operator.add, NO_INITIAL, bad)


class Colour(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    SMALL = 1


class Tone(enum.StrEnum):
    LOW = "low"


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: str


Pair = namedtuple("Pair", "a b")


def test_equal_keys_hash_alike_whatever_their_type():
    utc = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC)
    paris = utc.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
    equal_groups = [
        (1, 1.0, True, Size.SMALL, fractions.Fraction(1), 1 + 0j),
        ("low", Tone.LOW),
        ((1, "a"), (1.0, "a"), Pair(1, "a")),
        (utc, paris),
        (frozenset({1, "x"}), frozenset({"x", 1.0})),
    ]
    for group in equal_groups:
        assert len({key_hash(key) for key in group}) == 1, group


HASHED = ["word", b"bytes", 12345, -7, 2.5, None, (1, ("a", b"b")), frozenset({"x", "y"}), Colour.RED,
          datetime.date(2024, 5, 1), datetime.timedelta(seconds=3), uuid.UUID(int=99), pathlib.PurePosixPath("/a/b"),
          Point(1, "z"), "\ud800"]


def test_the_hash_is_the_same_in_another_process_with_another_string_salt():
    here = [key_hash(key) for key in HASHED]
    script = ("import pickle, sys; from fabric.calls.key_hash import key_hash; import test_by_key_fold as t; "
              "print([key_hash(k) for k in t.HASHED])")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
                             cwd=pathlib.Path(__file__).parent)
        assert out.stdout.strip() == str(here)


def test_a_key_without_a_stable_encoding_raises_cache_key_error_naming_it():
    class Opaque:
        def __repr__(self) -> str:
            return "<the opaque key>"

    for key in (Opaque(), ("ok", Opaque())):
        with pytest.raises(fabric.CacheKeyError, match="the opaque key.*no stable encoding.*Opaque"):
            FoldByKey(lambda x, key=key: [(key, x)], operator.add, NO_INITIAL, 3).fold(range(3))
    with pytest.raises(fabric.CacheKeyError, match="no stable encoding"):  # one partition checks its keys too
        split({"fine": 1, Opaque(): 2}, 1)
    deep: tuple = ()
    for _ in range(100):
        deep = (deep,)
    with pytest.raises(fabric.CacheKeyError, match="nested more than"):
        key_hash(deep)


def test_an_unhashable_key_raises_cache_key_error_naming_it():
    with pytest.raises(fabric.CacheKeyError, match=r"key \['a', 'list'\] is not hashable"):
        FoldByKey(lambda x: [(["a", "list"], x)], operator.add, NO_INITIAL, 2).fold(range(3))
    with pytest.raises(fabric.CacheKeyError, match=r"key \{\} is not hashable"):
        FoldByKey(lambda x: [({}, x)], operator.add, 0, 2).fold(range(3))


def test_a_reducers_type_error_is_its_own():
    with pytest.raises(TypeError, match="unsupported operand") as raised:
        FoldByKey(lambda x: [("k", x)], operator.add, NO_INITIAL, 2).fold([1, "a"])
    assert not isinstance(raised.value, fabric.CacheKeyError)


def test_merging_combines_common_keys_and_adopts_the_rest():
    assert merge_by_key({"a": 1, "b": 2}, {"b": 10, "c": 5}, operator.add, False) == {"a": 1, "b": 12, "c": 5}
    assert merge_by_key({}, {"x": 1}, operator.add, False) == {"x": 1}
    big = {str(i): i for i in range(100)}
    assert merge_by_key({"5": 1}, big, operator.add, False) == {**big, "5": 6}


def test_ordered_merging_keeps_the_earlier_values_first():
    total: dict = {}
    for part in ({"k": "a"}, {"k": "b", "j": "x"}, {"k": "c"}):
        total = merge_by_key(total, part, operator.add, True)
    assert total == {"k": "abc", "j": "x"}
    merged = PartitionMerge(operator.add, True, False)({"k": "a"}, {"k": "b", "z": "q"}, {}, {"z": "r"})
    assert pickle.loads(merged) == {"k": "ab", "z": "qr"}


def test_a_partial_plain_pickle_refuses_travels_by_cloudpickle():
    value = type("Dynamic", (), {"n": 3})()  # a class no module holds, as a notebook's class is on a worker
    blob = pickled_partial({"k": value})
    assert pickle.loads(blob)["k"].n == 3
    with pytest.raises(fabric.SerializationError, match="partition of the by-key reduction"):
        pickled_partial({"k": lambda_in_a_generator()})


def lambda_in_a_generator():
    yield 1
