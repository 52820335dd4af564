"""The sink hands each result to its batch's owner once, with what its tasks printed
and where they ran; it needs no socket."""

import gc
from types import SimpleNamespace

from fabric.client.batch import Batch, next_batch_id
from fabric.client.objects import ObjectTable
from fabric.client.sink import Sink
from fabric.client.ventilator import Ventilator
from fabric.wire import codec
from fabric.wire.protocol import BatchOutput, Mode, ResultBatch
from fabric.wire.ref import Ref


class Owner:
    """Records deliveries; stands for a map stream or a group of futures."""

    def __init__(self):
        self.delivered = []

    def alive(self):
        return True

    claim = alive

    def deliver(self, batch, codec_id, frames, errors):
        self.delivered.append(batch)


def batch_on(vent, worker_id):
    codec_id, payload = codec.PayloadEncoder().encode([1, 2])
    batch = Batch(next_batch_id(), b"d" * 16, b"FN", Mode.MAP, codec_id, [len(payload)], payload, 2, Owner())
    vent.worker_ready(worker_id, 1, b"n1")
    vent.enqueue(batch)
    list(vent.dispatch())
    return batch


def result_of(batch):
    return ResultBatch(batch.batch_id, batch.codec, [], 0.01, [b"r"])


def test_a_result_is_delivered_once_with_what_its_tasks_printed():
    vent = Ventilator()
    alpha = SimpleNamespace(node_id=b"n1", name="alpha")
    sink = Sink(vent, lambda: [alpha], forward_output=True)
    batch = batch_on(vent, b"w1")
    assert sink.deliver(b"w1", BatchOutput(batch.batch_id, [[0, 1, "hi\n"]]))
    assert sink.deliver(b"w1", result_of(batch))
    assert batch.owner.delivered == [batch] and batch.printed.where == "(alpha:w1)"
    assert not sink.deliver(b"w1", result_of(batch))  # a late duplicate
    assert batch.owner.delivered == [batch]


def test_a_lost_workers_output_does_not_reach_a_later_result():
    vent = Ventilator()
    sink = Sink(vent, lambda: [], forward_output=True)
    batch = batch_on(vent, b"w1")
    sink.deliver(b"w1", BatchOutput(batch.batch_id, [[0, 1, "hi\n"]]))
    sink.worker_lost(b"w1")
    assert sink.deliver(b"w1", result_of(batch))
    assert batch.printed is None


def test_refs_kept_by_a_result_nobody_takes_are_freed_on_their_node():
    """A late duplicate (or a batch dropped on ctrl-C) of a keep=True call kept its results
    on a node for this client: the sink frees them instead of leaving them pinned."""
    sent = []
    table = ObjectTable(b"client-under-test", lambda node_id, message: sent.append((node_id, message)) or True)
    try:
        vent = Ventilator()
        sink = Sink(vent, lambda: [], forward_output=True)
        batch = batch_on(vent, b"w1")
        assert sink.deliver(b"w1", result_of(batch))
        kept = [Ref(bytes([i]) * 16, 10, ((b"n1", "tcp://127.0.0.1:1"),), b"client-under-test") for i in (1, 2)]
        codec_id, payload = codec.PayloadEncoder().encode(kept)
        del kept
        assert not sink.deliver(b"w1", ResultBatch(batch.batch_id, codec_id, [], 0.01, payload))  # the duplicate
        gc.collect()
        table.flush()
        assert [(node_id, sorted(message.keys)) for node_id, message in sent] == \
            [(b"n1", [bytes([1]) * 16, bytes([2]) * 16])]
    finally:
        table.close()

