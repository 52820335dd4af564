"""The sink of the ZeroMQ guide's pipeline: what workers send the client's sink
ROUTER, made into outcomes for each batch's owner (a map stream or a group of futures).

::

    RESULT_BATCH     ─► Ventilator.complete: the batch, matched by id and worker (a late
                        duplicate is dropped: delivery is exactly-once, and the Refs it
                        kept are freed), its credit back
                     ─► Ventilator.observe: the worker's time, to size the next batches
                     ─► owner.deliver(batch, codec, result frames, error records)
    BATCH_OUTPUT     ─► kept until the same worker's next result, which carries it as
                        Printed, each line prefixed (node:wN) (see fabric.client.output)
    BATCH_STARTED    ─► Ventilator.acknowledged: the worker starts a long batch
    FUNCTION_MISSING ─► Ventilator.function_missing: the batch goes again, with its function

No sockets: the I/O thread (:mod:`fabric.client.io_loop`) receives and parses
each message, and this delivers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..cluster.stats import NodeStats
from ..wire.message import Message
from ..wire.protocol import BatchOutput, BatchStarted, FunctionMissing, ResultBatch
from .objects import free_unread
from .output import Printed
from .ventilator import Ventilator


class Sink:
    """Delivers what the sink ROUTER receives; remembers each worker's output prefix."""

    def __init__(self, ventilator: Ventilator, live_nodes: Callable[[], Iterable[NodeStats]],
                 forward_output: bool) -> None:
        """``live_nodes`` names the nodes output comes from; ``forward_output``
        False drops what tasks printed (the nodes log it instead)."""
        self.ventilator = ventilator
        self.live_nodes = live_nodes
        self.forward_output = forward_output
        self._printed: dict[bytes, BatchOutput] = {}  # worker -> what its next result's tasks printed
        self._labels: dict[bytes, str] = {}  # worker -> "(node:wN)", its output's prefix

    def deliver(self, worker_id: bytes, msg: Message) -> bool:
        """Hand one sink message on; False for a result already delivered (a late duplicate)."""
        if type(msg) is not ResultBatch:
            if isinstance(msg, BatchStarted):
                self.ventilator.acknowledged(worker_id, msg.batch_id)
            elif isinstance(msg, FunctionMissing):
                self.ventilator.function_missing(worker_id, msg.batch_id)
            elif isinstance(msg, BatchOutput) and self.forward_output:
                self._printed[worker_id] = msg  # its result comes next, on the same connection
            return True
        printed = self._printed.pop(worker_id, None) if self._printed else None
        batch = self.ventilator.complete(worker_id, msg.batch_id)
        if batch is None:
            free_unread(msg.codec, msg.payload)
            return False
        self.ventilator.observe(batch, msg.elapsed_s)
        if printed is not None and printed.batch_id == msg.batch_id:
            batch.printed = Printed(self._where(worker_id), printed.records)
        batch.owner.deliver(batch, msg.codec, list(msg.payload), msg.errors)
        return True

    def worker_lost(self, worker_id: bytes) -> None:
        """The output a lost worker sent before dying has no result to go with."""
        self._printed.pop(worker_id, None)

    def _where(self, worker_id: bytes) -> str:
        """The prefix of a worker's output, ``(node:wN)``: its node's name and the
        worker's rank among that node's workers that printed something here."""
        label = self._labels.get(worker_id)
        if label is None:
            node_id = self.ventilator.node_of.get(worker_id)
            node = next((n for n in self.live_nodes() if n.node_id == node_id), None)
            name = node.name if node is not None else "?"
            rank = sum(1 for other in self._labels.values() if other.startswith(f"({name}:w")) + 1
            label = self._labels[worker_id] = f"({name}:w{rank})"
        return label
