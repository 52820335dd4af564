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
    wait_for(lambda: len(fresh_fx._io.commands) >= 51, 10, "the submits and the shutdown to be posted")
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
    with fabric.connect(address) as fx:  # the default connect_timeout_s: 30 s; waiting for it is a TimeoutError
        with pytest.raises(fabric.NoNodesError, match=f"no node answered at {address} within 5 s"):
            fx.submit(abs, -1).result(timeout=20)
        with pytest.raises(fabric.NoNodesError):  # later calls fail at once
            fx.submit(abs, -1).result(timeout=1)
        with pytest.raises(fabric.NoNodesError):  # and so does waiting for workers, even without a limit
            fx.wait_for_workers(1)


FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}


def hog_the_gil(seconds: float) -> None:
    """Hold the GIL for about ``seconds`` in one C call, as pickling a large argument does."""
    n = 1_000_000
    started = time.monotonic()
    sum(range(n))
    per_call = max(time.monotonic() - started, 1e-4)
    sum(range(int(n * seconds / per_call)))


def test_a_stalled_client_does_not_declare_a_live_node_dead(make_fabric, caplog):
    """The I/O thread cannot run while a caller's thread holds the GIL (a large
    pickle); when it runs again, the heartbeats that arrived meanwhile are read
    before any node is declared dead."""
    fx = make_fabric(workers=1, **FAST)
    for _ in range(6):  # a stall ends at a poll timeout about half the time; then the race was lost
        hog_the_gil(3 * FAST["liveness_s"])
        assert fx.submit(abs, -3).result(timeout=30) == 3
    assert "declared dead" not in caplog.text
    assert len(fx.nodes()) == 1


def test_a_large_argument_and_an_over_limit_result_leave_every_node_alive(make_fabric, caplog):
    """256 MiB each way with fast heartbeats: no node is declared dead, and a result
    over max_message_bytes is refused by its worker with the limit named."""
    limit = 320 << 20
    fx = make_fabric(workers=1, max_message_bytes=limit, heartbeat_interval_s=0.2, liveness_s=1.5)
    argument = b"x" * (256 << 20)
    assert fx.submit(len, argument).result(timeout=120) == len(argument)
    del argument
    assert len(fx.submit(bytes, 256 << 20).result(timeout=120)) == 256 << 20
    with pytest.raises(fabric.SerializationError, match=f"over max_message_bytes={limit:,}"):
        fx.submit(bytes, limit + 1).result(timeout=120)
    assert "declared dead" not in caplog.text and "went silent" not in caplog.text
    assert len(fx.nodes()) == 1
