"""map_reduce(..., by_key=True) on real workers: every result against the serial count.

Batches are kept small (``chunksize``) in most tests so every call merges many
partials in the client.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import importlib.util
import operator
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import free_address, gated, spin_square, store_figures, wait_for, worker_processes

import fabric
from fabric.calls.key_hash import partition_of
from fabric.wire.ref import current

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


def add_noting_pid(marker_dir: str, a: int, b: int) -> int:
    """A combine that tells the test which process merged."""
    Path(marker_dir, str(os.getpid())).touch()
    return a + b


def test_on_one_node_the_client_merges_the_partials(fx, tmp_path):
    """One node: the partials come to the client and are merged there, by this process."""
    combine = functools.partial(add_noting_pid, str(tmp_path))
    assert fx.map_reduce(residue_pairs, operator.add, range(1000), by_key=True, chunksize=50, combine=combine) == {
        r: sum(range(r, 1000, 10)) for r in range(10)}
    assert {marker.name for marker in tmp_path.iterdir()} == {str(os.getpid())}


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


def add_behind_gate(gate_path: str, started_dir: str, a: int, b: int) -> int:
    return gated(gate_path, a + b, started_dir)


def stored_objects(fx: fabric.Fabric) -> int:
    return sum(store["objects"] for store in fx.statistics().store.values())


def test_partials_stay_on_the_nodes_until_their_partition_is_merged_then_go(start_node, gate, tmp_path):
    """Two nodes, 20 batches of 2 partitions: 40 partials in the nodes' stores while the merges wait,
    none after, not even the copies the merges fetched.  (On one node the client merges the partials
    as they arrive: nothing is stored.)"""
    addresses = [free_address() for _ in range(2)]
    for i, address in enumerate(addresses):
        start_node(address, join=addresses[0] if i else None)
    merging = tmp_path / "merging"
    merging.mkdir()
    combine = functools.partial(add_behind_gate, gate.path, str(merging))
    with fabric.connect(addresses[0], heartbeat_interval_s=0.2, liveness_s=1.0) as fx, \
            concurrent.futures.ThreadPoolExecutor(1) as caller:
        wait_for(lambda: fx.workers() == 2, 20, "the workers of both nodes")
        call = caller.submit(fx.map_reduce, residue_pairs, operator.add, range(400), by_key=True, partitions=2,
                             chunksize=20, combine=combine)
        try:
            wait_for(lambda: any(merging.iterdir()) or call.done(), 30, "a partition's merge to start")
            assert not call.done(), call.exception()
            # 40 partials, and the copies a merging worker fetched from the other node
            wait_for(lambda: stored_objects(fx) >= 40, 10, "every batch's two partials in the stores")
        finally:
            gate.open()  # before the caller thread is joined, whatever failed
        assert call.result(timeout=60) == {r: sum(range(r, 400, 10)) for r in range(10)}
        wait_for(lambda: stored_objects(fx) == 0, 10, "the partials and their fetched copies freed once merged")


def count_pairs(counts: dict[str, int]):
    return ((n, 1) for n in counts.values())


def test_keep_leaves_one_dict_per_partition_on_the_nodes_for_a_next_map(fresh_fx):
    fx = fresh_fx
    lines = corpus(2000)
    expected = serial_count(lines)
    refs = fx.map_reduce(word_pairs, operator.add, lines, by_key=True, partitions=6, keep=True, chunksize=100)
    assert len(refs) == 6 and all(isinstance(ref, fabric.Ref) for ref in refs)
    parts = [fx.get(ref) for ref in refs]
    assert all(partition_of(word, 6) == index for index, part in enumerate(parts) for word in part)
    assert {word: n for part in parts for word, n in part.items()} == expected
    assert sum(fx.map(len, refs)) == len(expected)  # a next stage reads the partitions where they are
    histogram = fx.map_reduce(count_pairs, operator.add, refs, by_key=True)  # and a next MapReduce too
    assert histogram == Counter(expected.values())
    wait_for(lambda: store_figures(fx)["objects"] == 6, 10, "only the six kept partitions in the store")
    del refs, parts
    gc.collect()
    wait_for(lambda: store_figures(fx)["objects"] == 0, 10, "the partitions freed with their Refs")
    empty = fx.options(keep=True).map_reduce(word_pairs, operator.add, [], by_key=True, partitions=3)
    assert [fx.get(ref) for ref in empty] == [{}, {}, {}]


def test_keep_with_combine_alone_is_refused(fx):
    with pytest.raises(ValueError, match="with combine= a batch returns one folded value"):
        fx.options(keep=True).map_reduce(operator.neg, operator.add, [1], combine=True)
    assert fx.map_reduce(word_pairs, operator.add, ["a b a"], by_key=True) == {"a": 2, "b": 1}


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
        refs = fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=50, partitions=12, keep=True)
        holders = {ref.node_ids for ref in refs}
        assert all(len(nodes) == 1 for nodes in holders) and len(holders) >= 2, \
            "each partition is merged on one node, its ring owner, and the owners differ"
        assert {w: n for part in fx.map(dict.items, refs) for w, n in part} == serial_count(lines)


def test_kept_partitions_lost_with_their_node_after_the_call_are_rebuilt_from_their_lineage(start_node):
    """As Spark recomputes a lost shuffle partition: the batches that fed it fold again and it
    is merged again on a live owner, so a next stage reads exact partitions.  The second node
    killed holds partitions rebuilt once already: their batches fold once more."""
    addresses = [free_address() for _ in range(3)]
    nodes = {address: start_node(address, join=addresses[0] if i else None) for i, address in enumerate(addresses)}
    lines = corpus(3000, seed=5)
    with fabric.connect(addresses[0], heartbeat_interval_s=0.2, liveness_s=1.0) as fx:
        wait_for(lambda: fx.workers() == 3, 20, "the workers of all three nodes")
        refs = fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=50, partitions=12, keep=True)
        address_of = {node.node_id: node.control for node in fx.nodes()}

        def holder(ref: fabric.Ref) -> str:
            return address_of[current(ref).node_ids[0]]

        victim = next(holder(ref) for ref in refs if holder(ref) != addresses[0])
        for _ in range(2):
            lost = [ref for ref in refs if holder(ref) == victim]
            recomputed = fx.statistics().recomputed
            for process in [nodes[victim], *worker_processes({nodes[victim].pid})]:
                process.kill()
            wait_for(lambda dead=victim: dead not in {node.control for node in fx.nodes()}, 10, "the dead to leave")
            assert {w: n for part in fx.map(dict.items, refs) for w, n in part} == serial_count(lines)
            assert fx.statistics().recomputed - recomputed >= len(lost), "each lost partition was rebuilt"
            gc.collect()  # the folds made again left no partial pinned: the partitions and copies of them alone
            wait_for(lambda: sum(store["objects"] for store in fx.statistics().store.values()) <= 2 * 12, 10,
                     "the partials of the folds made again to be freed")
            victim = holder(lost[0])  # next, the node holding a rebuilt partition
        assert all(partition_of(word, 12) == index for index, ref in enumerate(refs) for word in fx.get(ref))


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
        assert fx.statistics().recomputed > 0, "the batches whose partials the dead node held ran again"
        wait_for(lambda: addresses[2] not in {s.control for s in fx.nodes()}, 10, "the dead node to leave")


def add_noting_node(marker_dir: str, a: int, b: int) -> int:
    """A merge's combine: slow, and telling the test which node (the worker's parent) merges."""
    Path(marker_dir, str(os.getppid())).touch()
    deadline = time.perf_counter() + 2e-3
    while time.perf_counter() < deadline:
        pass
    return a + b


def test_a_node_sigkilled_while_partitions_merge_loses_nothing(start_node, tmp_path):
    """The node dies holding partials and running merges: its merges run again elsewhere and the
    batches whose partials it held run again first, so the result is exact."""
    addresses = [free_address() for _ in range(3)]
    nodes = [start_node(address, join=addresses[0] if i else None) for i, address in enumerate(addresses)]
    merging = tmp_path / "merging"
    merging.mkdir()
    n = 6000
    combine = functools.partial(add_noting_node, str(merging))
    with fabric.connect(addresses[0], heartbeat_interval_s=0.2, liveness_s=1.0) as fx, \
            concurrent.futures.ThreadPoolExecutor(1) as caller:
        wait_for(lambda: fx.workers() == 3, 20, "the workers of all three nodes")
        call = caller.submit(fx.map_reduce, residue_pairs, operator.add, range(n), by_key=True, chunksize=50,
                             partitions=12, combine=combine)
        others = {str(node.pid): node for node in nodes[1:]}
        marker = wait_for(lambda: next((m.name for m in merging.iterdir() if m.name in others), None) or call.done(),
                          60, "a merge on a node other than the first")
        assert not call.done(), "the call ended before a merging node could be killed: give it more work"
        victim = others[marker]
        for process in [victim, *worker_processes({victim.pid})]:
            process.kill()
        assert call.result(timeout=120) == {r: sum(range(r, n, 10)) for r in range(10)}
        assert fx.statistics().recomputed > 0, "partials the dead node held were made again"
