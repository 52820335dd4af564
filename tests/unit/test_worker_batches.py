"""A worker's run_batch: every mode, and every way an item, a result or a whole batch fails.

Batches are real TASK_BATCH messages (built, sent through to_frames/from_frames
as the wire would) run against a client link without sockets; results are read
back as the client reads a RESULT_BATCH.
"""

import itertools
import operator
import threading
from dataclasses import dataclass, field

import pytest

from fabric.client.shipping import shipped
from fabric.errors import SerializationError
from fabric.node.worker import BATCH_ERROR, run_batch
from fabric.wire import codec
from fabric.wire.protocol import Mode, ResultBatch, TaskBatch, from_frames, to_frames

_batch_ids = itertools.count(1)


@dataclass
class Link:
    """What run_batch uses of a worker's link to one client, without its sockets."""

    max_message_bytes: int = 1 << 20
    functions: dict = field(default_factory=dict)
    encoders: dict = field(default_factory=dict)


def wire(message):
    """``message`` as a worker receives it: through its frames."""
    return from_frames(to_frames(message))


def task_batch(fn, mode, item_frames, payload, n_items, with_fn=True):
    """The TaskBatch a client sends for ``fn`` (with the function unless ``with_fn`` is false)."""
    digest, fn_payload = shipped(fn)
    frames = [fn_payload, *payload] if with_fn else list(payload)
    return wire(TaskBatch(next(_batch_ids), digest, mode, codec.PICKLE, item_frames, with_fn, n_items, False, frames))


def items_batch(fn, mode, items, with_fn=True):
    """A MAP, STARMAP or FOLD batch: one payload holding the item list."""
    payload = codec.pickle_frames(list(items))
    return task_batch(fn, mode, [len(payload)], payload, len(items), with_fn)


def call_batch(fn, calls):
    """A CALL batch: one payload per item, each holding ``(args, kwargs)`` (or, given as a list, raw frames)."""
    item_frames, payload = [], []
    for call in calls:
        frames = call if isinstance(call, list) else codec.pickle_frames(call)
        item_frames.append(len(frames))
        payload += frames
    return task_batch(fn, Mode.CALL, item_frames, payload, len(calls))


def run(batch, link=None):
    """Run ``batch`` and read its result back as the client would: (results, {index: error record})."""
    result = run_batch(link or Link(), batch)
    back = from_frames(to_frames(result))
    assert isinstance(back, ResultBatch) and back.batch_id == batch.batch_id and back.elapsed_s >= 0
    return codec.decode(back.codec, back.payload), {record[0]: record for record in back.errors}


def square(x):
    return x * x


def inverse(x):
    return 1 / x


def scaled(x, factor=1):
    return x * factor


def blob(n):
    return b"x" * n


def lock_at_one(x):
    return threading.Lock() if x == 1 else x


def test_map_applies_the_function_to_each_item():
    assert run(items_batch(square, Mode.MAP, [1, 2, 3])) == ([1, 4, 9], {})


def test_starmap_unpacks_each_item():
    assert run(items_batch(operator.add, Mode.STARMAP, [(1, 2), (3, 4)])) == ([3, 7], {})


def test_call_passes_each_items_args_and_kwargs():
    assert run(call_batch(scaled, [((2,), {"factor": 3}), ((4,), {})])) == ([6, 4], {})


def test_fold_calls_the_function_once_over_the_whole_batch():
    assert run(items_batch(sum, Mode.FOLD, [1, 2, 3, 4])) == ([10], {})


def test_the_function_stays_with_the_link_for_later_batches():
    link = Link()
    run(items_batch(square, Mode.MAP, [1], with_fn=True), link)
    assert run(items_batch(square, Mode.MAP, [5], with_fn=False), link) == ([25], {})


