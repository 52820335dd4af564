"""``fabric.current_worker()``: which worker runs the calling task.

Set once in each worker process when it starts (:mod:`fabric.node.worker`);
in any other process (the client, a node) it stays None.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    """The worker running the current task: its node's name, its index on that
    node (0, 1, ...; a replacement takes the index of the worker it replaces),
    its process id and its worker id."""

    node: str
    worker: int
    pid: int
    worker_id: str


_current: WorkerInfo | None = None


def current_worker() -> WorkerInfo | None:
    """Inside a task: the worker running it; elsewhere None."""
    return _current


def enter_worker(info: WorkerInfo) -> None:
    """Called once by the worker process at start."""
    global _current
    _current = info
