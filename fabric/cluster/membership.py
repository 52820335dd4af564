"""Membership: which nodes are alive, from their heartbeats.

Used by the client's I/O loop (its view of the cluster) and by each node (its
peers).  Pure: it takes the time as an argument, so unit tests drive it with a
fake clock.  A node is declared dead after ``liveness_s`` of silence, counted
from the moment it is first heard of.
"""

from __future__ import annotations

from dataclasses import replace

from .stats import NodeStats


class Membership:
    """Live nodes by id, from heartbeats; declares a node dead after
    ``liveness_s`` of silence."""

    def __init__(self, liveness_s: float) -> None:
        self.liveness_s = liveness_s
        self.nodes: dict[bytes, NodeStats] = {}
        self.last_seen: dict[bytes, float] = {}

    def observe(self, stats: NodeStats, now: float) -> bool:
        """Record a heartbeat; True when the node is new (or back from the dead)."""
        is_new = stats.node_id not in self.nodes
        self.nodes[stats.node_id] = stats
        self.last_seen[stats.node_id] = now
        return is_new

    def expire(self, now: float) -> list[NodeStats]:
        """Remove and return the nodes silent for longer than the liveness timeout."""
        dead = [node_id for node_id, seen in self.last_seen.items() if now - seen > self.liveness_s]
        for node_id in dead:
            del self.last_seen[node_id]
        return [self.nodes.pop(node_id) for node_id in dead]

    def remove(self, node_id: bytes) -> NodeStats | None:
        self.last_seen.pop(node_id, None)
        return self.nodes.pop(node_id, None)

    def next_expiry(self) -> float | None:
        """When the next node would be declared dead if it stays silent."""
        return min(self.last_seen.values()) + self.liveness_s if self.last_seen else None

    def snapshot(self, now: float) -> list[NodeStats]:
        return [_aged(stats, now - self.last_seen[node_id]) for node_id, stats in self.nodes.items()]


def _aged(stats: NodeStats, age_s: float) -> NodeStats:
    return replace(stats, age_s=age_s)
