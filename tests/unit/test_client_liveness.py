"""Data-plane liveness in the ventilator: silent workers' batches are taken back,
acknowledged long tasks are not while the worker's node lists the worker running
them (fake heartbeats, fake clock, no sockets)."""

from test_node_state import node_with_worker
from test_ventilator import map_batch

from fabric.client.batching import BatchSizer
from fabric.client.cluster_view import ClusterView
from fabric.client.overdue import FIRST_ANSWER_FACTOR, OVERDUE_FACTOR, TRANSFER_BYTES_PER_S
from fabric.client.ventilator import Ventilator
from fabric.cluster.stats import NodeStats, WorkerStats
from fabric.wire import codec
from fabric.wire.protocol import Attach, BatchRunning, Hello, WorkerSilent, from_frames

LIVENESS_S = 3.0
INTERVAL_S = 1.0
CLIENT = b"client-1"


def nobody(worker_id, node_id, batch_id):
    return float("-inf")


def everybody(worker_id, node_id, batch_id):
    return float("inf")


def transfer_s(batch):
    return codec.frames_size(batch.payload) / TRANSFER_BYTES_PER_S


def holding(batch=None, answered=True):
    """A ventilator at time 100 whose worker w1 (of node n1), which has answered a batch before
    unless not ``answered``, holds one batch; (ventilator, batch, ack asked)."""
    vent = Ventilator(liveness_s=LIVENESS_S)
    vent.now = 100.0
    vent.worker_ready(b"w1", 2, b"n1")
    if answered:
        first = map_batch(range(2))
        vent.enqueue(first)
        list(vent.dispatch())
        assert vent.complete(b"w1", first.batch_id) is first
    batch = batch or map_batch(range(4))
    vent.enqueue(batch)
    [(_, _, frames)] = list(vent.dispatch())
    return vent, batch, from_frames(frames).ack


def test_a_silent_worker_is_overdue_after_liveness_s_and_its_batch_taken_back_uncharged():
    vent, batch, _ = holding()
    vent.now = 100.0 + LIVENESS_S - 0.01
    assert vent.silent_workers(nobody) == ([], 100.0 + LIVENESS_S + transfer_s(batch))
    vent.now = 100.0 + LIVENESS_S + transfer_s(batch)
    assert vent.silent_workers(nobody)[0] == [b"w1"]
    vent.take_back(b"w1")
    assert list(vent.bulk) == [batch] and batch.attempts == 0 and batch.n_items == 4  # not split, not charged
    assert vent.complete(b"w1", batch.batch_id) is None  # its late result is a duplicate
    vent.worker_ready(b"w2", 1, b"n1")
    [(worker, again, frames)] = list(vent.dispatch())
    assert (worker, again) == (b"w2", batch) and from_frames(frames).ack  # asked for from now on


def test_a_worker_that_never_answered_gets_longer_before_it_counts_as_silent():
    """A fresh worker on a loaded machine can take seconds over its first batch."""
    vent, batch, _ = holding(answered=False)
    due = 100.0 + FIRST_ANSWER_FACTOR * LIVENESS_S + transfer_s(batch)
    vent.now = 100.0 + LIVENESS_S + transfer_s(batch)
    assert vent.silent_workers(nobody) == ([], due)
    vent.now = due
    assert vent.silent_workers(nobody)[0] == [b"w1"]


def test_an_acknowledged_batch_is_exempt_only_while_vouched_for():
    vent, batch, asked = holding()
    assert asked  # never measured: the worker is asked to say when it starts
    vent.acknowledged(b"w1", batch.batch_id)
    vent.now = 100.0 + 3600
    assert vent.silent_workers(everybody) == ([], float("inf"))
    assert vent.silent_workers(nobody)[0] == [b"w1"]  # a worker no heartbeat lists running it: its word is not enough


def node_heartbeat(view, now, client_id=CLIENT, batch_id=0):
    """Node n1's heartbeat at ``now``, listing w1 running ``client_id``'s batch ``batch_id`` (0: nothing)."""
    worker = WorkerStats("w1", 1, client_id=client_id if batch_id else b"", batch_id=batch_id)
    view.heartbeat(NodeStats(node_id=b"n1", name="n1", control="tcp://n1:1", pub="tcp://n1:2", workers=1,
                             per_worker=(worker,)), now)


def acknowledged():
    """w1 (of n1) acknowledged starting its batch at 100; (ventilator, view, batch)."""
    vent, batch, _ = holding()
    vent.acknowledged(b"w1", batch.batch_id)
    return vent, ClusterView(INTERVAL_S, LIVENESS_S, 30.0, client_id=CLIENT), batch


