"""What a worker's death costs the batch it was running.

Pure rules for :meth:`~fabric.client.ventilator.Ventilator.worker_lost`, in
the client's I/O thread::

    node: WORKER_LOST --> the batch the worker ran --> after_crash(): its two halves, to run again
                                                                      itself, an attempt more
                                                                      nothing: given up, crash_error()

A batch lost with its worker's exit (WORKER_LOST: the only death a task can be
blamed for) is split in two and both halves run again; a lost single-item batch
counts an attempt and fails with WorkerCrashedError after ``retries``
attempts.  A task that kills its worker is thus isolated in O(log n) crashes,
and the rest of its map finishes.  The batches waiting behind it on that
worker, and those lost with a node declared dead by silence or leaving, are
re-run uncharged by the ventilator.

The batch blamed is the first its worker held that has not returned: a result
sent just before the crash can die unsent with the worker (``os._exit`` leaves
no time to flush), and the batch that finished is then blamed for the one
behind it.  So the ventilator runs a lost batch (a suspect) alone, on a worker
holding nothing, and sends nothing behind it: its worker's death then names
it, and an innocent is charged at most once.
"""

from __future__ import annotations

from ..errors import WorkerCrashedError
from .batch import Batch


def after_crash(batch: Batch, retries: int) -> list[Batch]:
    """What runs again of a batch whose worker died running it, in order;
    nothing when it is given up (out of attempts, or pinned to that worker).
    ``retries``: the ventilator's default, for a batch without its own."""
    if batch.worker is not None:  # it killed the only worker it may run on: never elsewhere, never again
        batch.attempts += 1
        return []
    if batch.n_items > 1:
        return list(batch.split())
    batch.attempts += 1
    batch.suspect = True
    return [] if batch.attempts >= (batch.retries or retries) else [batch]


def crash_error(batch: Batch, reason: str) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"{batch.owner.describe(batch)} killed its worker on {batch.attempts} attempts (last: {reason or 'lost'}); "
        "the task may crash the interpreter (a segmentation fault in native code, os._exit) "
        "or use more memory than the machine or the worker's memory limit allows"
    )
