"""The embedded default: a node started as a child process of the client.

``fabric.connect()`` with no address runs the same node and worker code as a
``fabric-node`` daemon, on ipc sockets in a private directory (tcp on
loopback where ipc is unavailable)::

    connect(workers=...) ─► NodeSettings ─JSON on stdin─► python -m fabric.node ─► Node
    EmbeddedNode.endpoint ◄──── the bound control endpoint, one line on stdout ◄─┘

The node watches its owner's pid and exits with its workers when the owner
dies, even by SIGKILL, so no process outlives the client; it then removes
the private directory.  Workers see the client's ``sys.path``, so functions
from the caller's own modules import on them.

After the endpoint line the node points its descriptors at its log file, as
its workers' are: nothing is left to write into the pipe, which used to fill
(64 KiB of a task's unread ``print`` hung every worker).  What tasks print
comes back with their results instead (:mod:`fabric.node.output`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from typing import IO, cast

import zmq

from ..config import NodeSettings
from ..errors import NoNodesError
from ..node import processes

STOP_TIMEOUT_S = 5.0


class EmbeddedNode:
    """One local node process and its private socket directory."""

    def __init__(self, settings: NodeSettings) -> None:
        self.dir = tempfile.mkdtemp(prefix="fabric-")
        # mkdtemp's mode, made explicit: without a cluster key, whoever can open the ipc
        # sockets in here is trusted with everything (running code, writing the cache).
        os.chmod(self.dir, 0o700)
        self.bind_where = f"ipc://{self.dir}" if zmq.has("ipc") else "127.0.0.1"
        address = f"{self.bind_where}/node" if zmq.has("ipc") else "tcp://127.0.0.1:*"
        settings = replace(settings, name="embedded", address=address, owner_pid=os.getpid(), owner_dir=self.dir)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fabric.node"], env=_child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            with cast(IO[bytes], self.process.stdin) as stdin:  # a pipe, as asked
                stdin.write(settings.to_json().encode())
        except BrokenPipeError:  # it died first: said below
            pass
        with cast(IO[bytes], self.process.stdout) as stdout:
            line = stdout.readline().decode().strip()
        if not line:
            code = self.process.wait()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise NoNodesError(f"the embedded node failed to start (exit code {code}); see its messages above")
        self.endpoint = line

    def sentinel(self) -> int | None:
        """A descriptor readable when the node process exits (Linux pidfd)."""
        return processes.pidfd(self.process.pid)

    def stop(self) -> None:
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _child_env() -> dict[str, str]:
    """The client's environment with its sys.path, so workers import what it imports."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
