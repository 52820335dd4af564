"""Dispatch against credits, duplicates, and re-queueing of batches lost with a worker."""

from fabric.client.batch import Batch, next_batch_id
from fabric.client.ventilator import Ventilator
from fabric.errors import WorkerCrashedError
from fabric.wire import codec
from fabric.wire.protocol import Mode, from_frames
from fabric.wire.ref import Ref


class Owner:
    """Records outcomes; stands for a map stream or a group of futures."""

    def __init__(self, wanted=True):
        self.wanted = wanted
        self.failed = []
        self.parts = []

    def alive(self):
        return self.wanted

    claim = alive

    def slice(self, start, stop):
        return self

    def merge(self, owners):
        return self

    def fail(self, batch, exc):
        self.failed.append((batch, exc))

    def cancel(self, batch):
        self.failed.append((batch, None))

    def describe(self, batch):
        return "the test task"


def map_batch(items, owner=None):
    codec_id, payload = codec.PayloadEncoder().encode(list(items))
    return Batch(next_batch_id(), b"d" * 16, b"FN", Mode.MAP, codec_id, [len(payload)], payload, len(items),
                 owner or Owner())


def call_batch(owner=None, digest=b"d" * 16):
    payload = codec.pickle_frames(((1,), {}))
    return Batch(next_batch_id(), digest, b"FN", Mode.CALL, codec.PICKLE, [len(payload)], payload, 1, owner or Owner())


def one_batch_in_flight():
    """A ventilator whose one worker, w1, holds one batch (sent with its function)."""
    vent = Ventilator()
    vent.worker_ready(b"w1", 1, b"n1")
    batch = map_batch(range(2))
    vent.enqueue(batch)
    list(vent.dispatch())
    return vent, batch


def test_nothing_is_sent_without_credit():
    vent = Ventilator()
    vent.enqueue(map_batch(range(3)))
    assert list(vent.dispatch()) == []
    vent.worker_ready(b"w1", 1, b"n1")
    sent = list(vent.dispatch())
    assert [w for w, _, _ in sent] == [b"w1"]
    assert list(vent.dispatch()) == []


def test_function_is_shipped_once_per_worker():
    vent = Ventilator()
    vent.worker_ready(b"w1", 2, b"n1")
    vent.worker_ready(b"w2", 1, b"n1")
    for _ in range(3):
        vent.enqueue(map_batch(range(2)))
    has_fn = {}
    for worker, batch, frames in vent.dispatch():
        header = from_frames(frames)
        has_fn.setdefault(worker, []).append(header.has_fn)
        function = [b"FN"] if header.has_fn else []  # the function's frame leads, or is absent
        assert [bytes(f) for f in header.payload] == function + [bytes(f) for f in batch.payload]
    assert has_fn == {b"w1": [True, False], b"w2": [True]}


def test_result_returns_the_credit_and_duplicates_are_refused():
    vent, batch = one_batch_in_flight()
    assert vent.complete(b"w2", batch.batch_id) is None  # not the worker it was sent to
    assert vent.complete(b"w1", batch.batch_id) is batch
    assert vent.complete(b"w1", batch.batch_id) is None  # late duplicate
    assert vent.free == {b"w1": 1}
    assert vent.idle()


def test_submits_go_before_map_chunks():
    vent = Ventilator()
    vent.enqueue(map_batch(range(2)))
    vent.enqueue(call_batch())
    vent.worker_ready(b"w1", 1, b"n1")
    [(_, batch, _)] = list(vent.dispatch())
    assert batch.mode == Mode.CALL


def test_queued_submits_of_one_function_merge_over_free_credits():
    vent = Ventilator()
    for _ in range(10):
        vent.enqueue(call_batch())
    vent.worker_ready(b"w1", 1, b"n1")
    vent.worker_ready(b"w2", 1, b"n1")
    vent.call_sizers.clear()
    vent.observe(call_batch(), 1e-6)  # tiny tasks: merge as many as fairness allows
    sent = list(vent.dispatch())
    assert [b.n_items for _, b, _ in sent] == [5, 5]
    header = from_frames(sent[0][2])
    assert header.item_frames == [1] * 5


