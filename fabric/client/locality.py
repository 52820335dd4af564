"""Placement by data: which worker a batch that reads stored objects should go to.

A pure function of the batch's Ref (and kept-future) bytes per node and of the
workers that could take it, so that a placement policy can use it as one input
among others::

    batch encoded ── the Refs it pickled (fabric.wire.ref.collecting) ──► data_by_node: {node id: bytes}
    ventilator ── {worker id: node id} of the workers with a free credit ──► choose_by_data ─► worker, or None: wait

A batch whose objects total at least ``locality_bytes`` goes to a worker of the
node holding most of those bytes, and a batch of cache misses (as cut per owner
by the map stream) to a worker of their keys' ring owner; with no credit free there it waits (the
ventilator bounds the wait by ``locality_wait_s``, then sends it wherever a
credit is, and the worker fetches what its node lacks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..wire.ref import Ref


def data_by_node(refs: Iterable[Ref], threshold: int) -> dict[bytes, int] | None:
    """Bytes of the distinct objects ``refs`` name, per node holding them; None under ``threshold``."""
    seen: dict[bytes, Ref] = {ref.key: ref for ref in refs}
    if sum(ref.size for ref in seen.values()) < max(1, threshold):
        return None
    totals: dict[bytes, int] = {}
    for ref in seen.values():
        for node_id in ref.node_ids:
            totals[node_id] = totals.get(node_id, 0) + ref.size
    return totals or None


def by_data_or_owner(data: dict[bytes, int] | None, owner: bytes) -> dict[bytes, int] | None:
    """``data``; failing it, for cache misses, their keys' owner node (b"": none),
    so the miss runs where its result is stored and a later hit is served there."""
    return {owner: 1} if data is None and owner else data


def choose_by_data(data: Mapping[bytes, int], candidates: Mapping[bytes, bytes]) -> bytes | None:
    """A candidate worker on the node holding the most bytes, or None when none has a credit there."""
    if not data:
        return None
    best = max(data, key=data.__getitem__)
    return next((worker for worker, node in candidates.items() if node == best), None)
