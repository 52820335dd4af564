"""A task batch: the unit the ventilator sends and a worker answers with one
result message.

Made in the caller's thread (:mod:`.submission` for submits, :mod:`.mapping`
for a map's chunks, :mod:`.everywhere` for what goes to every worker), queued
and sent by the :class:`~fabric.client.ventilator.Ventilator` in the I/O thread,
and answered to its owner by the sink (:mod:`.sink`)::

    submit / map / run --Batch(owner)--> Ventilator --frames()--> worker
    sink: results ----> owner.deliver(batch, ...)     miscounted(): a wrong count fails it
    queued submits of one function --> merged(): one batch, for the owners of all
    worker lost running it --> split(): two halves, each with owner.slice() (:mod:`.lost_batches`)
    keys owned by several nodes --> split_by(): one part per owner (:mod:`.placing`)

Items stay encoded from the caller to the worker; a batch keeps what it needs
to be sent again (its function's payload, its items' frames, its place in its
owner's chunk).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import ProtocolError
from ..wire import codec
from ..wire.protocol import Mode, TaskBatch, to_frames
from .batching import BatchSizer
from .output import Printed
from .placing import Placing

_batch_ids = itertools.count(1)


def next_batch_id() -> int:
    return next(_batch_ids)


class BatchOwner(Protocol):
    """Who receives a batch's outcome: a map stream, or a group of futures."""

    def alive(self) -> bool:
        """Someone still waits for this owner's outcomes."""
        ...

    def claim(self) -> bool:
        """The batch is about to be sent: start its work; False drops the batch."""
        ...

    def deliver(self, batch: Batch, codec_id: int, payload: list[Any], errors: list[codec.ErrorRecord]) -> None: ...

    def fail(self, batch: Batch, exc: BaseException) -> None: ...

    def slice(self, start: int, stop: int) -> BatchOwner: ...

    def cancel(self, batch: Batch) -> None:
        """The batch was dropped before it ran (shutdown with cancel_futures)."""
        ...

    def describe(self, batch: Batch) -> str:
        """Name the batch's task(s) for an error message."""
        ...

    def merge(self, owners: list[BatchOwner]) -> BatchOwner:
        """One owner for merged CALL batches (only futures' owners are merged)."""
        ...


@dataclass(slots=True, eq=False)
class Batch:
    """Items of one task batch, still encoded, with what is needed to resend them.

    ``item_frames[i]`` counts the payload frames of item ``i`` (CALL mode);
    a MAP/STARMAP batch is one encoded list, ``item_frames == [len(payload)]``.
    ``offset`` places the batch inside its owner's chunk after splits.
    """

    batch_id: int
    digest: bytes
    fn_payload: bytes
    mode: int
    codec: int
    item_frames: list[int]
    payload: list[Any]
    n_items: int
    owner: BatchOwner
    seq: int = 0
    offset: int = 0
    attempts: int = 0
    sizer: BatchSizer | None = None
    retries: int | None = None  # per-call override of the ventilator's default
    indices: list[int] | None = None  # positions in the owner's chunk, when not contiguous (cache misses)
    suspect: bool = False  # it was running when its worker died: never merged again, so a poison task is isolated
    taken_back: bool = False  # its worker went silent once: acknowledged from now on
    refs: list[Any] | None = None  # the Refs its items hold, alive until it is done (their objects must stay)
    data: dict[bytes, int] | None = None  # bytes of those objects per node holding them, when worth placing by
    parked_at: float | None = None  # when it started to wait for a credit on its data's node
    printed: Printed | None = None  # what its tasks printed, set with its results for its owner
    placing: Placing | None = None  # where it may run, for calls with placement options
    keys: list[bytes] | None = None  # each item's partition key digest (map(partition_by=))
    worker: bytes | None = None  # the only worker that may run it (initializer, fx.run)
    setup: bool = False  # the client's initializer: never re-queued, a new one goes to each (re)attached worker
    # Bytes of its payload, worked out once: the liveness check reads it on every tick while it runs,
    # and summing a merged batch of 4,096 submits' frames cost the I/O thread ~0.3 ms each time.
    payload_bytes: int = field(default=-1, init=False)

    def frames(self, with_fn: bool, ack: bool) -> list[Any]:
        header = TaskBatch(
            self.batch_id, self.digest, self.mode, self.codec, self.item_frames, with_fn, self.n_items, ack
        )
        head = to_frames(header)
        return [*head, self.fn_payload, *self.payload] if with_fn else [*head, *self.payload]

    def split(self) -> tuple[Batch, Batch]:
        """Two halves with fresh ids; MAP/STARMAP payloads are re-encoded."""
        half = self.n_items // 2
        if self.mode == Mode.CALL:
            cut = sum(self.item_frames[:half])
            parts = [(self.item_frames[:half], self.payload[:cut]), (self.item_frames[half:], self.payload[cut:])]
            codec_ids = [self.codec, self.codec]
        else:
            items = codec.decode(self.codec, self.payload)
            frames = [codec.pickle_frames(items[:half]), codec.pickle_frames(items[half:])]
            parts = [([len(f)], f) for f in frames]
            codec_ids = [codec.PICKLE, codec.PICKLE]
        bounds = [(0, half), (half, self.n_items)]
        return tuple(  # type: ignore[return-value]
            replace(
                self,
                batch_id=next_batch_id(),
                codec=codec_id,
                item_frames=item_frames,
                payload=payload,
                n_items=stop - start,
                owner=self.owner.slice(start, stop),
                offset=self.offset + start,
                suspect=True,
                indices=self.indices[start:stop] if self.indices is not None else None,
                keys=self.keys[start:stop] if self.keys is not None else None,
            )
            for (item_frames, payload), codec_id, (start, stop) in zip(parts, codec_ids, bounds)
        )

    def split_by(self, groups: list[list[int]]) -> list[Batch]:
        """One batch per group of item positions (a MAP/STARMAP batch whose
        partition keys have several owners), payloads re-encoded."""
        items = codec.decode(self.codec, self.payload)
        base = self.indices if self.indices is not None else range(self.offset, self.offset + self.n_items)
        parts = []
        for positions in groups:
            payload = codec.pickle_frames([items[i] for i in positions])
            parts.append(replace(
                self, batch_id=next_batch_id(), codec=codec.PICKLE, item_frames=[len(payload)], payload=payload,
                n_items=len(positions), offset=base[positions[0]], indices=[base[i] for i in positions],
                keys=[self.keys[i] for i in positions] if self.keys is not None else None,
            ))
        return parts


def merged(calls: list[Batch]) -> Batch:
    """One CALL batch of queued submits of the same function, for the owners of all."""
    first = calls[0]
    owner = first.owner.merge([b.owner for b in calls])
    return Batch(
        next_batch_id(),
        first.digest,
        first.fn_payload,
        Mode.CALL,
        first.codec,
        [n for b in calls for n in b.item_frames],
        [f for b in calls for f in b.payload],
        sum(b.n_items for b in calls),
        owner,
        attempts=max(b.attempts for b in calls),
    )


def miscounted(values: Any, n_items: int) -> ProtocolError | None:
    """The error for a result list that does not hold one value per task of its
    batch (a lying or broken worker), or None when it does."""
    if isinstance(values, list) and len(values) == n_items:
        return None
    count = len(values) if isinstance(values, list) else type(values).__name__
    return ProtocolError(f"a worker answered {n_items} tasks with {count} results")