def test_a_submit_holding_refs_is_never_merged_so_its_refs_stay_with_it():
    vent = Ventilator()
    batches = [call_batch() for _ in range(6)]
    batches[0].refs = batches[3].refs = ["a ref"]
    for batch in batches:
        vent.enqueue(batch)
    vent.worker_ready(b"w1", 2, b"n1")
    vent.call_sizers.clear()
    vent.observe(call_batch(), 1e-6)
    first, second = (b for _, b, _ in vent.dispatch())
    assert (first.n_items, first.refs) == (1, ["a ref"])  # alone
    assert (second.n_items, second.refs) == (2, None)  # the next two merge, up to the next one holding refs


def test_abandoned_batches_are_skipped():
    vent = Ventilator()
    vent.worker_ready(b"w1", 1, b"n1")
    vent.enqueue(map_batch(range(2), Owner(wanted=False)))
    assert list(vent.dispatch()) == []


def test_lost_batch_is_split_and_requeued_first():
    vent = Ventilator()
    vent.worker_ready(b"w1", 1, b"n1")
    lost = map_batch(range(10))
    vent.enqueue(lost)
    vent.enqueue(map_batch(range(100, 102)))
    list(vent.dispatch())
    assert vent.worker_lost(b"w1", "killed by signal SIGKILL") == []
    first, second = vent.bulk[0], vent.bulk[1]
    assert (first.offset, first.n_items, second.offset, second.n_items) == (0, 5, 5, 5)
    assert codec.decode(first.codec, first.payload) == [0, 1, 2, 3, 4]
    assert codec.decode(second.codec, second.payload) == [5, 6, 7, 8, 9]
    assert vent.workers == 0 and not vent.credits


def test_single_task_fails_after_retries():
    vent = Ventilator(retries=3)
    owner = Owner()
    vent.enqueue(call_batch(owner))
    for attempt in range(3):
        worker = f"w{attempt}".encode()
        vent.worker_ready(worker, 1, b"n1")
        [(_, batch, _)] = list(vent.dispatch())
        failed = vent.worker_lost(worker, "killed by signal SIGSEGV")
    assert len(failed) == 1
    batch, exc = failed[0]
    assert isinstance(exc, WorkerCrashedError) and "SIGSEGV" in str(exc)
    assert batch.attempts == 3
    assert vent.idle()


def test_an_idle_worker_is_preferred_to_a_busy_ones_prefetch_slot():
    vent = Ventilator()
    vent.worker_ready(b"w1", 2, b"n1")
    vent.enqueue(call_batch())
    list(vent.dispatch())  # w1 is running one batch
    vent.worker_ready(b"w2", 2, b"n1")
    vent.enqueue(call_batch())
    assert [w for w, _, _ in vent.dispatch()] == [b"w2"]


def test_only_the_running_batch_is_charged_when_its_worker_dies():
    vent = Ventilator(retries=2)
    vent.worker_ready(b"w1", 2, b"n1")
    poison, bystander = Owner(), Owner()
    vent.enqueue(call_batch(poison, digest=b"p" * 16))
    vent.enqueue(call_batch(bystander, digest=b"q" * 16))
    sent = [b for _, b, _ in vent.dispatch()]
    assert vent.worker_lost(b"w1", "killed by signal SIGKILL") == []
    assert [b.attempts for b in sent] == [1, 0]
    assert list(vent.urgent) == sent  # both back, in their order


def test_merged_batches_count_every_item_so_splits_cover_every_future():
    vent = Ventilator()
    for _ in range(8):
        vent.enqueue(call_batch())
    vent.observe(call_batch(), 1e-6)
    vent.worker_ready(b"w1", 1, b"n1")
    [(_, merged, _)] = list(vent.dispatch())
    assert merged.n_items == 8 and len(merged.item_frames) == 8
    vent.worker_lost(b"w1")
    halves = list(vent.urgent)
    assert [h.n_items for h in halves] == [4, 4]
    vent.enqueue(call_batch())
    vent.worker_ready(b"w2", 3, b"n1")
    vent.worker_ready(b"w3", 3, b"n1")
    sent = [b for _, b, _ in vent.dispatch()]  # suspects are not merged, and each runs alone
    assert [b.n_items for b in sent] == [4, 4]


