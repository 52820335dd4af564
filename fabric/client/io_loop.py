"""The client's I/O thread: the only code in the client that touches a socket.

::

    user threads ── post(callable) ──► CommandQueue + wake pipe ──┐
                                                                  ▼
    ventilator ROUTER (bound) ◄── READY ──────── workers     ┌──────────┐
                              ─── TASK_BATCH ──► workers  ◄──┤ IOLoop   │ one zmq.Poller over
    sink ROUTER (bound)       ◄── RESULT_BATCH ─ workers     │ (thread) │ all of these, the wake
                              ◄── BATCH_STARTED ─ workers    │          │
                              ◄── BATCH_OUTPUT ── workers    │          │
    control DEALER per node   ─── HELLO (every interval) ►   │          │ pipe and the embedded
    (NodeLinks)               ◄── HEARTBEAT (the answer)/    │          │ node's exit sentinel;
                                  WORKER_LOST/NODE_LEAVING   │          │ timeout: the cluster
                                  ─── node                   └──────────┘ view's next deadline

ZeroMQ sockets are not thread-safe, so user threads never touch them: they
post a callable (:mod:`fabric.client.command_queue`).  The sockets are made in
:mod:`fabric.client.sockets`, the control DEALERs kept in
:class:`~fabric.client.node_links.NodeLinks`.  Decisions live elsewhere, in
classes without sockets: which batch goes to which worker in
:class:`~fabric.client.ventilator.Ventilator`, which also says which workers
went silent holding work; whom to greet, which nodes are lost, paused or
back, when queued work has starved, and when first contact failed, in
:class:`~fabric.client.cluster_view.ClusterView`; cache requests in
:class:`~fabric.client.cache.CacheClient`; what the sink receives goes to each
batch's owner (a map stream or a group of futures) through
:class:`~fabric.client.sink.Sink`.  This loop receives, asks them and
performs what they return.
A KeyboardInterrupt in a caller (:meth:`IOLoop.interrupted`) drops the work
nobody waits for any more and has the workers running it recycled.
Each handler runs guarded (``_survive``): an exception costs only the message
or command it came from.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from ..cluster.stats import MAX_PEERS, NodeStats
from ..errors import ClosedError, NoNodesError, ProtocolError
from ..wire.message import Message
from ..wire.protocol import (
    CacheCleared,
    CacheHits,
    CacheStored,
    Hello,
    NodeLeaving,
    Ready,
    RecycleWorker,
    StatusReply,
    WorkerLost,
    WorkerSilent,
    from_frames,
    recv_frames,
    send_frames,
)
from ..wire.security import ClusterKey
from .batch import Batch
from .cache import CacheClient
from .cluster_view import FIRST_CONTACT_S, Actions, ClusterView
from .command_queue import Command, CommandQueue
from .futures import on_interrupt
from .node_links import NodeLinks
from .objects import ObjectTable
from .placing import known_tasks
from .sink import Sink
from .sockets import HEADER_SLACK_BYTES, READY_MAX_BYTES, bind, data_router, max_sockets, max_workers, raise_fd_limit
from .statistics import CacheStats, FabricStatistics
from .ventilator import Ventilator

log = logging.getLogger(__name__)

EXTRA_STARTED_CALLS = 1  # as concurrent.futures.process.EXTRA_QUEUED_CALLS
TICK_S = 0.01  # timeouts and heartbeats are checked at most this often while messages flow
# libzmq names a connection whose identity a newer one took over (ROUTER_HANDOVER: a worker
# that re-attached) 0x00 + four bytes; a READY still unread on it would register a phantom
# worker under that name.  Workers' own identities are text (w-...), never starting so.
HANDED_OVER = b"\x00"
DRAIN_MAX = 10_000  # sink messages read before deciding that a worker is silent (each is a sign of life)


class IOLoop:
    """Owns the client's sockets; runs in one daemon thread."""

    def __init__(
        self, context: zmq.Context, client_id: bytes, bind_where: str, *, retries: int,
        heartbeat_interval_s: float, liveness_s: float, connect_timeout_s: float = 30.0,
        max_message_bytes: int = 1 << 30, cache_replicas: int = 1, key: ClusterKey | None = None,
        first_contact_s: float = FIRST_CONTACT_S, forward_output: bool = True, locality_wait_s: float = 0.05,
    ) -> None:
        self.client_id = client_id
        self.commands = CommandQueue()
        # Any thread: run a command in the I/O thread soon (False once closed); the queue's
        # own method, so a submit pays no call of ours on its way.
        self.post: Callable[[Command], bool] = self.commands.post
        raise_fd_limit()
        self.ventilator = Ventilator(retries, liveness_s, max_workers(), locality_wait_s)
        context.set(zmq.MAX_SOCKETS, max_sockets(context))
        self.vent = data_router(context, key, READY_MAX_BYTES)
        self.sink = data_router(context, key, max_message_bytes + HEADER_SLACK_BYTES)
        self.vent_endpoint = bind(self.vent, bind_where, "ventilator")
        self.sink_endpoint = bind(self.sink, bind_where, "sink")
        self.poller = zmq.Poller()
        self.links = NodeLinks(context, key, self.poller, Hello(
            client_id, self.vent_endpoint, self.sink_endpoint, max_message_bytes, forward_output))
        handshakes = self.links.handshakes
        self.view = ClusterView(
            heartbeat_interval_s, liveness_s, connect_timeout_s, handshakes.describe, lambda: handshakes.refusals,
            first_contact_s, client_id,
        )
        self.ventilator.placer.nodes = self.view.membership.nodes  # placement reads the live nodes' heartbeats
        self.ventilator.placer.timeout_s = connect_timeout_s
        self.cache = CacheClient(self.post, self.send_to_node, cache_replicas, connect_timeout_s, key)
        self.objects = ObjectTable(client_id, self.send_to_node)
        self.ventilator.read_on = self.objects.copied_to
        self.outcomes = Sink(self.ventilator, self.view.live_nodes, forward_output)  # what self.sink receives
        self.embedded: dict[int, str] = {}  # exit sentinel -> control endpoint of an embedded node
        for sock in (self.vent, self.sink):
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.commands.wake_fd, zmq.POLLIN)
        self._idle_waiters: list[threading.Event] = []
        self.heard = threading.Event()  # set at the first heartbeat of any node: tasks() need not wait then
        self._waiters: list[tuple[Callable[[], bool], threading.Event]] = []  # for connect(), fx.run: workers, contact
        self.broken: BaseException | None = None
        self.duplicates = 0
        self.malformed = 0
        self.handler_errors: dict[str, int] = {}  # what was being handled -> exceptions it raised
        self._running = True
        self._deadline = self.view.next_deadline()  # of the next tick, unless the loop is busy
        self._last_tick = -TICK_S
        self._data_plane = frozenset({self.commands.wake_fd, self.vent, self.sink})
        self.thread = threading.Thread(target=self._run, name="fabric-io", daemon=True)

    # -- called from user threads ---------------------------------------------------

    def start(self) -> None:
        on_interrupt(self)
        self.thread.start()

    def post_batch(self, batch: Batch) -> None:
        if not self.post(lambda: self._enqueue(batch)):
            batch.owner.fail(batch, self.broken or ClosedError("the fabric was shut down"))

    def capacity(self) -> int:
        """Credits of all known workers (a racy read is fine for sizing windows)."""
        return self.ventilator.total_credits

    def workers(self) -> int:
        """Workers attached to this client or, before the first attaches, those the nodes report."""
        return self.ventilator.workers or self.view.reported_workers()

    def statistics(self) -> FabricStatistics:
        """A snapshot for ``fx.statistics()`` (racy reads of counters are fine)."""
        nodes = self.view.nodes(time.monotonic())
        return FabricStatistics(
            tuple(nodes), self.workers(), CacheStats.of(nodes, self.cache.hits, self.cache.misses),
            self.duplicates, self.malformed, self.ventilator.refused_workers, self.objects.recomputed,
        )

    def wait_workers(self, count: int, timeout_s: float | None) -> bool:
        """Block until ``count`` workers have attached (or no node answered first
        contact, or the loop broke or closed)."""
        return self._wait_until(lambda: self.ventilator.workers >= count or self.view.unreachable is not None,
                                timeout_s)

    def wait_all_attached(self, timeout_s: float) -> bool:
        """Block until every worker the live nodes report has attached (at least one)."""
        def all_attached() -> bool:
            attached = self.ventilator.workers
            return attached > 0 and attached >= self.view.reported_workers()

        return self._wait_until(all_attached, timeout_s)

    def tasks(self) -> dict[str, list[str]]:
        """The tasks the live nodes define: name -> the nodes defining it.  Waits
        for the first node to answer (first contact's timeout at most)."""
        self.heard.wait(self.view.first_contact_s)
        return known_tasks(self.view.nodes(time.monotonic()))

    def wait_contact(self, timeout_s: float) -> bool:
        """Block until some node has reported its workers and they have attached (so
        ``workers()`` is neither a bare 0 nor a part of them: a heartbeat reporting
        two workers could be read between their two READYs), or first contact failed."""
        def contact() -> bool:
            reported = self.view.reported_workers()
            return self.view.unreachable is not None or (reported > 0 and self.ventilator.workers >= reported)

        return self._wait_until(contact, timeout_s)

    def _wait_until(self, ready: Callable[[], bool], timeout_s: float | None) -> bool:
        """Block until ``ready()`` holds in the I/O thread (or the loop broke or closed)."""
        event = threading.Event()
        if not self.post(lambda: self._waiters.append((ready, event))):
            return False
        return event.wait(timeout_s)

    def interrupted(self) -> None:
        """A caller was interrupted (ctrl-C): drop the work nobody waits for any
        more and recycle the workers running it (from any thread)."""
        self.post(self._drop_abandoned)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is queued or in flight."""
        event = threading.Event()
        if not self.post(lambda: self._idle_waiters.append(event)):
            return True
        return event.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.post(self._request_stop)
        self.thread.join(timeout_s)

    # -- nodes ------------------------------------------------------------------------

    def add_node(self, control: str, exit_sentinel: int | None = None) -> None:
        """Connect to a node's control ROUTER and say HELLO (before ``start``)."""
        self._perform(self.view.seed(control))
        if exit_sentinel is not None:
            self.embedded[exit_sentinel] = control
            self.poller.register(exit_sentinel, zmq.POLLIN)

    def send_to_node(self, node_id: bytes, msg: Message) -> bool:
        """Send on a live node's control socket (I/O thread); False if unknown."""
        control = self.view.control_of(node_id)
        return control is not None and self.links.send(control, msg)

    def _perform(self, actions: Actions) -> None:
        """Carry out what the cluster view decided, in the order of its fields."""
        for control in actions.greet:
            self.links.greet(control)
        for control in actions.survey:
            self.links.survey(control)
        for control in actions.rejoin:
            log.info("client: node at %s is back; its workers re-attach", control)
            self.links.rejoin(control)
        if actions.members_changed:
            self.cache.nodes_changed(self.view.live_nodes())
        for node_id, reason in actions.lost:
            log.warning("client: %s; its batches go to other workers", reason)
            self.cache.node_lost(node_id)
            self.ventilator.node_lost(node_id)
        for node_id in actions.pause:
            self.ventilator.pause(node_id)
        for node_id in actions.resume:
            self.ventilator.resume(node_id)
        for failed in (actions.starved, actions.unreachable):
            if failed is not None:
                log.warning("client: %s", failed)
                self._fail((batch, failed) for batch in self.ventilator.drop_pending())

    @staticmethod
    def _fail(failures: Iterable[tuple[Batch, BaseException]]) -> None:
        for batch, exc in failures:
            batch.owner.fail(batch, exc)

    def _tick(self, now: float) -> None:
        """Time-driven decisions (HELLO to every node, expiry, starvation) and
        stale cache requests.  Runs at the next deadline, and at most every
        ``TICK_S`` while the loop is busy: timeouts are late by at most that,
        and the data plane does not pay for them on every message."""
        self._last_tick = now
        self._deadline = now + TICK_S  # kept if a decision below raises: retried soon, not in a busy loop
        # The poll's events may predate a stall of this thread (the GIL held for seconds
        # by a caller pickling a large argument, or by decoding a large result): read what
        # arrived meanwhile before declaring a node dead or a worker silent.
        if self.view.expiring(now):
            for sock in list(self.links.controls.values()):
                self._on_control(sock, now)
        self._perform(self.view.tick(now, self.ventilator.workers, self.ventilator.has_pending))
        self.cache.expire(now)
        self.objects.flush()
        silent, next_check = self.ventilator.silent_workers(self.view.vouched_at)
        if silent:
            self._drain_sink()
            silent, next_check = self.ventilator.silent_workers(self.view.vouched_at)
        for worker_id in silent:
            self._take_back(worker_id)
        self._deadline = min(self.view.next_deadline(), next_check, self.ventilator.parked_deadline())

    def _drain_sink(self) -> None:
        """Read the results already waiting (each a sign of life, or a batch done)
        before deciding that a worker went silent or what its death interrupted."""
        for _ in range(DRAIN_MAX):
            if not self.sink.poll(0):
                break
            self._survive("a sink message", self._on_results)

    def _take_back(self, worker_id: bytes) -> None:
        """Re-queue what a silent worker held and ask its node to attach it afresh."""
        node_id = self.ventilator.node_of.get(worker_id)
        log.warning("client: worker %s went silent holding work; its batches go to other workers",
                    worker_id.decode(errors="replace"))
        self.ventilator.take_back(worker_id)
        if node_id is not None:
            self.send_to_node(node_id, WorkerSilent(worker_id))

    # -- loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._running:
                timeout_ms = int(max(0.0, self._deadline - time.monotonic()) * 1000) + 1
                events = dict(self.poller.poll(timeout_ms))
                now = self.ventilator.now = time.monotonic()
                if self.commands.wake_fd in events:
                    self.commands.run(self._survive)
                # Control before data: READY (a worker's credits, at most 1 KiB) and the nodes'
                # heartbeats and messages are read before the results, so a flood of results
                # never delays a node's word; READY first, so a worker that attached is counted
                # by the time its node's heartbeat (which reports it) releases a waiting caller.
                if self.vent in events:
                    self._survive("a ventilator message", self._on_ready)
                if events.keys() - self._data_plane:
                    self._survive("a control-plane event", self._on_other_events, events, now)
                if self.sink in events:
                    self._survive("a sink message", self._on_results)
                if now >= self._deadline or now >= self._last_tick + TICK_S:
                    self._survive("the timers", self._tick, now)
                if self.ventilator.queued():
                    self._survive("a dispatch", self._dispatch)
                if self._idle_waiters:
                    self._notify_idle()
                if self._waiters:
                    self._notify_waiters()
        except Exception:
            log.exception("client I/O loop failed")
            self._break(NoNodesError("the client's I/O thread failed; see the log"))
        finally:
            self._close()

    def _survive(self, what: str, handler: Callable[..., None], *args: Any) -> None:
        """Run one handler; an exception costs only what it was handling.  One
        bad message (or a bug it reaches) must not break every call of the client:
        the first failure of each kind is logged with its traceback, later ones
        only counted (``handler_errors``)."""
        try:
            handler(*args)
        except Exception:
            count = self.handler_errors[what] = self.handler_errors.get(what, 0) + 1
            if count == 1:
                log.exception("client: handling %s failed; the I/O thread keeps running", what)
            else:
                log.debug("client: handling %s failed (%d times so far)", what, count)

    def _on_other_events(self, events: dict[Any, int], now: float) -> None:
        """The control plane: nodes' messages and heartbeats, handshakes, an embedded node's exit."""
        for sock in list(self.links.controls.values()):
            if sock in events:
                self._on_control(sock, now)
        self.links.handshakes.on_poll(events)
        self._perform(Actions(unreachable=self.view.check_contact(now)))
        for fd, control in list(self.embedded.items()):
            if fd in events:
                self._embedded_exited(fd, control)

    def _enqueue(self, batch: Batch) -> None:
        failed = self.broken or self.view.unreachable
        if failed is not None:
            batch.owner.fail(batch, failed)
        else:
            self.ventilator.enqueue(batch)

    def _on_ready(self) -> None:
        received = self._receive(self.vent)
        if received is not None and received[0][:1] == HANDED_OVER:
            self.duplicates += 1  # a re-attached worker's old connection: its new one carries its READY
            return
        if received is not None and isinstance(received[1], Ready):
            worker_id, msg = received
            if not self.ventilator.worker_ready(worker_id, msg.credits, msg.node_id) and \
                    self.ventilator.refused_workers == 1:
                log.warning("client: refused worker %r of node %r: %d workers attached, the most this client's "
                            "open-file limit serves (logged once; later ones are counted in statistics())",
                            worker_id[:40], msg.node_id[:40], self.ventilator.max_workers)

    def _on_results(self) -> None:
        received = self._receive(self.sink)
        if received is not None and not self.outcomes.deliver(*received):
            self.duplicates += 1

    def _receive(self, sock: zmq.Socket) -> tuple[bytes, Any] | None:
        """One message from a ROUTER the poller found readable, parsed, or None if
        it was malformed (and dropped).  One message per wake-up: the poll is
        level-triggered, so the next returns at once while more wait, and a lone
        message costs no further system call to learn that nothing follows."""
        try:
            sender, *frames = recv_frames(sock)
        except zmq.Again:
            return None
        try:
            return sender.bytes, from_frames(frames)
        except ProtocolError as exc:
            self._malformed(exc)
            return None

    def _malformed(self, exc: ProtocolError) -> None:
        self.malformed += 1
        log.warning("client: dropped malformed message: %s", exc)

    def _on_control(self, sock: zmq.Socket, now: float) -> None:
        """Messages from nodes on a control DEALER: heartbeats (answers to HELLO) and the rest."""
        for msg, stats in self.links.messages(sock, self._malformed):
            self._survive(type(msg).__name__, self._on_node_message, msg, stats, now)

    def _on_node_message(self, msg: Message, stats: NodeStats | None, now: float) -> None:
        """One parsed message from a node (``stats``: a heartbeat's, parsed)."""
        if stats is not None:
            self.heard.set()
            # Stamped when read, not with the loop's ``now``: a stall of this thread (another
            # holding the GIL) may fall between the two, and heartbeats that arrived during it
            # would be dated before it, so the node would look silent for the stall's length.
            self._perform(self.view.heartbeat(stats, max(now, time.monotonic())))
        if isinstance(msg, WorkerLost):
            # A result sent before the death may still wait in the sink: read it first, so the
            # batch that finished is not taken for the one that killed the worker and charged.
            self._drain_sink()
            log.info("client: worker %s %s", msg.worker_id.decode(errors="replace"), msg.reason)
            self.outcomes.worker_lost(msg.worker_id)
            self._fail(self.ventilator.worker_lost(msg.worker_id, msg.reason))
        elif isinstance(msg, CacheHits):
            self.cache.on_hits(msg)
        elif isinstance(msg, CacheCleared):
            self.cache.on_cleared(msg)
        elif isinstance(msg, CacheStored):
            self.cache.on_stored(msg)
        elif isinstance(msg, NodeLeaving):
            self._perform(self.view.node_left(msg.node_id))
        elif isinstance(msg, StatusReply):
            try:
                listed = [NodeStats.from_info(info) for info in msg.nodes[:MAX_PEERS + 1]]
            except ProtocolError as exc:
                self._malformed(exc)
                return
            self._perform(self.view.members_listed(listed))

    def _dispatch(self) -> None:
        for worker_id, batch, frames in self.ventilator.dispatch():
            try:
                send_frames(self.vent, [worker_id, *frames], copy=False)
            except zmq.ZMQError as exc:  # the worker vanished (ROUTER_MANDATORY)
                log.info("client: worker %r unreachable: %s", worker_id, exc)
                self.ventilator.unreachable(worker_id, batch.batch_id)
        if self.ventilator.failures:
            failures, self.ventilator.failures = self.ventilator.failures, []
            self._fail(failures)

    def defines(self, worker_id: bytes, task: str) -> bool:
        """(I/O thread) Whether the worker's node defines the named task."""
        stats = self.view.membership.nodes.get(self.ventilator.node_of.get(worker_id, b""))
        return stats is not None and task in stats.tasks

    def fail_all(self, exc: BaseException) -> None:
        """Fail every call queued, in flight and to come with ``exc`` (a broken
        initializer), in the I/O thread once the handler that found it is done."""
        self.post(lambda: self._fail_all(exc))

    def _fail_all(self, exc: BaseException) -> None:
        if self.broken is None:
            log.error("client: %s; every call of this client fails with it", exc)
            self._break(exc)

    def on_every_worker(self, make: Callable[[bytes], Batch | None], done: Callable[[list[bytes]], None]) -> None:
        """(I/O thread) Pin one batch made by ``make`` to every worker attached now
        (None: not that one); ``done`` is told which workers have one."""
        workers = []
        for worker_id in list(self.ventilator.held):
            batch = make(worker_id)
            if batch is not None:
                self.ventilator.enqueue(batch)
                workers.append(worker_id)
        done(workers)

    def _notify_idle(self) -> None:
        if self._idle_waiters and (self.ventilator.idle() or self.broken is not None):
            for event in self._idle_waiters:
                event.set()
            self._idle_waiters.clear()

    def _notify_waiters(self) -> None:
        waiting = []
        for ready, event in self._waiters:
            if self.broken is not None or ready():
                event.set()
            else:
                waiting.append((ready, event))
        self._waiters = waiting

    def _drop_abandoned(self) -> None:
        """Drop queued batches nobody waits for; ask the nodes to recycle the
        workers running one (they restart with fresh credits; what else they held
        goes back to the queue, uncharged)."""
        self.ventilator.drop_abandoned()
        for worker_id, node_id in self.ventilator.recycle_abandoned():
            log.info("client: recycling worker %s, which runs work its caller abandoned",
                     worker_id.decode(errors="replace"))
            self.send_to_node(node_id, RecycleWorker(worker_id))

    def _embedded_exited(self, fd: int, control: str) -> None:
        self.poller.unregister(fd)
        del self.embedded[fd]
        os.close(fd)
        if self._running:
            self._break(NoNodesError(f"the embedded node at {control} exited; no worker is left to run tasks"))

    def _break(self, exc: BaseException) -> None:
        """Fail everything queued or in flight; later batches fail at once."""
        self.broken = exc
        self._fail((batch, exc) for batch in self.ventilator.drop_pending() + self.ventilator.drop_in_flight())

    def cancel_pending(self) -> None:
        """Cancel everything no worker has a credit for (shutdown(cancel_futures=True)).

        Work starts at submit, as in ProcessPoolExecutor: what the workers have
        credits for is dispatched first and finishes, so calls posted just before
        the shutdown are not all cancelled merely because the loop had not yet
        dispatched them; and, as ProcessPoolExecutor hands its call queue one
        call more than it has workers, that many batches count as started even
        while the workers are still attaching."""
        self._dispatch()
        started = self.workers() + EXTRA_STARTED_CALLS - len(self.ventilator.in_flight)
        for batch in self.ventilator.drop_pending(keep=max(0, started)):
            batch.owner.cancel(batch)

    def _request_stop(self) -> None:
        self._running = False
        self.links.leave(shutdown=set(self.embedded.values()))

    def _close(self) -> None:
        self._running = False
        self.commands.close()
        if self.broken is None:
            self.broken = ClosedError("the fabric was shut down")
        self.commands.finish()  # what was posted before the close: its batches fail below
        self._fail((batch, self.broken) for batch in self.ventilator.drop_pending() + self.ventilator.drop_in_flight())
        self.links.close()
        self.objects.close()
        self.vent.close()
        self.sink.close()
        for fd in self.embedded:
            os.close(fd)
        self.embedded.clear()
        for event in self._idle_waiters:
            event.set()
        for _, event in self._waiters:
            event.set()

