"""map_reduce(..., by_key=True) on real workers: every result against the serial count.

Batches are kept small (``chunksize``) in most tests so every call merges many
partials in the client.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import operator
import random
from collections import Counter

import pytest
from helpers import free_address, spin_square, wait_for, worker_processes

import fabric

VOCABULARY = [f"w{i}" for i in range(3000)]


def corpus(lines: int, seed: int = 7) -> list[str]:
    """Lines of words with a skewed (Zipf-like) frequency, as real text has."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
    return [" ".join(rng.choices(VOCABULARY, weights, k=12)) for _ in range(lines)]


def word_pairs(line: str):
    return ((word, 1) for word in line.split())


def serial_count(lines: list[str]) -> dict[str, int]:
    return dict(Counter(word for line in lines for word in line.split()))


def key_and_square(x: int) -> list[tuple[int, int]]:
    return [(x, x * x)]


def residue_pairs(x: int) -> list[tuple[int, int]]:
    return [(x % 10, x)]


def append(values: list, x: int) -> list:
    values.append(x)
    return values


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque key>"


def opaque_key_at_500(x: int) -> list[tuple[object, int]]:
    return [(Opaque() if x == 500 else x % 7, 1)]


def fails_at_777(x: int) -> list[tuple[int, int]]:
    if x == 777:
        raise KeyError(f"item {x}")
    return [(x % 3, x)]


@pytest.mark.parametrize("chunksize", [None, 50])
def test_a_word_count_by_key_matches_the_serial_count(fx, chunksize):
    lines = corpus(4000)
    assert fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=chunksize) == serial_count(lines)


def test_a_generator_input_and_an_explicit_partition_count(fx):
    lines = corpus(2000, seed=3)
    for partitions in (1, 3, 64):
        counts = fx.map_reduce(word_pairs, operator.add, iter(lines), by_key=True, partitions=partitions,
                               chunksize=100)
        assert counts == serial_count(lines)


def test_a_million_distinct_keys(fx):
    n = 1_000_000
    result = fx.map_reduce(key_and_square, operator.add, range(n), by_key=True)
    assert len(result) == n
    assert result == {x: x * x for x in range(n)}


def test_initial_starts_each_keys_fold_and_combine_merges_the_partials(fx):
    groups = fx.map_reduce(residue_pairs, append, range(3000), by_key=True, initial=[], combine=operator.add,
                           chunksize=100)
    assert {k: sorted(v) for k, v in groups.items()} == {r: list(range(r, 3000, 10)) for r in range(10)}


def test_ordered_merges_the_partials_in_input_order(fx):
    def digits(x: int) -> list[tuple[int, str]]:
        return [(x % 3, str(x))]

    joined = fx.map_reduce(digits, operator.add, range(2000), by_key=True, initial="", ordered=True, chunksize=7)
    assert joined == {r: "".join(str(x) for x in range(r, 2000, 3)) for r in range(3)}


@pytest.mark.skipif(importlib.util.find_spec("tqdm") is None, reason="progress bars need tqdm (pip install '.[test]')")
def test_progress_counts_the_items_mapped(fx, capsys):
    lines = corpus(3000, seed=5)
    assert fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=100, progress="words") == \
        serial_count(lines)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("words: 100%") and "3000/3000" in bar, bar


def test_an_empty_input_gives_an_empty_dict(fx):
    assert fx.map_reduce(word_pairs, operator.add, [], by_key=True) == {}
    assert fx.map_reduce(word_pairs, operator.add, ["", ""], by_key=True, initial=0) == {}