def test_a_batch_blamed_for_the_poison_behind_it_runs_alone_and_is_charged_once():
    """The result of the batch before the poison can die unsent with their worker,
    which then blames the batch that finished; run alone from then on, it returns,
    and the deaths that follow name the poison."""
    vent = Ventilator(retries=3)
    vent.enqueue(call_batch(Owner(), digest=b"i" * 16))
    vent.enqueue(call_batch(Owner(), digest=b"p" * 16))
    vent.worker_ready(b"w1", 2, b"n1")
    innocent, poison = [b for _, b, _ in vent.dispatch()]
    assert vent.worker_lost(b"w1", "exited with code 3") == []
    assert (innocent.attempts, poison.attempts) == (1, 0)
    vent.worker_ready(b"w2", 2, b"n1")
    assert [b for _, b, _ in vent.dispatch()] == [innocent]  # nothing behind it
    assert vent.complete(b"w2", innocent.batch_id) is innocent
    failed = []
    for worker in (b"w2", b"w3", b"w4"):
        vent.worker_ready(worker, 2, b"n1")
        assert [b for _, b, _ in vent.dispatch()] == [poison]
        failed = vent.worker_lost(worker, "exited with code 3")
    assert [b for b, _ in failed] == [poison] and (innocent.attempts, poison.attempts) == (1, 3)


def test_unknown_worker_lost_is_harmless():
    assert Ventilator().worker_lost(b"nobody") == []


def test_ready_again_requeues_what_the_worker_held_uncharged():
    vent = Ventilator()
    vent.worker_ready(b"w1", 2, b"n1")
    held = [map_batch(range(4)), map_batch(range(4))]
    for batch in held:
        vent.enqueue(batch)
    list(vent.dispatch())
    vent.worker_ready(b"w1", 2, b"n1")  # it re-attached between batches: nothing crashed
    assert list(vent.bulk) == held and [b.attempts for b in held] == [0, 0]
    assert vent.free == {b"w1": 2}
    assert not vent.in_flight
    assert [from_frames(f).has_fn for _, _, f in vent.dispatch()] == [True, False]  # its new link starts empty


def test_a_batch_whose_function_is_missing_is_sent_again_with_it():
    vent = Ventilator()
    vent.worker_ready(b"w1", 2, b"n1")
    first, second = map_batch(range(2)), map_batch(range(2))
    vent.enqueue(first)
    vent.enqueue(second)
    assert [from_frames(f).has_fn for _, _, f in vent.dispatch()] == [True, False]
    vent.function_missing(b"w1", second.batch_id)  # shipped with `first` to a link the worker has since replaced
    assert list(vent.bulk) == [second] and second.attempts == 0
    assert vent.free == {b"w1": 1}
    [(worker, resent, frames)] = list(vent.dispatch())
    assert (worker, resent, from_frames(frames).has_fn) == (b"w1", second, True)


def test_a_function_missing_reply_to_a_send_that_carried_it_is_stale():
    vent, batch = one_batch_in_flight()
    vent.function_missing(b"w1", batch.batch_id)  # sent with the function: not this send's reply
    vent.function_missing(b"w2", batch.batch_id)  # not the worker it was sent to
    vent.function_missing(b"w1", 2**62)  # unknown batch
    assert vent.in_flight == {batch.batch_id: (b"w1", batch)} and not vent.bulk
    assert vent.complete(b"w1", batch.batch_id) is batch


def test_node_lost_requeues_all_its_workers_batches():
    vent = Ventilator()
    vent.worker_ready(b"w1", 1, b"n1")
    vent.worker_ready(b"w2", 1, b"n2")
    vent.enqueue(map_batch(range(2)))
    vent.enqueue(map_batch(range(2)))
    list(vent.dispatch())
    vent.node_lost(b"n1")
    assert vent.workers == 1 and len(vent.in_flight) == 1 and len(vent.bulk) == 1  # whole, not split


def test_a_single_task_lost_with_silent_nodes_any_number_of_times_is_never_charged():
    """A node declared dead by silence (a busy machine) says nothing against the task
    it ran: losing it that way more often than ``retries`` fails nothing, the batch is
    not split, asks to be acknowledged from then on, and a late result is a duplicate."""
    vent = Ventilator(retries=2)
    batch = map_batch(range(4))
    vent.enqueue(batch)
    for attempt in range(5):
        node = f"n{attempt}".encode()
        vent.worker_ready(b"w" + node, 1, node)
        (worker_id, sent, _), = vent.dispatch()
        assert sent is batch
        vent.node_lost(node)
        assert list(vent.bulk) == [batch] and batch.attempts == 0 and not batch.suspect and batch.taken_back
        assert vent.complete(worker_id, batch.batch_id) is None  # its late result: a duplicate
    assert batch.owner.failed == []


