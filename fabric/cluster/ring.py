"""The consistent-hash ring over the live nodes (uhashring).

Built by the client from the heartbeats it receives; names the owner node of
a key: a cached call's key, and the keys of ``affinity=`` and ``partition_by=``
(:mod:`fabric.client.placing`), on a ring built the same way over the nodes
able to run the call, so "where does key k live" has one answer.  When one of N nodes joins or leaves only
about 1/N of the keys change owner.  A node sits on the ring by its name, not
its per-start id, so a node that restarts with the same name owns the keys
its shard holds again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from uhashring import HashRing

from .stats import NodeStats

RING_MIB_PER_WEIGHT = 64  # uhashring places 160 points per unit of weight: one per MiB took 0.19 s
RING_MAX_WEIGHT = 64  # per 1 GiB node on the client's I/O thread, at start-up and at every join


def ring_weight(shard_mib: int) -> int:
    """A node's weight on the ring from its shard size, coarse enough to build fast."""
    return min(RING_MAX_WEIGHT, max(1, round(shard_mib / RING_MIB_PER_WEIGHT)))


class CacheRing:
    """Live nodes holding a cache shard, on a consistent-hash ring."""

    def __init__(self, replicas: int = 1, *, everyone: bool = False) -> None:
        """``everyone``: nodes whose cache is off sit on the ring too, at the least
        weight (a ring of keys to place, not only of shards to store in)."""
        self.replicas = replicas
        self.everyone = everyone
        self._members: dict[str, tuple[bytes, int]] = {}  # ring name -> (node id, weight)
        self._ring: HashRing | None = None
        self._only = b""

    def update(self, nodes: Iterable[NodeStats]) -> bool:
        """Follow membership; True when the ring changed."""
        members = _ring_members([n for n in nodes if self.everyone or n.cache_weight > 0])
        if members == self._members:
            return False
        self._members = members
        self._ring = HashRing(nodes={name: {"weight": w} for name, (_, w) in members.items()}) if members else None
        self._only = next(iter(members.values()))[0] if members else b""
        return True

    def owners(self, key: bytes) -> list[bytes]:
        """The key's owner first, then its replica (distinct nodes)."""
        if self._ring is None:
            return []
        if len(self._members) == 1:  # one node (the embedded default) owns everything
            return [self._only]
        if self.replicas == 1:
            return [self._members[self._ring.get_node(key.hex())][0]]
        return [self._members[n["nodename"]][0] for n in self._ring.range(key.hex(), size=self.replicas, unique=True)]

    def node_ids(self) -> list[bytes]:
        return [node_id for node_id, _ in self._members.values()]

    def __bool__(self) -> bool:
        return self._ring is not None


def _ring_members(nodes: list[NodeStats]) -> dict[str, tuple[bytes, int]]:
    """Ring name -> (node id, weight).  The ring name is the node's name; should two
    live nodes share one (a misconfiguration), each is told apart by its id."""
    names = Counter(n.name for n in nodes)
    return {
        n.name if names[n.name] == 1 else f"{n.name}@{n.node_id.hex()}": (n.node_id, ring_weight(n.cache_weight))
        for n in nodes
    }
