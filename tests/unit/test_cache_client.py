"""The cache client works from two callables, as the I/O loop hands them: no loop, no socket."""

import msgpack

from fabric.client.cache import CacheClient
from fabric.cluster.stats import NodeStats
from fabric.wire.protocol import CacheGet, CacheHits, CachePut

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
    sent.clear()
    client.store(b"fn", [b"k0"], [42])
    [(node_id, put)] = sent
    assert node_id == b"n1" and isinstance(put, CachePut) and put.keys == [b"k0"]
