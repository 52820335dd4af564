"""psutil readings for the node: the machine's CPU and memory, and each worker's state and RSS.

Runs in the node process.  The node loop samples when
:class:`~fabric.node.state.NodeState` says a heartbeat or a health check is
due and hands the readings to it; nothing here decides anything::

    psutil ─► Sampler.machine() ─► MachineLoad ─────────────► NodeState.beat
    psutil ─► Sampler.workers() ─► {worker: WorkerReading} ─► NodeState.check_workers
"""

from __future__ import annotations

import psutil

from .health import WorkerReading
from .state import MachineLoad


class Sampler:
    """The machine and the node's live worker processes, as psutil sees them."""

    def __init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only starts the measurement window
        self.processes: dict[bytes, psutil.Process] = {}

    def watch(self, worker_id: bytes, pid: int) -> None:
        self.processes[worker_id] = psutil.Process(pid)

    def forget(self, worker_id: bytes) -> None:
        self.processes.pop(worker_id, None)

    def machine(self) -> MachineLoad:
        """Whole-machine CPU % since the previous call, and memory % in use."""
        return MachineLoad(psutil.cpu_percent(None), psutil.virtual_memory().percent)

    def workers(self, rss: bool) -> dict[bytes, WorkerReading]:
        """Each worker's state, and its RSS if ``rss``; a worker exiting is left
        out (its exit sentinel reports it)."""
        readings = {}
        for worker_id, proc in self.processes.items():
            try:
                stopped = proc.status() == psutil.STATUS_STOPPED
                readings[worker_id] = WorkerReading(stopped, proc.memory_info().rss if rss else 0)
            except psutil.Error:
                continue
        return readings
