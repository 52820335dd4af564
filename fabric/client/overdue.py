"""Data-plane liveness: when the batch a worker runs is overdue.

Pure arithmetic for :meth:`~fabric.client.ventilator.Ventilator.silent_workers`,
which the client's I/O loop calls at its ticks::

    worker's last sign of life (result, READY, BATCH_STARTED, or its node's word)
        + allowance (the batch's expected time, never less than liveness_s)
        + transfer time (its bytes and the stored objects it reads)  --> overdue_at()

A worker's node may be alive while the worker is silent towards this client
(one-way loss of its traffic, a worker that is no node's).  The batch a worker
runs is overdue when the worker has shown no sign of life for
``OVERDUE_FACTOR`` times the batch's expected time (its sizer's measured
seconds per item), never less than ``liveness_s`` (``FIRST_ANSWER_FACTOR`` times
that for a worker that has not yet returned a batch).  A batch its worker
acknowledged starting is exempt while its node's latest heartbeat lists the
worker running that very batch, so a task may run for hours; once the node
lists it running something else or nothing, the usual rule applies, counting
the node's last word as the worker's last sign of life (so a result lost on the
way is taken back, not waited for forever).  An overdue worker's batches go
back to the queue uncharged (nothing says the task is at fault) and the worker
is forgotten; its late results are duplicates.  Batches expected to be short
(under ``ACK_AFTER_S``) do not ask for the acknowledgement, so the hot path
pays nothing; one taken back asks for it from then on.
"""

from __future__ import annotations

from ..wire import codec
from .batch import Batch

# A batch is overdue after this many times its expected time without a sign of life
# from its worker (and never before liveness_s): batch times vary several-fold with
# the items and the machine's load, not tenfold.
OVERDUE_FACTOR = 10.0
# A worker that has not yet returned a batch to this client gets this many times
# liveness_s: a fresh worker on a loaded machine (8 runnable processes on 2 cores)
# took over 3 s for its first batch of time.sleep(0), and was dropped as silent.
FIRST_ANSWER_FACTOR = 3.0
# Batches expected to take longer than this (or never measured) ask their worker to
# acknowledge starting them: a shorter one is over before it could be overdue, and an
# acknowledgement per batch would cost the one-task round trip (W4) a message.
ACK_AFTER_S = 0.05
# A batch's bytes must reach its worker before it can start: its allowance grows by its
# size (and the size of the stored objects it reads, which the worker may fetch) at this
# pessimistic rate (a slow network link), so a 1 GiB argument is never taken for silence
# (measured: 512 MiB took 1-3 s over loopback on the 2-core machine).
TRANSFER_BYTES_PER_S = 20e6


def overdue_at(batch: Batch, last_sign: float, expected_s: float | None, floor_s: float) -> float:
    """When the running batch is overdue, its worker's last sign of life being at ``last_sign``
    (``floor_s``: the least allowance, liveness_s or more for a worker that never answered)."""
    allowance = max(floor_s, OVERDUE_FACTOR * (expected_s or 0.0))
    if batch.payload_bytes < 0:
        batch.payload_bytes = codec.frames_size(batch.payload)
    transfer_s = (batch.payload_bytes + _object_bytes(batch)) / TRANSFER_BYTES_PER_S
    return last_sign + allowance + transfer_s


def _object_bytes(batch: Batch) -> int:
    """Bytes of the stored objects the batch reads, which its worker may have to fetch first."""
    return sum({ref.key: ref.size for ref in batch.refs}.values()) if batch.refs else 0
