"""Placement: which worker runs a batch, chosen by a pure policy the user may replace.

Lives in the client's I/O thread, beside the ventilator
(:mod:`fabric.client.ventilator`), which asks it only for the batches of calls
that set a placement option (``placement=``, ``nodes=``, ``resources=``,
``affinity=``, ``partition_by=``, or a task called by name)::

    ventilator.placed queue ─► eligible nodes (nodes=, resources declared, task defined)
                            ─► the key's owner on the ring of those nodes (affinity / partition_by)
                            ─► candidates: their workers with a free credit and the resources free
                            ─► policy.choose(batch, candidates) ─► one candidate, or None: wait

Every other batch takes the ventilator's own rule (the worker with most free
credits, least recently used among equals), which is what the default
:class:`LeastLoaded` policy says too, without building candidates: a default
``map`` pays nothing for placement.

A policy is pure: it sees a :class:`BatchInfo` and the :class:`Candidate`
records and returns one of them.  It holds no socket and may keep no state
that the candidates do not give it (``last_used`` says which worker was sent
work longest ago, which is all round-robin needs).  A policy that raises
fails the call with its exception; the I/O thread carries on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import msgpack

__all__ = ["BatchInfo", "Candidate", "LeastLoaded", "Pack", "Placement", "RoundRobin", "Spread"]

MAX_KEY_BYTES = 1 << 16  # an affinity key larger than this is surely not a key


class Candidate(NamedTuple):
    """A worker that could take the batch now.

    ``node``: its node's name; ``worker``: its index on that node (0, 1, ...);
    ``free``: credits it has free; ``load``: its node's CPU %; ``resources``:
    what its node declares (``{"gpu": 2}``); ``local_bytes``: bytes of the
    batch's data its node holds (0 while the batch refers to no stored data);
    ``last_used``: when this client last sent it work, as a count of sends
    (-1: never); ``worker_id``: its id.  A named tuple: a few are made for
    every placed batch, and a frozen dataclass took twice as long to make.
    """

    node: str
    worker: int
    free: int
    load: float
    resources: dict[str, int]
    local_bytes: int
    last_used: int
    worker_id: str


class BatchInfo(NamedTuple):
    """What a policy is told of a batch: the function's name (or the task's),
    how many items the batch holds, and the call's options
    (:class:`~fabric.TaskOptions`)."""

    function: str
    n_items: int
    options: Any


class Placement:
    """Base class of placement policies: subclass it and give ``choose``.

    ``choose(batch, candidates)`` returns one of ``candidates`` (never empty)
    for ``batch``, or None to keep the batch waiting until the candidates
    change (a worker frees a credit, a node joins).  It runs in the client's
    I/O thread for each batch of the calls that use it, so it must be quick
    (microseconds) and must not block; an exception fails the call.
    """

    name = "custom"

    def choose(self, batch: BatchInfo, candidates: Sequence[Candidate]) -> Candidate | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<placement {self.name}>"


class LeastLoaded(Placement):
    """The worker with most free credits, least recently used among equals
    (the default): an idle worker before the prefetch slot of a busy one, so a
    short task never waits behind a long one while a worker is idle."""

    name = "least-loaded"

    def choose(self, batch: BatchInfo, candidates: Sequence[Candidate]) -> Candidate | None:
        return max(candidates, key=lambda c: (c.free, -c.last_used))


class RoundRobin(Placement):
    """The worker sent work longest ago: every worker in turn, whatever its
    load (even spreading of calls that cost alike, as ipyparallel's ``lru``)."""

    name = "round-robin"

    def choose(self, batch: BatchInfo, candidates: Sequence[Candidate]) -> Candidate | None:
        return min(candidates, key=lambda c: c.last_used)


class Pack(Placement):
    """Fill the busiest node first (Ray's PACK): few nodes hold the work, the
    others stay idle for other clients or can be released."""

    name = "pack"

    def choose(self, batch: BatchInfo, candidates: Sequence[Candidate]) -> Candidate | None:
        free = _free_by_node(candidates)
        return min(candidates, key=lambda c: (free[c.node], c.node, -c.free, c.worker))


class Spread(Placement):
    """The node with most free credits first, then its least used worker
    (Ray's SPREAD): work spreads over machines before it doubles up on one."""

    name = "spread"

    def choose(self, batch: BatchInfo, candidates: Sequence[Candidate]) -> Candidate | None:
        free = _free_by_node(candidates)
        return max(candidates, key=lambda c: (free[c.node], -c.load, c.free, -c.last_used))


def _free_by_node(candidates: Sequence[Candidate]) -> dict[str, int]:
    free: dict[str, int] = {}
    for c in candidates:
        free[c.node] = free.get(c.node, 0) + c.free
    return free


BUILT_IN: dict[str, type[Placement]] = {cls.name: cls for cls in (LeastLoaded, RoundRobin, Pack, Spread)}


def placement_of(value: str | Placement | None) -> Placement | None:
    """A policy from ``placement=``: a built-in's name, a :class:`Placement`, or None."""
    if value is None or isinstance(value, Placement):
        return value
    if isinstance(value, str) and value in BUILT_IN:
        return BUILT_IN[value]()
    raise ValueError(f"placement must be one of {', '.join(sorted(BUILT_IN))} or a fabric.Placement, got {value!r:.80}")


def is_default(policy: Placement | None) -> bool:
    return policy is None or type(policy) is LeastLoaded


def key_digest(key: Hashable) -> bytes:
    """A stable digest of an affinity or partition key, the same in every process
    (``hash()`` is salted per process): keys that are equal as msgpack data (str,
    int, bytes, tuples of them...) land on the same node."""
    try:
        packed = msgpack.packb(key, use_bin_type=True)
    except (TypeError, ValueError):
        packed = repr(key).encode()
    if len(packed) > MAX_KEY_BYTES:
        raise ValueError(f"an affinity key packs to {len(packed):,} bytes; keep keys small (ids, names)")
    return hashlib.blake2b(packed, digest_size=16).digest()
