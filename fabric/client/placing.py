"""Placing one batch: the nodes allowed, the key's owner, the candidates, the policy's choice.

Pure state beside the :class:`~fabric.client.ventilator.Ventilator`, in the
client's I/O thread: it reads the live nodes' latest heartbeats (a dict the
cluster view keeps) and the ventilator's free workers, and keeps what it must
remember itself, the resources each node's running batches hold and since when
each unplaceable batch has waited::

    Batch.placing ─► eligible(): live nodes named by nodes=, declaring the resources, defining the task
                  ─► owners(): the ring owner of the call's affinity key, or of each item's
                     partition key (several owners: the batch is split, one part per owner)
                  ─► candidates(): their workers with a free credit whose node has the resources free
                  ─► policy.choose() ─► a worker id, WAIT, or an exception that fails the call

A batch no live node could ever run (none of ``nodes=`` alive, no node with
the resource, no node defining the task) waits ``timeout_s`` (the client's
``connect_timeout_s``) for one to join, then fails with
:class:`~fabric.NoNodesError` (:class:`~fabric.UnknownTaskError` for a task)
naming what is missing.  A batch whose nodes exist but are busy waits for a
credit however long: that is flow control, not failure.

Resources are counted by this client, per node, for the batches it has in
flight there (a batch runs its items one at a time, so one batch holds one
task's resources).  Two clients of the same node each count their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..cluster.ring import CacheRing
from ..cluster.stats import NodeStats
from ..errors import NoNodesError, UnknownTaskError
from .placement import BatchInfo, Candidate, Placement

MAX_RINGS = 64  # rings kept, one per set of eligible nodes; membership changes make new ones


@dataclass(frozen=True, slots=True)
class Placing:
    """Where one call's batches may run and who chooses among the workers there."""

    policy: Placement
    function: str  # for BatchInfo and error messages
    options: Any  # the call's TaskOptions, for BatchInfo
    nodes: frozenset[str] | None = None
    resources: tuple[tuple[str, int], ...] = ()
    task: str | None = None  # a task defined on the nodes, called by name
    affinity: bytes | None = None  # digest of the call's affinity key


class FreeWorker(NamedTuple):
    """A worker with a free credit on a node that accepts work, from the ventilator."""

    worker_id: bytes
    node_id: bytes
    free: int
    last_used: int


WAIT = None


