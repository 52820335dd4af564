"""What tasks printed, shown in the caller by the thread that reads their results.

A worker captures its tasks' ``sys.stdout``/``sys.stderr`` per batch
(:mod:`fabric.node.output`) and sends it just before the batch's results.
The client's I/O thread keeps it with the batch it belongs to, and it reaches
the caller with the results::

    BATCH_OUTPUT ─► I/O thread: Printed(where, records) on the Batch ─► its owner
      map stream: written when its chunk is read, in input order of the tasks
      future:     written by the first result() or exception() on it

So in Jupyter it appears under the cell that iterates the map or asks for the
result, not under whichever cell runs when it arrives, and interleaved with
what the caller itself prints between results.  Each line is prefixed with
where the task ran, ``(node:wN)``, as Ray prefixes a worker's lines.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STDOUT = 1  # as fabric.node.output's; the protocol checks these two values


@dataclass(frozen=True, slots=True)
class Printed:
    """What the tasks of one batch printed: ``records`` are [task index within
    the batch, stream, text], in the order written; ``where`` the line prefix."""

    where: str
    records: list[list[Any]]

    def by_task(self) -> dict[int, Printed]:
        """What each task that printed printed, by its index within the batch."""
        grouped: dict[int, list[list[Any]]] = {}
        for record in self.records:
            grouped.setdefault(record[0], []).append(record)
        return {task: Printed(self.where, records) for task, records in grouped.items()}


def show(printed: Printed) -> None:
    """Write one batch's (or task's) output to this thread's streams."""
    write((printed.where, stream, text) for _, stream, text in printed.records)


def show_at(parts: Sequence[tuple[Sequence[int], Printed]]) -> None:
    """Write the output of a chunk's parts ((positions of each part's tasks, its
    output)) in the input order of the tasks that printed it."""
    entries = []
    for positions, printed in parts:
        last = len(positions) - 1
        for order, (task, stream, text) in enumerate(printed.records):
            entries.append((positions[min(task, last)], order, printed.where, stream, text))
    entries.sort(key=lambda entry: entry[:2])
    write((where, stream, text) for _, _, where, stream, text in entries)


def write(entries: Iterable[tuple[str, int, str]]) -> None:
    """``(where, stream, text)`` to ``sys.stdout`` or ``sys.stderr``, every line
    prefixed with ``where``; a last line without its newline gets one."""
    used = set()
    for where, stream, text in entries:
        out = sys.stdout if stream == STDOUT else sys.stderr
        if out is None:  # pythonw, or a daemon that closed its streams
            continue
        lines = text.splitlines(keepends=True)
        block = "".join(f"{where} {line}" for line in lines)
        with contextlib.suppress(OSError, ValueError):  # a closed stream must not cost the caller its results
            out.write(block if block.endswith("\n") else block + "\n")
            used.add(out)
    for out in used:
        with contextlib.suppress(OSError, ValueError):
            out.flush()
