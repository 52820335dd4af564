"""Node: the control plane of one machine. Spawns, watches and restarts workers,
publishes heartbeats and tracks its peers.

Tasks and results never pass through here (a broker hop measured ~260 us per
round trip against ~120 us client <-> worker direct)::

    client DEALER ──HELLO (also its heartbeat)/GOODBYE──► ROUTER (bound) ◄──WORKER_UP/REPORT── worker DEALER
    client DEALER ◄─HEARTBEAT/WORKER_LOST/NODE_LEAVING─── node ──ATTACH/DETACH/SHUTDOWN──► worker
    peer DEALER   ──PEER_HELLO──► ROUTER ──HEARTBEAT──►    │  spawn, watch (pidfd), restart
                                             PUB (bound) ──┴─ HEARTBEAT every interval ──► clients' and peers' SUB
                                             SUB ◄── peers' HEARTBEATs (membership spreads from the seeds)

:class:`~fabric.node.state.NodeState` holds every decision; :class:`Node` is
the loop that owns the sockets, the worker processes and one ``zmq.Poller``
whose descriptors include each worker's exit sentinel, so a death is noticed at
once.  The poll timeout is the next heartbeat, which also drives load sampling
and the expiry of silent clients and peers.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import msgpack
import psutil
import zmq

from ..cluster.stats import NodeStats
from ..config import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_LIVENESS_S,
    DEFAULT_PREFETCH,
    CacheConfig,
    ConfigError,
    is_loopback,
)
from ..errors import ProtocolError, StoreError
from ..wire import security
from ..wire.protocol import (
    CacheClear,
    CacheCleared,
    CacheGet,
    CacheHits,
    CachePut,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    PeerHello,
    Shutdown,
    Status,
    StatusReply,
    WorkerReport,
    WorkerUp,
    from_frames,
    to_frames,
)
from ..wire.security import ClusterKey, gatekeeper
from . import processes
from .state import NodeSettings, NodeState, Outbox, describe_exit
from .store import ResultStore

log = logging.getLogger(__name__)

SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
SHUTDOWN_GRACE_S = 2.0
STORE_FLUSH_BATCH = 500  # cache entries written to disk per idle moment (~2 ms: a lookup may wait that long)
STORE_IDLE_S = 0.02  # quiet time before writing: lookups in a busy map never wait behind writes
STORE_MAX_PENDING = 200_000  # past this many pending writes (or STORE_MAX_PENDING_BYTES), write even when busy
STORE_MAX_PENDING_BYTES = 64 << 20
HEALTH_CHECK_S = 0.2  # worker memory and SIGSTOP checks; a worker over its limit dies within this


def new_id(prefix: str) -> bytes:
    return f"{prefix}-{uuid.uuid4().hex[:12]}".encode()


@dataclass(frozen=True)
class NodeOptions:
    """How to run one node (from cluster.toml, the command line, or the embedded default)."""

    bind: str  # control endpoint: tcp://HOST:PORT (PORT may be *) or ipc://PATH
    workers: int
    name: str = ""
    prefetch: int = DEFAULT_PREFETCH
    max_load: float = 100.0
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    liveness_s: float = DEFAULT_LIVENESS_S
    seeds: tuple[str, ...] = ()  # control endpoints of peers to join
    insecure: bool = False
    key_file: str = ""  # the cluster's CURVE key (fabric.wire.security); "": none, loopback only
    memory_limit_mb: int = 0  # RSS above which a worker is killed and replaced; 0: no limit
    cache: CacheConfig = CacheConfig()
    owner_pid: int | None = None  # embedded: exit when this process exits


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

    def __init__(self, options: NodeOptions) -> None:
        self.key = ClusterKey.load(options.key_file) if options.key_file else None
        check_bind(options.bind, options.insecure, self.key is not None)
        self.options = options
        self.context = zmq.Context()
        self.gatekeeper = gatekeeper(self.context, self.key)
        self.router = self._socket(zmq.ROUTER, ROUTER_MANDATORY=1, ROUTER_HANDOVER=1)
        security.serve(self.router, self.key)
        self.handshakes = security.HandshakeWatch()  # logs who failed to connect, and why
        incoming = self.handshakes.watch(self.router, f"{options.bind} (incoming)")
        self.router.bind(options.bind)
        control = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = self._socket(zmq.PUB, SNDHWM=100)
        security.serve(self.pub, self.key)
        self.pub.bind(_pub_endpoint(control))
        pub = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = self._socket(zmq.SUB)
        security.join(self.sub, self.key)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        node_id = new_id("n")
        name = options.name or default_name(control)
        settings = NodeSettings(
            node_id, name, control, pub, options.prefetch, options.max_load, options.liveness_s,
            cache_weight=max(1, options.cache.max_bytes >> 20),
        )
        self.state = NodeState(settings)
        cache = options.cache
        self.store = ResultStore(cache.shard_path(name), max_entries=cache.max_entries, max_bytes=cache.max_bytes)
        self.poller = zmq.Poller()
        for sock in (self.router, self.sub, incoming):
            self.poller.register(sock, zmq.POLLIN)
        self.subscribed: set[str] = set()
        self.seeds: dict[str, zmq.Socket] = {}
        self.processes: dict[bytes, subprocess.Popen[bytes]] = {}
        self.health: dict[bytes, psutil.Process] = {}
        self.stopped_since: dict[bytes, float] = {}
        self.kill_reasons: dict[bytes, str] = {}
        self.sentinels: dict[int, bytes] = {}
        self.owner_fd = processes.pidfd(options.owner_pid) if options.owner_pid else None
        if self.owner_fd is not None:
            self.poller.register(self.owner_fd, zmq.POLLIN)
        self.running = True
        self.last_message = 0.0

    def _socket(self, kind: int, **options: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        return sock

    @property
    def endpoint(self) -> str:
        return self.state.settings.control

    # -- workers -----------------------------------------------------------------------

    def spawn_worker(self) -> None:
        worker_id = new_id("w")
        env = dict(os.environ)
        for key in SINGLE_THREAD_ENV:
            env.setdefault(key, "1")
        if self.key is not None:
            env[security.KEY_FILE_ENV] = os.path.abspath(self.key.path)
        cmd = [sys.executable, "-m", "fabric.node.worker", self.endpoint, worker_id.decode(), str(os.getpid())]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.processes[worker_id] = proc
        self.health[worker_id] = psutil.Process(proc.pid)
        self.state.worker_spawned(worker_id, proc.pid)
        fd = processes.pidfd(proc.pid)
        if fd is not None:
            self.sentinels[fd] = worker_id
            self.poller.register(fd, zmq.POLLIN)

    def _reap(self, worker_id: bytes) -> None:
        proc = self.processes.pop(worker_id)
        exitcode = proc.wait()
        self.health.pop(worker_id, None)
        self.stopped_since.pop(worker_id, None)
        reason = self.kill_reasons.pop(worker_id, "") or describe_exit(exitcode)
        for fd in [fd for fd, wid in self.sentinels.items() if wid == worker_id]:
            self.poller.unregister(fd)
            os.close(fd)
            del self.sentinels[fd]
        if self.running:
            level = logging.INFO if exitcode == 0 else logging.WARNING
            log.log(level, "node %s: worker %s %s", self.state.settings.name, worker_id.decode(), reason)
        self._send(self.state.worker_exited(worker_id, exitcode, reason))
        if self.running:
            self.spawn_worker()

    def _check_health(self, now: float) -> None:
        """Kill workers over their memory limit, or stopped (SIGSTOP) for longer
        than the liveness timeout; their exit then follows the usual path."""
        limit_bytes = self.options.memory_limit_mb * 1024 * 1024
        for worker_id, proc in list(self.health.items()):
            try:
                stopped = proc.status() == psutil.STATUS_STOPPED
                rss = proc.memory_info().rss if limit_bytes else 0
            except psutil.Error:
                continue  # exiting: its sentinel reports it
            if limit_bytes and rss > limit_bytes:
                self._kill(worker_id, f"exceeded its memory limit of {self.options.memory_limit_mb} MB "
                                      f"(RSS {rss // (1024 * 1024)} MB)")
            elif not stopped:
                self.stopped_since.pop(worker_id, None)
            elif now - self.stopped_since.setdefault(worker_id, now) > self.options.liveness_s:
                self._kill(worker_id, f"was stopped (hung) for more than {self.options.liveness_s:.1f} s")

    def _kill(self, worker_id: bytes, reason: str) -> None:
        if worker_id in self.kill_reasons:
            return
        self.kill_reasons[worker_id] = reason
        self.health.pop(worker_id, None)
        self.processes[worker_id].kill()

    def _reap_exited(self, events: dict[object, int]) -> None:
        if self.sentinels:
            exited = [wid for fd, wid in self.sentinels.items() if fd in events]
        else:  # no pidfd on this platform
            exited = [wid for wid, proc in self.processes.items() if proc.poll() is not None]
        for worker_id in exited:
            self._reap(worker_id)

    # -- messages ------------------------------------------------------------------------

    def _send(self, outbox: Outbox) -> None:
        for dest, msg in outbox:
            try:
                self.router.send_multipart([dest, *to_frames(msg)])
            except zmq.ZMQError as exc:  # the peer is gone (ROUTER_MANDATORY): nothing to tell it
                log.debug("node %s: cannot reach %r: %s", self.state.settings.name, dest, exc)

    def _receive(self, sock: zmq.Socket) -> list[list[bytes]]:
        messages = []
        while True:
            try:
                messages.append(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return messages

    def _on_router(self, now: float) -> None:
        self.last_message = now
        for sender, *frames in self._receive(self.router):
            try:
                msg = from_frames(frames)
            except ProtocolError as exc:
                log.warning("node %s: dropped message from %r: %s", self.state.settings.name, sender, exc)
                continue
            try:
                self._dispatch(sender, msg, now)
            except Exception:  # one bad message must not take the node and its workers down
                log.exception("node %s: failed to handle %s from %r", self.state.settings.name,
                              type(msg).__name__, sender)

    def _dispatch(self, sender: bytes, msg: Message, now: float) -> None:
        state = self.state
        if isinstance(msg, WorkerReport):
            state.worker_report(sender, msg)
        elif isinstance(msg, WorkerUp):
            self._send(state.worker_up(sender))
        elif isinstance(msg, Hello):
            self._send(state.client_hello(msg, now))
        elif isinstance(msg, Goodbye):
            self._send(state.client_goodbye(msg.client_id))
        elif isinstance(msg, PeerHello):
            self._subscribe(msg.pub)
            self._send([(sender, state.heartbeat(now))])
        elif isinstance(msg, (CacheGet, CachePut, CacheClear)):
            self._on_cache(sender, msg)
        elif isinstance(msg, Status):
            self._send([(sender, StatusReply([s.to_info() for s in state.status(now)]))])
        elif isinstance(msg, Shutdown) and self.options.owner_pid is not None:
            self.running = False
        else:
            log.warning("node %s: unexpected %s from %r", state.settings.name, type(msg).__name__, sender)

    def _on_cache(self, sender: bytes, msg: CacheGet | CachePut | CacheClear) -> None:
        """Serve this node's shard of the result cache; a store failure is logged
        and answered as misses, so the fabric keeps running."""
        try:
            if isinstance(msg, CacheGet):
                found = self.store.get_many(msg.keys)
                indices = sorted(found)
                values = [msgpack.packb([found[i] for i in indices], use_bin_type=True)] if indices else []
                self._send([(sender, CacheHits(msg.request_id, indices, values))])
            elif isinstance(msg, CachePut):
                values = msgpack.unpackb(msg.payload[0], raw=False) if msg.payload else []
                if not isinstance(values, list) or len(values) != len(msg.keys):
                    raise ProtocolError("CACHE_PUT: its values do not match its keys")
                self.store.put_many(msg.fn_digest, [(k, v) for k, v in zip(msg.keys, values) if isinstance(v, bytes)])
            else:
                removed = self.store.clear(msg.fn_digest or None)
                self._send([(sender, CacheCleared(msg.request_id, removed))])
        except (StoreError, ProtocolError, ValueError, msgpack.UnpackException) as exc:
            log.error("node %s: cache request failed: %s", self.state.settings.name, exc)
            if isinstance(msg, CacheGet):
                self._send([(sender, CacheHits(msg.request_id, []))])
            elif isinstance(msg, CacheClear):
                self._send([(sender, CacheCleared(msg.request_id, 0))])

    def _flush_store(self) -> None:
        try:
            self.store.flush(STORE_FLUSH_BATCH)
        except StoreError as exc:
            log.error("node %s: result store failed: %s", self.state.settings.name, exc)

    def _on_heartbeats(self, sock: zmq.Socket, now: float) -> None:
        for frames in self._receive(sock):
            try:
                msg = from_frames(frames)
                if not isinstance(msg, Heartbeat):
                    raise ProtocolError(f"{type(msg).__name__} where a heartbeat was expected")
                stats = NodeStats.from_info(msg.info)
            except ProtocolError as exc:
                log.warning("node %s: dropped heartbeat: %s", self.state.settings.name, exc)
                continue
            for control, pub in self.state.peer_heard(stats, now):
                self._subscribe(pub)
                if control not in self.seeds:
                    self._hello_peer(control)

    def _subscribe(self, pub: str) -> None:
        if pub not in self.subscribed and pub != self.state.settings.pub:
            self.subscribed.add(pub)
            self.sub.connect(pub)

    def _hello_peer(self, control: str) -> None:
        """Introduce this node to a peer, so that it subscribes to us too."""
        sock = self.seeds.get(control)
        if sock is None:
            sock = self._socket(zmq.DEALER, IDENTITY=self.state.settings.node_id)  # type: ignore[arg-type]
            security.join(sock, self.key)
            self.poller.register(self.handshakes.watch(sock, control), zmq.POLLIN)  # a peer's wrong key is logged
            sock.connect(control)
            self.seeds[control] = sock
            self.poller.register(sock, zmq.POLLIN)
        s = self.state.settings
        sock.send_multipart(to_frames(PeerHello(s.node_id, s.control, s.pub)), zmq.NOBLOCK)

    # -- loop ---------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.options.workers):
            self.spawn_worker()
        for seed in self.options.seeds:
            if seed != self.endpoint:
                self._hello_peer(seed)
        next_beat = next_health = time.monotonic()
        try:
            while self.running:
                timeout_s = max(0.0, min(next_beat, next_health) - time.monotonic())
                if self.store.pending:
                    timeout_s = min(timeout_s, STORE_IDLE_S)  # quiet moments go to writing the cache shard
                if not self.sentinels and self.processes:
                    timeout_s = min(timeout_s, processes.FALLBACK_POLL_S)
                events = dict(self.poller.poll(int(timeout_s * 1000)))
                now = time.monotonic()
                if self._owner_gone(events):
                    break
                if self.router in events:
                    self._on_router(now)
                for sock in [self.sub, *self.seeds.values()]:
                    if sock in events:
                        self._on_heartbeats(sock, now)
                self.handshakes.on_poll(events)
                self._reap_exited(events)
                if self.store.pending and (
                    (not events and now - self.last_message >= STORE_IDLE_S)
                    or self.store.pending > STORE_MAX_PENDING
                    or self.store.pending_bytes > STORE_MAX_PENDING_BYTES
                ):
                    self._flush_store()
                if now >= next_health:
                    self._check_health(now)
                    next_health = now + HEALTH_CHECK_S
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + self.options.heartbeat_interval_s
        finally:
            self._stop()

    def _beat(self, now: float) -> None:
        state = self.state
        state.sample_load(now)
        state.cache = self.store.stats()
        self._send(state.expire_clients(now))
        for lost in state.peers.expire(now):
            log.info("node %s: peer %s silent for %.1f s, declared dead", state.settings.name, lost.name,
                     self.options.liveness_s)
        for seed in self.seeds:
            if all(p.control != seed for p in state.peers.nodes.values()):
                self._hello_peer(seed)
        self.pub.send_multipart(to_frames(state.heartbeat(now)), zmq.NOBLOCK)

    def _owner_gone(self, events: dict[object, int]) -> bool:
        if self.options.owner_pid is None:
            return False
        if self.owner_fd is not None:
            return self.owner_fd in events
        return os.getppid() != self.options.owner_pid

    def request_stop(self, *_: object) -> None:
        self.running = False

    def _stop(self) -> None:
        """Hand back what the workers hold, stop them, close everything."""
        self.running = False
        self._send(self.state.leaving())
        for worker_id, proc in self.processes.items():
            if self.state.workers.get(worker_id, None) is not None and self.state.workers[worker_id].up:
                self._send([(worker_id, Shutdown())])
            else:  # still starting: it would never hear SHUTDOWN
                proc.terminate()
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
        for sock in [self.router, self.pub, self.sub, *self.seeds.values()]:
            sock.close(linger=0)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.context.term()
        self.store.close()


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
