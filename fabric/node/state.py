"""Node state: every decision of a node, with no socket, no process and no clock of its own.

The node loop (:mod:`fabric.node.loop`) receives and samples; this class
decides.  Each event comes in with the time, and each call returns the
instructions for the loop to perform, in order::

    ROUTER message (not the cache's) ─► on_message(sender, msg, now)  ─┐
    peer's HEARTBEAT on the SUB ──────► peer_heard(stats, now)          │
    peer's NODE_LEAVING (SUB, ROUTER) ► peer_left(node_id, now)         │
    a worker's exit (pidfd) ──────────► worker_exited(worker, status)   ├─► Send, Publish, Spawn, Kill,
    a spawn that failed (EMFILE...) ──► spawn_failed(): again next beat │   Terminate, Greet, Subscribe
    psutil per worker, when due ──────► check_workers(readings, now)    │
    psutil machine + store, when due ─► beat(load, cache, now)          │
    start / signal, STOP ─────────────► start(now) / stop(why), leaving()│
    RELOAD / SIGHUP (modules loaded) ─► reload(tasks): restart workers ─┘
    the store's backlog ──────────────► entries_to_flush(...) ─► how many cache entries to write now
                                        next_deadline(now, ...) ─► when to wake up at the latest

What the node refuses or drops (a HELLO beyond ``max_clients``, a malformed
message, a message whose handling raised) is counted in ``faults``, the first
of each kind logged.  Unit tests drive it with fake readings and a fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..calls.registry import TaskModules
from ..cluster.gossip import PUSH_PULL_S, Gossip, News
from ..cluster.membership import Membership
from ..cluster.stats import NodeStats, WorkerStats
from ..config import NodeSettings
from ..wire.message import Message
from ..wire.protocol import (
    Attach,
    BatchRunning,
    Detach,
    Goodbye,
    Heartbeat,
    Hello,
    NodeLeaving,
    PeerHello,
    RecycleWorker,
    Shutdown,
    Status,
    StatusReply,
    Stop,
    WorkerLost,
    WorkerReport,
    WorkerSilent,
    WorkerUp,
)
from .health import Kill, WorkerHealth, WorkerReading
from .objects import ObjectFigures
from .processes import Faults
from .store import StoreStats

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 0.2  # worker memory and SIGSTOP checks; a worker over its limit dies within this
STORE_FLUSH_BATCH = 500  # cache entries written to disk per idle moment (~2 ms: a lookup may wait that long)
STORE_IDLE_S = 0.02  # quiet time before writing: lookups in a busy map never wait behind writes
STORE_MAX_PENDING = 200_000  # past this many pending writes (or STORE_MAX_PENDING_BYTES), write even when busy
STORE_MAX_PENDING_BYTES = 64 << 20


@dataclass(frozen=True)
class Bound:
    """What only binding tells: this start's id and the endpoints clients and peers reach."""

    node_id: bytes
    control: str  # the ROUTER endpoint
    pub: str  # the PUB endpoint heartbeats go out on
    objects: str = ""  # the object ROUTER's endpoint (fabric.node.object_server)
    generation_ms: int = 0  # the start's wall-clock time in ms: the first version of its heartbeats


@dataclass(frozen=True)
class MachineLoad:
    """The node's machine as psutil saw it at a heartbeat."""

    cpu_percent: float
    memory_percent: float


# -- instructions for the loop ------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``msg`` to a worker, client or peer on the control ROUTER."""

    to: bytes
    msg: Message


@dataclass(frozen=True)
class Publish:
    """Publish on the PUB: the heartbeat, or that this node is leaving."""

    msg: Heartbeat | NodeLeaving


@dataclass(frozen=True)
class Spawn:
    """Start one worker process with this index on the node (under ``worker_id``:
    one restarted for a reload keeps its id, so its clients re-queue what it held
    uncharged when it re-attaches)."""

    index: int
    worker_id: bytes | None = None


@dataclass(frozen=True)
class Terminate:
    """SIGTERM a worker still starting: it would never hear SHUTDOWN."""

    worker_id: bytes


@dataclass(frozen=True)
class Greet:
    """Say PEER_HELLO to the node at ``control``, so that it subscribes to us too."""

    control: str


