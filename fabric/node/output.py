"""What a task prints: captured on its worker per batch, sent back with the batch's results.

In a worker process, ``sys.stdout`` and ``sys.stderr`` are :class:`TaskStream`
proxies for good (so a ``logging.StreamHandler`` a task makes keeps writing
through them).  While a batch of a client that wants its output runs, they
append to that batch's :class:`OutputCapture`; otherwise they write to the
worker's own descriptors, which its node points at its log file::

    task: print / warnings / traceback.print_exc / logging ─► sys.stdout, sys.stderr (TaskStream)
        ─► OutputCapture (records [task index, stream, text], at most OUTPUT_MAX_CHARS per batch)
        ─► BATCH_OUTPUT on the sink, just before the batch's RESULT_BATCH, only when non-empty
    os.write(1, ...), C extensions, the interpreter's own messages ─► descriptors 1 and 2 ─► node log

The capture costs nothing per item: the proxies are put in place once per
batch, and a write learns which task of the batch is running from the length
of the result list the batch is filling (``list.extend`` over ``map`` appends
one result at a time, so while item ``i`` runs the list holds ``i``).  Output
of any size never blocks the worker: beyond ``OUTPUT_MAX_CHARS`` a batch's
output is dropped, and a note at its end says how much.
"""

from __future__ import annotations

import io
import sys
from typing import Any, TextIO

STDOUT = 1
STDERR = 2
# Characters a batch's output may hold; the rest is dropped and counted.  Enough for
# thousands of lines per batch, small against the results a batch may carry.
OUTPUT_MAX_CHARS = 1 << 20

Record = list[Any]  # [task index within the batch, STDOUT or STDERR, text]


class OutputCapture:
    """The output of the batch running now, if its client wants it."""

    def __init__(self, max_chars: int = OUTPUT_MAX_CHARS) -> None:
        self.max_chars = max_chars
        self.results: list[Any] | None = None  # the running batch's result list: its length is the task's index
        self.records: list[Record] = []
        self.size = 0
        self.dropped = 0
        self.dropped_at = 0  # the task that was writing when output began to be dropped
        self.stdout = TaskStream(self, STDOUT, sys.__stdout__)
        self.stderr = TaskStream(self, STDERR, sys.__stderr__)

    def install(self) -> None:
        """Make the proxies the process's streams (again, if a task replaced them)."""
        sys.stdout, sys.stderr = self.stdout, self.stderr

    def begin(self, results: list[Any]) -> None:
        """Capture from now on, attributing writes by the length of ``results``."""
        self.install()
        self.results = results

    def end(self) -> list[Record]:
        """Stop capturing; the batch's records, with consecutive writes of one
        task to one stream joined, and a note of what was dropped."""
        self.results = None
        records, dropped = self.records, self.dropped
        if not records and not dropped:  # the common case costs no allocation
            return records
        self.records, self.size, self.dropped = [], 0, 0
        joined = _joined(records)
        if dropped:
            note = (f"[fabric: {dropped:,} more characters of output dropped: a batch keeps at most "
                    f"{self.max_chars:,}]\n")
            joined.append([self.dropped_at, STDERR, note])
        return joined

    def write(self, stream: int, text: str) -> None:
        results = self.results
        task = len(results) if results is not None else 0
        room = self.max_chars - self.size
        if len(text) > room:
            if not self.dropped:
                self.dropped_at = task
            self.dropped += len(text) - max(room, 0)
            text = text[: max(room, 0)]
            if not text:
                return
        self.size += len(text)
        self.records.append([task, stream, text])


def _joined(records: list[Record]) -> list[Record]:
    """Consecutive records of one task and stream as one (``print`` writes the
    text and its newline apart)."""
    joined: list[Record] = []
    for task, stream, text in records:
        if joined and joined[-1][0] == task and joined[-1][1] == stream:
            joined[-1][2].append(text)
        else:
            joined.append([task, stream, [text]])
    for record in joined:
        record[2] = "".join(record[2])
    return joined


class TaskStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` of a worker: into the running batch's
    capture, or, between batches and for clients that do not forward output,
    to the worker's own stream (the node's log)."""

    def __init__(self, capture: OutputCapture, stream: int, own: TextIO | None) -> None:
        super().__init__()
        self._capture = capture
        self._stream = stream
        self._own = own

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The worker's own descriptor (the node's log), as Jupyter's streams give
        theirs: ``faulthandler`` and subprocesses write there, below Python."""
        if self._own is None:
            raise io.UnsupportedOperation("fileno")
        return self._own.fileno()

    def write(self, text: str) -> int:
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._capture.results is not None:
            self._capture.write(self._stream, text)
        elif self._own is not None:
            self._own.write(text)
        return len(text)

    def flush(self) -> None:
        if self._capture.results is None and self._own is not None:
            self._own.flush()
