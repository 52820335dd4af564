"""``map_reduce(..., by_key=True)`` across the nodes: partials left where they were
made, each partition merged on its owner node (MapReduce's shuffle).

::

    map stream (Mode.FOLD), per batch:  worker folds per key, keeps P partials ─► [Ref | None] * P
    client, as batches finish:          partition p ◄─ its Refs, in input order; each Ref's lineage:
                                        the batch's items, folded again once for all its lost partials
    client, once the map ends:          per partition, submit PartitionMerge(*its Refs) with
                                        affinity = the partition: the ring owner among live nodes
                                        runs it, reading local partials from its store and fetching
                                        the others from their holders
    client, as merges finish:           result.update(pickle.loads(blob))   (disjoint keys: no per-key work)
                                        or, with keep=True, one Ref per partition

On a cluster of one node (and without ``keep``) there is nothing to spread
the merges over: batches return their partials pickled and the client merges
them as they arrive (:func:`merge_in_client`), overlapping the map.

Otherwise the client holds Refs and the final dict, never a partial.  A partial is lost
with its node; a merge that finds one gone is submitted again once the client
sees the node dead, and submitting it reruns the batches whose partials died
first (the object table's lineage, as for kept results), so the result is
exact.  With ``keep=True`` each merged partition's Ref gets a lineage too
(:class:`Rebuild`): lost later, its batches fold again and it is merged again.
The batch machinery (credits, retries, exactly-once delivery of each batch's
Refs) is the map's.
"""

from __future__ import annotations

import concurrent.futures
import functools
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..calls.by_key import PartitionMerge, merge_by_key
from ..calls.fold import Reducer
from ..errors import FabricError, ObjectLostError
from ..wire.ref import Ref, current
from .dependencies import when_done
from .futures import abandon
from .objects import ObjectTable

MERGE_ATTEMPTS = 4  # a merge may meet a holder that died after the map read its partials
LOSS_NOTICED_WITHIN_S = 15.0  # how long a failed merge waits for the client to see a holder dead
LOSS_POLL_S = 0.05

Submit = Callable[[Any, tuple[Any, ...], Any], concurrent.futures.Future]  # (fn, args, affinity) -> future


class Rerun:
    """A map batch folded again, once for all of its partials that were lost."""

    def __init__(self, again: Callable[[], concurrent.futures.Future], lineage: dict[bytes, Any]) -> None:
        self.again = again  # resubmits the batch's fold over its items
        self.lineage = lineage
        self.running: concurrent.futures.Future | None = None
        self.given: set[int] = set()  # partitions whose Ref the running fold has handed out
        self.lock = threading.Lock()  # partitions are asked for from the caller's and the I/O thread

    def partition(self, index: int) -> concurrent.futures.Future:
        """A future of the new Ref of partition ``index`` of this batch: the fold under way
        (or done) serves each partition once; asked again, that partial was lost again."""
        with self.lock:
            running = self.running
            if running is None or index in self.given or (running.done() and not _succeeded(running)):
                running = self.running = self.again()
                self.given = set()
            self.given.add(index)
        ref: concurrent.futures.Future = concurrent.futures.Future()

        def pick(done: concurrent.futures.Future) -> None:
            if not _succeeded(done):
                ref.set_exception(_failure(done))
                return
            partials = done.result()
            new = partials[index] if type(partials) is list and index < len(partials) else None
            if type(new) is not Ref:
                ref.set_exception(ObjectLostError(f"partition {index} of a batch rerun came back without a Ref "
                                                  f"({new!r:.60}): the mapper gave other pairs the second time?"))
                return
            self.lineage[new.key] = _partition_of(self, index)  # lost again: rerun again
            ref.set_result(new)

        running.add_done_callback(pick)
        return ref

    def release(self) -> None:
        """Let the fold's partials go (the partitions that wanted them hold their own
        Refs): kept here, they would stay pinned on the nodes; a later loss folds anew."""
        with self.lock:
            self.running = None
            self.given = set()


