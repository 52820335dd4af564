"""Calls that go to every worker: the client's initializer and ``fx.run``.

Both are batches pinned to one worker each (``Batch.worker``), which the
ventilator sends before anything else that worker gets and never to another::

    connect(initializer=f, initargs=a) ─► Setup: a batch for each worker that attaches (and re-attaches),
                                          ahead of its first task; its failure breaks the client
    fx.run(fn, *args, **kwargs)        ─► one Future per attached worker ─► {worker id: result or exception}

An initializer that raises, or kills its worker, fails every call of the
client with that exception (its remote traceback as ``__cause__``) and every
later call too, as ``ProcessPoolExecutor`` breaks its pool: the worker is not
restarted to try again, so a broken initializer cannot loop.  What it prints
is written as it arrives, by the client's I/O thread: no caller reads its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import WorkerCrashedError
from ..wire import codec
from ..wire.protocol import Mode
from .batch import Batch, next_batch_id
from .output import show


class SetupOwner:
    """Owner of initializer batches: nothing waits for them; a failure breaks the client."""

    def __init__(self, name: str, broken: Callable[[BaseException], None]) -> None:
        self.name = name
        self.broken = broken

    def alive(self) -> bool:
        return True

    def claim(self) -> bool:
        return True

    def deliver(self, batch: Batch, codec_id: int, payload: list[Any], errors: list[codec.ErrorRecord]) -> None:
        if batch.printed is not None:  # no caller reads its result: what it printed is shown as it arrives
            show(batch.printed)
        if errors:
            self.broken(codec.rebuild_error(errors[0]))

    def fail(self, batch: Batch, exc: BaseException) -> None:
        if isinstance(exc, WorkerCrashedError):  # it killed its worker: not again on the restarted one
            self.broken(exc)

    def slice(self, start: int, stop: int) -> SetupOwner:
        return self

    def cancel(self, batch: Batch) -> None:
        pass

    def describe(self, batch: Batch) -> str:
        return f"the initializer {self.name}"

    def merge(self, owners: list[Any]) -> SetupOwner:
        raise TypeError("initializer batches are never merged")


def setup_batches(shipped: tuple[bytes, bytes], name: str, initargs: tuple[Any, ...],
                  broken: Callable[[BaseException], None]) -> Callable[[bytes], Batch]:
    """What the ventilator calls for each worker that attaches: its initializer batch."""
    digest, fn_payload = shipped
    payload = codec.pickle_call(initargs, {})
    owner = SetupOwner(name, broken)

    def make(worker_id: bytes) -> Batch:
        return Batch(next_batch_id(), digest, fn_payload, Mode.CALL, codec.PICKLE, [len(payload)], payload, 1, owner,
                     worker=worker_id, setup=True)

    return make


def pinned_call(shipped: tuple[bytes, bytes], payload: list[Any], owner: Any, worker_id: bytes) -> Batch:
    """One call of ``fx.run`` for one worker."""
    digest, fn_payload = shipped
    return Batch(next_batch_id(), digest, fn_payload, Mode.CALL, codec.PICKLE, [len(payload)], payload, 1, owner,
                 worker=worker_id)
