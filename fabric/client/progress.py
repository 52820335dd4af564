"""Progress bars: ``map(..., progress=True)``, ``map_reduce(..., progress=True)`` and
:func:`progress` over futures.

A bar is ``tqdm.auto``'s: a widget in Jupyter, text on stderr in a terminal.
``tqdm`` is an optional dependency (``pip install 'zmq-fabric[notebook]'``);
asking for a bar without it raises :class:`ImportError` at the call, saying so.

Bars move once per chunk, never per item, and only in the caller's thread::

    map:       MapStream.chunks ── bar.update(items in the chunk) ──► the caller's loop
    progress:  I/O thread: done callback appends to a list ─► caller's thread: len(list) every REFRESH_S

An update costs ~1 us and a chunk of an empty-task map (W1) holds up to
65,536 items, so the bar adds nothing measurable per item (benchmarks/RESULTS.md,
"Progress bars").  The I/O thread never touches a bar: a widget's update is
user-visible output, written by the thread that consumes the results.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["Bar", "new_bar", "progress"]

REFRESH_S = 0.1  # how often progress() redraws while futures finish: tqdm's own default mininterval
INSTALL_HINT = "pip install 'zmq-fabric[notebook]'"


class Bar(Protocol):
    """What a map stream needs of a bar (tqdm's interface)."""

    def update(self, n: int) -> Any: ...

    def close(self) -> None: ...


def new_bar(total: int | None, label: str | bool) -> Bar:
    """A ``tqdm.auto`` bar of ``total`` items (None: unknown, a counter) labelled
    ``label`` (``True``: no label); ImportError naming the extra without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(f"progress bars need tqdm: {INSTALL_HINT}") from exc
    return tqdm(total=total, desc=label if isinstance(label, str) else None, unit="task", dynamic_ncols=True)


def progress(
    futures: Iterable[concurrent.futures.Future], *, label: str | bool = True, timeout: float | None = None,
) -> list[concurrent.futures.Future]:
    """Wait for ``futures`` with a progress bar moving as they finish; return them, in order.

    ``results = [f.result() for f in fabric.progress(futures)]``.  ``label``
    names the bar; ``timeout`` (seconds) raises :class:`TimeoutError` when some
    are still pending then (the bar stays as it was).  Works with any
    :class:`concurrent.futures.Future`.  Needs ``tqdm``.
    """
    pending = list(futures)
    bar = new_bar(len(pending), label)
    finished: list[None] = []  # list.append is atomic: callbacks run on the I/O thread, or here if already done
    all_done = threading.Event()

    def count(_: concurrent.futures.Future) -> None:
        finished.append(None)
        if len(finished) >= len(pending):
            all_done.set()

    if not pending:
        all_done.set()
    for future in pending:
        future.add_done_callback(count)
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    try:
        while True:
            wait_s = REFRESH_S if deadline is None else max(0.0, min(REFRESH_S, deadline - time.monotonic()))
            complete = all_done.wait(wait_s)
            now = len(finished)
            bar.update(now - shown)
            shown = now
            if complete:
                return pending
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending) - now} of {len(pending)} futures not done after {timeout} s")
    finally:
        bar.close()