def test_a_long_task_its_node_lists_running_is_never_taken_back():
    vent, view, batch = acknowledged()
    for second in range(1, int(100 * LIVENESS_S)):
        vent.now = 100.0 + second
        node_heartbeat(view, vent.now, batch_id=batch.batch_id)
        assert vent.silent_workers(view.vouched_at) == ([], float("inf"))


def test_a_batch_its_node_says_is_done_is_overdue_at_the_usual_rule_from_the_nodes_last_word():
    """One-way loss: the worker finished, its result never arrived, its node lists it idle."""
    vent, view, batch = acknowledged()
    node_heartbeat(view, 101.0, batch_id=batch.batch_id)
    node_heartbeat(view, 500.0)
    vent.now = 500.0
    due = 500.0 + LIVENESS_S + transfer_s(batch)
    assert vent.silent_workers(view.vouched_at) == ([], due)  # its result may be on its way
    node_heartbeat(view, 501.0)  # still idle: the first miss counts
    vent.now = due
    assert vent.silent_workers(view.vouched_at)[0] == [b"w1"]
    vent.take_back(b"w1")
    assert list(vent.bulk) == [batch] and batch.attempts == 0
    assert vent.complete(b"w1", batch.batch_id) is None  # the late result is a duplicate


def test_a_worker_listed_running_another_batch_is_not_exempt():
    vent, view, batch = acknowledged()
    vent.now = 100.0 + LIVENESS_S + transfer_s(batch)
    node_heartbeat(view, vent.now, batch_id=batch.batch_id + 1)
    assert vent.silent_workers(view.vouched_at)[0] == [b"w1"]
    node_heartbeat(view, vent.now, client_id=b"client-2", batch_id=batch.batch_id)  # another client's batch
    assert vent.silent_workers(view.vouched_at)[0] == [b"w1"]


def test_the_node_lists_the_acknowledged_batch_its_worker_runs():
    state = node_with_worker()
    state.on_message(b"w-1", BatchRunning(CLIENT, 7), 0.0)
    [worker] = state.stats().per_worker
    assert (worker.client_id, worker.batch_id) == (CLIENT, 7)
    state.on_message(b"w-1", BatchRunning(b"", 0), 0.1)
    [worker] = state.stats().per_worker
    assert (worker.client_id, worker.batch_id) == (b"", 0)


def test_signs_of_life_and_the_measured_rate_push_the_deadline():
    sizer = BatchSizer()
    sizer.observe(1, 1.0)  # one second per item
    vent, batch, asked = holding(map_batch(range(2)))
    batch.sizer = sizer
    assert asked
    assert vent.silent_workers(nobody)[1] == 100.0 + OVERDUE_FACTOR * 2.0 + transfer_s(batch)
    vent.now = 110.0
    vent.worker_ready(b"w1", 2, b"n1")  # READY: it re-attached (and its batch went back)
    assert vent.silent_workers(nobody) == ([], float("inf"))


def test_short_measured_batches_ask_for_no_acknowledgement():
    sizer = BatchSizer()
    sizer.observe(1000, 0.001)
    batch = map_batch(range(4))
    batch.sizer = sizer
    assert not holding(batch)[2]


def test_a_large_batch_is_allowed_the_time_its_bytes_take_to_arrive():
    batch = map_batch([b"x" * 10_000_000])
    vent, batch, _ = holding(batch)
    assert vent.silent_workers(nobody)[1] >= 100.0 + LIVENESS_S + 10_000_000 / TRANSFER_BYTES_PER_S


def test_the_node_attaches_a_worker_a_client_found_silent_afresh():
    state = node_with_worker()
    state.on_message(b"c-1", Hello(b"c-1", "ipc:///v", "ipc:///s", 1 << 20), 0.0)
    [send] = state.on_message(b"c-1", WorkerSilent(b"w-1"), 0.1)
    assert send.to == b"w-1" and isinstance(send.msg, Attach) and send.msg.client_id == b"c-1"
    assert state.on_message(b"c-1", WorkerSilent(b"w-fake"), 0.2) == []  # no worker of ours
    assert state.on_message(b"c-2", WorkerSilent(b"w-1"), 0.3) == []  # not a client of it


def test_the_objects_a_batch_reads_lengthen_its_allowance_as_its_own_bytes_do():
    from fabric.wire.ref import Ref

    batch = map_batch(range(4))
    big = Ref(b"k" * 16, 400 << 20, ((b"n2", "tcp://127.0.0.1:1"),))  # its worker fetches 400 MiB first
    batch.refs = [big, big]
    vent, batch, _ = holding(batch)
    fetch_s = (400 << 20) / TRANSFER_BYTES_PER_S
    assert vent.silent_workers(nobody) == ([], 100.0 + LIVENESS_S + transfer_s(batch) + fetch_s)
