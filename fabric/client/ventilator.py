"""Ventilator state: which batch goes to which worker, and when.

Lives in the client's I/O thread (see :mod:`fabric.client.io_loop`, which owns the
ROUTER socket this state drives)::

    user threads --Batch--> [urgent queue: submits] ---+
                            [bulk queue: map chunks] --+--> dispatch() --> (worker id, frames)
    worker READY(credits) --> one credit per batch it may hold (again: what it held is re-queued)
    sink: FUNCTION_MISSING --> function_missing(): the batch is sent again with its function
    sink: result arrived  --> complete(): batch leaves flight, credit returns
    node: WORKER_LOST     --> worker_lost(): its batches are split and re-queued
    node over its load    --> pause()/resume(): its workers keep their credits but get nothing
    node declared dead    --> node_lost(): its workers' batches go back to the queue, uncharged
    [pinned: per worker]  --> dispatch() first: the client's initializer, fx.run's calls
    [placed: calls with placement options] --> dispatch() asks the Placer and the call's policy
    [parked: batches reading stored data]  --> dispatch(): a credit on their data's node, or
                                               anywhere after locality_wait_s (fabric.client.locality)
    sink: BATCH_STARTED   --> acknowledged(): the worker started a batch (a sign of life)
    the loop's tick       --> silent_workers(): workers that hold work and went silent;
                              take_back(): their batches go elsewhere, uncharged
    a caller's ctrl-C     --> drop_abandoned(), recycle_abandoned(): queued batches nobody
                              waits for are dropped, workers running one are recycled

Credit-based flow control: a batch is sent only against a credit, so what is in
flight, and so memory on both sides, is bounded however large the input.  Pull
beats push: a worker with a free credit gets the next batch, so a slow worker
simply takes less.  Submits are queued apart from map chunks and go first, so a
one-task round trip never waits behind a bulk map.

A batch lost with its worker's exit (WORKER_LOST: the only death a task can be
blamed for) is split in two and both halves re-queued; a lost single-item batch
counts an attempt and fails with WorkerCrashedError after ``retries`` attempts.
Batches lost with a node declared dead by silence, or leaving, are re-run
uncharged.  A task that kills its worker is thus isolated in
O(log n) crashes, and the rest of its map finishes.  The batch blamed is the
first its worker held that has not returned: a result sent just before the
crash can die unsent with the worker (``os._exit`` leaves no time to flush), and
the batch that finished is then blamed for the one behind it.  So a lost batch
(a suspect) runs alone, on a worker holding nothing, and nothing is sent behind
it: its worker's death then names it, and an innocent is charged at most once.

Data-plane liveness: a worker's node may be alive while the worker is silent
towards this client (one-way loss of its traffic, a worker that is no node's).
The batch a worker runs is overdue when the worker has shown no sign of life
(a result, READY, BATCH_STARTED) for ``OVERDUE_FACTOR`` times the batch's
expected time (its sizer's measured seconds per item), never less than
``liveness_s``.  A batch its worker acknowledged starting is exempt while its
node's latest heartbeat lists the worker running that very batch, so a task may
run for hours; once the node lists it running something else or nothing, the
usual rule applies, counting the node's last word as the worker's last sign of
life (so a result lost on the way is taken back, not waited for forever).  An
overdue worker's batches go back to the queue uncharged (nothing says the task
is at fault) and the worker is forgotten; its late results are duplicates.
Batches expected to be short do not ask for the acknowledgement, so the hot
path pays nothing; one taken back asks for it from then on.

Batches of calls with placement options wait in their own queue, placed by
:class:`~fabric.client.placing.Placer` and the call's :class:`~fabric.Placement`;
the others take the rule above and build no candidate.  Batches pinned to one
worker (the initializer, ``fx.run``) go to it first, and never elsewhere.  A
placed batch's policy sees its data as each candidate's ``local_bytes`` and
decides alone; a batch without placement options that reads enough stored
data (``Batch.data``) is parked for a credit on its data's node, and the
default path pays one attribute test per batch for it.

This class holds no socket and reads no clock: the loop sets ``now`` at each
wake-up, and unit tests drive it directly.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import ProtocolError, UnknownTaskError, WorkerCrashedError, WorkerLostError
from ..wire import codec
from ..wire.protocol import Mode, TaskBatch, to_frames
from .batching import BatchSizer
from .locality import choose_by_data, data_by_node
from .output import Printed
from .placing import WAIT, FreeWorker, Placer, Placing

MAX_MERGED_CALLS = 4096  # submits merged into one batch at most
# A batch is overdue after this many times its expected time without a sign of life
# from its worker (and never before liveness_s): batch times vary several-fold with
# the items and the machine's load, not tenfold.
OVERDUE_FACTOR = 10.0
# A worker that has not yet returned a batch to this client gets this many times
# liveness_s: a fresh worker on a loaded machine (8 runnable processes on 2 cores)
# took over 3 s for its first batch of time.sleep(0), and was dropped as silent.
FIRST_ANSWER_FACTOR = 3.0
# Batches expected to take longer than this (or never measured) ask their worker to
# acknowledge starting them: a shorter one is over before it could be overdue, and an
# acknowledgement per batch would cost the one-task round trip (W4) a message.
ACK_AFTER_S = 0.05
# A batch's bytes must reach its worker before it can start: its allowance grows by its
# size (and the size of the stored objects it reads, which the worker may fetch) at this
# pessimistic rate (a slow network link), so a 1 GiB argument is never taken for silence
# (measured: 512 MiB took 1-3 s over loopback on the 2-core machine).
TRANSFER_BYTES_PER_S = 20e6

SPLIT = b""  # _place's answer for a batch it split into parts, now at the head of the queue

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


class Ventilator:
    """Queues, credits and batches in flight, per worker."""

    def __init__(self, retries: int = 3, liveness_s: float = 3.0, max_workers: int = 1 << 16,
                 locality_wait_s: float = 0.05) -> None:
        self.retries = retries
        self.liveness_s = liveness_s
        self.max_workers = max_workers  # attached at once; READY from one more is refused
        self.refused_workers = 0
        self.now = 0.0  # the loop's time at its current wake-up
        self.since: dict[bytes, float] = {}  # worker -> its last sign of life, or when it was sent work while idle
        self.started: set[int] = set()  # batches whose worker acknowledged starting them
        self.urgent: deque[Batch] = deque()
        self.bulk: deque[Batch] = deque()
        self.free: dict[bytes, int] = {}  # worker -> credits not in use
        self.in_flight: dict[int, tuple[bytes, Batch]] = {}
        self.held: dict[bytes, dict[int, bool]] = {}  # worker -> its batch ids, in the order it runs them: sent with fn
        self._sends = 0
        self._last_send: dict[bytes, int] = {}
        self.shipped: dict[bytes, set[bytes]] = {}  # worker -> function digests it has
        self.node_of: dict[bytes, bytes] = {}  # worker -> its node
        self._paused: set[bytes] = set()  # nodes over their load limit: no new batches
        self.recycling: set[bytes] = set()  # workers whose node was asked to recycle them
        self.alone: set[bytes] = set()  # workers sent a suspect batch: nothing more until it returns
        self.answered: set[bytes] = set()  # workers that have returned a batch (judged silent sooner)
        self.call_sizers: dict[bytes, BatchSizer] = {}
        self.locality_wait_s = locality_wait_s
        self.parked: deque[Batch] = deque()  # waiting for a credit on the node that holds their data
        self.placed: deque[Batch] = deque()  # batches of calls with placement options
        self.pinned: dict[bytes, deque[Batch]] = {}  # worker -> batches only it may run
        self.placer = Placer()
        self.failures: list[tuple[Batch, BaseException]] = []  # what dispatch gave up, for the loop to fail
        self.setup: Callable[[bytes], Batch] | None = None  # makes the initializer's batch for a worker

    # -- workers -----------------------------------------------------------------

    def worker_ready(self, worker_id: bytes, credits: int, node_id: bytes) -> bool:
        """A worker (re)attached with ``credits`` free slots.  A worker re-attaches
        between batches, never while one runs, and drops what it held unrun, so
        its batches go back to the queue as they were, charged nothing.  A new
        worker beyond ``max_workers`` is refused (False) and counted: each costs
        this client descriptors and memory, whoever sends the READY."""
        if worker_id not in self.held and len(self.held) >= self.max_workers:
            self.refused_workers += 1
            return False
        self._requeue(self._forget(worker_id))
        self.since[worker_id] = self.now
        self.held[worker_id] = {}
        self.shipped[worker_id] = set()
        self.node_of[worker_id] = node_id
        self.free[worker_id] = max(0, credits)
        self._last_send[worker_id] = -1
        if self.setup is not None:
            self.pinned.setdefault(worker_id, deque()).appendleft(self.setup(worker_id))
        return True

    @property
    def credits(self) -> int:
        """Free credits of the workers on nodes that accept work."""
        return sum(n for w, n in self.free.items() if self.node_of.get(w) not in self._paused)

    @property
    def workers(self) -> int:
        return len(self.held)

    @property
    def total_credits(self) -> int:
        return sum(self.free.values()) + len(self.in_flight)

    def pause(self, node_id: bytes) -> None:
        """Send nothing more to the node's workers (it is over its load limit);
        they keep their credits, and what they hold runs."""
        self._paused.add(node_id)

    def resume(self, node_id: bytes) -> None:
        self._paused.discard(node_id)

    def node_lost(self, node_id: bytes) -> None:
        """Every worker of the node is lost with it (declared dead by silence, or
        leaving): what they held goes back to the queue charged nothing, as a
        silent worker's does.  A node's silence or exit says nothing against a
        task (a busy machine, a slow network, a stop); only its worker's exit
        while running it does (``worker_lost``).  If the node speaks again its
        workers re-attach afresh, and their late results are duplicates."""
        self._paused.discard(node_id)
        for worker_id in [w for w, n in self.node_of.items() if n == node_id]:
            self.take_back(worker_id)

    def worker_lost(self, worker_id: bytes, reason: str = "") -> list[tuple[Batch, BaseException]]:
        """Forget the worker and re-queue its batches; return those given up,
        each with its error (a single task that crashed its worker too often).

        Only the batch the worker was running (the first it was sent) can have
        killed it: that one is split, or charged an attempt when it is a single
        task; the batches waiting behind it go back to the queue unchanged."""
        recycled = worker_id in self.recycling
        held = self._forget(worker_id)
        if not held:
            return []
        if recycled:  # killed on our word, for abandoned work: nothing it ran is at fault
            self._requeue(held)
            return []
        self._requeue(held[1:])
        return self._retry(held[0], reason)

    def unreachable(self, worker_id: bytes, batch_id: int) -> None:
        """A send to the worker failed (it is gone from the ROUTER): that batch never
        reached it and goes back to the head of its queue, charged nothing; the
        worker gets no more batches.  What it held stays charged to it until its
        node says how it died (WORKER_LOST, with the exit status a crashing task
        is blamed with) or the node itself is lost."""
        batch = self.in_flight.pop(batch_id)[1]
        self._release(batch_id)
        del self.held[worker_id][batch_id]
        self.started.discard(batch_id)
        self.free[worker_id] = 0
        self._requeue([batch])
        if not self.held[worker_id]:
            self._forget(worker_id)

    def function_missing(self, worker_id: bytes, batch_id: int) -> None:
        """The worker lacked the batch's function (it re-attached since the
        function was shipped): send the batch again, with the function.  The
        reply to a send that carried the function is stale and ignored."""
        held = self.held.get(worker_id, {})
        if held.get(batch_id, True):
            return
        del held[batch_id]
        batch = self.in_flight.pop(batch_id)[1]
        self._release(batch_id)
        self.free[worker_id] += 1
        self.since[worker_id] = self.now
        self.shipped[worker_id].discard(batch.digest)
        if not batch.fn_payload:  # a task called by name that this worker's node does not define (any longer)
            self.failures.append((batch, UnknownTaskError(
                f"{batch.owner.describe(batch)}: node of worker {worker_id.decode(errors='replace')} does not "
                "define it (reloaded without it?)")))
            return
        self._requeue([batch])

    def _forget(self, worker_id: bytes) -> list[Batch]:
        """Drop what is known of the worker; return the batches it held, in the order it runs them."""
        batch_ids = self.held.pop(worker_id, {})
        for table in (self.shipped, self.node_of, self.free, self._last_send, self.since):
            table.pop(worker_id, None)
        self.recycling.discard(worker_id)
        self.alone.discard(worker_id)
        self.answered.discard(worker_id)
        self.started.difference_update(batch_ids)
        for batch_id in batch_ids:
            self._release(batch_id)
        return [self.in_flight.pop(batch_id)[1] for batch_id in batch_ids]

    def _release(self, batch_id: int) -> None:
        if self.placer.holding:
            self.placer.release(batch_id)

    def _requeue(self, batches: list[Batch]) -> None:
        """Put batches back at the head of their queues, keeping their order.  A
        pinned batch waits for its worker again (it fails at dispatch if that
        worker is gone); an initializer's is dropped, since each (re)attached
        worker is sent one anew."""
        for batch in reversed(batches):
            if batch.worker is not None:
                if not batch.setup:
                    self.pinned.setdefault(batch.worker, deque()).appendleft(batch)
            else:
                self._queue_for(batch).appendleft(batch)

    def _retry(self, batch: Batch, reason: str) -> list[tuple[Batch, BaseException]]:
        if batch.worker is not None:  # it killed the only worker it may run on: never elsewhere, never again
            batch.attempts += 1
            return [(batch, crash_error(batch, reason))]
        if batch.n_items > 1:
            first, second = batch.split()
            self._queue_for(batch).extendleft((second, first))
            return []
        batch.attempts += 1
        batch.suspect = True
        if batch.attempts >= (batch.retries or self.retries):
            return [(batch, crash_error(batch, reason))]
        self._queue_for(batch).appendleft(batch)
        return []

    def _queue_for(self, batch: Batch) -> deque[Batch]:
        if batch.placing is not None:
            return self.placed
        return self.urgent if batch.mode == Mode.CALL else self.bulk

    # -- batches -----------------------------------------------------------------

    def enqueue(self, batch: Batch) -> None:
        if batch.worker is not None:
            self.pinned.setdefault(batch.worker, deque()).append(batch)
        else:
            self._queue_for(batch).append(batch)

    def queued(self) -> bool:
        """Something waits to be dispatched (dispatch may still find no credit for it)."""
        return bool(self.urgent or self.bulk or self.parked or self.placed or self.pinned or self.failures)

    def dispatch(self) -> Iterator[tuple[bytes, Batch, list[Any]]]:
        """Yield (worker id, batch, frames) for every batch that has a credit:
        pinned batches first, then placed ones, then those parked for their
        data's node, then the rest.  Batches given up meanwhile (their worker
        gone, their call unplaceable, their policy raised) are left in
        ``failures``."""
        if self.pinned:
            yield from self._dispatch_pinned()
        if self.placed:
            yield from self._dispatch_placed()
        if self.parked:
            yield from self._unpark()
        while True:
            worker_id = self._least_loaded()
            if worker_id is None:
                return
            batch = self._next_batch()
            if batch is None:
                return
            if batch.data is not None:
                local = choose_by_data(batch.data, self._candidates())
                if local is None and self.locality_wait_s > 0:
                    batch.parked_at = self.now
                    self.parked.append(batch)
                    continue
                worker_id = local or worker_id
            if batch.suspect and self.held[worker_id]:
                worker_id = self._least_loaded(idle=True)
                if worker_id is None:  # it waits, first in line, for a worker to finish what it holds
                    self._queue_for(batch).appendleft(batch)
                    return
            yield self._send(worker_id, batch)

    def _candidates(self) -> dict[bytes, bytes]:
        """Workers with a free credit on an accepting node, and their nodes."""
        return {w: n for w, n in self.node_of.items() if self.free.get(w) and n not in self._paused}

    def _unpark(self) -> Iterator[tuple[bytes, Batch, list[Any]]]:
        """Send each parked batch to its data's node once a credit is free there, or
        anywhere once it has waited ``locality_wait_s``."""
        for _ in range(len(self.parked)):
            batch = self.parked.popleft()
            worker_id = choose_by_data(batch.data or {}, self._candidates())
            parked_at = self.now if batch.parked_at is None else batch.parked_at
            if worker_id is None and self.now >= parked_at + self.locality_wait_s:
                worker_id = self._least_loaded()
            if worker_id is None:
                self.parked.append(batch)
            else:
                yield self._send(worker_id, batch)

    def parked_deadline(self) -> float:
        """When the first parked batch stops waiting for its data's node (inf: none parked)."""
        return min((b.parked_at + self.locality_wait_s for b in self.parked if b.parked_at is not None),
                   default=math.inf)

    def _least_loaded(self, idle: bool = False) -> bytes | None:
        """The worker with the most free credits (an idle one before one that
        would queue the batch behind its running task), least recently used
        among equals; None when no worker on an accepting node has a credit.
        A worker running a suspect batch gets nothing (see the module's
        docstring); with ``idle``, only a worker holding nothing is chosen."""
        best, best_rank, alone = None, None, self.alone
        for worker_id, free in self.free.items():
            if free and self.node_of.get(worker_id) not in self._paused:
                if (idle and self.held[worker_id]) or (alone and worker_id in alone and self._runs_alone(worker_id)):
                    continue
                rank = (free, -self._last_send[worker_id])
                if best_rank is None or rank > best_rank:
                    best, best_rank = worker_id, rank
        return best

    def _runs_alone(self, worker_id: bytes) -> bool:
        """The worker still runs the suspect batch it was sent alone; once it does
        not, it leaves ``alone`` (so that set costs the hot path one test while empty)."""
        held = self.held[worker_id]
        if held and self.in_flight[next(iter(held))][1].suspect:
            return True
        self.alone.discard(worker_id)
        return False

    def _dispatch_pinned(self) -> Iterator[tuple[bytes, Batch, list[Any]]]:
        for worker_id in list(self.pinned):
            queue = self.pinned[worker_id]
            if worker_id not in self.free:
                del self.pinned[worker_id]
                lost = WorkerLostError(f"worker {worker_id.decode(errors='replace')} left before running it")
                self.failures.extend((batch, lost) for batch in queue if not batch.setup)
                continue
            while queue and self.free[worker_id] > 0:
                batch = queue.popleft()
                if batch.owner.claim():
                    yield self._send(worker_id, batch)
            if not queue:
                del self.pinned[worker_id]

    def _dispatch_placed(self) -> Iterator[tuple[bytes, Batch, list[Any]]]:
        """Place each waiting batch in turn; those that must wait keep their order."""
        waiting: deque[Batch] = deque()
        while self.placed:
            free = self._free_workers()
            if not free:
                break
            batch = self.placed.popleft()
            if not batch.owner.alive():
                self.placer.placed(batch.batch_id)
                continue
            try:
                worker_id = self._place(batch, free)
            except Exception as exc:  # the policy's, or the call's: it fails, the loop carries on
                self.placer.placed(batch.batch_id)
                self.failures.append((batch, exc))
                continue
            if worker_id is WAIT:
                waiting.append(batch)
            elif worker_id is not SPLIT and batch.owner.claim():
                self.placer.placed(batch.batch_id)
                yield self._send(worker_id, batch)
        self.placed.extendleft(reversed(waiting))

    def _place(self, batch: Batch, free: list[FreeWorker]) -> bytes | None:
        """The worker for a placed batch, or WAIT; a batch whose keys have several
        owners is split, its parts put back at the head of the queue (SPLIT)."""
        if batch.placing is None:  # never: only placed batches are queued here
            return WAIT
        data = batch.data if batch.data is not None or not batch.refs else data_by_node(batch.refs, 0)
        where = self.placer.place(batch.batch_id, batch.placing, batch.keys, batch.n_items, free, self.now, data)
        if isinstance(where, list):
            self.placed.extendleft(reversed(batch.split_by(where)))
            return SPLIT
        return where

    def _free_workers(self) -> list[FreeWorker]:
        return [
            FreeWorker(worker_id, self.node_of[worker_id], free, self._last_send[worker_id])
            for worker_id, free in self.free.items()
            if free and self.node_of.get(worker_id) not in self._paused
        ]

    def _send(self, worker_id: bytes, batch: Batch) -> tuple[bytes, Batch, list[Any]]:
        """Mark the batch in flight; ship the function with it if the worker lacks it."""
        shipped = self.shipped[worker_id]
        with_fn = batch.digest not in shipped and bool(batch.fn_payload)  # a task called by name has none
        shipped.add(batch.digest)
        self.in_flight[batch.batch_id] = (worker_id, batch)
        held = self.held[worker_id]
        if not held:  # it had nothing to do: its silence counts from now
            self.since[worker_id] = self.now
        held[batch.batch_id] = with_fn
        if batch.suspect:
            self.alone.add(worker_id)
        self.free[worker_id] -= 1
        self._sends += 1
        self._last_send[worker_id] = self._sends
        if batch.placing is not None and batch.placing.resources:
            self.placer.hold(batch.batch_id, self.node_of[worker_id], batch.placing.resources)
        expected = self.expected_s(batch)
        ack = batch.taken_back or expected is None or expected > ACK_AFTER_S
        return worker_id, batch, batch.frames(with_fn, ack)

    def expected_s(self, batch: Batch) -> float | None:
        """The batch's expected worker time, from its sizer's measurements (None: never measured)."""
        sizer = batch.sizer or self.call_sizers.get(batch.digest)
        per_item_s = sizer.per_item_s if sizer is not None else None
        return None if per_item_s is None else per_item_s * batch.n_items

    def _next_batch(self) -> Batch | None:
        for queue in (self.urgent, self.bulk):
            while queue:
                batch = queue.popleft()
                if not batch.owner.claim():
                    continue
                if queue is self.urgent:
                    return self._merge_calls(batch)
                return batch
        return None

    def _merge_calls(self, first: Batch) -> Batch:
        """Merge queued submits of the same function into one batch, sized by
        the function's measured cost and split fairly over the free credits.
        A submit holding Refs goes alone: its objects decide where it runs and
        must stay alive until it is done, which a merged batch would not carry; so
        does one placed by its data or its cache key's owner."""
        if first.suspect or first.refs or first.data or not self.urgent:
            return first
        sizer = self.call_sizers.setdefault(first.digest, BatchSizer())
        fair_share = -(-(len(self.urgent) + 1) // self.credits)
        limit = min(sizer.next_size(), fair_share, MAX_MERGED_CALLS)
        group = [first]
        while (
            len(group) < limit and self.urgent and self.urgent[0].digest == first.digest and not self.urgent[0].suspect
            and not self.urgent[0].refs and not self.urgent[0].data
        ):
            batch = self.urgent.popleft()
            if batch.owner.claim():
                group.append(batch)
        if len(group) == 1:
            return first
        owner = first.owner.merge([b.owner for b in group])
        return Batch(
            next_batch_id(),
            first.digest,
            first.fn_payload,
            Mode.CALL,
            first.codec,
            [n for b in group for n in b.item_frames],
            [f for b in group for f in b.payload],
            sum(b.n_items for b in group),
            owner,
            attempts=max(b.attempts for b in group),
        )

    def complete(self, worker_id: bytes, batch_id: int) -> Batch | None:
        """A result arrived: the batch, or None for a late duplicate to drop."""
        entry = self.in_flight.get(batch_id)
        if entry is None or entry[0] != worker_id:
            return None
        del self.in_flight[batch_id]
        self._release(batch_id)
        self.held[worker_id].pop(batch_id, None)
        self.free[worker_id] += 1
        self.since[worker_id] = self.now
        self.started.discard(batch_id)
        self.answered.add(worker_id)
        return entry[1]

    # -- data-plane liveness -------------------------------------------------------

    def acknowledged(self, worker_id: bytes, batch_id: int) -> None:
        """The worker says it starts the batch (BATCH_STARTED)."""
        if batch_id in self.held.get(worker_id, ()):
            self.started.add(batch_id)
            self.since[worker_id] = self.now

    def silent_workers(
        self, vouched_at: Callable[[bytes, bytes | None, int], float],
    ) -> tuple[list[bytes], float]:
        """The workers whose running batch is overdue now, and when the next one
        could be.  ``vouched_at(worker, node, batch)``: when the node's heartbeats
        last listed the worker running an acknowledged batch, a sign of life
        (infinite while they do: a long task, not silence)."""
        overdue: list[bytes] = []
        next_at = math.inf
        for worker_id, held in self.held.items():
            if not held:
                continue
            running = next(iter(held))
            node_id = self.node_of.get(worker_id)
            vouched = vouched_at(worker_id, node_id, running) if running in self.started else -math.inf
            if vouched == math.inf:
                continue
            batch = self.in_flight[running][1]
            floor = self.liveness_s if worker_id in self.answered else FIRST_ANSWER_FACTOR * self.liveness_s
            allowance = max(floor, OVERDUE_FACTOR * (self.expected_s(batch) or 0.0))
            if batch.payload_bytes < 0:
                batch.payload_bytes = codec.frames_size(batch.payload)
            transfer_s = (batch.payload_bytes + _object_bytes(batch)) / TRANSFER_BYTES_PER_S
            at = max(self.since[worker_id], vouched) + allowance + transfer_s
            if self.now >= at:
                overdue.append(worker_id)
            else:
                next_at = min(next_at, at)
        return overdue, next_at

    def take_back(self, worker_id: bytes) -> None:
        """The worker went silent: forget it and re-queue what it held, uncharged
        (nothing says its task is at fault), each batch asking to be acknowledged
        from now on.  Its late results are dropped as duplicates."""
        held = self._forget(worker_id)
        for batch in held:
            batch.taken_back = True
        self._requeue(held)

    def observe(self, batch: Batch, elapsed_s: float) -> None:
        """Feed the worker's time for the batch to whoever sizes its successors."""
        sizer = batch.sizer or self.call_sizers.setdefault(batch.digest, BatchSizer())
        sizer.observe(batch.n_items, elapsed_s)

    def drop_pending(self, keep: int = 0) -> list[Batch]:
        """Remove the queued batches but the first ``keep`` (shutdown with
        cancel_futures keeps those it counts as started)."""
        queued = [*self.parked, *self.urgent, *self.bulk, *self.placed]
        self.parked.clear()
        kept, dropped = queued[:keep], queued[keep:]
        self.urgent = deque(b for b in kept if b.mode == Mode.CALL and b.placing is None)
        self.bulk = deque(b for b in kept if b.mode != Mode.CALL and b.placing is None)
        self.placed = deque(b for b in kept if b.placing is not None)
        pinned = [b for queue in self.pinned.values() for b in queue]
        self.pinned.clear()
        return dropped + pinned

    def drop_abandoned(self) -> None:
        """Drop the queued batches (parked ones too) whose owner nobody waits for
        any more (an initializer's owner always waits)."""
        self.urgent = deque(b for b in self.urgent if b.owner.alive())
        self.bulk = deque(b for b in self.bulk if b.owner.alive())
        self.parked = deque(b for b in self.parked if b.owner.alive())
        for batch in self.placed:
            if not batch.owner.alive():
                self.placer.placed(batch.batch_id)
        self.placed = deque(b for b in self.placed if b.owner.alive())
        for worker_id, queue in list(self.pinned.items()):
            self.pinned[worker_id] = deque(b for b in queue if b.owner.alive())
            if not self.pinned[worker_id]:
                del self.pinned[worker_id]

    def recycle_abandoned(self) -> list[tuple[bytes, bytes]]:
        """(worker, node) of each worker running a batch nobody waits for, once:
        its node is to kill and replace it, as ``task_timeout`` recycles one.  A
        worker's running batch is the first it holds; what it holds behind that
        batch runs later, and its results are dropped if abandoned too."""
        found = []
        for worker_id, held in self.held.items():
            if held and worker_id not in self.recycling and worker_id in self.node_of:
                running = self.in_flight[next(iter(held))][1]
                if not running.owner.alive():
                    self.recycling.add(worker_id)
                    found.append((worker_id, self.node_of[worker_id]))
        return found

    def drop_in_flight(self) -> list[Batch]:
        """Forget every batch sent (the client is closing or lost its nodes)."""
        dropped = [batch for _, batch in self.in_flight.values()]
        self.in_flight.clear()
        self.started.clear()
        for batch in dropped:
            self._release(batch.batch_id)
        for worker_id, held in self.held.items():
            self.free[worker_id] += len(held)
            held.clear()
        return dropped

    def has_pending(self) -> bool:
        pinned = (b for queue in self.pinned.values() for b in queue if not b.setup)
        return any(b.owner.alive() for b in itertools.chain(self.urgent, self.bulk, self.parked, self.placed, pinned))

    def idle(self) -> bool:
        return not (self.in_flight or self.has_pending())


def _object_bytes(batch: Batch) -> int:
    """Bytes of the stored objects the batch reads, which its worker may have to fetch first."""
    return sum({ref.key: ref.size for ref in batch.refs}.values()) if batch.refs else 0


def miscounted(values: Any, n_items: int) -> ProtocolError | None:
    """The error for a result list that does not hold one value per task of its
    batch (a lying or broken worker), or None when it does."""
    if isinstance(values, list) and len(values) == n_items:
        return None
    count = len(values) if isinstance(values, list) else type(values).__name__
    return ProtocolError(f"a worker answered {n_items} tasks with {count} results")


def crash_error(batch: Batch, reason: str) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"{batch.owner.describe(batch)} killed its worker on {batch.attempts} attempts (last: {reason or 'lost'}); "
        "the task may crash the interpreter (a segmentation fault in native code, os._exit) "
        "or use more memory than the machine or the worker's memory limit allows"
    )
