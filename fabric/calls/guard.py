"""Guarded: the user's function with ``retry_on`` and ``task_timeout`` applied.

Built in the client when a call has those options, shipped to the workers in
the function's place (so the worker's hot loop is unchanged for calls without
them), and run there.  ``task_timeout`` raises :class:`~fabric.TaskTimeoutError`
inside the task (SIGALRM in the worker's main thread) and asks the worker to
be recycled after reporting, so no state of the interrupted task survives.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from ..errors import TaskTimeoutError
from ..wire.codec import function_name

_recycle = False  # set in a worker after a task was interrupted


class Guarded:
    """The user's function with ``retry_on`` and ``task_timeout`` applied."""

    __slots__ = ("__wrapped__", "retry_on", "attempts", "task_timeout")

    def __init__(
        self, fn: Callable[..., Any], retry_on: tuple[type[BaseException], ...], attempts: int,
        task_timeout: float | None,
    ) -> None:
        self.__wrapped__ = fn
        self.retry_on = retry_on
        self.attempts = attempts
        self.task_timeout = task_timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        attempt = 1
        while True:
            try:
                return self._run(args, kwargs)
            except self.retry_on:
                if attempt >= self.attempts:
                    raise
                attempt += 1

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.task_timeout is None:
            return self.__wrapped__(*args, **kwargs)
        previous = signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.task_timeout)
        try:
            return self.__wrapped__(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _expired(self, signum: int, frame: object) -> None:
        global _recycle
        _recycle = True
        name = function_name(self.__wrapped__)
        raise TaskTimeoutError(f"task {name} ran longer than its task_timeout of {self.task_timeout} s")


def recycle_requested() -> bool:
    """True in a worker whose task was interrupted: it should exit and be replaced."""
    return _recycle
