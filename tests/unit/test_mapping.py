"""What a map ships per chunk: a range or a numpy array is sliced, never read item by item."""

import gc
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from fabric.client import mapping
from fabric.client.batching import BatchSizer
from fabric.client.mapping import MapStream, Part, misses_by_owner, releasing, sliced_input
from fabric.client.objects import ObjectTable
from fabric.wire import codec
from fabric.wire.protocol import Mode
from fabric.wire.ref import Ref


def map_stream(mode, items, post, sizer, capacity=lambda: 1000):
    """An ordered map stream over ``items`` that hands its batches to ``post``."""
    return MapStream((b"digest", b"fn"), mode, sliced_input(items), post=post, capacity=capacity, sizer=sizer,
                     ordered=True, deadline=None)


def posted_chunks(items, chunksize):
    """Start a map stream over ``items`` and decode the payload of every batch it posts."""
    batches = []
    map_stream(Mode.MAP, items, batches.append, BatchSizer(chunksize)).start()
    return [codec.decode(batch.codec, batch.payload) for batch in batches]


def test_a_range_travels_as_sub_ranges():
    chunks = posted_chunks(range(10, 1010, 3), chunksize=100)
    assert all(isinstance(chunk, range) for chunk in chunks)
    assert [x for chunk in chunks for x in chunk] == list(range(10, 1010, 3))


@pytest.mark.parametrize("shape", [(1000,), (250, 4)])
def test_a_numpy_array_travels_as_array_slices(shape):
    array = np.arange(1000.0).reshape(shape)
    chunks = posted_chunks(array, chunksize=64)
    assert all(isinstance(chunk, np.ndarray) for chunk in chunks)
    assert np.array_equal(np.concatenate(chunks), array)


@pytest.mark.parametrize("items", [[1, 2, 3], (1, 2, 3), "abc", {1: "a", 2: "b", 3: "c"}])
def test_other_inputs_are_read_as_iterators(items):
    # A list is read lazily like any iterable: slicing it would copy, then pickle, the same items.
    read = sliced_input(items)
    assert isinstance(read, Iterator) and list(read) == list(items)