class Rebuild:
    """The lineage of a kept partition (``keep=True``): every batch that fed it folded
    again, then merged again on the partition's owner, as Spark recomputes a lost
    shuffle partition.  It holds those batches' items while the partition's Refs live."""

    def __init__(self, sources: list[Rerun], index: int, merge_again: Callable[[tuple[Ref, ...]], Any],
                 objects: ObjectTable) -> None:
        self.sources = sources
        self.index = index
        self.merge_again = merge_again
        self.objects = objects

    def __call__(self) -> concurrent.futures.Future:
        """A future of the partition's new Ref."""
        rebuilt: concurrent.futures.Future = concurrent.futures.Future()
        partials = [source.partition(self.index) for source in self.sources]
        when_done(partials, lambda failed: self._merge(partials, failed, rebuilt))
        return rebuilt

    def _merge(self, partials: list[concurrent.futures.Future], failed: BaseException | None,
               rebuilt: concurrent.futures.Future) -> None:
        if failed is not None:
            rebuilt.set_exception(failed)
            return
        refs = tuple(partial.result() for partial in partials)
        for source in self.sources:
            source.release()
        try:
            merging = self.merge_again(refs)
        except Exception as exc:  # the fabric shut down: nothing can run it
            rebuilt.set_exception(exc)
            return

        def merged(done: concurrent.futures.Future) -> None:
            if not _succeeded(done):
                rebuilt.set_exception(_failure(done))
                return
            try:
                _checked_merge(done.result(), keep=True)
            except FabricError as exc:
                rebuilt.set_exception(exc)
                return
            self.objects.lineage[done.result().key] = self  # lost again: rebuilt again
            rebuilt.set_result(done.result())

        merging.add_done_callback(merged)


class Shuffle:
    """One by-key call's partitions: their Refs as the map makes them, then their merges."""

    def __init__(self, partitions: int, merge: Reducer, ordered: bool, keep: bool, objects: ObjectTable,
                 live_nodes: Callable[[], set[bytes]], rerun: Callable[[Sequence[Any]], Rerun]) -> None:
        self.parts: list[list[Ref]] = [[] for _ in range(partitions)]
        self.sources: list[list[Rerun]] = [[] for _ in range(partitions)]  # the batches that fed each partition
        self.merger = PartitionMerge(merge, ordered, keep)
        self.keep = keep
        self.objects = objects
        self.live_nodes = live_nodes
        self.rerun = rerun

    def note(self, inputs: Sequence[Sequence[Any]], partials: list[Any]) -> None:
        """A map chunk's partials (each a list of P Refs or None) and the items each stands for."""
        lineage = self.objects.lineage
        for items, refs in zip(inputs, partials):
            _check_partials(refs, len(self.parts), Ref)
            rerun = self.rerun(items)
            for index, ref in enumerate(refs):
                if ref is not None:
                    self.parts[index].append(ref)
                    self.sources[index].append(rerun)
                    lineage[ref.key] = _partition_of(rerun, index)

    def reduce(self, submit: Submit, deadline: float | None) -> dict[Any, Any] | list[Ref]:
        """Merge every partition on its owner node; the result, or one Ref per partition with ``keep``."""
        wanted = [i for i, refs in enumerate(self.parts) if refs or self.keep]
        running = {self._submit(submit, i): (i, 1) for i in wanted}
        kept: dict[int, Ref] = {}
        result: dict[Any, Any] = {}
        try:
            while running:
                done, _ = concurrent.futures.wait(running, _remaining(deadline), concurrent.futures.FIRST_COMPLETED)
                if not done:
                    raise TimeoutError("map_reduce(..., by_key=True) did not finish within its timeout")
                for future in done:
                    index, attempt = running.pop(future)
                    try:
                        value = future.result()
                    except ObjectLostError:
                        if attempt >= MERGE_ATTEMPTS:
                            raise
                        self._await_loss_noticed(index, deadline)
                        running[self._submit(submit, index)] = (index, attempt + 1)
                        continue
                    blob = _checked_merge(value, self.keep)
                    self.parts[index] = []  # its partials (and their copies on the merging node) may go
                    if self.keep:
                        kept[index] = value
                        again = functools.partial(_merge_refs, submit, self.merger, self._affinity(index))
                        self.objects.lineage[value.key] = Rebuild(self.sources[index], index, again, self.objects)
                    else:
                        result.update(pickle.loads(blob))
                    del value, blob
        except KeyboardInterrupt:
            abandon(running)  # merges blocked in a combine must not keep their workers
            raise
        finally:
            for future in running:
                future.cancel()
        for rerun in {id(rerun): rerun for sources in self.sources for rerun in sources}.values():
            rerun.release()  # kept partitions' lineage holds the Reruns past the call, not their partials
        return [kept[i] for i in range(len(self.parts))] if self.keep else result

    def _submit(self, submit: Submit, index: int) -> concurrent.futures.Future:
        return submit(self.merger, tuple(self.parts[index]), self._affinity(index))

    def _affinity(self, index: int) -> tuple[str, int, int]:
        """Partition ``index``'s key on the ring: its owner among the live nodes merges it."""
        return "fabric.by_key", len(self.parts), index

    def _await_loss_noticed(self, index: int, deadline: float | None) -> None:
        """Wait until the client sees a holder of the partition's partials dead (so submitting
        the merge again reruns their batches first), or long enough that it would have."""
        refs = [current(ref) for ref in self.parts[index]]
        until = time.monotonic() + LOSS_NOTICED_WITHIN_S
        if deadline is not None:
            until = min(until, deadline)
        while time.monotonic() < until:
            alive = self.live_nodes()
            if any(not alive.intersection(ref.node_ids) for ref in refs):
                return
            time.sleep(LOSS_POLL_S)


