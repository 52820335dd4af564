"""What code written for concurrent.futures relies on, checked against a real fabric."""

import gc
import weakref

import pytest


class Payload:
    """A result the caller can drop: weakly referenceable, not a small atom."""


def make_payload(_: int) -> Payload:
    return Payload()


def fail_at_three(i: int) -> Payload:
    if i == 3:
        raise ValueError("three")
    return Payload()


def test_map_keeps_no_reference_to_a_result_the_caller_dropped(fx):
    """CPython bpo-14406: the iterator must not keep what it already yielded alive."""
    alive = 0
    for result in fx.map(make_payload, range(50)):
        ref = weakref.ref(result)
        del result
        gc.collect()
        alive += ref() is not None
    assert alive == 0


def test_the_results_before_a_failure_are_released_too(fx):
    results = fx.map(fail_at_three, range(6), chunksize=6)
    refs = []
    for _ in range(3):
        refs.append(weakref.ref(next(results)))
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    with pytest.raises(ValueError, match="three"):
        next(results)
