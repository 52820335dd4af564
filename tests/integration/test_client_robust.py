"""The client against real nodes and workers: work started at submit, a loop that
survives bad messages, refused handshakes, silent workers and large messages."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import free_address, wait_for

import fabric


def test_shutdown_cancel_futures_lets_the_dispatched_calls_finish(fresh_fx):
    """CPython's test_cancel_futures: calls the workers had credits for when
    shutdown came run to the end, as in ProcessPoolExecutor; the rest are cancelled.
    The I/O thread is held until the 50 submits and the shutdown are all posted,
    as happens when the caller is quicker than the loop."""
    hold = threading.Event()
    fresh_fx._io.post(hold.wait)
    futures = [fresh_fx.submit(time.sleep, 0.1) for _ in range(50)]
    stopper = threading.Thread(target=fresh_fx.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    wait_for(lambda: len(fresh_fx._io._commands) >= 51, 10, "the submits and the shutdown to be posted")
    hold.set()
    stopper.join(30)
    assert not stopper.is_alive()
    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20
    assert others, "every call was cancelled, although the workers had credits for some"
    assert all(f.done() and f.exception() is None for f in others)


def test_an_address_where_nothing_answers_fails_within_the_first_contact_timeout(no_leaked_processes):
    address = free_address()  # nothing listens there
    started = time.monotonic()
    with fabric.connect(address) as fx:  # the default connect_timeout_s: 30 s
        with pytest.raises(fabric.NoNodesError, match=f"no node answered at {address} within 5 s"):
            fx.submit(abs, -1).result(timeout=20)
        with pytest.raises(fabric.NoNodesError):  # later calls fail at once
            fx.submit(abs, -1).result(timeout=1)
    assert time.monotonic() - started < 20
