"""psutil readings for the node: the machine's CPU and memory, and each worker's state and RSS.

Runs in the node process.  The node loop samples when
:class:`~fabric.node.state.NodeState` says a heartbeat or a health check is
due and hands the readings to it; nothing here decides anything::

    psutil ─► Sampler.machine() ─► MachineLoad ─────────────► NodeState.beat
    psutil ─► Sampler.workers() ─► {worker: WorkerReading} ─► NodeState.check_workers

psutil reads ``/proc``, so each reading opens a file: when the process is out
of descriptors (EMFILE) a reading is skipped (the last one stands) and counted,
never raised into the loop.
"""

from __future__ import annotations

import psutil

from .health import WorkerReading
from .processes import Faults
from .state import MachineLoad

UNREADABLE = "a psutil reading failed (skipped)"


class Sampler:
    """The machine and the node's live worker processes, as psutil sees them."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.last = MachineLoad(0.0, 0.0)
        try:
            psutil.cpu_percent(None)  # the first call only starts the measurement window
        except OSError as exc:
            faults.record(UNREADABLE, exc)
        self.pids: dict[bytes, int] = {}
        self.processes: dict[bytes, psutil.Process] = {}  # made at the first reading that can open /proc

    def watch(self, worker_id: bytes, pid: int) -> None:
        """Sample this worker from now on (a child: its pid is not reused before the node reaps it)."""
        self.pids[worker_id] = pid

    def forget(self, worker_id: bytes) -> None:
        self.pids.pop(worker_id, None)
        self.processes.pop(worker_id, None)

    def machine(self) -> MachineLoad:
        """Whole-machine CPU % since the previous call, and memory % in use (the
        last reading if this one fails)."""
        try:
            self.last = MachineLoad(psutil.cpu_percent(None), psutil.virtual_memory().percent)
        except OSError as exc:
            self.faults.record(UNREADABLE, exc)
        return self.last

    def workers(self, rss: bool) -> dict[bytes, WorkerReading]:
        """Each worker's state, and its RSS if ``rss``; a worker exiting, or one
        that cannot be read now, is left out (its exit sentinel reports an exit)."""
        readings = {}
        for worker_id, pid in self.pids.items():
            try:
                proc = self.processes.get(worker_id) or self.processes.setdefault(worker_id, psutil.Process(pid))
                stopped = proc.status() == psutil.STATUS_STOPPED
                readings[worker_id] = WorkerReading(stopped, proc.memory_info().rss if rss else 0)
            except psutil.Error:
                continue
            except OSError as exc:
                self.faults.record(UNREADABLE, exc)
        return readings