def test_only_a_worker_exit_charges_the_task_it_was_running():
    vent = Ventilator(retries=2)
    batch = call_batch()
    vent.enqueue(batch)
    vent.worker_ready(b"w1", 1, b"n1")
    list(vent.dispatch())
    vent.node_lost(b"n1")  # silence: uncharged
    vent.worker_ready(b"w2", 1, b"n2")
    list(vent.dispatch())
    assert vent.worker_lost(b"w2", "killed by signal SIGSEGV") == [] and batch.attempts == 1
    vent.worker_ready(b"w3", 1, b"n3")
    list(vent.dispatch())
    (failed, exc), = vent.worker_lost(b"w3", "killed by signal SIGSEGV")
    assert failed is batch and isinstance(exc, WorkerCrashedError) and "2 attempts" in str(exc)


def test_paused_nodes_get_no_batches():
    vent = Ventilator()
    vent.worker_ready(b"w1", 1, b"n1")
    vent.worker_ready(b"w2", 1, b"n2")
    vent.pause(b"n1")
    for _ in range(2):
        vent.enqueue(map_batch(range(2)))
    assert [w for w, _, _ in vent.dispatch()] == [b"w2"]
    assert vent.free[b"w1"] == 1 and vent.credits == 0
    vent.resume(b"n1")
    assert [w for w, _, _ in vent.dispatch()] == [b"w1"]


def test_a_send_to_a_vanished_worker_charges_nothing_and_waits_for_the_real_cause():
    """The send fails before the node's WORKER_LOST arrives: the unsent batch goes back
    uncharged, the worker gets nothing more, and the running batch is charged with the
    cause the node reports (not with 'unreachable')."""
    vent = Ventilator(retries=1)
    vent.worker_ready(b"w1", 2, b"n1")
    running, unsent = call_batch(Owner()), call_batch(Owner(), digest=b"e" * 16)
    vent.enqueue(running)
    vent.enqueue(unsent)
    sent = [batch for _, batch, _ in vent.dispatch()]
    assert sent == [running, unsent]
    vent.unreachable(b"w1", unsent.batch_id)
    assert list(vent.urgent) == [unsent] and unsent.attempts == 0
    assert list(vent.dispatch()) == []  # nothing more for the vanished worker
    [(batch, exc)] = vent.worker_lost(b"w1", "exited with code 3")
    assert batch is running and "exited with code 3" in str(exc)
    vent.worker_ready(b"w2", 1, b"n1")
    assert [batch for _, batch, _ in vent.dispatch()] == [unsent]


def test_a_vanished_worker_that_held_nothing_else_is_forgotten():
    vent = Ventilator()
    vent.worker_ready(b"w1", 1, b"n1")
    batch = call_batch(Owner())
    vent.enqueue(batch)
    list(vent.dispatch())
    vent.unreachable(b"w1", batch.batch_id)
    assert vent.workers == 0 and list(vent.urgent) == [batch]


def test_cancelling_keeps_the_batches_counted_as_started_in_queue_order():
    vent = Ventilator()
    calls = [call_batch(Owner()) for _ in range(3)]
    chunk = map_batch(range(4))
    for batch in [*calls, chunk]:
        vent.enqueue(batch)
    assert vent.drop_pending(keep=2) == [calls[2], chunk]
    assert list(vent.urgent) == calls[:2] and not vent.bulk
    assert vent.drop_pending() == calls[:2] and vent.idle()


def test_a_batch_goes_to_the_node_holding_its_data_and_waits_for_a_credit_there():
    vent = Ventilator(locality_wait_s=0.05)
    vent.worker_ready(b"wa", 1, b"n-a")
    vent.worker_ready(b"wb", 1, b"n-b")
    first, second, third = (map_batch([i]) for i in range(3))
    for batch in (first, second, third):
        batch.data = {b"n-a": 5 << 20}
        vent.enqueue(batch)
    assert [(w, b) for w, b, _ in vent.dispatch()] == [(b"wa", first)]  # wb is free, but holds none of it
    assert list(vent.parked) == [second, third]
    vent.complete(b"wa", first.batch_id)  # a credit on n-a: the next parked batch takes it
    assert [(w, b) for w, b, _ in vent.dispatch()] == [(b"wa", second)]
    assert vent.parked_deadline() == 0.05
    vent.now = 0.06  # waited long enough: it runs where a credit is, and its data moves
    assert [(w, b) for w, b, _ in vent.dispatch()] == [(b"wb", third)]
    assert not vent.parked and vent.parked_deadline() == float("inf")