@dataclass(frozen=True)
class Subscribe:
    """Connect the SUB to a peer's heartbeats."""

    pub: str


@dataclass(frozen=True)
class Unsubscribe:
    """Disconnect the SUB from a peer's heartbeats (no longer watched)."""

    pub: str


Instruction = Send | Publish | Spawn | Kill | Terminate | Greet | Subscribe | Unsubscribe


@dataclass
class WorkerRecord:
    worker_id: bytes
    pid: int
    index: int = 0
    up: bool = False
    restarting: bool = False  # stopped for a reload: replaced under the same id, its clients not told it was lost
    clients: set[bytes] = field(default_factory=set)
    report: WorkerReport = WorkerReport(0, 0, 0.0, False)
    running: BatchRunning = BatchRunning(b"", 0)  # the acknowledged batch it runs, and whose


@dataclass
class ClientRecord:
    hello: Hello
    last_seen: float


class NodeState:
    """Workers, clients, peers, health, load and timers of one node."""

    def __init__(self, settings: NodeSettings, bound: Bound) -> None:
        self.settings = settings  # its name resolved (see fabric.node.loop.default_name)
        self.bound = bound
        self.workers: dict[bytes, WorkerRecord] = {}
        self.clients: dict[bytes, ClientRecord] = {}
        self.peers = Membership(settings.heartbeat_interval_s, settings.liveness_s)
        self.health = WorkerHealth(settings.memory_limit_mb, settings.liveness_s)
        self.gossip = Gossip(bound.control, bound.pub)
        self.watching: dict[str, str] = {}  # control -> pub of the peers whose heartbeats the SUB receives
        self.ids: dict[bytes, str] = {}  # a peer's node id -> its control endpoint (NODE_LEAVING names the id)
        self.beats = 0  # heartbeats published: with the start time, this node's version
        self.next_push_pull = 0.0
        self.load = MachineLoad(0.0, 0.0)
        self.accepting = True
        self.tasks_per_s = 0.0
        self.lost_done = 0  # tasks done by workers that have since exited
        self.lost_failed = 0
        self.cache = StoreStats(0, 0, 0, 0, 0)  # as of the last heartbeat
        self.objects = ObjectFigures(0, 0, 0, 0)  # the object store's, set by the loop before each heartbeat
        self.stopping = False
        self.stop_reason = ""  # what stopped the node (a signal's name, STOP), for the log
        self.spawns_owed: list[Spawn] = []  # spawns that failed (out of descriptors...), tried again at a beat
        self.tasks = TaskModules({}, ())  # what the task modules define, as last loaded
        self.faults = Faults(f"node {settings.name}", log)
        self.log_file = ""  # where the node and its workers write (the loop opens it)
        self.next_beat = self.next_health = 0.0
        self._rate_at = 0.0
        self._rate_done = 0
        self._last_busy = 0.0  # the last wake-up that found something to do

    # -- life cycle ------------------------------------------------------------------

    def start(self, now: float) -> list[Instruction]:
        """Spawn the workers and greet the seeds; a heartbeat and a health check are due at once."""
        self.next_beat = self.next_health = self._rate_at = now
        self.next_push_pull = now + PUSH_PULL_S
        spawns: list[Instruction] = [Spawn(index) for index in range(self.settings.workers)]
        return spawns + self._greet_seeds()

    def stop(self, reason: str) -> None:
        """Stop at the loop's next turn (safe in a signal handler: it only sets fields)."""
        self.stopping = True
        self.stop_reason = self.stop_reason or reason

    def leaving(self) -> list[Instruction]:
        """Graceful stop: peers and clients see the node leave at once (NODE_LEAVING
        on the PUB, and to each client on the control socket, which then re-queues
        what this node's workers hold), and the workers stop (those still starting
        by signal)."""
        self.stopping = True
        log.info("node %s stopping (%s)", self.settings.name, self.stop_reason or "asked to")
        leaving = NodeLeaving(self.bound.node_id)
        out: list[Instruction] = [Publish(leaving), *(Send(client_id, leaving) for client_id in self.clients)]
        for record in self.workers.values():
            out.append(Send(record.worker_id, Shutdown()) if record.up else Terminate(record.worker_id))
        return out

    def next_deadline(self, now: float, store_pending: int) -> float:
        """When the loop must wake up at the latest: the next heartbeat or health
        check, or soon when cache entries wait (quiet moments go to writing them)."""
        deadline = min(self.next_beat, self.next_health)
        return min(deadline, now + STORE_IDLE_S) if store_pending else deadline

    def entries_to_flush(self, pending: int, pending_bytes: int, quiet: bool, now: float) -> int:
        """How many cache entries to write to disk now (``quiet``: the last wait
        found nothing to do).  Writes wait until the node has been quiet for
        ``STORE_IDLE_S``, so lookups never queue behind them, unless too many pile up."""
        if not quiet:
            self._last_busy = now
        if not pending:
            return 0
        idle = quiet and now - self._last_busy >= STORE_IDLE_S
        backlog = pending > STORE_MAX_PENDING or pending_bytes > STORE_MAX_PENDING_BYTES
        return STORE_FLUSH_BATCH if idle or backlog else 0

    # -- messages --------------------------------------------------------------------

    def on_message(self, sender: bytes, msg: Message, now: float) -> list[Instruction]:
        """A message on the control ROUTER (the loop serves the cache's from its store)."""
        match msg:
            case WorkerReport():
                self.worker_report(sender, msg)
            case BatchRunning():
                self.batch_running(sender, msg)
            case WorkerUp():
                return self.worker_up(sender)
            case Hello():
                return self.client_hello(msg, now)
            case Goodbye():
                return self.client_goodbye(msg.client_id)
            case WorkerSilent():
                return self.worker_silent(sender, msg.worker_id)
            case NodeLeaving():  # a peer's word on our ROUTER: it may not be watched, or not yet heard
                return self.peer_left(msg.node_id, now)
            case RecycleWorker():
                return self.recycle_worker(sender, msg.worker_id)
            case PeerHello():
                return [*self.peer_hello(msg, now), Send(sender, self.heartbeat(now, full=True))]
            case Status():
                return [Send(sender, StatusReply([s.to_info() for s in self.status(now)]))]
            case Shutdown() if self.settings.owner_pid is not None:  # only an embedded node obeys
                self.stop("SHUTDOWN from its owner")
            case Stop():
                self.stop("STOP")
                return [Send(sender, NodeLeaving(self.bound.node_id))]  # the acknowledgement
            case _:
                log.warning("node %s: unexpected %s from %r", self.settings.name, type(msg).__name__, sender)
        return []

    # -- workers -------------------------------------------------------------------

    def worker_spawned(self, worker_id: bytes, pid: int, index: int = 0) -> None:
        self.workers[worker_id] = WorkerRecord(worker_id, pid, index)

    def worker_up(self, worker_id: bytes) -> list[Instruction]:
        record = self.workers.get(worker_id)
        if record is None or record.up:
            return []
        record.up = True
        return [self._attach(record, client.hello) for client in self.clients.values()]

    def worker_report(self, worker_id: bytes, report: WorkerReport) -> None:
        record = self.workers.get(worker_id)
        if record is not None:
            record.report = report

    def batch_running(self, worker_id: bytes, running: BatchRunning) -> None:
        """Listed in the heartbeat: a client exempts that batch from liveness only while it is."""
        record = self.workers.get(worker_id)
        if record is not None:
            record.running = running

    def worker_exited(self, worker_id: bytes, exitcode: int) -> list[Instruction]:
        """Tell the worker's clients which worker died and why; replace it unless stopping."""
        reason = self.health.exit_reason(worker_id, exitcode)
        record = self.workers.pop(worker_id, None)
        if record is None:
            return []
        if not self.stopping:
            log.log(logging.INFO if exitcode == 0 else logging.WARNING, "node %s: worker %s %s",
                    self.settings.name, worker_id.decode(), reason)
        self.lost_done += record.report.done
        self.lost_failed += record.report.failed
        if record.restarting and not self.stopping:  # its clients see it re-attach, and re-queue what it held
            return [Spawn(record.index, worker_id)]
        lost = WorkerLost(worker_id, exitcode, reason)
        out: list[Instruction] = [Send(client_id, lost) for client_id in record.clients if client_id in self.clients]
        return out if self.stopping else [*out, Spawn(record.index)]

    def reload(self, tasks: TaskModules) -> list[Instruction]:
        """The task modules were imported again: restart every worker between
        batches (a worker reads SHUTDOWN only between two batches) under its own
        id, so nothing in flight is lost or charged to its task."""
        self.tasks = tasks
        log.info("node %s: task modules reloaded (%s); restarting the workers", self.settings.name,
                 ", ".join(sorted(tasks.functions)) or "no tasks")
        out: list[Instruction] = []
        for record in self.workers.values():
            record.restarting = True
            out.append(Send(record.worker_id, Shutdown()) if record.up else Terminate(record.worker_id))
        return out

    def spawn_failed(self, exc: OSError, spawn: Spawn) -> None:
        """A worker could not be started (no descriptor or process left): try again
        at the next heartbeat rather than stop the node."""
        self.spawns_owed.append(spawn)
        self.faults.record("a worker could not be started (retried at the next heartbeat)", exc)

    def worker_silent(self, client_id: bytes, worker_id: bytes) -> list[Instruction]:
        """A client lost sight of one of our workers on its data plane and took its
        work back: attach the worker to it afresh (a new link, a new READY)."""
        record, client = self.workers.get(worker_id), self.clients.get(client_id)
        if record is None or client is None or not record.up or client_id not in record.clients:
            return []
        log.info("node %s: worker %s silent towards client %r; attached afresh", self.settings.name,
                 worker_id.decode(errors="replace"), client_id)
        return [self._attach(record, client.hello)]

    def recycle_worker(self, client_id: bytes, worker_id: bytes) -> list[Instruction]:
        """A client abandoned the work one of our workers runs for it (a
        KeyboardInterrupt): kill the worker, as ``task_timeout`` recycles one, and
        start another.  Only a client the worker serves may ask."""
        record = self.workers.get(worker_id)
        if record is None or client_id not in self.clients or client_id not in record.clients:
            return []
        reason = "was recycled: its client interrupted the call it was running"
        if not self.health.killing(worker_id, reason):
            return []
        return [Kill(worker_id, reason)]

    def health_due(self, now: float) -> bool:
        return now >= self.next_health

    def check_workers(self, readings: Mapping[bytes, WorkerReading], now: float) -> list[Kill]:
        """Workers over their memory limit, or stopped for longer than the liveness timeout, are killed."""
        self.next_health = now + HEALTH_CHECK_S
        return self.health.check(readings, now)

    def _attach(self, record: WorkerRecord, hello: Hello) -> Send:
        record.clients.add(hello.client_id)
        attach = Attach(
            hello.client_id, hello.ventilator, hello.sink, self.settings.prefetch, self.bound.node_id,
            hello.max_message_bytes, hello.forward_output,
        )
        return Send(record.worker_id, attach)

    # -- clients -------------------------------------------------------------------

    def client_hello(self, hello: Hello, now: float) -> list[Instruction]:
        """A new client gets this node's heartbeat and its workers; a known one
        is only marked alive (HELLO doubles as the client's heartbeat)."""
        known = self.clients.get(hello.client_id)
        if known is None and len(self.clients) >= self.settings.max_clients:
            self.faults.record("HELLO beyond max_clients refused",
                               f"{len(self.clients)} clients attached, max_clients = {self.settings.max_clients}")
            return []
        self.clients[hello.client_id] = ClientRecord(hello, now)
        # Every HELLO is answered with the heartbeat (the client's proof that this node lives),
        # never with the member list: a client asks one node for that (STATUS), not every node.
        out: list[Instruction] = [Send(hello.client_id, self.heartbeat(now))]
        if known is not None and known.hello == hello:
            return out
        out += [self._attach(record, hello) for record in self.workers.values() if record.up]
        return out

    def client_goodbye(self, client_id: bytes) -> list[Instruction]:
        if self.clients.pop(client_id, None) is None:
            return []
        out: list[Instruction] = []
        for record in self.workers.values():
            if client_id in record.clients:
                record.clients.discard(client_id)
                out.append(Send(record.worker_id, Detach(client_id)))
        return out

    def expire_clients(self, now: float) -> list[Instruction]:
        """Forget clients silent for longer than the liveness timeout."""
        dead = [cid for cid, c in self.clients.items() if now - c.last_seen > self.settings.liveness_s]
        return [instruction for client_id in dead for instruction in self.client_goodbye(client_id)]

    # -- heartbeats and peers ------------------------------------------------------------

    def beat_due(self, now: float) -> bool:
        return now >= self.next_beat

    def beat(self, load: MachineLoad, cache: StoreStats, now: float) -> list[Instruction]:
        """Each heartbeat interval: take the load readings (and pause above
        ``max_load``), forget silent clients and peers, greet again the peers
        not heard from, start the workers whose spawn failed, and publish the heartbeat.
        A beat gone late means this node was stalled (SIGSTOP, a starved machine):
        its peers' heartbeats and its clients' HELLOs went unread meanwhile, and
        that is no silence of theirs (a client forgotten would have its workers
        detached and attached again, for nothing)."""
        late_s = now - self.next_beat
        self.peers.excuse_stall(late_s)
        if self.peers.stalled(late_s):
            for client in self.clients.values():
                client.last_seen += late_s
        self.next_beat = now + self.settings.heartbeat_interval_s
        self.load, self.cache = load, cache
        done = self.stats().done
        if now > self._rate_at:
            self.tasks_per_s = (done - self._rate_done) / (now - self._rate_at)
        self._rate_at, self._rate_done = now, done
        # Below the limit to take work (0 drains a node); 100 % never pauses.
        self.accepting = self.settings.max_load >= 100 or load.cpu_percent < self.settings.max_load
        out = self.expire_clients(now)
        for lost in self.peers.expire(now):
            log.info("node %s: peer %s silent for %.1f s, declared dead", self.settings.name, lost.name, lost.age_s)
            self.gossip.declare_dead(lost.control, now)
        if self.gossip.purge(now):
            self.ids = {node_id: c for node_id, c in self.ids.items() if c in self.gossip.members}
        out += self._gossip_greetings(now)
        out += self.spawns_owed
        self.spawns_owed = []
        out += self._rewatch()
        self.beats += 1
        out.append(Publish(Heartbeat(self.bound.node_id, self.stats(news=self.gossip.outgoing()).to_info())))
        return out

    def _gossip_greetings(self, now: float) -> list[Instruction]:
        """Whom to say PEER_HELLO to at a beat: the seeds while no member is known;
        the watched peers when this node heard itself reported dead; one random
        member every ``PUSH_PULL_S`` (its answer lists every member it knows)."""
        alive = self.gossip.alive()
        if not alive:
            return self._greet_seeds()
        out: list[Instruction] = []
        if self.gossip.refuted:
            self.gossip.refuted = False
            out += [Greet(control) for control in self.watching]
        if now >= self.next_push_pull:
            self.next_push_pull = now + PUSH_PULL_S
            out.append(Greet(alive[(self.beats * 7919) % len(alive)][0]))  # a spread-out pick, reproducible
        return out

    def _greet_seeds(self) -> list[Instruction]:
        return [Greet(seed) for seed in self.settings.seeds if seed != self.bound.control]

    def peer_heard(self, stats: NodeStats, now: float) -> list[Instruction]:
        """A peer's heartbeat (on the SUB, or its answer to our PEER_HELLO): it is
        alive at its version; learn what it lists and relays, and watch anew."""
        if stats.node_id == self.bound.node_id:
            return []
        self.ids[stats.node_id] = stats.control
        self.gossip.heard(stats.control, stats.pub, stats.version, now)
        for control, pub in stats.peers:
            self.gossip.learn((control, pub, 0, True), now)  # a version below any report: fills gaps only
        for news in stats.news:
            self.gossip.learn(news, now)
        out = self._rewatch()
        if stats.control in self.watching:
            self.peers.observe(stats, now)
        return out

    def peer_hello(self, hello: PeerHello, now: float) -> list[Instruction]:
        """A peer greeted us (joining, or exchanging member lists): it is alive."""
        if hello.control == self.bound.control:
            return []
        self.ids[hello.node_id] = hello.control
        self.gossip.heard(hello.control, hello.pub, 0, now)
        return self._rewatch()

    def peer_left(self, node_id: bytes, now: float) -> list[Instruction]:
        """A peer said NODE_LEAVING (on the SUB if we watch it, on our ROUTER if it
        had greeted us): it is gone now, not after its silence is judged."""
        stats, control = self.peers.remove(node_id), self.ids.pop(node_id, None)
        if control is None or not self.gossip.declare_dead(control, now):
            return []
        log.info("node %s: peer %s left", self.settings.name, stats.name if stats else control.partition("://")[2])
        return self._rewatch()

    def _rewatch(self) -> list[Instruction]:
        """Subscribe to the peers to watch now, and from those no longer watched
        (their detectors dropped: not watching a node is no verdict on it)."""
        members = self.gossip.members
        wanted = {control: members[control].pub for control in self.gossip.watched()}
        out: list[Instruction] = []
        for control, pub in list(self.watching.items()):
            if wanted.get(control) != pub:
                del self.watching[control]
                out.append(Unsubscribe(pub))
                gone = [node_id for node_id, s in self.peers.nodes.items() if s.control == control]
                for node_id in gone:
                    self.peers.remove(node_id)
        for control, pub in wanted.items():
            if control not in self.watching:
                self.watching[control] = pub
                out.append(Subscribe(pub))
        return out

    def stats(self, full: bool = False, news: list[News] | None = None) -> NodeStats:
        """This node's heartbeat; ``full`` (a direct answer) lists every member known
        alive; ``news`` defaults to what is pending, not counted as sent."""
        s, bound = self.settings, self.bound
        reports = [(r, r.report) for r in self.workers.values()]
        return NodeStats(
            node_id=bound.node_id,
            name=s.name,
            control=bound.control,
            pub=bound.pub,
            workers=sum(1 for r in self.workers.values() if r.up),
            busy=sum(1 for _, rep in reports if rep.running),
            accepting=self.accepting,
            done=self.lost_done + sum(rep.done for _, rep in reports),
            failed=self.lost_failed + sum(rep.failed for _, rep in reports),
            tasks_per_s=self.tasks_per_s,
            cpu_percent=self.load.cpu_percent,
            memory_percent=self.load.memory_percent,
            max_load=s.max_load,
            clients=len(self.clients),
            cache_entries=self.cache.entries,
            cache_bytes=self.cache.bytes,
            cache_hits=self.cache.hits,
            cache_misses=self.cache.misses,
            cache_weight=max(1, s.cache.max_bytes >> 20) if self.cache.enabled else 0,  # 0: off the ring
            objects=bound.objects,
            store_objects=self.objects.objects,
            store_bytes=self.objects.memory_bytes,
            store_disk_bytes=self.objects.disk_bytes,
            store_named=self.objects.named,
            peers=tuple(self.gossip.alive()) if full else (),
            version=bound.generation_ms + self.beats,
            news=tuple(self.gossip.pending() if news is None else news),
            log_file=self.log_file,
            resources=dict(s.resources),
            tasks=tuple(sorted(self.tasks.functions)),
            task_modules=self.tasks.digests,
            indices={r.worker_id.decode(): r.index for r in self.workers.values()},
            per_worker=tuple(
                WorkerStats(r.worker_id.decode(), r.pid, rep.done, rep.failed, rep.busy_s, rep.running,
                            r.running.client_id, r.running.batch_id)
                for r, rep in reports
            ),
        )

    def heartbeat(self, now: float, full: bool = False) -> Heartbeat:
        return Heartbeat(self.bound.node_id, self.stats(full).to_info())

    def status(self, now: float) -> list[NodeStats]:
        """This node, the peers it watches (their latest heartbeats) and the other
        members it knows alive (their endpoints only: it hears them through news)."""
        watched = self.peers.snapshot(now)
        heard = {stats.control for stats in watched}
        others = [NodeStats(b"", control.partition("://")[2], control, pub)
                  for control, pub in self.gossip.alive() if control not in heard]
        return [self.stats(), *watched, *others]
