"""The embedded default: a node started as a child process of the client.

``fabric.connect()`` with no address runs the same node and worker code as a
``fabric-node`` daemon, on ipc sockets in a private directory (tcp on
loopback where ipc is unavailable).  The node watches its owner's pid and
exits with its workers when the owner dies, even by SIGKILL, so no process
outlives the client.  Workers see the client's ``sys.path``, so functions
from the caller's own modules import on them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import zmq

from ..errors import NoNodesError
from ..node import processes
from ..wire.security import ClusterKey

STOP_TIMEOUT_S = 5.0


class EmbeddedNode:
    """One local node process and its private socket directory."""

    def __init__(
        self, workers: int, prefetch: int, heartbeat_interval_s: float, liveness_s: float, memory_limit_mb: int = 0,
        key: ClusterKey | None = None,
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="fabric-")
        self.bind_where = f"ipc://{self.dir}" if zmq.has("ipc") else "127.0.0.1"
        requested = f"{self.bind_where}/node" if zmq.has("ipc") else "tcp://127.0.0.1:*"
        cmd = [sys.executable, "-m", "fabric.cli", "start", "--bind", requested, "--name", "embedded"]
        cmd += ["--workers", str(workers), "--prefetch", str(prefetch)]
        cmd += ["--heartbeat-interval", str(heartbeat_interval_s)]
        cmd += ["--liveness", str(liveness_s), "--memory-limit-mb", str(memory_limit_mb)]
        cmd += ["--owner-pid", str(os.getpid()), "--owner-dir", self.dir, "--announce"]
        cmd += ["--key-file", key.path] if key is not None else []
        self.process = subprocess.Popen(cmd, env=_child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        line = self.process.stdout.readline().decode().strip() if self.process.stdout else ""
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
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _child_env() -> dict[str, str]:
    """The client's environment with its sys.path, so workers import what it imports."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
