"""``fx.statistics()``: what the client knows of its fabric, as one frozen record.

Read in the caller's thread from state the client's I/O thread keeps
(:mod:`fabric.client.io_loop`): the nodes' latest heartbeats
(:class:`~fabric.NodeStats`, published on each node's PUB), the workers
attached to this client, and the counters of what this client dropped or
found in the result cache.  No socket, no round trip: the figures are as
fresh as the last heartbeat (``age_s`` says how old).  ``fx.workers()``,
``fx.nodes()`` and ``fx.cache.stats()`` return parts of this record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..cluster.stats import NodeStats


@dataclass(frozen=True)
class CacheStats:
    """The result cache in figures: this client's lookups, and what the nodes store.

    ``hits``/``misses`` count this client's lookups; ``entries``/``bytes`` are
    stored on all nodes, and ``nodes`` maps each node's name to the same
    figures as its :class:`~fabric.NodeStats` ``cache_*`` fields.
    """

    hits: int
    misses: int
    entries: int
    bytes: int
    nodes: Mapping[str, Mapping[str, int]]

    @classmethod
    def of(cls, nodes: Iterable[NodeStats], hits: int, misses: int) -> CacheStats:
        """This client's ``hits``/``misses`` with what the nodes holding a shard report."""
        per_node = {
            n.name: {"entries": n.cache_entries, "bytes": n.cache_bytes, "hits": n.cache_hits,
                     "misses": n.cache_misses}
            for n in nodes if n.cache_weight > 0
        }
        return cls(
            hits, misses, sum(n["entries"] for n in per_node.values()), sum(n["bytes"] for n in per_node.values()),
            per_node,
        )


@dataclass(frozen=True)
class FabricStatistics:
    """The fabric as this client sees it, at one moment (trio's ``statistics()``).

    - ``nodes``: every live node as its latest heartbeat describes it.
    - ``workers``: worker processes serving this client (before the first one
      attaches: those the nodes report).
    - ``cache``: the result cache's figures.
    - ``duplicates``: results dropped because their batch had already been
      answered (a batch re-run after its worker or node was lost, whose first
      run answered too): delivery stays exactly-once.
    - ``malformed``: messages from nodes or workers dropped because they did
      not parse (a version mismatch, or something that is not fabric).
    - ``refused_workers``: workers refused because this client already served
      as many as its open-file limit allows.
    - ``recomputed``: stored objects computed again because every node holding
      them died (kept results, and the partials of ``map_reduce(..., by_key=True)``).
    """

    nodes: tuple[NodeStats, ...]
    workers: int
    cache: CacheStats
    duplicates: int
    malformed: int
    refused_workers: int = 0
    recomputed: int = 0

    @property
    def store(self) -> dict[str, dict[str, int]]:
        """Each node's object store by node name: ``objects``, ``bytes`` in memory,
        ``disk_bytes`` spilled, ``named`` objects (the NodeStats ``store_*`` fields)."""
        return {
            n.name: {"objects": n.store_objects, "bytes": n.store_bytes, "disk_bytes": n.store_disk_bytes,
                     "named": n.store_named}
            for n in self.nodes
        }