class Placer:
    """Eligible nodes, key owners, resources in use and candidates, for placed batches."""

    def __init__(self, nodes: dict[bytes, NodeStats] | None = None, timeout_s: float = 30.0) -> None:
        self.nodes: dict[bytes, NodeStats] = nodes if nodes is not None else {}  # live nodes, kept by the view
        self.timeout_s = timeout_s
        self.in_use: dict[bytes, dict[str, int]] = {}  # node -> resource -> units its running batches hold
        self.holding: dict[int, tuple[bytes, tuple[tuple[str, int], ...]]] = {}  # batch id -> (node, resources)
        self.waiting_since: dict[int, float] = {}  # unplaceable batch -> when it was first found so
        self._rings: dict[tuple[tuple[bytes, str, int], ...], CacheRing] = {}

    def place(self, batch_id: int, placing: Placing, keys: Sequence[bytes] | None, n_items: int,
              free: list[FreeWorker], now: float) -> bytes | None | list[list[int]]:
        """A worker id for the batch; WAIT; or, when its items' keys have several
        owners, the item positions of each owner's part (the caller splits it).
        Raises the call's error: unplaceable for too long, or the policy's own."""
        eligible = self.eligible(placing)
        if not eligible:
            error = self.unplaceable(batch_id, placing, now)
            if error is not None:
                raise error
            return WAIT
        targets = [stats.node_id for stats in eligible]
        if keys is not None:
            groups = self.groups(keys, eligible)
            if len(groups) > 1:
                self.placed(batch_id)
                return list(groups.values())
            targets = list(groups)
        elif placing.affinity is not None:
            targets = [self.owner(placing.affinity, eligible)]
        candidates = self.candidates(placing, targets, free)
        return self.choose(placing, n_items, candidates) if candidates else WAIT

    # -- which nodes -------------------------------------------------------------------

    def eligible(self, placing: Placing) -> list[NodeStats]:
        """Live nodes able to run the call at all (credits and resources in use aside)."""
        return [stats for stats in self.nodes.values() if _fits(stats, placing)]

    def unplaceable(self, batch_id: int, placing: Placing, now: float) -> BaseException | None:
        """No live node can run the call: its error once it has waited ``timeout_s``, else None."""
        since = self.waiting_since.setdefault(batch_id, now)
        if now - since < self.timeout_s:
            return None
        del self.waiting_since[batch_id]
        return self.missing(placing)

    def missing(self, placing: Placing) -> BaseException:
        """The error naming what no live node offers the call."""
        live = list(self.nodes.values())
        if placing.task is not None and not any(placing.task in n.tasks for n in live):
            return UnknownTaskError(
                f"no live node defines a task named {placing.task!r}; the nodes define: "
                f"{', '.join(sorted(known_tasks(live))) or 'none'} (fabric-node start --tasks MODULE)"
            )
        wanted = []
        if placing.nodes is not None:
            wanted.append(f"nodes {', '.join(sorted(placing.nodes))} (live: "
                          f"{', '.join(sorted(n.name for n in live)) or 'none'})")
        if placing.resources:
            wanted.append("resources " + ", ".join(f"{k}={v}" for k, v in placing.resources)
                          + f" (declared: {_declared(live) or 'none'})")
        return NoNodesError(f"no live node can run {placing.function} within {self.timeout_s:g} s: it needs "
                            + " and ".join(wanted or ["a node"]))

    def placed(self, batch_id: int) -> None:
        self.waiting_since.pop(batch_id, None)

    # -- keys ------------------------------------------------------------------------------

    def owner(self, key: bytes, eligible: list[NodeStats]) -> bytes:
        return self._ring(eligible).owners(key)[0]

    def groups(self, keys: Sequence[bytes], eligible: list[NodeStats]) -> dict[bytes, list[int]]:
        """Item positions by their key's owner node."""
        ring = self._ring(eligible)
        owners: dict[bytes, bytes] = {}
        by_owner: dict[bytes, list[int]] = {}
        for position, key in enumerate(keys):
            owner = owners.get(key)
            if owner is None:
                owner = owners[key] = ring.owners(key)[0]
            by_owner.setdefault(owner, []).append(position)
        return by_owner

    def _ring(self, eligible: list[NodeStats]) -> CacheRing:
        signature = tuple(sorted((n.node_id, n.name, n.cache_weight) for n in eligible))
        ring = self._rings.get(signature)
        if ring is None:
            if len(self._rings) >= MAX_RINGS:
                self._rings.clear()
            ring = self._rings[signature] = CacheRing(everyone=True)
            ring.update(eligible)
        return ring

    # -- which worker -------------------------------------------------------------------------

    def candidates(self, placing: Placing, targets: Iterable[bytes], free: list[FreeWorker]) -> list[Candidate]:
        """The free workers of the target nodes whose node has the call's resources free."""
        allowed = {node_id: self.nodes[node_id] for node_id in targets
                   if self._resources_free(node_id, placing.resources)}
        resources = {node_id: dict(stats.resources) for node_id, stats in allowed.items()}  # a copy per node
        out = []
        for w in free:
            stats = allowed.get(w.node_id)
            if stats is not None:
                worker_id = w.worker_id.decode(errors="replace")
                out.append(Candidate(stats.name, stats.indices.get(worker_id, -1), w.free, stats.cpu_percent,
                                     resources[w.node_id], 0, w.last_used, worker_id))
        return out

    def choose(self, placing: Placing, n_items: int, candidates: list[Candidate]) -> bytes | None:
        """The policy's pick as a worker id, or None to wait; what it raises fails the call."""
        choice = placing.policy.choose(BatchInfo(placing.function, n_items, placing.options), candidates)
        if choice is None:
            return WAIT
        if not any(choice is c for c in candidates):
            raise TypeError(f"{placing.policy!r}.choose returned {choice!r:.100}, which is not one of its candidates")
        return choice.worker_id.encode()

    def _resources_free(self, node_id: bytes, wanted: tuple[tuple[str, int], ...]) -> bool:
        if not wanted:
            return True
        declared = self.nodes[node_id].resources
        used = self.in_use.get(node_id, {})
        return all(used.get(name, 0) + units <= declared.get(name, 0) for name, units in wanted)

    def hold(self, batch_id: int, node_id: bytes, resources: tuple[tuple[str, int], ...]) -> None:
        """The batch leaves for the node: its resources are in use there until it is back."""
        used = self.in_use.setdefault(node_id, {})
        for name, units in resources:
            used[name] = used.get(name, 0) + units
        self.holding[batch_id] = (node_id, resources)

    def release(self, batch_id: int) -> None:
        """The batch is back (a result, lost, taken back): its resources are free again."""
        held = self.holding.pop(batch_id, None)
        if held is not None:
            used = self.in_use[held[0]]
            for name, units in held[1]:
                used[name] -= units


def _fits(stats: NodeStats, placing: Placing) -> bool:
    if placing.nodes is not None and stats.name not in placing.nodes:
        return False
    if placing.task is not None and placing.task not in stats.tasks:
        return False
    return all(stats.resources.get(name, 0) >= units for name, units in placing.resources)


def known_tasks(nodes: Iterable[NodeStats]) -> dict[str, list[str]]:
    """Task name -> the names of the nodes defining it."""
    tasks: dict[str, list[str]] = {}
    for stats in nodes:
        for name in stats.tasks:
            tasks.setdefault(name, []).append(stats.name)
    return {name: sorted(holders) for name, holders in sorted(tasks.items())}


def _declared(nodes: Iterable[NodeStats]) -> str:
    return "; ".join(f"{n.name}: " + ", ".join(f"{k}={v}" for k, v in sorted(n.resources.items()))
                     for n in nodes if n.resources)
