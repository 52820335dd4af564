"""Batch sizes adapt to a few ms of work per batch, on the workers and in the caller, within fixed bounds."""

import pytest

from fabric.batching import CALLER_BATCH_S, MAX_BATCH_ITEMS, TARGET_BATCH_S, BatchSizer, balance_limit


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


def test_one_ms_tasks_aim_at_the_target():
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


def test_balance_limit_caps():
    sizer = BatchSizer(balance_limit=3)
    sizer.observe(100, 1e-6)
    assert max(sizer.next_size() for _ in range(10)) == 3


def test_bad_chunksize():
    with pytest.raises(ValueError):
        BatchSizer(chunksize=0)


def test_balance_limit_of_known_length():
    assert balance_limit(None, 2) is None
    assert balance_limit(800, 2) == 100
    assert balance_limit(1, 8) == 1
