"""Membership: which nodes are alive, from their heartbeats.

Used by the client's I/O loop (its view of the cluster) and by each node (its
peers).  Pure: it takes the time as an argument, so unit tests drive it with a
fake clock.  Each node heard has a phi-accrual failure detector
(:mod:`.failure_detector`) that learns its heartbeats' intervals: a node is
declared dead when its silence becomes improbable for that node, which on an
idle cluster is ``liveness_s`` after its last heartbeat, and later for a node
whose heartbeats arrive irregularly (its machine is busy).  Liveness counts
from the moment a node is first heard of; a node declared dead and heard again
starts afresh, its long silence not taken into its history.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace

from .failure_detector import PhiAccrual, for_settings
from .stats import NodeStats

STALL_FRACTION = 0.5  # late by half an interval: the thread was stalled, not merely scheduled late


class Membership:
    """Live nodes by id, from heartbeats; declares a node dead when its
    detector's phi reaches the threshold."""

    def __init__(self, heartbeat_interval_s: float, liveness_s: float) -> None:
        self.detector = for_settings(heartbeat_interval_s, liveness_s)
        self.nodes: dict[bytes, NodeStats] = {}
        self.last_seen: dict[bytes, float] = {}
        self.detectors: dict[bytes, PhiAccrual] = {}
        # (deadline, node) of every heartbeat heard, the stale ones dropped when they surface:
        # the client asks for the next expiry at every tick, which must not cost O(N) at 1,000 nodes.
        self._deadlines: list[tuple[float, bytes]] = []

    def observe(self, stats: NodeStats, now: float) -> bool:
        """Record a heartbeat; True when the node is new (or back from the dead)."""
        node_id = stats.node_id
        is_new = node_id not in self.nodes
        self.nodes[node_id] = stats
        self.heard(node_id, now)
        return is_new

    def heard(self, node_id: bytes, now: float) -> None:
        """A sign of life from a known node that carried no new stats."""
        if node_id not in self.nodes:
            return
        detector = self.detectors.get(node_id)
        if detector is None:
            detector = self.detectors[node_id] = PhiAccrual(self.detector, now)
        else:
            detector.heard(now)
        self.last_seen[node_id] = now
        heapq.heappush(self._deadlines, (detector.deadline(), node_id))

    def excuse_stall(self, late_s: float) -> None:
        """The observer's own periodic step (a client's HELLO, a node's beat) ran
        ``late_s`` late: its thread was stalled (another held the GIL, SIGSTOP), it
        could neither ask nor read, so that time is nobody's silence.  Lateness
        within ``STALL_FRACTION`` of an interval is the loop's usual jitter."""
        if self.stalled(late_s):
            for detector in self.detectors.values():
                detector.excuse(late_s)
            self._deadlines = [(d.deadline(), node_id) for node_id, d in self.detectors.items()]
            heapq.heapify(self._deadlines)

    def stalled(self, late_s: float) -> bool:
        """A periodic step this late means its thread was stalled."""
        return math.isfinite(late_s) and late_s > STALL_FRACTION * self.detector.interval_s

    def expire(self, now: float) -> list[NodeStats]:
        """Remove and return the nodes whose silence reached the detector's
        threshold, their last stats aged by that silence."""
        dead = []
        while (first := self._first()) is not None and now >= first[0]:
            dead.append(heapq.heappop(self._deadlines)[1])
        silent = {node_id: now - self.last_seen[node_id] for node_id in dead}
        return [_aged(stats, silent[stats.node_id]) for stats in map(self.remove, dead) if stats is not None]

    def remove(self, node_id: bytes) -> NodeStats | None:
        self.last_seen.pop(node_id, None)
        self.detectors.pop(node_id, None)
        return self.nodes.pop(node_id, None)

    def next_expiry(self) -> float | None:
        """When the next node would be declared dead if it stays silent."""
        first = self._first()
        return first[0] if first is not None else None

    def _first(self) -> tuple[float, bytes] | None:
        """The earliest current deadline, dropping those a later heartbeat replaced."""
        while self._deadlines:
            deadline, node_id = self._deadlines[0]
            detector = self.detectors.get(node_id)
            if detector is not None and detector.deadline() == deadline:
                return deadline, node_id
            heapq.heappop(self._deadlines)
        return None

    def phi(self, node_id: bytes, now: float) -> float:
        """How suspicious the node's silence is now (0 for an unknown node)."""
        detector = self.detectors.get(node_id)
        return detector.phi(now) if detector is not None else 0.0

    def snapshot(self, now: float) -> list[NodeStats]:
        return [_aged(stats, now - self.last_seen[node_id]) for node_id, stats in self.nodes.items()]


def _aged(stats: NodeStats, age_s: float) -> NodeStats:
    return replace(stats, age_s=age_s)
