"""The node's object store as a pure index over two directories, and the client's placement by data."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fabric.client.locality import choose_by_data, data_by_node
from fabric.node.objects import ObjectStore
from fabric.wire import blob
from fabric.wire.ref import Ref


@pytest.fixture
def store(tmp_path):
    made = ObjectStore(tmp_path / "mem", tmp_path / "disk", max_bytes=1000)
    yield made
    made.close()


def put(store: ObjectStore, key: bytes, size: int, owner: bytes = b"c", name: str = "") -> None:
    incoming = store.begin(b"sender", int.from_bytes(key[:4], "big"), key, size, owner, name)
    store.write(incoming, memoryview(os.urandom(size)))
    store.commit(b"sender", int.from_bytes(key[:4], "big"))


def key(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_over_the_bound_pinned_objects_spill_to_disk_and_stay_readable(store):
    for i in range(1, 4):
        put(store, key(i), 400)
    figures = store.figures()
    assert figures.objects == 3 and figures.memory_bytes <= 1000 and figures.disk_bytes == 400
    assert store.entries[key(1)].on_disk  # the least recently used went first
    assert store.read(key(1), 0, 400).nbytes == 400
    assert (store.disk_dir / key(1).hex()).exists() and not (store.mem_dir / key(1).hex()).exists()


def test_unpinned_copies_are_dropped_before_anything_spills(store):
    (store.mem_dir / key(9).hex()).write_bytes(b"x" * 600)
    store.adopt(b"", key(9), pinned=False)  # a copy fetched from another node
    put(store, key(1), 600)
    assert key(9) not in store.entries and not (store.mem_dir / key(9).hex()).exists()
    assert store.figures().disk_bytes == 0


def test_an_object_larger_than_the_memory_tier_goes_straight_to_disk(store):
    put(store, key(1), 5000)
    assert store.entries[key(1)].on_disk and store.figures().memory_bytes == 0


def test_each_put_is_a_claim_and_each_free_releases_one(store):
    put(store, key(1), 10)
    assert store.claim(key(1), b"c", "")  # an equal put whose first chunk overtook the free of the first put
    assert store.free(b"c", [key(1)]) == 0  # that free releases one claim: the object stays
    assert store.find(key(1)) == (key(1), 10)
    assert store.free(b"c", [key(1)]) == 1
    assert store.find(key(1)) is None and not (store.mem_dir / key(1).hex()).exists()


def test_a_forgotten_client_releases_what_it_owned_but_named_objects_stay(store):
    put(store, key(1), 10, owner=b"gone")
    put(store, key(2), 10, owner=b"live")
    put(store, key(3), 10, owner=b"", name="corpus")
    assert store.forget_owners({b"live"}) == 1
    assert store.find(key(1)) is None and store.find(key(2)) and store.find(b"", "corpus") == (key(3), 10)
    assert store.listing() == [["corpus", key(3), 10]]
    assert store.delete("corpus") == [["corpus", key(3), 10]] and store.find(key(3)) is None


def test_copies_fetched_of_a_forgotten_clients_objects_go_with_it(store):
    for i, owner in ((1, b"gone"), (2, b"live")):
        (store.mem_dir / key(i).hex()).write_bytes(b"x" * 10)
        store.adopt(owner, key(i), pinned=False)  # copies fetched of objects these clients own elsewhere
    assert store.forget_owners({b"live"}) == 1  # its last frees may never have come
    assert store.find(key(1)) is None and store.find(key(2)) == (key(2), 10)


def test_a_put_that_skips_or_overruns_is_refused(store):
    incoming = store.begin(b"s", 1, key(1), 10, b"c", "")
    with pytest.raises(ValueError):
        store.write(incoming, memoryview(b"x" * 11))
    store.abandon(b"s", 1)
    assert not list(store.mem_dir.iterdir())
    with pytest.raises(ValueError):
        store.begin(b"s", 2, key(1), 0, b"c", "")


def test_a_stored_object_decodes_as_views_of_its_buffer():
    array = np.arange(1000.0)
    data = bytearray(b"".join(bytes(memoryview(p).cast("B")) for p in blob.encode({"a": array, "b": b"x"})))
    back = blob.decode(memoryview(data))
    np.testing.assert_array_equal(back["a"], array)
    assert back["b"] == b"x"
    assert np.shares_memory(back["a"], np.frombuffer(data, dtype=np.uint8))


def test_placement_by_data_prefers_the_node_holding_most_bytes():
    big = Ref(key(1), 3 << 20, ((b"n-a", "tcp://127.0.0.1:1"),))
    small = Ref(key(2), 1 << 20, ((b"n-b", "tcp://127.0.0.1:2"),))
    data = data_by_node([big, small, big], threshold=1 << 20)
    assert data == {b"n-a": 3 << 20, b"n-b": 1 << 20}
    assert data_by_node([Ref(key(3), 10, ((b"n-a", "tcp://127.0.0.1:1"),))], threshold=1 << 20) is None
    assert choose_by_data(data, {b"w1": b"n-b", b"w2": b"n-a"}) == b"w2"
    assert choose_by_data(data, {b"w1": b"n-b"}) is None  # wait for a credit on n-a
