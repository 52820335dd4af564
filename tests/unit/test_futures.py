"""fabric.Future shares a few Conditions among all futures: it must still behave
exactly as a concurrent.futures.Future, whatever wakes its waiters."""

import concurrent.futures
import threading

import pytest
from helpers import wait_for

from fabric.client.futures import CONDITION_STRIPES, Future, on_interrupt
from fabric.client.output import Printed


def test_has_the_fields_of_a_concurrent_future():
    # Future.__init__ sets the base class's fields itself: a new Python that adds one must fail here.
    assert set(vars(Future("t"))) - {"task"} == set(vars(concurrent.futures.Future()))


def test_futures_share_conditions():
    futures = [Future() for _ in range(2 * CONDITION_STRIPES)]
    assert len({id(f._condition) for f in futures}) <= CONDITION_STRIPES


def _same_stripe_pair() -> tuple[Future, Future]:
    first = Future()
    for _ in range(CONDITION_STRIPES):
        other = Future()
        if other._condition is first._condition:
            return first, other
    raise AssertionError("no two futures share a Condition")


def _waiting_thread(future: Future, timeout_s: float) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(future.result(timeout_s))
        except BaseException as exc:  # the outcome is what the test checks
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_for(lambda: future._condition._waiters, 5, "the waiter to block")
    return thread, outcome


def test_a_wake_up_for_another_future_is_not_a_timeout():
    waited, other = _same_stripe_pair()
    thread, outcome = _waiting_thread(waited, 30)
    other.set_running_or_notify_cancel()
    other.set_result("other")  # wakes every waiter of the shared Condition
    wait_for(lambda: waited._condition._waiters, 5, "the waiter to block again")
    assert outcome == []
    waited.set_running_or_notify_cancel()
    waited.set_result("mine")
    thread.join(5)
    assert outcome == ["mine"]


def test_timeout_and_cancel_and_exception_still_hold():
    future = Future()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        future.exception(timeout=0.01)
    waited, _ = _same_stripe_pair()
    thread, outcome = _waiting_thread(waited, 30)
    assert waited.cancel()
    thread.join(5)
    assert isinstance(outcome[0], concurrent.futures.CancelledError)
    failing = Future()
    failing.set_running_or_notify_cancel()
    failing.set_exception(KeyError("k"))
    assert isinstance(failing.exception(0), KeyError)
    with pytest.raises(KeyError):
        failing.result()


def test_wait_and_as_completed_accept_them():
    futures = [Future() for _ in range(3)]
    for index, future in enumerate(futures):
        future.set_running_or_notify_cancel()
        future.set_result(index)
    done, not_done = concurrent.futures.wait(futures, timeout=5)
    assert done == set(futures) and not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=5)) == [0, 1, 2]


def test_ctrl_c_while_waiting_cancels_the_running_future_and_tells_the_fabrics():
    class Loop:
        told = 0

        def interrupted(self):
            self.told += 1

    loop = Loop()
    on_interrupt(loop)
    future = Future("task")
    future.set_running_or_notify_cancel()
    done = []
    future.add_done_callback(done.append)
    future._condition = threading.Condition()  # its own, to interrupt only this wait
    future._condition.wait_for = lambda *args: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        future.result()
    assert future.cancelled() and done == [future] and loop.told == 1
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()


def test_what_a_task_printed_is_shown_once_by_whoever_reads_its_outcome(capsys):
    future = Future("task")
    future._printed = Printed("(n:w1)", [[0, 1, "hi\n"]])
    future.set_running_or_notify_cancel()
    future.set_result(3)
    assert future.exception() is None and future.result() == 3
    assert capsys.readouterr().out == "(n:w1) hi\n"
