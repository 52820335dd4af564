"""The sink hands each result to its batch's owner once, with what its tasks printed
and where they ran; it needs no socket."""

from types import SimpleNamespace

from fabric.client.batch import Batch, next_batch_id
from fabric.client.sink import Sink
from fabric.client.ventilator import Ventilator
from fabric.wire import codec
from fabric.wire.protocol import BatchOutput, Mode, ResultBatch


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
    sink = Sink(vent, lambda: [SimpleNamespace(node_id=b"n1", name="alpha")], forward_output=True)
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
