"""Node state: every decision of a node, with no socket and no clock of its own.

The node loop (:mod:`fabric.node.loop`) feeds it events — a worker came up, reported
or exited; a client said hello (its heartbeat) or goodbye; a peer's heartbeat
arrived; time passed — and sends the (destination, message) pairs it returns.
Unit tests drive it with a fake clock.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from ..cluster.membership import Membership
from ..cluster.stats import NodeStats, WorkerStats
from ..wire.protocol import Attach, Detach, Heartbeat, Hello, Message, NodeLeaving, WorkerLost, WorkerReport
from .load import LoadMonitor
from .store import StoreStats

Outbox = list[tuple[bytes, Message]]  # (routing id on the control ROUTER, message)


@dataclass(frozen=True)
class NodeSettings:
    node_id: bytes
    name: str
    control: str  # the ROUTER endpoint clients and peers reach
    pub: str  # the PUB endpoint heartbeats go out on
    credits: int  # batches each worker may hold
    max_load: float  # whole-machine CPU % above which no new batches are taken
    liveness_s: float  # silence after which a client or peer is declared dead
    cache_weight: int = 0  # MiB of result-cache shard; 0: this node holds no cache


@dataclass
class WorkerRecord:
    worker_id: bytes
    pid: int
    up: bool = False
    clients: set[bytes] = field(default_factory=set)
    report: WorkerReport = WorkerReport(0, 0, 0.0, False)


@dataclass
class ClientRecord:
    hello: Hello
    last_seen: float


class NodeState:
    """Workers, clients and peers of one node."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.workers: dict[bytes, WorkerRecord] = {}
        self.clients: dict[bytes, ClientRecord] = {}
        self.peers = Membership(settings.liveness_s)
        self.load = LoadMonitor()
        self.accepting = True
        self.lost_done = 0  # tasks done by workers that have since exited
        self.lost_failed = 0
        self.cache = StoreStats(0, 0, 0, 0, 0)  # refreshed by the loop at each heartbeat

    # -- workers -------------------------------------------------------------------

    def worker_spawned(self, worker_id: bytes, pid: int) -> None:
        self.workers[worker_id] = WorkerRecord(worker_id, pid)

    def worker_up(self, worker_id: bytes) -> Outbox:
        record = self.workers.get(worker_id)
        if record is None or record.up:
            return []
        record.up = True
        return [self._attach(record, client.hello) for client in self.clients.values()]

    def worker_report(self, worker_id: bytes, report: WorkerReport) -> None:
        record = self.workers.get(worker_id)
        if record is not None:
            record.report = report

    def worker_exited(self, worker_id: bytes, exitcode: int, reason: str = "") -> Outbox:
        record = self.workers.pop(worker_id, None)
        if record is None:
            return []
        self.lost_done += record.report.done
        self.lost_failed += record.report.failed
        lost = WorkerLost(worker_id, exitcode, reason or describe_exit(exitcode))
        return [(client_id, lost) for client_id in record.clients if client_id in self.clients]

    def _attach(self, record: WorkerRecord, hello: Hello) -> tuple[bytes, Message]:
        record.clients.add(hello.client_id)
        settings = self.settings
        attach = Attach(
            hello.client_id, hello.ventilator, hello.sink, settings.credits, settings.node_id, hello.max_message_bytes
        )
        return record.worker_id, attach

    # -- clients -------------------------------------------------------------------

    def client_hello(self, hello: Hello, now: float) -> Outbox:
        """A new client gets this node's heartbeat and its workers; a known one
        is only marked alive (HELLO doubles as the client's heartbeat)."""
        known = self.clients.get(hello.client_id)
        self.clients[hello.client_id] = ClientRecord(hello, now)
        if known is not None and known.hello == hello:
            return []
        out: Outbox = [(hello.client_id, self.heartbeat(now))]
        out += [self._attach(record, hello) for record in self.workers.values() if record.up]
        return out

    def client_goodbye(self, client_id: bytes) -> Outbox:
        if self.clients.pop(client_id, None) is None:
            return []
        out: Outbox = []
        for record in self.workers.values():
            if client_id in record.clients:
                record.clients.discard(client_id)
                out.append((record.worker_id, Detach(client_id)))
        return out

    def expire_clients(self, now: float) -> Outbox:
        """Forget clients silent for longer than the liveness timeout."""
        dead = [cid for cid, c in self.clients.items() if now - c.last_seen > self.settings.liveness_s]
        return [msg for client_id in dead for msg in self.client_goodbye(client_id)]

    def leaving(self) -> Outbox:
        """Graceful stop: every client re-queues what this node's workers hold."""
        return [(client_id, NodeLeaving(self.settings.node_id)) for client_id in self.clients]

    # -- heartbeats ------------------------------------------------------------------

    def sample_load(self, now: float) -> None:
        self.load.sample(self.stats().done, now)
        # Below the limit to take work (0 drains a node); 100 % never pauses.
        self.accepting = self.settings.max_load >= 100 or self.load.cpu_percent < self.settings.max_load

    def stats(self) -> NodeStats:
        s = self.settings
        reports = [(r, r.report) for r in self.workers.values()]
        return NodeStats(
            node_id=s.node_id,
            name=s.name,
            control=s.control,
            pub=s.pub,
            workers=sum(1 for r in self.workers.values() if r.up),
            busy=sum(1 for _, rep in reports if rep.running),
            accepting=self.accepting,
            done=self.lost_done + sum(rep.done for _, rep in reports),
            failed=self.lost_failed + sum(rep.failed for _, rep in reports),
            tasks_per_s=self.load.tasks_per_s,
            cpu_percent=self.load.cpu_percent,
            memory_percent=self.load.memory_percent,
            max_load=s.max_load,
            clients=len(self.clients),
            cache_entries=self.cache.entries,
            cache_bytes=self.cache.bytes,
            cache_hits=self.cache.hits,
            cache_misses=self.cache.misses,
            cache_weight=s.cache_weight,
            peers=tuple((p.control, p.pub) for p in self.peers.nodes.values()),
            per_worker=tuple(
                WorkerStats(r.worker_id.decode(), r.pid, rep.done, rep.failed, rep.busy_s, rep.running)
                for r, rep in reports
            ),
        )

    def heartbeat(self, now: float) -> Heartbeat:
        return Heartbeat(self.settings.node_id, self.stats().to_info())

    def peer_heard(self, stats: NodeStats, now: float) -> list[tuple[str, str]]:
        """Record a peer's heartbeat; return (control, pub) of nodes not known
        yet, the peer itself or any it names, for the loop to subscribe to."""
        if stats.node_id == self.settings.node_id:
            return []
        is_new = self.peers.observe(stats, now)
        known = {(p.control, p.pub) for p in self.peers.nodes.values()} | {(self.settings.control, self.settings.pub)}
        found = [(stats.control, stats.pub)] if is_new else []
        found += [pair for pair in stats.peers if pair not in known]
        return found

    def status(self, now: float) -> list[NodeStats]:
        return [self.stats(), *self.peers.snapshot(now)]


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
