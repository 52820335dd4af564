"""Batch sizes adapt to a few ms of work per batch, on the workers and in the caller, within fixed bounds."""

import pytest

from fabric.client.batching import (
    CALLER_BATCH_S,
    LONG_BATCH_S,
    MAX_BATCH_ITEMS,
    TAIL_BATCH_S,
    TARGET_BATCH_S,
    BatchSizer,
)


def test_unmeasured_starts_with_one_item():
    assert BatchSizer().next_size() == 1


def test_tiny_tasks_grow_to_the_cap_step_by_step():
    sizer = BatchSizer()
    sizer.observe(1, 1e-9)
    sizes = [sizer.next_size() for _ in range(8)]
    assert sizes == sorted(sizes)
    assert sizes[0] == 8  # growth is bounded per step
    assert sizes[-1] == MAX_BATCH_ITEMS


def test_long_tasks_travel_alone():
    sizer = BatchSizer()
    sizer.observe(4, 4 * 0.5)  # 0.5 s per item
    assert sizer.next_size() == 1


def test_one_ms_tasks_of_an_unsized_input_aim_at_the_target():
    sizer = BatchSizer()
    for _ in range(20):
        sizer.observe(10, 10 * 0.001)
        size = sizer.next_size()
    assert size == round(TARGET_BATCH_S / 0.001)


def test_a_caller_slower_than_the_workers_holds_batches_to_its_own_target():
    # Word count: 5 us per line on a worker, 5 us per line to decode and fold in the caller.
    sizer = BatchSizer()
    for _ in range(20):
        sizer.observe(100, 100 * 5e-6)
        sizer.observe_caller(100, 100 * 5e-6)
        size = sizer.next_size()
    assert 0.99 * CALLER_BATCH_S / 5e-6 <= size <= CALLER_BATCH_S / 5e-6 < TARGET_BATCH_S / 5e-6


def test_a_fast_caller_leaves_the_worker_target():
    sizer = BatchSizer()
    for _ in range(20):
        sizer.observe(10, 10 * 0.001)
        sizer.observe_caller(10, 10 * 1e-6)
        size = sizer.next_size()
    assert size == round(TARGET_BATCH_S / 0.001)


def test_chunksize_overrides():
    sizer = BatchSizer(chunksize=17)
    sizer.observe(10, 100.0)
    assert sizer.next_size() == 17


def cut(sizer: BatchSizer, length: int, per_item_s: float) -> list[int]:
    """The batch sizes a sized input is cut into, each batch measured as it goes."""
    sizes: list[int] = []
    while sum(sizes) < length:
        sizes.append(min(sizer.next_size(), length - sum(sizes)))
        sizer.observe(sizes[-1], sizes[-1] * per_item_s)
    return sizes


def test_a_short_sized_input_leaves_four_batches_per_worker():
    assert cut(BatchSizer(length=8, workers=2), 8, 1.0) == [1] * 8
    assert max(cut(BatchSizer(length=200, workers=2), 200, 0.001)) <= 200 // 8


def test_a_long_sized_input_takes_long_batches_then_shrinks_them_for_the_tail():
    # 5,000 tasks of 1 ms on 2 workers: ~60 batches instead of 250 of the 20 ms target.
    sizes = cut(BatchSizer(length=5000, workers=2), 5000, 0.001)
    assert max(sizes) == round(LONG_BATCH_S / 0.001)
    assert len(sizes) < 100
    assert sizes[-8:] == sorted(sizes[-8:], reverse=True)
    assert all(size <= round(TAIL_BATCH_S / 0.001) for size in sizes[-4:])


def test_tiny_items_are_not_cut_finer_than_the_tail_target():
    sizes = cut(BatchSizer(length=4_000_000, workers=2), 4_000_000, 5e-8)
    assert min(sizes[6:-1]) == MAX_BATCH_ITEMS  # after growing 1, 8, ... 32768


def test_bad_chunksize():
    with pytest.raises(ValueError):
        BatchSizer(chunksize=0)
