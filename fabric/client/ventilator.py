"""Ventilator state: which batch goes to which worker, and when.

Lives in the client's I/O thread (see :mod:`fabric.client.io_loop`, which owns the
ROUTER socket this state drives)::

    user threads --Batch--> [urgent queue: submits] ---+
                            [bulk queue: map chunks] --+--> dispatch() --> (worker id, frames)
    worker READY(credits) --> one credit per batch it may hold (again: what it held is re-queued)
    sink: FUNCTION_MISSING --> function_missing(): the batch is sent again with its function
    sink: result arrived  --> complete(): batch leaves flight, credit returns
    a batch reading stored objects leaves its worker (done, lost, taken back)
                          --> read_on(node, refs): copies its worker fetched are freed with them
    node: WORKER_LOST     --> worker_lost(): the batch it ran split in halves or charged an
                              attempt (fabric.client.lost_batches), the rest re-queued
    node over its load    --> pause()/resume(): its workers keep their credits but get nothing
    node declared dead    --> node_lost(): its workers' batches go back to the queue, uncharged
    [pinned: per worker]  --> dispatch() first: the client's initializer, fx.run's calls
    [placed: calls with placement options] --> dispatch() asks the Placer and the call's policy
    [parked: batches reading stored data]  --> dispatch(): a credit on their data's node, or
                                               anywhere after locality_wait_s (fabric.client.locality)
    sink: BATCH_STARTED   --> acknowledged(): the worker started a batch (a sign of life)
    the loop's tick       --> silent_workers(): workers whose running batch is overdue
                              (fabric.client.overdue);
                              take_back(): their batches go elsewhere, uncharged
    a caller's ctrl-C     --> drop_abandoned(), recycle_abandoned(): queued batches nobody
                              waits for are dropped, workers running one are recycled

Credit-based flow control: a batch is sent only against a credit, so what is in
flight, and so memory on both sides, is bounded however large the input.  Pull
beats push: a worker with a free credit gets the next batch, so a slow worker
simply takes less.  Submits are queued apart from map chunks and go first, so a
one-task round trip never waits behind a bulk map.

A batch lost with its worker's exit is run again in halves, or charged an
attempt; batches lost with a node declared dead by silence, or leaving, are
re-run uncharged.  A lost batch (a suspect) runs alone, on a worker holding
nothing, and nothing is sent behind it (:mod:`.lost_batches` says why).

Data-plane liveness: a worker that holds work and shows no sign of life towards
this client (a result, READY, BATCH_STARTED) past its running batch's allowance
(:mod:`.overdue`) is forgotten, and its batches go back to the queue uncharged.

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
from typing import Any

from ..errors import UnknownTaskError, WorkerLostError
from ..wire.protocol import Mode
from .batch import Batch, merged
from .batching import BatchSizer
from .locality import choose_by_data, data_by_node
from .lost_batches import after_crash, crash_error
from .overdue import ACK_AFTER_S, FIRST_ANSWER_FACTOR, overdue_at
from .placing import WAIT, FreeWorker, Placer

MAX_MERGED_CALLS = 4096  # submits merged into one batch at most

SPLIT = b""  # _place's answer for a batch it split into parts, now at the head of the queue


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
        # Told (node, refs) when a batch that reads stored objects leaves its worker, done or not:
        # that worker may have fetched copies to its node, which must be freed with the originals.
        self.read_on: Callable[[bytes, list[Any]], None] = _nothing_read

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
        node_id = self.node_of.get(worker_id, b"")
        for table in (self.shipped, self.node_of, self.free, self._last_send, self.since):
            table.pop(worker_id, None)
        self.recycling.discard(worker_id)
        self.alone.discard(worker_id)
        self.answered.discard(worker_id)
        self.started.difference_update(batch_ids)
        for batch_id in batch_ids:
            self._release(batch_id)
        held = [self.in_flight.pop(batch_id)[1] for batch_id in batch_ids]
        for batch in held:
            if batch.refs:
                self.read_on(node_id, batch.refs)
        return held

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
        rerun = after_crash(batch, self.retries)
        if not rerun:
            return [(batch, crash_error(batch, reason))]
        self._queue_for(batch).extendleft(reversed(rerun))
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
        return first if len(group) == 1 else merged(group)

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
        if entry[1].refs:
            self.read_on(self.node_of.get(worker_id, b""), entry[1].refs)
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
            at = overdue_at(batch, max(self.since[worker_id], vouched), self.expected_s(batch), floor)
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


def _nothing_read(node_id: bytes, refs: list[Any]) -> None:
    """``read_on`` of a ventilator with no object table (unit tests)."""