def merge_in_client(partials: Iterable[list[bytes]], partitions: int, merge: Reducer, ordered: bool,
                    ) -> dict[Any, Any]:
    """One node: the client merges each batch's pickled partials (b"" for an empty partition)
    as they arrive.

    With every worker on one node there is no other node to spread the merges
    over, and merging in the client overlaps the map instead of following it:
    W11's wide count ran 2-3x faster so than with a merge task per partition
    after the map (fewer passes over the entries, no reduce tail).  Its memory
    is the result plus the partials in flight (bounded by credits).
    """
    total: dict[Any, Any] = {}
    for blobs in partials:
        _check_partials(blobs, partitions, bytes)
        for blob in blobs:
            if blob:
                total = merge_by_key(total, pickle.loads(blob), merge, ordered)
    return total


def _check_partials(entries: Any, partitions: int, kind: type) -> None:
    """A batch's result, from the wire: one entry per partition, each of ``kind`` or None."""
    if type(entries) is not list or len(entries) != partitions or any(
            entry is not None and type(entry) is not kind for entry in entries):
        raise FabricError(f"a worker answered a by-key batch with {type(entries).__name__} {entries!r:.80}, not a "
                          f"list of {partitions} {kind.__name__} or None")


def _checked_merge(value: Any, keep: bool) -> bytes:
    """A merge's result, from the wire: the pickled dict, or (b"" returned) a Ref with ``keep``."""
    if keep and type(value) is Ref and value.node_ids:
        return b""
    if not keep and type(value) is bytes:
        return value
    raise FabricError(f"a worker answered a partition's merge with {type(value).__name__} {value!r:.80}")


def _merge_refs(submit: Submit, merger: PartitionMerge, affinity: Any, refs: tuple[Ref, ...],
                ) -> concurrent.futures.Future:
    return submit(merger, refs, affinity)


def _failure(done: concurrent.futures.Future) -> BaseException:
    exc = None if done.cancelled() else done.exception()
    return exc if exc is not None else ObjectLostError("cancelled: the partition cannot be made again")


def _partition_of(rerun: Rerun, index: int) -> Callable[[], concurrent.futures.Future]:
    return lambda: rerun.partition(index)


def _succeeded(future: concurrent.futures.Future) -> bool:
    return not future.cancelled() and future.exception() is None


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
