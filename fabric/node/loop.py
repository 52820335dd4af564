"""Node: the control plane of one machine. Spawns, watches and restarts workers,
publishes heartbeats and tracks its peers.

Tasks and results never pass through here (a broker hop measured ~260 us per
round trip against ~120 us client <-> worker direct)::

    client DEALER ──HELLO (also its heartbeat)/GOODBYE──► ROUTER (bound) ◄──WORKER_UP/REPORT── worker DEALER
    client DEALER ◄─HEARTBEAT (answer to each HELLO)/WORKER_LOST/NODE_LEAVING── node ──ATTACH/DETACH──► worker
    peer DEALER   ──PEER_HELLO/NODE_LEAVING──► ROUTER ──HEARTBEAT + members──►  │  spawn, watch (pidfd), restart
    fabric-node stop ──STOP──► ROUTER ──NODE_LEAVING──►    │
                                             PUB (bound) ──┴─ HEARTBEAT (stats, version, news) every interval,
                                                              NODE_LEAVING at a stop ──► its watchers' SUB
                                             SUB ◄── the ~4 watched peers' HEARTBEATs and NODE_LEAVINGs
                                                     (gossip: news of every other node rides on them)

:class:`Node` only receives, samples, asks and performs.  It owns the sockets,
the worker processes, the cache shard (:mod:`.store`) and one ``zmq.Poller``
whose descriptors include each worker's exit sentinel, so a death is noticed at
once; :class:`~fabric.node.state.NodeState` makes every decision (whom to tell
what, which worker to kill or start, which peer to greet, when to write the
cache shard, when to wake up) from the messages, the psutil readings
(:mod:`.load`) and the time it is given.

Nothing that arrives may stop the node: a message that does not parse, or whose
handling raises, and a failed step of the loop (a ``connect()`` refused, a spawn
or a psutil reading out of descriptors) are counted in ``state.faults`` (the
first of each kind logged) and the loop carries on; a socket made for a
``connect()`` that failed is closed at once, so ``Context.term()`` never waits
for it.  The control ROUTER refuses a frame larger than ``max_message_bytes``
(plus ``MESSAGE_SLACK_BYTES``) before reading it, and the node admits at most
``max_clients`` clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import msgpack
import zmq

from ..calls.registry import TaskModules, load
from ..cluster.stats import NodeStats
from ..config import ConfigError, NodeSettings, is_loopback
from ..errors import ProtocolError, StoreError
from ..wire import security
from ..wire.message import Message
from ..wire.object_messages import MAX_CHUNK_BYTES, ObjectAdopt, ObjectFree
from ..wire.protocol import (
    CacheClear,
    CacheCleared,
    CacheGet,
    CacheHits,
    CachePut,
    CacheStored,
    Goodbye,
    Heartbeat,
    NodeLeaving,
    PeerHello,
    Reload,
    Reloaded,
    from_frames,
    to_frames,
)
from ..wire.security import ClusterKey, gatekeeper
from . import processes
from .health import Kill
from .load import Sampler
from .object_server import SOCKET_SLACK_BYTES, ObjectServer
from .objects import ObjectStore, memory_dir
from .state import Bound, Greet, Instruction, NodeState, Publish, Send, Spawn, Subscribe, Terminate, Unsubscribe
from .store import ResultStore
from .worker import NODE_NAME_ENV, TASK_MODULES_ENV, WORKER_INDEX_ENV
from .worker_objects import OBJECTS_ENV

log = logging.getLogger(__name__)

SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
SHUTDOWN_GRACE_S = 2.0
LEAVING_LINGER_MS = 500  # how long NODE_LEAVING may wait in the PUB's queue at a stop
PEER_SOCKETS_MAX = 16  # DEALERs to peers greeted (seeds, push-pull partners) kept open at once
MESSAGE_SLACK_BYTES = 1 << 20  # a CACHE_PUT's frame carries max_message_bytes of results plus msgpack framing


def new_id(prefix: str) -> bytes:
    return f"{prefix}-{uuid.uuid4().hex[:12]}".encode()


def check_bind(endpoint: str, insecure: bool, keyed: bool = False) -> None:
    """Refuse a non-loopback bind without authentication, saying why and how."""
    if not endpoint.startswith("tcp://"):
        return
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    if is_loopback(host) or keyed:
        return
    if not insecure:
        raise ConfigError(
            f"refusing to bind {endpoint}: fabric runs code sent to it, and this address is reachable from other "
            "machines; give the cluster a key (fabric-node keygen KEYFILE, then key_file in cluster.toml or "
            "--key-file), bind a loopback address, or set insecure = true (--insecure) on a network you trust"
        )
    log.warning("binding %s without authentication (insecure): anyone who reaches it can run code", endpoint)


class Node:
    """The node's run loop."""

    def __init__(self, settings: NodeSettings) -> None:
        """Bind and open everything, or raise ConfigError (an address in use, not
        an endpoint) with every socket made so far closed.  A cache directory
        that cannot be written is no error: the node runs with its cache off."""
        processes.raise_fd_limit()
        self.key = ClusterKey.load(settings.key_file) if settings.key_file else None
        check_bind(settings.address, settings.insecure, self.key is not None)
        self.context = zmq.Context(io_threads=2)  # cache traffic on one, heartbeats go on
        self.gatekeeper = gatekeeper(self.context, self.key)
        self.handshakes = security.HandshakeWatch(self.key is not None)  # logs who failed to connect, and why
        try:
            self._open(settings)
        except BaseException:
            self._close_sockets()
            raise

    def _open(self, settings: NodeSettings) -> None:
        self.router = self._socket(zmq.ROUTER, ROUTER_MANDATORY=1, ROUTER_HANDOVER=1,
                                   MAXMSGSIZE=settings.max_message_bytes + MESSAGE_SLACK_BYTES)
        security.serve(self.router, self.key)
        incoming = self.handshakes.watch(self.router, f"{settings.address} (incoming)")
        _bind(self.router, settings.address)
        control = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = self._socket(zmq.PUB, SNDHWM=100)
        security.serve(self.pub, self.key)
        _bind(self.pub, _side_endpoint(control, "heartbeat"))
        self.sub = self._socket(zmq.SUB)
        security.join(self.sub, self.key)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        settings = replace(settings, name=settings.name or default_name(control))
        self.object_sock = self._socket(zmq.ROUTER, ROUTER_MANDATORY=1, MAXMSGSIZE=MAX_CHUNK_BYTES + SOCKET_SLACK_BYTES)
        security.serve(self.object_sock, self.key)
        _bind(self.object_sock, _side_endpoint(control, "objects"))
        node_id = new_id("n")
        # The start's wall-clock time orders this node's heartbeats after those of its previous
        # starts at the same address (a version, compared across processes: not monotonic time).
        bound = Bound(node_id, control, self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
                      self.object_sock.getsockopt_string(zmq.LAST_ENDPOINT), int(time.time() * 1000))
        self.state = NodeState(settings, bound)
        self.state.tasks = self._load_tasks(reload=False)
        cache = settings.cache
        shard = cache.shard_path(settings.name)
        self.log_path, self.log_fd = processes.open_log(shard.with_suffix(".log"))
        self.state.log_file = self.log_path
        try:
            self.store = ResultStore(shard, max_entries=cache.max_entries, max_bytes=cache.max_bytes)
        except (StoreError, OSError) as exc:
            raise ConfigError(f"cannot open the result cache shard {shard}: {exc}; give --cache-dir (or [cache] dir "
                              "in cluster.toml) a directory this user may write to") from None
        spill_root = cache.shard_path(settings.name).parent
        if not _writable(spill_root):  # as for the cache: the node runs, spilling to the temporary directory
            log.warning("node %s: cannot spill objects under %s; using %s", settings.name, spill_root,
                        tempfile.gettempdir())
            spill_root = Path(tempfile.gettempdir())
        self.objects = ObjectStore(memory_dir(node_id, spill_root), spill_root / f"objects-{node_id.decode()}",
                                   settings.store.max_bytes)
        self.object_server = ObjectServer(self.objects, self.object_sock, self.state.faults)
        self.poller = zmq.Poller()
        for sock in (self.router, self.sub, incoming, self.object_sock):
            self.poller.register(sock, zmq.POLLIN)
        self.peers: dict[str, zmq.Socket] = {}  # DEALERs to the peers greeted, by control endpoint
        self.processes: dict[bytes, subprocess.Popen[bytes]] = {}
        self.sampler = Sampler(self.state.faults)
        self.sentinels: dict[int, bytes] = {}
        self.reload_asked = False  # SIGHUP arrived
        self.owner_fd = processes.pidfd(settings.owner_pid) if settings.owner_pid else None
        if self.owner_fd is not None:
            self.poller.register(self.owner_fd, zmq.POLLIN)

    def _socket(self, kind: int, **options: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        return sock

    @property
    def settings(self) -> NodeSettings:
        return self.state.settings

    @property
    def endpoint(self) -> str:
        return self.state.bound.control

    # -- performing the state's instructions ----------------------------------------------

    def _perform(self, instructions: Sequence[Instruction]) -> None:
        for instruction in instructions:
            match instruction:
                case Send(to, msg):
                    self._send(to, msg)
                case Publish(msg):
                    self.pub.send_multipart(to_frames(msg), zmq.NOBLOCK)  # a PUB drops rather than blocks
                case Spawn() as spawn:
                    self._spawn_worker(spawn)
                case Kill(worker_id, _):
                    self.sampler.forget(worker_id)
                    self.processes[worker_id].kill()
                case Terminate(worker_id):
                    self.processes[worker_id].terminate()
                case Greet(control):
                    self._greet(control)
                case Subscribe(pub):
                    self._connect(self.sub, pub, "the heartbeats of")
                case Unsubscribe(pub):
                    with contextlib.suppress(zmq.ZMQError):  # never connected (libzmq refused it)
                        self.sub.disconnect(pub)

    def _send(self, to: bytes, msg: Message) -> None:
        try:
            self.router.send_multipart([to, *to_frames(msg)])
        except zmq.ZMQError as exc:  # the peer is gone (ROUTER_MANDATORY): nothing to tell it
            log.debug("node %s: cannot reach %r: %s", self.settings.name, to, exc)

    def _spawn_worker(self, spawn: Spawn) -> None:
        worker_id = spawn.worker_id or new_id("w")
        env = dict(os.environ)
        for key in SINGLE_THREAD_ENV:
            env.setdefault(key, "1")
        env.update({NODE_NAME_ENV: self.settings.name, WORKER_INDEX_ENV: str(spawn.index),
                    TASK_MODULES_ENV: ",".join(self.settings.tasks)})
        if self.key is not None:
            env[security.KEY_FILE_ENV] = os.path.abspath(self.key.path)
        bound = self.state.bound
        env[OBJECTS_ENV] = json.dumps([bound.node_id.decode(), bound.objects, str(self.objects.mem_dir),
                                       str(self.objects.disk_dir)])
        cmd = [sys.executable, "-m", "fabric.node.worker", self.endpoint, worker_id.decode(), str(os.getpid()),
               str(self.settings.max_clients)]
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log_fd, stderr=self.log_fd)
        except OSError as exc:  # EMFILE, EAGAIN, ENOMEM: the machine, not the node, is short
            self.state.spawn_failed(exc, spawn)
            return
        self.processes[worker_id] = proc
        self.sampler.watch(worker_id, proc.pid)
        self.state.worker_spawned(worker_id, proc.pid, spawn.index)
        fd = processes.pidfd(proc.pid)
        if fd is not None:
            self.sentinels[fd] = worker_id
            self.poller.register(fd, zmq.POLLIN)

    def _greet(self, control: str) -> None:
        """PEER_HELLO to a peer, through a DEALER opened the first time; at most
        ``PEER_SOCKETS_MAX`` are kept, the least recently greeted closed first
        (push-pull greets a new member every 30 s: kept forever, they would grow
        towards N and libzmq's 1,023 sockets)."""
        sock = self.peers.pop(control, None)
        if sock is not None:
            self.peers[control] = sock  # the most recently greeted
        else:
            if len(self.peers) >= PEER_SOCKETS_MAX:
                self._close_peer(next(iter(self.peers)))
            sock = self._socket(zmq.DEALER, IDENTITY=self.state.bound.node_id)  # type: ignore[arg-type]
            security.join(sock, self.key)
            if not self._connect(sock, control, "peer"):
                sock.close(linger=0)
                return
            self.poller.register(self.handshakes.watch(sock, control), zmq.POLLIN)  # a peer's wrong key is logged
            self.peers[control] = sock
            self.poller.register(sock, zmq.POLLIN)
        bound = self.state.bound
        try:
            sock.send_multipart(to_frames(PeerHello(bound.node_id, bound.control, bound.pub)), zmq.NOBLOCK)
        except zmq.Again:  # its queue is full: the peer has been away for a while, and hears us when back
            pass

    def _close_peer(self, control: str) -> None:
        sock = self.peers.pop(control)
        self.poller.unregister(sock)
        self.handshakes.unwatch(sock, self.poller)
        sock.close(linger=0)

    def _connect(self, sock: zmq.Socket, endpoint: str, what: str) -> bool:
        """``sock.connect(endpoint)``; False (counted, logged once) if libzmq refuses it."""
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.state.faults.record(f"cannot connect to {what} {endpoint!r:.80}", exc)
            return False
        return True

    # -- receiving -------------------------------------------------------------------------

    def _reap_exited(self, events: dict[object, int]) -> None:
        exited = {wid for fd, wid in self.sentinels.items() if fd in events}
        unwatched = self.processes.keys() - self.sentinels.values()  # no pidfd here, or no descriptor left for one
        exited |= {wid for wid in unwatched if self.processes[wid].poll() is not None}
        for worker_id in exited:
            exitcode = self.processes.pop(worker_id).wait()
            self.sampler.forget(worker_id)
            for fd in [fd for fd, wid in self.sentinels.items() if wid == worker_id]:
                self.poller.unregister(fd)
                os.close(fd)
                del self.sentinels[fd]
            self._perform(self.state.worker_exited(worker_id, exitcode))

    def _receive(self, sock: zmq.Socket) -> list[list[bytes]]:
        messages = []
        while True:
            try:
                messages.append(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return messages

    def _on_router(self, now: float) -> None:
        for sender, *frames in self._receive(self.router):
            try:
                msg = from_frames(frames)
            except ProtocolError as exc:
                self.state.faults.record("dropped a malformed message", f"from {sender!r:.40}: {exc}")
                continue
            self._guarded(f"handling {type(msg).__name__} failed", self._on_message, sender, msg, now)

    def _load_tasks(self, reload: bool) -> TaskModules:
        """Import the task modules (again); a failure at start is a ConfigError."""
        try:
            return load(self.settings.tasks, reload=reload)
        except Exception as exc:
            raise ConfigError(f"cannot load the task modules {', '.join(self.settings.tasks)}: "
                              f"{type(exc).__name__}: {exc}") from None

    def reload(self) -> Reloaded:
        """Import the task modules again and restart the workers; a module that
        fails to import leaves everything as it was."""
        try:
            tasks = self._load_tasks(reload=True)
        except ConfigError as exc:
            log.error("node %s: reload refused: %s", self.settings.name, exc)
            return Reloaded(False, str(exc))
        self._perform(self.state.reload(tasks))
        return Reloaded(True, ", ".join(sorted(tasks.functions)))

    def _on_message(self, sender: bytes, msg: Message, now: float) -> None:
        if isinstance(msg, (CacheGet, CachePut, CacheClear)):
            self._on_cache(sender, msg)
        elif isinstance(msg, ObjectFree) and msg.owner == sender:  # a client frees only its own claims
            self.objects.free(msg.owner, msg.keys)
        elif isinstance(msg, ObjectAdopt) and sender in self.state.workers:  # only this node's workers write
            self.objects.adopt(msg.owner, msg.key, msg.pinned)
        elif isinstance(msg, (ObjectFree, ObjectAdopt)):
            self.state.faults.record(f"refused {type(msg).__name__}", f"from {sender!r:.40}, not its sender's to send")
        elif isinstance(msg, Reload):
            self._send(sender, self.reload())
        else:
            self._perform(self.state.on_message(sender, msg, now))
            if isinstance(msg, Goodbye):
                self.objects.forget_owners(set(self.state.clients))

    def _guarded(self, what: str, step: Callable[..., object], *args: object) -> None:
        """Run one step of the loop; an exception is counted (the first of each
        kind logged with its traceback) and the loop carries on."""
        try:
            step(*args)
        except Exception as exc:  # one bad message or event must not take the node and its workers down
            self.state.faults.record(what, exc, exc)

    def _on_cache(self, sender: bytes, msg: CacheGet | CachePut | CacheClear) -> None:
        """Serve this node's shard of the result cache; a store failure is logged
        and answered as misses, so the fabric keeps running."""
        try:
            if isinstance(msg, CacheGet):
                found = self.store.get_many(msg.keys)
                indices = sorted(found)
                values = [msgpack.packb([found[i] for i in indices], use_bin_type=True)] if indices else []
                self._send(sender, CacheHits(msg.request_id, indices, values))
            elif isinstance(msg, CachePut):
                values = msgpack.unpackb(msg.payload[0], raw=False) if msg.payload else []
                if not isinstance(values, list) or len(values) != len(msg.keys):
                    raise ProtocolError("CACHE_PUT: its values do not match its keys")
                taken = self.store.put_many(msg.fn_digest, [(k, v) for k, v in zip(msg.keys, values)
                                                            if isinstance(v, bytes)])
                self._send(sender, CacheStored(msg.request_id, taken))
            else:
                if msg.everything == bool(msg.fn_digest):
                    raise ProtocolError("CACHE_CLEAR needs either a function digest or the 'everything' flag")
                removed = self.store.clear(msg.fn_digest or None)
                self._send(sender, CacheCleared(msg.request_id, removed))
        except (StoreError, ProtocolError, ValueError, msgpack.UnpackException) as exc:
            log.error("node %s: cache request failed: %s", self.settings.name, exc)
            if isinstance(msg, CacheGet):
                self._send(sender, CacheHits(msg.request_id, []))
            elif isinstance(msg, CachePut):  # nothing taken: the writer stops waiting for it
                self._send(sender, CacheStored(msg.request_id, 0))
            else:
                self._send(sender, CacheCleared(msg.request_id, 0))

    def _flush_store(self, entries: int) -> None:
        try:
            self.store.flush(entries)
        except StoreError as exc:
            log.error("node %s: result store failed: %s", self.settings.name, exc)

    def _on_heartbeats(self, sock: zmq.Socket, now: float) -> None:
        for frames in self._receive(sock):
            try:
                msg = from_frames(frames)
                if isinstance(msg, NodeLeaving):
                    self._perform(self.state.peer_left(msg.node_id, now))
                    continue
                if not isinstance(msg, Heartbeat):
                    raise ProtocolError(f"{type(msg).__name__} where a heartbeat was expected")
                stats = NodeStats.from_info(msg.info)
            except ProtocolError as exc:
                self.state.faults.record("dropped a malformed heartbeat", exc)
                continue
            self._guarded("handling a heartbeat failed", self._on_heartbeat, stats, now)

    def _on_heartbeat(self, stats: NodeStats, now: float) -> None:
        self._perform(self.state.peer_heard(stats, now))

    # -- loop ---------------------------------------------------------------------------

    def run(self) -> None:
        state = self.state
        self._perform(state.start(time.monotonic()))
        try:
            while not state.stopping:
                now = time.monotonic()
                timeout_s = max(0.0, state.next_deadline(now, self.store.pending) - now)
                if len(self.sentinels) < len(self.processes):  # a worker without pidfd: its exit is polled for
                    timeout_s = min(timeout_s, processes.FALLBACK_POLL_S)
                events = dict(self.poller.poll(int(timeout_s * 1000)))
                now = time.monotonic()
                if self._owner_gone(events):
                    state.stop("its owner exited")
                    break
                if self.reload_asked:
                    self.reload_asked = False
                    self._guarded("a reload failed", self.reload)
                # Control before data: a heartbeat due goes out, and peers' heartbeats are read,
                # before the ROUTER's messages (clients' HELLOs, workers' reports, the cache's
                # requests) are served, so a busy node is not taken for a silent one.
                self._guarded("the heartbeat failed", self._on_beat, now)
                for sock in [self.sub, *self.peers.values()]:
                    if sock in events:
                        self._on_heartbeats(sock, now)
                if self.router in events:
                    self._on_router(now)
                if self.object_sock in events:
                    self._guarded("serving objects failed", self.object_server.on_readable)
                self._guarded("a handshake monitor failed", self.handshakes.on_poll, events)
                self._guarded("reaping a worker failed", self._reap_exited, events)
                self._guarded("the loop's timers failed", self._on_timers, bool(events), now)
        finally:
            self._stop()

    def _on_timers(self, busy: bool, now: float) -> None:
        state = self.state
        entries = state.entries_to_flush(self.store.pending, self.store.pending_bytes, not busy, now)
        if entries:
            self._flush_store(entries)
        if state.health_due(now):
            readings = self.sampler.workers(rss=self.settings.memory_limit_mb > 0)
            self._perform(state.check_workers(readings, now))

    def _on_beat(self, now: float) -> None:
        if self.state.beat_due(now):
            self.objects.forget_owners(set(self.state.clients))
            self.objects.expire_incoming(now)
            self.state.objects = self.objects.figures()
            self._perform(self.state.beat(self.sampler.machine(), self.store.stats(), now))

    def _owner_gone(self, events: dict[object, int]) -> bool:
        if self.settings.owner_pid is None:
            return False
        if self.owner_fd is not None:
            return self.owner_fd in events
        return os.getppid() != self.settings.owner_pid

    def handle_signals(self) -> None:
        """SIGTERM stops the node; so does SIGINT, except on an embedded node,
        whose ctrl-C belongs to the client that owns it; SIGHUP reloads a
        daemon's task modules (``fabric-node reload``)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        if not self.settings.owner_pid:  # a daemon's SIGHUP reloads its task modules; an embedded node's is its owner's
            signal.signal(signal.SIGHUP, self.request_reload)
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.settings.owner_pid else self.request_stop)

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """The signal handler: the loop stops at its next turn, as for STOP."""
        self.state.stop(signal.Signals(signum).name)

    def request_reload(self, signum: int, _frame: object = None) -> None:
        """SIGHUP: reload the task modules at the loop's next turn (the poll wakes on the signal)."""
        self.reload_asked = True

    def _stop(self) -> None:
        """Hand back what the workers hold, stop them, close everything; an embedded
        node also removes its owner's directory (the owner may have died without)."""
        self._perform(self.state.leaving())
        leaving = to_frames(NodeLeaving(self.state.bound.node_id))
        for sock in self.peers.values():  # the peers greeted may not watch us, or not be subscribed yet
            sock.setsockopt(zmq.LINGER, LEAVING_LINGER_MS)
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(leaving, zmq.NOBLOCK)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for proc in self.processes.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        for fd in [*self.sentinels, self.owner_fd]:
            if fd is not None:
                os.close(fd)
        self.sentinels.clear()
        self.pub.setsockopt(zmq.LINGER, LEAVING_LINGER_MS)  # NODE_LEAVING reaches the subscribers
        self._close_sockets()
        self.store.close()
        self.objects.close()
        os.close(self.log_fd)
        if self.state.faults.counts:
            log.info("node %s: dropped or failed: %s", self.settings.name, self.state.faults.summary())
        if self.settings.owner_dir:
            shutil.rmtree(self.settings.owner_dir, ignore_errors=True)

    def _close_sockets(self) -> None:
        """Close every socket of the context, the half-made ones too, so ``term()`` cannot wait on one."""
        self.handshakes.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.context.destroy()  # each socket with its own LINGER, then term()


def default_name(control: str) -> str:
    """HOST:PORT of the bound control endpoint (the machine's name for a wildcard host).

    Stable across restarts on a fixed port, so an unnamed node keeps its cache
    shard file and its place on the cache ring, and unique among the cluster's
    live nodes since no two can bind one address.
    """
    scheme, _, where = control.partition("://")
    host, _, port = where.rpartition(":")
    if scheme != "tcp" or not host:
        return where
    if host.strip("[]") in ("0.0.0.0", "::", "*"):
        host = socket.gethostname()
    return f"{host}:{port}"


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    """``sock.bind(endpoint)``, or a ConfigError saying what is wrong and what to do."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            why = "the address is in use (another fabric-node?); stop what holds it or bind another port"
        elif exc.errno == zmq.EINVAL and "://" not in endpoint:
            why = f"no scheme; write tcp://{endpoint} (or ipc:///PATH)"
        elif exc.errno == zmq.EINVAL:
            why = "not an endpoint to bind; write tcp://HOST:PORT (an address of this machine) or ipc:///PATH"
        else:
            why = f"{exc.strerror}; bind another address"
        raise ConfigError(f"cannot bind {endpoint!r}: {why}") from None


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _side_endpoint(control: str, what: str) -> str:
    """Where a socket beside the control ROUTER binds: the same ipc path with a suffix, or the same host."""
    if control.startswith("ipc://"):
        return f"{control}-{what}"
    host = control[len("tcp://") :].rpartition(":")[0]
    return f"tcp://{host}:*"