class FakeTime:
    """Stands for the ``time`` module in fabric.client.mapping: the test moves the clock."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    monotonic = perf_counter

    def using(self, results, each_s):
        """Consume ``results`` as a caller that spends ``each_s`` on each one."""
        used = []
        for value in results:
            used.append(value)
            self.now += each_s
        return used


class RecordingSizer(BatchSizer):
    """A batch sizer that records what the stream charges to the caller."""

    def __init__(self, chunksize):
        super().__init__(chunksize)
        self.charged = []

    def observe_caller(self, n_items, elapsed_s):
        self.charged.append((n_items, elapsed_s))
        super().observe_caller(n_items, elapsed_s)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(mapping, "time", fake)
    return fake


def test_the_callers_time_with_each_chunk_is_charged_per_item(clock):
    stream = None

    def answer(batch):  # a worker that answers at once: each item doubled
        items = codec.decode(batch.codec, batch.payload)
        stream.deliver(batch, codec.PICKLE, codec.pickle_frames([2 * x for x in items]), [])

    def capacity():  # the stream refilling its window between chunks: not the caller's time
        clock.now += 1.0
        return 1

    stream = map_stream(Mode.MAP, range(1000), answer, RecordingSizer(100), capacity)
    stream.start()
    assert clock.using(stream.results(), each_s=0.001) == [2 * x for x in range(1000)]
    assert stream.sizer.charged == [(100, pytest.approx(0.1))] * 10
    assert stream.sizer.caller_per_item_s == pytest.approx(0.001)


def test_a_fold_stream_yields_one_partial_per_part_in_input_order(clock):
    batches = []
    stream = map_stream(Mode.FOLD, range(300), batches.append, RecordingSizer(100))
    stream.start()
    assert [b.mode for b in batches] == [Mode.FOLD] * 3
    first, second = batches[0].split()  # as after its worker died: the halves fold apart
    for part in (second, first, *batches[1:]):  # the second half answers first
        items = codec.decode(part.codec, part.payload)
        stream.deliver(part, codec.PICKLE, codec.pickle_frames([sum(items)]), [])
    partials = clock.using(stream.results(), each_s=0.01)  # the caller folds each partial in 10 ms
    assert partials == [sum(range(50)), sum(range(50, 100)), sum(range(100, 200)), sum(range(200, 300))]
    # the caller's time is spread over every item of a chunk, not over its one or two partials
    assert stream.sizer.charged == [(100, pytest.approx(0.02)), (100, pytest.approx(0.01)),
                                    (100, pytest.approx(0.01))]


def test_a_fold_stream_raises_a_failed_batch_after_the_partials_before_it():
    batches = []
    stream = map_stream(Mode.FOLD, range(200), batches.append, BatchSizer(100))
    stream.start()
    stream.deliver(batches[0], codec.PICKLE, codec.pickle_frames([1]), [])
    stream.deliver(batches[1], codec.PICKLE, codec.pickle_frames([None]), [codec.error_record(0, KeyError("k"))])
    results = stream.results()
    assert next(results) == 1
    with pytest.raises(KeyError):
        next(results)


def test_a_result_batch_with_the_wrong_number_of_results_is_an_error_not_nones():
    payload = codec.pickle_frames([1, 2])
    values, error = Part(0, 3, codec.PICKLE, payload, []).decode()
    assert values == [None, None, None]
    assert error is not None and error[0] == 0 and "answered 3 tasks with 2 results" in str(error[1])
    values, error = Part(0, 3, codec.PICKLE, codec.pickle_frames(None), [[-1, "E", "m", "tb", None]]).decode()
    assert error is not None and "answered" not in str(error[1])  # a failed batch carries no results


def test_large_or_object_results_are_released_as_they_are_handed_over():
    class Big:
        pass

    results = [Big(), Big(), Big()]
    refs = [weakref.ref(r) for r in results]
    handed = releasing(results, [Part(0, 3, codec.PICKLE, [b"x" * 300])])
    first = next(iter(handed))
    assert refs[0]() is first and refs[1]() is not None
    del first
    assert refs[0]() is None  # nothing of ours holds a result the caller let go of
    assert [r() is not None for r in refs[1:]] == [True, True]


def test_small_atoms_are_handed_over_as_the_list_itself():
    results = list(range(100))
    assert releasing(results, [Part(0, 100, codec.PICKLE, [b"x" * 300])]) is results


def test_array_results_are_released_without_comparing_them():
    rows = [np.arange(3), np.arange(3)]
    handed = list(releasing(list(rows), [Part(0, 2, codec.PICKLE, [b"x" * 300])]))
    assert [r.tolist() for r in handed] == [[0, 1, 2], [0, 1, 2]]


class CountingBar:
    """A bar as tqdm's interface: records each update."""

    def __init__(self):
        self.updates, self.closed = [], False

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def answering_stream(n, chunksize, bar=None, mode=Mode.MAP):
    """A stream whose batches are answered at once (each item doubled, or summed for a fold)."""
    stream = None

    def answer(batch):
        items = codec.decode(batch.codec, batch.payload)
        results = [sum(items)] if mode == Mode.FOLD else [2 * x for x in items]
        stream.deliver(batch, codec.PICKLE, codec.pickle_frames(results), [])

    stream = MapStream((b"digest", b"fn"), mode, sliced_input(range(n)), post=answer, capacity=lambda: 1000,
                       sizer=BatchSizer(chunksize), ordered=True, deadline=None, bar=bar)
    stream.start()
    return stream


def test_a_bar_moves_once_per_chunk_by_its_items_and_closes_at_the_end():
    bar = CountingBar()
    assert list(answering_stream(1000, 100, bar).results()) == [2 * x for x in range(1000)]
    assert bar.updates == [100] * 10 and bar.closed


def test_a_fold_moves_its_bar_by_the_items_folded_not_the_partials():
    bar = CountingBar()
    assert sum(answering_stream(1000, 250, bar, Mode.FOLD).results()) == sum(range(1000))
    assert bar.updates == [250] * 4 and bar.closed


def test_a_stream_says_when_its_next_chunk_is_ready_and_wakes_a_waiter_once():
    batches = []
    stream = map_stream(Mode.MAP, range(200), batches.append, BatchSizer(100))
    stream.start()
    woken = []
    assert not stream.wake_when_ready(lambda: woken.append("first"))
    stream.deliver(batches[1], codec.PICKLE, codec.pickle_frames([0] * 100), [])  # not the next in order
    assert woken == ["first"] and not stream.wake_when_ready(lambda: woken.append("second"))
    stream.deliver(batches[0], codec.PICKLE, codec.pickle_frames([1] * 100), [])
    assert woken == ["first", "second"] and stream.wake_when_ready(woken.append)
    results = stream.results()
    assert next(results) == 1 and stream.taken() == 1 and stream.last_taken == 100
    stream.close()
    assert stream.wake_when_ready(woken.append)  # closed: nothing left to wait for
    assert woken == ["first", "second"]