def test_parked_batches_count_as_pending_and_are_dropped_at_shutdown():
    vent = Ventilator(locality_wait_s=1.0)
    vent.worker_ready(b"wb", 1, b"n-b")
    batch = map_batch([1])
    batch.data = {b"n-a": 5 << 20}
    vent.enqueue(batch)
    assert list(vent.dispatch()) == []
    assert vent.has_pending() and not vent.idle()
    assert vent.drop_pending() == [batch] and not vent.parked


def test_an_interrupt_drops_queued_batches_nobody_waits_for_and_recycles_their_workers_once():
    vent = Ventilator()
    vent.worker_ready(b"w1", 2, b"n1")
    vent.worker_ready(b"w2", 1, b"n2")
    abandoned, wanted = Owner(), Owner()
    vent.enqueue(call_batch(abandoned, digest=b"a" * 16))  # w1 runs it
    vent.enqueue(call_batch(wanted, digest=b"b" * 16))  # w2 runs it
    vent.enqueue(call_batch(wanted, digest=b"c" * 16))  # waits in w1's socket behind the abandoned one
    vent.enqueue(map_batch(range(4), abandoned))
    vent.enqueue(map_batch(range(4), wanted))
    list(vent.dispatch())
    abandoned.wanted = False
    vent.drop_abandoned()
    assert [b.owner for b in vent.bulk] == [wanted]
    assert vent.recycle_abandoned() == [(b"w1", b"n1")]
    assert vent.recycle_abandoned() == []  # asked once
    assert vent.worker_lost(b"w1", "was recycled") == []
    assert [b.owner for b in vent.urgent] == [abandoned, wanted]  # back uncharged; the first is skipped
    assert all(b.attempts == 0 and not b.suspect for b in vent.urgent)
    assert not vent.recycling


def test_a_new_worker_beyond_max_workers_is_refused_but_a_known_one_reattaches():
    v = Ventilator(max_workers=2)
    assert v.worker_ready(b"w1", 2, b"n1") and v.worker_ready(b"w2", 2, b"n1")
    assert not v.worker_ready(b"w3", 2, b"n1")
    assert v.worker_ready(b"w1", 1, b"n1")  # a re-attach takes no new place
    assert (v.workers, v.refused_workers, v.free[b"w1"]) == (2, 1, 1)


def test_an_interrupt_drops_parked_batches_nobody_waits_for():
    vent = Ventilator(locality_wait_s=1.0)
    vent.worker_ready(b"wb", 1, b"n-b")
    abandoned, wanted = Owner(), Owner()
    for owner in (abandoned, wanted):
        batch = map_batch([1], owner)
        batch.data = {b"n-a": 5 << 20}
        vent.enqueue(batch)
    assert list(vent.dispatch()) == [] and len(vent.parked) == 2  # both wait for a credit on n-a
    abandoned.wanted = False
    vent.drop_abandoned()
    assert [b.owner for b in vent.parked] == [wanted]


def test_a_batch_reading_stored_objects_reports_them_read_on_its_workers_node_done_or_lost():
    """Its worker may have fetched copies there: the frees of those objects must reach that node too,
    whether the batch returned or its worker died (or was recycled on ctrl-C) first."""
    read = []
    vent = Ventilator()
    vent.read_on = lambda node_id, refs: read.append((node_id, refs))
    vent.worker_ready(b"w1", 1, b"n1")
    vent.worker_ready(b"w2", 1, b"n2")
    plain = map_batch(range(2))
    reading = [map_batch(range(2)) for _ in range(2)]
    for batch in reading:
        batch.refs = [Ref(bytes([batch.batch_id % 256]) * 16, 10, ((b"n3", "tcp://127.0.0.1:1"),), b"c")]
        vent.enqueue(batch)
    sent = {batch.batch_id: worker for worker, batch, _ in vent.dispatch()}
    done, lost = sorted(reading, key=lambda batch: sent[batch.batch_id])
    assert vent.complete(sent[done.batch_id], done.batch_id) is done
    vent.worker_lost(sent[lost.batch_id])
    vent.enqueue(plain)
    list(vent.dispatch())
    vent.complete(b"w1", plain.batch_id)  # read nothing: reports nothing
    assert read == [(b"n1", done.refs), (b"n2", lost.refs)]
