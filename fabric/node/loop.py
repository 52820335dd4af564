"""Node: the control plane of one machine. Spawns, watches and restarts workers,
publishes heartbeats and tracks its peers.

Tasks and results never pass through here (a broker hop measured ~260 us per
round trip against ~120 us client <-> worker direct)::

    client DEALER ──HELLO (also its heartbeat)/GOODBYE──► ROUTER (bound) ◄──WORKER_UP/REPORT── worker DEALER
    client DEALER ◄─HEARTBEAT/WORKER_LOST/NODE_LEAVING─── node ──ATTACH/DETACH/SHUTDOWN──► worker
    peer DEALER   ──PEER_HELLO──► ROUTER ──HEARTBEAT──►    │  spawn, watch (pidfd), restart
                                             PUB (bound) ──┴─ HEARTBEAT every interval ──► clients' and peers' SUB
                                             SUB ◄── peers' HEARTBEATs (membership spreads from the seeds)

:class:`Node` only receives, samples, asks and performs.  It owns the sockets,
the worker processes, the cache shard (:mod:`.store`) and one ``zmq.Poller``
whose descriptors include each worker's exit sentinel, so a death is noticed at
once; :class:`~fabric.node.state.NodeState` makes every decision (whom to tell
what, which worker to kill or start, which peer to greet, when to write the
cache shard, when to wake up) from the messages, the psutil readings
(:mod:`.load`) and the time it is given.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

import msgpack
import zmq

from ..cluster.stats import NodeStats
from ..config import ConfigError, NodeSettings, is_loopback
from ..errors import ProtocolError, StoreError
from ..wire import security
from ..wire.protocol import (
    CacheClear,
    CacheCleared,
    CacheGet,
    CacheHits,
    CachePut,
    CacheStored,
    Heartbeat,
    Message,
    PeerHello,
    from_frames,
    to_frames,
)
from ..wire.security import ClusterKey, gatekeeper
from . import processes
from .health import Kill
from .load import Sampler
from .state import Bound, Greet, Instruction, NodeState, Publish, Send, Spawn, Subscribe, Terminate
from .store import ResultStore

log = logging.getLogger(__name__)

SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
SHUTDOWN_GRACE_S = 2.0


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
        self.key = ClusterKey.load(settings.key_file) if settings.key_file else None
        check_bind(settings.address, settings.insecure, self.key is not None)
        self.context = zmq.Context()
        self.gatekeeper = gatekeeper(self.context, self.key)
        self.router = self._socket(zmq.ROUTER, ROUTER_MANDATORY=1, ROUTER_HANDOVER=1)
        security.serve(self.router, self.key)
        self.handshakes = security.HandshakeWatch()  # logs who failed to connect, and why
        incoming = self.handshakes.watch(self.router, f"{settings.address} (incoming)")
        self.router.bind(settings.address)
        control = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = self._socket(zmq.PUB, SNDHWM=100)
        security.serve(self.pub, self.key)
        self.pub.bind(_pub_endpoint(control))
        self.sub = self._socket(zmq.SUB)
        security.join(self.sub, self.key)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        settings = replace(settings, name=settings.name or default_name(control))
        bound = Bound(new_id("n"), control, self.pub.getsockopt_string(zmq.LAST_ENDPOINT))
        self.state = NodeState(settings, bound)
        cache = settings.cache
        self.store = ResultStore(cache.shard_path(settings.name), max_entries=cache.max_entries,
                                 max_bytes=cache.max_bytes)
        self.poller = zmq.Poller()
        for sock in (self.router, self.sub, incoming):
            self.poller.register(sock, zmq.POLLIN)
        self.peers: dict[str, zmq.Socket] = {}  # DEALERs to the peers greeted, by control endpoint
        self.processes: dict[bytes, subprocess.Popen[bytes]] = {}
        self.sampler = Sampler()
        self.sentinels: dict[int, bytes] = {}
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
                    self.pub.send_multipart(to_frames(msg), zmq.NOBLOCK)
                case Spawn():
                    self._spawn_worker()
                case Kill(worker_id, _):
                    self.sampler.forget(worker_id)
                    self.processes[worker_id].kill()
                case Terminate(worker_id):
                    self.processes[worker_id].terminate()
                case Greet(control):
                    self._greet(control)
                case Subscribe(pub):
                    self.sub.connect(pub)

    def _send(self, to: bytes, msg: Message) -> None:
        try:
            self.router.send_multipart([to, *to_frames(msg)])
        except zmq.ZMQError as exc:  # the peer is gone (ROUTER_MANDATORY): nothing to tell it
            log.debug("node %s: cannot reach %r: %s", self.settings.name, to, exc)

    def _spawn_worker(self) -> None:
        worker_id = new_id("w")
        env = dict(os.environ)
        for key in SINGLE_THREAD_ENV:
            env.setdefault(key, "1")
        if self.key is not None:
            env[security.KEY_FILE_ENV] = os.path.abspath(self.key.path)
        cmd = [sys.executable, "-m", "fabric.node.worker", self.endpoint, worker_id.decode(), str(os.getpid())]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.processes[worker_id] = proc
        self.sampler.watch(worker_id, proc.pid)
        self.state.worker_spawned(worker_id, proc.pid)
        fd = processes.pidfd(proc.pid)
        if fd is not None:
            self.sentinels[fd] = worker_id
            self.poller.register(fd, zmq.POLLIN)

    def _greet(self, control: str) -> None:
        """PEER_HELLO to a peer, through a DEALER opened the first time."""
        sock = self.peers.get(control)
        if sock is None:
            sock = self._socket(zmq.DEALER, IDENTITY=self.state.bound.node_id)  # type: ignore[arg-type]
            security.join(sock, self.key)
            self.poller.register(self.handshakes.watch(sock, control), zmq.POLLIN)  # a peer's wrong key is logged
            sock.connect(control)
            self.peers[control] = sock
            self.poller.register(sock, zmq.POLLIN)
        bound = self.state.bound
        sock.send_multipart(to_frames(PeerHello(bound.node_id, bound.control, bound.pub)), zmq.NOBLOCK)

    # -- receiving -------------------------------------------------------------------------

    def _reap_exited(self, events: dict[object, int]) -> None:
        if self.sentinels:
            exited = [wid for fd, wid in self.sentinels.items() if fd in events]
        else:  # no pidfd on this platform
            exited = [wid for wid, proc in self.processes.items() if proc.poll() is not None]
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
                log.warning("node %s: dropped message from %r: %s", self.settings.name, sender, exc)
                continue
            try:
                if isinstance(msg, (CacheGet, CachePut, CacheClear)):
                    self._on_cache(sender, msg)
                else:
                    self._perform(self.state.on_message(sender, msg, now))
            except Exception:  # one bad message must not take the node and its workers down
                log.exception("node %s: failed to handle %s from %r", self.settings.name, type(msg).__name__,
                              sender)

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
                if not isinstance(msg, Heartbeat):
                    raise ProtocolError(f"{type(msg).__name__} where a heartbeat was expected")
                stats = NodeStats.from_info(msg.info)
            except ProtocolError as exc:
                log.warning("node %s: dropped heartbeat: %s", self.settings.name, exc)
                continue
            self._perform(self.state.peer_heard(stats, now))

    # -- loop ---------------------------------------------------------------------------

    def run(self) -> None:
        state = self.state
        self._perform(state.start(time.monotonic()))
        try:
            while not state.stopping:
                now = time.monotonic()
                timeout_s = max(0.0, state.next_deadline(now, self.store.pending) - now)
                if not self.sentinels and self.processes:  # no pidfd: exits are polled for
                    timeout_s = min(timeout_s, processes.FALLBACK_POLL_S)
                events = dict(self.poller.poll(int(timeout_s * 1000)))
                now = time.monotonic()
                if self._owner_gone(events):
                    break
                if self.router in events:
                    self._on_router(now)
                for sock in [self.sub, *self.peers.values()]:
                    if sock in events:
                        self._on_heartbeats(sock, now)
                self.handshakes.on_poll(events)
                self._reap_exited(events)
                entries = state.entries_to_flush(self.store.pending, self.store.pending_bytes, not events, now)
                if entries:
                    self._flush_store(entries)
                if state.health_due(now):
                    readings = self.sampler.workers(rss=self.settings.memory_limit_mb > 0)
                    self._perform(state.check_workers(readings, now))
                if state.beat_due(now):
                    self._perform(state.beat(self.sampler.machine(), self.store.stats(), now))
        finally:
            self._stop()

    def _owner_gone(self, events: dict[object, int]) -> bool:
        if self.settings.owner_pid is None:
            return False
        if self.owner_fd is not None:
            return self.owner_fd in events
        return os.getppid() != self.settings.owner_pid

    def handle_signals(self) -> None:
        """SIGTERM stops the node; so does SIGINT, except on an embedded node,
        whose ctrl-C belongs to the client that owns it."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.settings.owner_pid else self.request_stop)

    def request_stop(self, *_: object) -> None:
        self.state.stopping = True

    def _stop(self) -> None:
        """Hand back what the workers hold, stop them, close everything; an embedded
        node also removes its owner's directory (the owner may have died without)."""
        self._perform(self.state.leaving())
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
        self.handshakes.close()
        for sock in [self.router, self.pub, self.sub, *self.peers.values()]:
            sock.close(linger=0)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.context.term()
        self.store.close()
        if self.settings.owner_dir:
            shutil.rmtree(self.settings.owner_dir, ignore_errors=True)


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


def _pub_endpoint(control: str) -> str:
    if control.startswith("ipc://"):
        return f"{control}-heartbeat"
    host = control[len("tcp://") :].rpartition(":")[0]
    return f"tcp://{host}:*"