def test_a_stream_past_its_deadline_is_ready_to_raise(clock):
    stream = MapStream((b"digest", b"fn"), Mode.MAP, sliced_input(range(10)), post=lambda batch: None,
                       capacity=lambda: 1, sizer=BatchSizer(10), ordered=True, deadline=clock.now + 1.0)
    stream.start()
    assert not stream.wake_when_ready(lambda: None) and stream.time_left() == pytest.approx(1.0)
    clock.now += 1.5
    assert stream.wake_when_ready(lambda: None) and stream.time_left() == 0.0
    with pytest.raises(TimeoutError):
        next(stream.results())


def test_ctrl_c_in_the_map_call_or_its_wait_stops_the_map_and_says_so():
    calls = []

    def post(batch):
        if len(calls) == 2:  # the caller's thread is interrupted while it posts the first window
            raise KeyboardInterrupt
        calls.append(batch)

    stream = MapStream((b"digest", b"fn"), Mode.MAP, range(100), post=post, capacity=lambda: 4,
                       sizer=BatchSizer(10), ordered=True, deadline=None, interrupted=lambda: calls.append("stop"))
    with pytest.raises(KeyboardInterrupt):
        stream.start()
    assert calls[-1] == "stop" and not stream.alive()

    waiting = MapStream((b"digest", b"fn"), Mode.MAP, range(100), post=lambda batch: None, capacity=lambda: 4,
                        sizer=BatchSizer(10), ordered=True, deadline=None, interrupted=lambda: calls.append("again"))
    waiting._cond.wait = lambda *args: (_ for _ in ()).throw(KeyboardInterrupt())  # what ctrl-C does to the wait
    with pytest.raises(KeyboardInterrupt):
        next(waiting.results())
    assert calls[-1] == "again" and not waiting.alive()


def test_a_cached_chunks_misses_are_cut_per_owner_of_their_keys():
    owners = {b"a": [0, 2, 4], b"b": [1, 3, 5]}
    assert misses_by_owner([0, 1, 3, 4], owners) == [(b"a", [0, 4]), (b"b", [1, 3])]
    assert misses_by_owner([0, 2], owners) == [(b"a", [0, 2])]  # an owner with no miss gets no batch
    assert misses_by_owner([0, 1], {b"a": [0, 1]}) == [(b"a", [0, 1])]
    assert misses_by_owner([0, 1], {}) == [(b"", [0, 1])]  # no ring yet: anywhere


def test_the_first_window_is_cut_before_a_result_measured_meanwhile_resizes_it():
    """A result measured by the I/O thread while the caller posts the first window (a loaded
    machine) must not merge the window's unmeasured items into one batch."""
    sizer = BatchSizer(None, 3, 2)
    sizes = []

    def post(batch):
        sizes.append(batch.n_items)
        sizer.observe(1, 1e-6)  # the first result, measured at once: tiny tasks, batch them

    map_stream(Mode.MAP, [0, 0, 6], post, sizer).start()
    assert sizes == [1, 1, 1]


def test_refs_kept_by_results_a_closed_map_never_read_are_freed():
    """A keep=True map closed (ctrl-C, the iterator dropped) with results queued unread, and
    one arriving after the close: the Refs their workers kept are freed, not left pinned."""
    sent = []
    table = ObjectTable(b"mapping-client", lambda node_id, message: sent.append(message) or True)
    try:
        batches = []
        stream = map_stream(Mode.MAP, range(200), batches.append, BatchSizer(100))
        stream.start()
        first, late = batches

        def kept(key: bytes) -> list:
            return codec.pickle_frames([Ref(key * 16, 10, ((b"n1", "tcp://127.0.0.1:1"),), b"mapping-client")] * 100)

        stream.deliver(first, codec.PICKLE, kept(b"a"), [])  # queued, never read
        stream.close()
        stream.deliver(late, codec.PICKLE, kept(b"b"), [])  # arrives after the close
        gc.collect()
        table.flush()
        assert sorted(key for message in sent for key in message.keys) == [b"a" * 16, b"b" * 16]
    finally:
        table.close()
