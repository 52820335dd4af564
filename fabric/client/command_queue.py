"""How user threads hand work to the client's I/O thread: callables on a deque,
and a pipe the thread's poller watches, written to only while the thread sleeps.

ZeroMQ sockets are not thread-safe, so user threads never touch them: they post
a callable, which the I/O thread (:mod:`fabric.client.io_loop`) runs in posting
order.  One byte wakes the thread, and only when it is not already awake, so a
burst of submits costs one system call instead of one each.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable

Command = Callable[[], None]


class CommandQueue:
    """Callables posted by any thread, run in order by the I/O thread."""

    def __init__(self) -> None:
        self.wake_fd, self._wake_w = os.pipe()  # the read end is the poller's
        os.set_blocking(self.wake_fd, False)
        self._commands: deque[Command] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._awake = False

    def __len__(self) -> int:
        return len(self._commands)

    def post(self, command: Command) -> bool:
        """Run ``command`` in the I/O thread soon; False once the queue has closed."""
        with self._lock:
            if self._closed:
                return False
            self._commands.append(command)
            if not self._awake:
                self._awake = True
                os.write(self._wake_w, b"\0")
        return True

    def run(self, survive: Callable[[str, Command], None]) -> None:
        """(I/O thread, ``wake_fd`` readable) Run every command posted, each through ``survive``."""
        # One read empties the pipe: a byte is written only while the loop is not awake.
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_fd, 4096)
        # Cleared after emptying the pipe and before draining the deque: a command
        # posted before this line is drained below, one posted after writes anew.
        self._awake = False
        while self._commands:  # one handler call for all of them (one command per submit): one that raises
            survive("a command", self._drain)  # costs itself, and the rest run after it

    def _drain(self) -> None:
        commands = self._commands
        while commands:
            commands.popleft()()

    def close(self) -> None:
        """Refuse every later post (it returns False)."""
        with self._lock:
            self._closed = True

    def finish(self) -> None:
        """(I/O thread, once closed) Run what was posted before the close, then close the pipe."""
        self._drain()
        os.close(self.wake_fd)
        os.close(self._wake_w)
