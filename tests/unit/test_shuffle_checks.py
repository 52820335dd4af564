"""What a worker returns for a by-key call is checked before it is used: a lying or
broken worker fails the call with a FabricError, never an IndexError or a wrong dict."""

from __future__ import annotations

import concurrent.futures
import operator
import pickle

import pytest

import fabric
from fabric.client.objects import ObjectTable
from fabric.client.shuffle import Rerun, Shuffle, merge_in_client
from fabric.wire.ref import Ref, current, redirect


@pytest.fixture
def shuffle():
    table = ObjectTable(b"client-under-test", lambda node, message: True)
    yield Shuffle(3, operator.add, False, False, table, set, lambda items: Rerun(concurrent.futures.Future, {}))
    table.close()


def a_ref() -> Ref:
    return Ref(b"k" * 16, 10, ((b"n1", "tcp://127.0.0.1:1"),), b"other-client")


@pytest.mark.parametrize("answer", [None, "abc", [a_ref()], [a_ref()] * 4, [a_ref(), 3, None], (None, None, None)])
def test_a_malformed_batch_answer_fails_the_call(shuffle, answer):
    with pytest.raises(fabric.FabricError, match="answered a by-key batch"):
        shuffle.note([[1]], [answer])
    assert shuffle.parts == [[], [], []]


def test_a_well_formed_batch_answer_is_taken(shuffle):
    ref = a_ref()
    shuffle.note([[1]], [[None, ref, None]])
    assert shuffle.parts == [[], [ref], []]


@pytest.mark.parametrize("answer", [[b""], [b"", b"", "x"], b"abc", [pickle.dumps({1: 2}), None, 5]])
def test_a_malformed_partial_for_the_client_fails_the_call(answer):
    with pytest.raises(fabric.FabricError, match="answered a by-key batch"):
        merge_in_client([answer], 3, operator.add, False)


def test_partials_for_the_client_are_merged():
    blobs = [pickle.dumps({"a": 1}), b"", pickle.dumps({"b": 2})]
    assert merge_in_client([blobs, blobs], 3, operator.add, False) == {"a": 2, "b": 4}


def answered(value):
    """A submit whose merge future is already done with ``value``."""
    def submit(fn, args, affinity):
        future = concurrent.futures.Future()
        future.set_result(value)
        return future
    return submit


@pytest.mark.parametrize("answer", ["junk", None, (b"n1", b"x"), [b"x"], a_ref()])
def test_a_malformed_merge_answer_fails_the_call(shuffle, answer):
    shuffle.note([[1]], [[a_ref(), None, None]])
    with pytest.raises(fabric.FabricError, match="answered a partition's merge"):
        shuffle.reduce(answered(answer), None)


def test_merged_partitions_are_joined(shuffle):
    shuffle.note([[1]], [[a_ref(), None, None]])
    assert shuffle.reduce(answered(pickle.dumps({"a": 5})), None) == {"a": 5}


@pytest.mark.parametrize("answer", [None, [], [None, None, None], "abc", [1, 2, 3]])
def test_a_rerun_answering_without_the_partitions_ref_fails_its_future_not_a_callback(answer):
    done = concurrent.futures.Future()
    done.set_result(answer)
    lineage: dict = {}
    future = Rerun(lambda: done, lineage).partition(1)
    with pytest.raises(fabric.ObjectLostError, match="came back without a Ref"):
        future.result(timeout=1)
    assert lineage == {}


def test_a_rerun_gives_the_partitions_new_ref_and_its_lineage():
    done = concurrent.futures.Future()
    ref = a_ref()
    done.set_result([None, ref, None])
    lineage: dict = {}
    assert Rerun(lambda: done, lineage).partition(1).result(timeout=1) is ref
    assert set(lineage) == {ref.key}


def test_a_rerun_serves_each_partition_once_and_folds_again_for_one_lost_again():
    """The partials of one dead node share a fold; a partition asked for a second time
    lost that fold's partial too, so it must not be handed the same (gone) Ref."""
    runs: list[concurrent.futures.Future] = []

    def again() -> concurrent.futures.Future:
        runs.append(concurrent.futures.Future())
        runs[-1].set_result([Ref(bytes([len(runs), i]) * 8, 10, ((b"n1", "tcp://127.0.0.1:1"),), b"c")
                             for i in range(3)])
        return runs[-1]

    rerun = Rerun(again, {})
    first = [rerun.partition(i).result(timeout=1) for i in (0, 2)]
    assert len(runs) == 1
    again_0 = rerun.partition(0).result(timeout=1)
    assert len(runs) == 2 and again_0 not in first


def test_refs_to_a_recomputation_lost_in_turn_pickle_as_the_newest():
    original, first, second = (Ref(bytes([n]) * 16, 10, ((b"n1", "tcp://127.0.0.1:1"),), b"c") for n in (1, 2, 3))
    try:
        redirect(original.key, first)
        redirect(first.key, second)
        assert current(original) is second and current(first) is second
    finally:
        for ref in (original, first):
            redirect(ref.key, None)