@pytest.mark.parametrize("mode", [Mode.MAP, Mode.STARMAP, Mode.CALL])
def test_an_item_that_raises_fails_alone(mode):
    if mode == Mode.CALL:
        batch = call_batch(inverse, [((1,), {}), ((0,), {}), ((2,), {})])
    else:
        batch = items_batch(inverse, mode, [1, 0, 2] if mode == Mode.MAP else [(1,), (0,), (2,)])
    results, errors = run(batch)
    assert results == [1.0, None, 0.5]
    assert list(errors) == [1] and errors[1][1] == "ZeroDivisionError"
    rebuilt = codec.rebuild_error(errors[1])
    assert type(rebuilt) is ZeroDivisionError and "return 1 / x" in rebuilt.__cause__.tb


def test_a_call_item_that_cannot_be_decoded_fails_alone():
    results, errors = run(call_batch(scaled, [((1,), {}), [b"not a pickle"], ((3,), {})]))
    assert results == [1, None, 3]
    assert list(errors) == [1]
    assert isinstance(codec.rebuild_error(errors[1]), SerializationError) and "deserialize" in errors[1][2]


def test_a_result_that_cannot_be_pickled_fails_alone():
    results, errors = run(items_batch(lock_at_one, Mode.MAP, [0, 1, 2]))
    assert results == [0, None, 2]
    assert list(errors) == [1] and "result of task 1" in errors[1][2] and "lock" in errors[1][2]


def test_results_over_max_message_bytes_fail_largest_first_naming_the_size_and_the_fix():
    link = Link(max_message_bytes=2000)
    results, errors = run(items_batch(blob, Mode.MAP, [10, 1500, 1000, 20]), link)
    assert results == [b"x" * 10, None, b"x" * 1000, b"x" * 20]  # dropping the largest was enough
    assert list(errors) == [1]
    size = 1500  # a bytes result is measured by its length, without pickling it
    message = errors[1][2]
    assert f"result of task 1 is {size:,} bytes" in message and "max_message_bytes=2,000" in message
    assert "connect(max_message_bytes=...)" in message and "cluster.toml" in message


def test_results_within_max_message_bytes_all_arrive():
    link = Link(max_message_bytes=4000)
    results, errors = run(items_batch(blob, Mode.MAP, [10, 1500, 1000, 20]), link)
    assert results == [blob(n) for n in (10, 1500, 1000, 20)] and errors == {}


def batch_failures():
    """Batches that cannot run at all, and the error each fails with."""
    items = codec.pickle_frames([1, 2])
    return {
        "items undecodable": (task_batch(square, Mode.MAP, [1], [b"not a pickle"], 2), "SerializationError"),
        "function undecodable": (
            wire(TaskBatch(
                next(_batch_ids), b"d" * 16, Mode.MAP, codec.PICKLE, [1], True, 2, False, [b"junk", *items]
            )),
            "_pickle.UnpicklingError",
        ),
        "function never sent": (items_batch(square, Mode.MAP, [1, 2], with_fn=False), "KeyError"),
    }


@pytest.mark.parametrize("name", list(batch_failures()))
def test_a_batch_that_cannot_run_fails_as_a_whole(name):
    batch, error_type = batch_failures()[name]
    results, errors = run(batch)
    assert results is None
    assert list(errors) == [BATCH_ERROR] and errors[BATCH_ERROR][1].endswith(error_type)


def test_an_over_limit_buffer_result_is_refused_without_pickling_it(monkeypatch):
    pickled = []
    real = codec.PayloadEncoder.encode
    spy = lambda self, values: pickled.append(values) or real(self, values)  # noqa: E731 - records, then encodes
    monkeypatch.setattr(codec.PayloadEncoder, "encode", spy)
    link = Link(max_message_bytes=1000)
    results, errors = run(items_batch(blob, Mode.MAP, [5000]), link)
    assert results == [None] and "result of task 0 is 5,000 bytes" in errors[0][2]
    assert pickled == [[None]], "the over-limit result was pickled"