def test_a_key_without_a_stable_encoding_raises_cache_key_error_naming_it(fx):
    with pytest.raises(fabric.CacheKeyError, match="<Opaque key> has no stable encoding") as raised:
        fx.map_reduce(opaque_key_at_500, operator.add, range(2000), by_key=True, chunksize=100)
    assert isinstance(raised.value.__cause__, fabric.RemoteTraceback)
    with pytest.raises(fabric.CacheKeyError, match=r"key \[1\] is not hashable"):
        fx.map_reduce(lambda x: [([x], 1)], operator.add, [1], by_key=True)
    assert fx.map_reduce(residue_pairs, operator.add, range(100), by_key=True)[3] == sum(range(3, 100, 10))


def test_a_mappers_exception_fails_the_call_with_its_type_and_the_fabric_goes_on(fx):
    with pytest.raises(KeyError, match="item 777") as raised:
        fx.map_reduce(fails_at_777, operator.add, range(2000), by_key=True, chunksize=100)
    assert isinstance(raised.value.__cause__, fabric.RemoteTraceback)
    assert "fails_at_777" in str(raised.value.__cause__)
    assert fx.map_reduce(residue_pairs, operator.add, range(100), by_key=True) == {
        r: sum(range(r, 100, 10)) for r in range(10)
    }


def test_bad_arguments_are_refused_at_the_call(fx):
    with pytest.raises(ValueError, match="partitions must be an int from 1 to 65536"):
        fx.map_reduce(word_pairs, operator.add, ["a"], by_key=True, partitions=0)
    with pytest.raises(TypeError, match=r"by_key=True\) only"):
        fx.map_reduce(word_pairs, operator.add, ["a"], partitions=4)
    with pytest.raises(ValueError, match="without by_key"):
        fx.map_reduce(word_pairs, operator.add, ["a"], by_key=True, cache=True)
    with pytest.raises(TypeError, match="reducer must be a function"):
        fx.map_reduce(word_pairs, 42, ["a"], by_key=True)
    with pytest.raises(ValueError, match="not built yet"):
        fx.map_reduce(word_pairs, operator.add, ["a"], by_key=True, keep=True)


def test_a_word_count_by_key_over_three_loopback_nodes(start_node):
    addresses = [free_address() for _ in range(3)]
    for i, address in enumerate(addresses):
        start_node(address, join=addresses[0] if i else None)
    lines = corpus(6000, seed=11)
    with fabric.connect(addresses[0], heartbeat_interval_s=0.2, liveness_s=1.0) as fx:
        wait_for(lambda: fx.workers() == 3, 20, "the workers of all three nodes")
        assert fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=50) == serial_count(lines)
        wait_for(lambda: sum(n.done for n in fx.nodes()) >= len(lines), 10, "the counters to reach the input's size")
        assert all(n.done > 0 for n in fx.nodes()), "every node mapped some batches"


def slow_residue_pairs(x: int) -> list[tuple[int, int]]:
    return [(x % 97, spin_square(x, 2e-4))]


def test_a_node_sigkilled_mid_call_loses_and_duplicates_nothing(start_node):
    addresses = [free_address() for _ in range(3)]
    nodes = [start_node(address, join=addresses[0] if i else None) for i, address in enumerate(addresses)]
    n = 20_000
    with fabric.connect(addresses[0], heartbeat_interval_s=0.2, liveness_s=1.0) as fx, \
            concurrent.futures.ThreadPoolExecutor(1) as caller:
        wait_for(lambda: fx.workers() == 3, 20, "the workers of all three nodes")
        call = caller.submit(fx.map_reduce, slow_residue_pairs, operator.add, range(n), by_key=True, chunksize=100)
        victim = nodes[2]
        wait_for(lambda: any(s.control == addresses[2] and s.done > 0 for s in fx.nodes()) or call.done(), 30,
                 "the last node to map some batches")
        assert not call.done(), "the call ended before the node could be killed: give it more work"
        for process in [victim, *worker_processes({victim.pid})]:
            process.kill()
        assert call.result(timeout=120) == {r: sum(x * x for x in range(r, n, 97)) for r in range(97)}
        wait_for(lambda: addresses[2] not in {s.control for s in fx.nodes()}, 10, "the dead node to leave")
