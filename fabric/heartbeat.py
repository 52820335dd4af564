"""Heartbeats and membership: who is alive, and what each node reports.

Each node PUBlishes a :class:`NodeStats` every ``heartbeat_interval_s`` from
its own I/O loop (never from a worker running user code, so a busy worker
cannot make its node look dead).  Clients and other nodes SUBscribe to every
node they know; a heartbeat names the node's peers, so membership spreads
from the seed list::

    node PUB ──HEARTBEAT──► SUB (client I/O loop)  ─► Membership.observe / expire
             ──HEARTBEAT──► SUB (every other node) ─► Membership.observe / expire

A new subscriber misses what was published before it connected (the PUB/SUB
slow joiner), so the first snapshot of a node comes as a direct reply on its
control socket, and liveness counts from the moment a node is first heard of.
:class:`Membership` is pure: it takes the time as an argument.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import psutil

from .errors import ProtocolError


@dataclass(frozen=True)
class WorkerStats:
    """Running counters of one worker process."""

    worker_id: str
    pid: int = 0
    done: int = 0
    failed: int = 0
    busy_s: float = 0.0
    running: bool = False


@dataclass(frozen=True)
class NodeStats:
    """What a node says about itself in each heartbeat; ``fx.nodes()`` returns these."""

    node_id: bytes
    name: str
    control: str
    pub: str
    workers: int = 0
    busy: int = 0
    accepting: bool = True
    done: int = 0
    failed: int = 0
    tasks_per_s: float = 0.0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    max_load: float = 100.0
    clients: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_weight: int = 0  # the node's weight on the cache ring (MiB of shard capacity); 0: no cache
    peers: tuple[tuple[str, str], ...] = ()  # (control, pub) of every peer it knows
    per_worker: tuple[WorkerStats, ...] = ()
    age_s: float = field(default=0.0, compare=False)

    def to_info(self) -> dict[str, Any]:
        info = asdict(self)
        info["peers"] = [list(p) for p in self.peers]
        info["per_worker"] = [list(asdict(w).values()) for w in self.per_worker]
        del info["age_s"]
        return info

    @classmethod
    def from_info(cls, info: object) -> NodeStats:
        """Parse a heartbeat's map; ProtocolError on anything malformed."""
        if not isinstance(info, dict):
            raise ProtocolError("heartbeat info is not a map")
        try:
            values = {f.name: info[f.name] for f in fields(cls) if f.name in info}
            values["peers"] = tuple(_peer(p) for p in values.get("peers", ()))
            values["per_worker"] = tuple(WorkerStats(*w) for w in values.get("per_worker", ()))
            stats = cls(**values)
        except (TypeError, KeyError) as exc:
            raise ProtocolError(f"heartbeat info is malformed: {exc}") from None
        _check_types(stats)
        return stats


def _peer(pair: object) -> tuple[str, str]:
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(e, str) for e in pair)):
        raise TypeError(f"a peer is [control, pub], got {pair!r:.60}")
    return pair[0], pair[1]


def _check_types(stats: NodeStats) -> None:
    expected = {"node_id": bytes, "name": str, "control": str, "pub": str, "accepting": bool}
    for name, kind in expected.items():
        if type(getattr(stats, name)) is not kind:
            raise ProtocolError(f"heartbeat field {name} is not {kind.__name__}")
    for name in ("workers", "busy", "done", "failed", "clients", "cache_entries", "cache_bytes", "cache_hits",
                 "cache_misses", "cache_weight"):
        if type(getattr(stats, name)) is not int:
            raise ProtocolError(f"heartbeat field {name} is not int")


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


class LoadMonitor:
    """Whole-machine CPU and memory, sampled once per heartbeat (psutil)."""

    def __init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only starts the measurement window
        self.cpu_percent = 0.0
        self.memory_percent = 0.0
        self._rate_at = time.monotonic()
        self._rate_done = 0
        self.tasks_per_s = 0.0

    def sample(self, done: int, now: float) -> None:
        self.cpu_percent = psutil.cpu_percent(None)
        self.memory_percent = psutil.virtual_memory().percent
        elapsed = now - self._rate_at
        if elapsed > 0:
            self.tasks_per_s = (done - self._rate_done) / elapsed
        self._rate_at, self._rate_done = now, done
