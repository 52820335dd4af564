"""The cache client works from two callables, as the I/O loop hands them: no loop, no socket."""

import pickle
import time

import msgpack
import pytest

from fabric.client.cache import CacheClient, Seal
from fabric.cluster.stats import NodeStats
from fabric.wire.protocol import CacheGet, CacheHits, CachePut, CacheStored
from fabric.wire.security import write_key_file

STORED = {b"k1": b"v1"}


def test_lookup_and_store_go_through_post_and_send_only():
    sent = []

    def post(command):  # the I/O thread, here the caller's: run it, then let the node answer
        command()
        for _, msg in sent:
            if isinstance(msg, CacheGet):
                found = [(i, STORED[k]) for i, k in enumerate(msg.keys) if k in STORED]
                payload = [msgpack.packb([v for _, v in found], use_bin_type=True)]
                client.on_hits(CacheHits(msg.request_id, [i for i, _ in found], payload))
        return True

    client = CacheClient(post, lambda node_id, msg: sent.append((node_id, msg)) or True, replicas=1, timeout_s=5.0)
    client.nodes_changed([NodeStats(node_id=b"n1", name="n1", control="c", pub="p", cache_weight=16)])
    assert client.lookup([b"k0", b"k1"]) == {1: b"v1"}
    assert (client.hits, client.misses) == (1, 1)
    assert client.lookup_owned([b"k0", b"k1"]) == ({1: b"v1"}, {b"n1": [0, 1]})  # where a miss should run
    sent.clear()
    client.store(b"fn", [b"k0"], [42])
    [(node_id, put)] = sent
    assert node_id == b"n1" and isinstance(put, CachePut) and put.keys == [b"k0"]


def one_node_client(key=None):
    """A client whose I/O thread is the caller's, with one node n1: (the client, what it sent)."""
    sent = []
    client = CacheClient(lambda command: command() or True, lambda node_id, msg: sent.append(msg) or True,
                         replicas=1, timeout_s=5.0, key=key)
    client.nodes_changed([NodeStats(node_id=b"n1", name="n1", control="c", pub="p", cache_weight=16)])
    return client, sent


def test_a_write_back_is_waited_for_until_its_node_takes_it():
    # Write-backs were fire and forget: those still queued when the client closed were lost.
    client, sent = one_node_client()
    client.store(b"fn", [b"k0", b"k1"], [1, 2])
    [put] = sent
    assert not client.wait_stored(0)
    client.on_stored(CacheStored(put.request_id, 2))
    assert client.wait_stored(0)
    client.store(b"fn", [b"k2"], [3])
    client.node_lost(b"n1")  # what a lost node held is lost with it: nothing more to wait for
    assert client.wait_stored(0)
    client.nodes_changed([NodeStats(node_id=b"n1", name="n1", control="c", pub="p", cache_weight=16)])
    client.store(b"fn", [b"k3"], [4])
    client.expire(time.monotonic() + 6.0)  # nor past the cache's timeout
    assert client.wait_stored(0)


def hit_reply(request_id, value):
    return CacheHits(request_id, [0], [msgpack.packb([value], use_bin_type=True)])


@pytest.mark.parametrize("forgery", ["unsealed", "another key's seal", "another cache key's entry"])
def test_a_keyed_reader_takes_only_entries_sealed_with_the_cluster_key(tmp_path, forgery):
    key = write_key_file(tmp_path / "cluster.key")
    writer, written = one_node_client(key)
    writer.store(b"fn", [b"k0", b"k1"], ["right", "moved"])
    sealed = msgpack.unpackb(written[0].payload[0])
    reader, asked = one_node_client(key)
    reader.post = lambda command: command() or reader.on_hits(hit_reply(asked[-1].request_id, sealed[0])) or True
    assert pickle.loads(reader.lookup([b"k0"])[0]) == "right"
    forged = {
        "unsealed": pickle.dumps("wrong"),
        "another key's seal": Seal(write_key_file(tmp_path / "other.key")).seal_many([b"k0"], [b"wrong"])[0],
        "another cache key's entry": sealed[1],
    }[forgery]
    reader.post = lambda command: command() or reader.on_hits(hit_reply(asked[-1].request_id, forged)) or True
    assert reader.lookup([b"k0"]) == {}
    assert reader.rejected == 1
